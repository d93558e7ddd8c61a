//! Plain aligned text columns for the client's listings: readable in a terminal, easy to
//! `grep` and `awk`, and no table crate for one function.

/// Left-aligned columns two spaces apart; the last column is not padded, so long errors
/// do not push trailing blanks onto every line.
pub fn render(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|name| name.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = header.iter().map(|name| name.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(&rows) {
        let last = row.len().min(widths.len()).saturating_sub(1);
        for (index, cell) in row.iter().enumerate().take(widths.len()) {
            // Cells come from the network: keep every row on one line.
            let cell = cell.replace(['\n', '\r', '\t'], " ");
            if index == last {
                out.push_str(&cell);
            } else {
                let pad = widths[index].saturating_sub(cell.chars().count());
                out.push_str(&cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_line_up_and_lines_have_no_trailing_blanks() {
        let text = render(
            &["ID", "STATE", "ERROR"],
            vec![
                vec![
                    "seq-1".into(),
                    "failed".into(),
                    "out of memory\non cpu0".into(),
                ],
                vec!["seq-22".into(), "done".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "ID      STATE   ERROR\n\
             seq-1   failed  out of memory on cpu0\n\
             seq-22  done    -\n"
        );
    }
}
