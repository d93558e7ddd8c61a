//! Bounds-checked reading of ISO BMFF boxes from untrusted bytes, the only way `demux` touches the file.
//!
//! Every length and count in an MP4 is attacker-controlled as far as we know, so each read
//! checks what remains, box sizes are checked against their parent, and tables are sized from
//! the bytes that back them before anything is allocated.

use super::VideoError;

pub(crate) fn malformed(message: impl Into<String>) -> VideoError {
    VideoError::MalformedMp4(message.into())
}

/// Bounds-checked big-endian reads over one box body; errors name the box.
pub(crate) struct ByteReader<'a> {
    pub(crate) data: &'a [u8],
    box_name: &'static str,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(data: &'a [u8], box_name: &'static str) -> Self {
        Self { data, box_name }
    }

    pub(crate) fn take(&mut self, count: usize) -> Result<&'a [u8], VideoError> {
        if count > self.data.len() {
            return Err(malformed(format!("{} box is truncated", self.box_name)));
        }
        let (head, rest) = self.data.split_at(count);
        self.data = rest;
        Ok(head)
    }

    pub(crate) fn take_array<const N: usize>(&mut self) -> Result<[u8; N], VideoError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, VideoError> {
        Ok(self.take_array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, VideoError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, VideoError> {
        Ok(u32::from_be_bytes(self.take_array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, VideoError> {
        Ok(u64::from_be_bytes(self.take_array()?))
    }

    /// A table of `count` entries of `entry_size` bytes; fails before allocating if the box is too short.
    pub(crate) fn table(
        &mut self,
        count: u32,
        entry_size: usize,
    ) -> Result<ByteReader<'a>, VideoError> {
        let bytes = (count as usize)
            .checked_mul(entry_size)
            .ok_or_else(|| malformed(format!("{} box entry count overflows", self.box_name)))?;
        Ok(ByteReader::new(self.take(bytes)?, self.box_name))
    }

    /// Skips the version/flags word of a full box and returns the version.
    pub(crate) fn full_box_version(&mut self) -> Result<u8, VideoError> {
        let version = self.u8()?;
        self.take(3)?;
        Ok(version)
    }
}

/// One box: its four-character type and the bytes after its header.
pub(crate) struct RawBox<'a> {
    pub(crate) box_type: [u8; 4],
    pub(crate) body: &'a [u8],
}

/// Yields each box packed in `data`, stopping after the first malformed header.
pub(crate) fn child_boxes(data: &[u8]) -> impl Iterator<Item = Result<RawBox<'_>, VideoError>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = split_box(rest);
        rest = match &parsed {
            Ok((_, after)) => after,
            Err(_) => &[],
        };
        Some(parsed.map(|(raw_box, _)| raw_box))
    })
}

/// Splits the first box off `data`, returning it and the bytes after it.
pub(crate) fn split_box(data: &[u8]) -> Result<(RawBox<'_>, &[u8]), VideoError> {
    let mut header = ByteReader::new(data, "box header");
    let short_size = header.u32()?;
    let box_type: [u8; 4] = header.take_array()?;
    let (header_len, total_len) = match short_size {
        0 => (8, data.len() as u64), // runs to the end of the enclosing data
        1 => (16, header.u64()?),
        size => (8, u64::from(size)),
    };
    if total_len < header_len || total_len > data.len() as u64 {
        let name = String::from_utf8_lossy(&box_type);
        return Err(malformed(format!(
            "box '{name}' claims {total_len} bytes but {} remain",
            data.len()
        )));
    }
    let (whole, after) = data.split_at(total_len as usize);
    Ok((
        RawBox {
            box_type,
            body: &whole[header_len as usize..],
        },
        after,
    ))
}

pub(crate) fn find_child<'a>(
    data: &'a [u8],
    wanted: &[u8; 4],
) -> Result<Option<&'a [u8]>, VideoError> {
    for child in child_boxes(data) {
        let child = child?;
        if &child.box_type == wanted {
            return Ok(Some(child.body));
        }
    }
    Ok(None)
}

pub(crate) fn require_child<'a>(data: &'a [u8], wanted: &[u8; 4]) -> Result<&'a [u8], VideoError> {
    find_child(data, wanted)?
        .ok_or_else(|| malformed(format!("missing '{}' box", String::from_utf8_lossy(wanted))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(box_type: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let size = (body.len() + 8) as u32;
        [&size.to_be_bytes()[..], box_type, body].concat()
    }

    #[test]
    fn walks_siblings_and_finds_nested_boxes() {
        let inner = boxed(b"mdhd", &[1, 2, 3]);
        let file = [boxed(b"ftyp", b"isom"), boxed(b"moov", &inner)].concat();
        let types: Vec<[u8; 4]> = child_boxes(&file).map(|b| b.unwrap().box_type).collect();
        assert_eq!(types, vec![*b"ftyp", *b"moov"]);
        let moov = require_child(&file, b"moov").unwrap();
        assert_eq!(require_child(moov, b"mdhd").unwrap(), &[1, 2, 3]);
        assert!(find_child(moov, b"trak").unwrap().is_none());
        assert!(matches!(
            require_child(moov, b"trak"),
            Err(VideoError::MalformedMp4(_))
        ));
    }

    #[test]
    fn large_and_open_ended_sizes() {
        let large = [
            &1u32.to_be_bytes()[..],
            b"mdat",
            &20u64.to_be_bytes(),
            &[9, 9, 9, 9],
        ]
        .concat();
        let (raw, rest) = split_box(&large).unwrap();
        assert_eq!((raw.body, rest.len()), (&[9, 9, 9, 9][..], 0));
        let open_ended = [&0u32.to_be_bytes()[..], b"mdat", &[7, 7]].concat();
        assert_eq!(split_box(&open_ended).unwrap().0.body, &[7, 7]);
    }

    #[test]
    fn sizes_that_lie_are_errors() {
        let too_long = [&100u32.to_be_bytes()[..], b"moov", &[0; 4]].concat();
        assert!(split_box(&too_long).is_err());
        let too_short = [&4u32.to_be_bytes()[..], b"moov"].concat();
        assert!(split_box(&too_short).is_err());
        let huge_large = [&1u32.to_be_bytes()[..], b"mdat", &u64::MAX.to_be_bytes()].concat();
        assert!(split_box(&huge_large).is_err());
        assert!(split_box(&[0, 0, 0]).is_err());
        let errors: Vec<_> = child_boxes(&too_long).collect();
        assert_eq!(errors.len(), 1, "iteration stops after a bad header");
    }

    #[test]
    fn tables_are_checked_before_allocation() {
        let mut reader = ByteReader::new(&[0; 16], "stsz");
        assert!(reader.table(u32::MAX, 4).is_err());
        assert!(reader.table(4, 4).is_ok());
        assert!(reader.u8().is_err());
    }
}
