//! Just enough of `multipart/form-data` (RFC 7578) for the fake's create call: the boundary
//! from the content type, then each part's `name` and body; hostile or broken bodies are
//! refused with the reason.

/// One part of a form.
pub struct Part {
    pub name: String,
    pub body: Vec<u8>,
}

/// At most this many parts: a create call has five fields.
const MAX_PARTS: usize = 32;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    if !content_type.starts_with("multipart/form-data") {
        return Err(format!(
            "content type {content_type:?}: send multipart/form-data or application/json"
        ));
    }
    let boundary = content_type
        .split(';')
        .filter_map(|parameter| parameter.trim().strip_prefix("boundary="))
        .next()
        .map(|boundary| boundary.trim_matches('"'))
        .filter(|boundary| !boundary.is_empty() && boundary.len() <= 70)
        .ok_or("no boundary in the content type")?;
    let delimiter = format!("--{boundary}");
    let mut rest = body;
    let start = find(rest, delimiter.as_bytes()).ok_or("no opening boundary")?;
    rest = &rest[start + delimiter.len()..];
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a boundary not followed by CRLF")?;
        let head_end =
            find(rest, b"\r\n\r\n").ok_or("a part without a blank line after its headers")?;
        let head =
            std::str::from_utf8(&rest[..head_end]).map_err(|_| "part headers are not UTF-8")?;
        rest = &rest[head_end + 4..];
        let next = find(rest, format!("\r\n{delimiter}").as_bytes())
            .ok_or("a part without a closing boundary")?;
        let body = rest[..next].to_vec();
        rest = &rest[next + 2 + delimiter.len()..];
        let name = head
            .lines()
            .find(|line| {
                line.to_ascii_lowercase()
                    .starts_with("content-disposition:")
            })
            .and_then(|line| {
                line.split(';')
                    .filter_map(|parameter| parameter.trim().strip_prefix("name="))
                    .next()
            })
            .map(|name| name.trim_matches('"').to_string())
            .ok_or("a part without a content-disposition name")?;
        parts.push(Part { name, body });
        if parts.len() > MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} parts"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_a_file_are_read_and_broken_bodies_refused() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfog over pines\r\n--xyz\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--x\r\n--xyz--\r\n";
        let parts = parse("multipart/form-data; boundary=xyz", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].body.as_slice()),
            ("prompt", &b"fog over pines"[..])
        );
        assert_eq!(parts[1].name, "input_reference");
        assert_eq!(parts[1].body, b"\x89PNG\r\n--x");
        assert!(parse("multipart/form-data", body).is_err());
        assert!(parse("text/plain", body).is_err());
        assert!(parse("multipart/form-data; boundary=xyz", &body[..60]).is_err());
    }
}
