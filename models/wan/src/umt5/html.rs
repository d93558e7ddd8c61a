//! Python's `html.unescape`, character for character, because the pipeline unescapes every prompt (twice) before tokenizing it and a different reading would change the token ids.
//!
//! CPython matches `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)` and replaces
//! numeric references by their code point (with HTML5's replacements for invalid ones) and
//! named references by the longest known name that starts the match.

use super::html_entities::HTML5;

/// Every character reference in `text` replaced as `html.unescape(text)` replaces it.
pub(super) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match reference(after) {
            Some((consumed, replacement)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference that follows an `&`: the bytes it spans and its replacement, or `None`
/// where the pattern does not match there (the `&` then stays as it is).
fn reference(after: &str) -> Option<(usize, String)> {
    match after.strip_prefix('#') {
        Some(number) => numeric(number).map(|(consumed, text)| (consumed + 1, text)),
        None => named(after),
    }
}

/// `[0-9]+;?` or `[xX][0-9a-fA-F]+;?` after the `#`.
fn numeric(number: &str) -> Option<(usize, String)> {
    let (radix, start) = match number.as_bytes().first() {
        Some(b'x' | b'X') => (16, 1),
        _ => (10, 0),
    };
    let digits = number[start..]
        .bytes()
        .take_while(|byte| (*byte as char).is_digit(radix))
        .count();
    if digits == 0 {
        return None;
    }
    let end = start + digits;
    let value = number[start..end].chars().fold(0u32, |value, digit| {
        // Saturates far above 0x10FFFF, which reads as out of range just as Python's big int.
        value
            .saturating_mul(radix)
            .saturating_add(digit.to_digit(radix).unwrap_or(0))
    });
    let consumed = end + usize::from(number[end..].starts_with(';'));
    Some((consumed, code_point(value)))
}

/// What CPython writes for `&#value;`.
fn code_point(value: u32) -> String {
    if let Some(replacement) = invalid_charref(value) {
        return replacement.to_string();
    }
    if (0xD800..=0xDFFF).contains(&value) || value > 0x10FFFF {
        return '\u{FFFD}'.to_string();
    }
    if is_invalid_code_point(value) {
        return String::new();
    }
    char::from_u32(value).map(String::from).unwrap_or_default()
}

/// `html._invalid_charrefs`: NUL, CR and the C1 range read as Windows-1252.
fn invalid_charref(value: u32) -> Option<char> {
    const C1: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];
    match value {
        0x00 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => Some(C1[(value - 0x80) as usize]),
        _ => None,
    }
}

/// `html._invalid_codepoints`: controls and noncharacters, dropped.
fn is_invalid_code_point(value: u32) -> bool {
    matches!(value, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || value & 0xFFFE == 0xFFFE
}

/// `[^\t\n\f <&#;]{1,32};?`: the whole name if HTML5 knows it, else the longest known prefix
/// of at least two characters followed by the rest as written, else the text unchanged.
fn named(after: &str) -> Option<(usize, String)> {
    let end = after
        .char_indices()
        .take(32)
        .find(|(_, c)| matches!(c, '\t' | '\n' | '\x0C' | ' ' | '<' | '&' | '#' | ';'))
        .map_or_else(
            || after.chars().take(32).map(char::len_utf8).sum(),
            |(at, _)| at,
        );
    if end == 0 {
        return None;
    }
    let consumed = end + usize::from(after[end..].starts_with(';'));
    let name = &after[..consumed];
    if let Some(value) = lookup(name) {
        return Some((consumed, value.to_string()));
    }
    let starts: Vec<usize> = name.char_indices().map(|(at, _)| at).collect();
    for &cut in starts.iter().skip(2).rev() {
        if let Some(value) = lookup(&name[..cut]) {
            return Some((consumed, format!("{value}{}", &name[cut..])));
        }
    }
    Some((consumed, format!("&{name}")))
}

fn lookup(name: &str) -> Option<&'static str> {
    HTML5
        .binary_search_by(|(known, _)| known.cmp(&name))
        .ok()
        .map(|at| HTML5[at].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_the_binary_search() {
        assert!(HTML5.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert_eq!(lookup("amp;"), Some("&"));
        assert_eq!(lookup("amp"), Some("&"));
        assert_eq!(lookup("hearts"), None);
    }

    /// Expected values printed by CPython 3.11's `html.unescape`.
    #[test]
    fn references_read_as_python_reads_them() {
        let cases = [
            ("no reference", "no reference"),
            ("fish &amp; chips", "fish & chips"),
            ("&lt;b&gt;", "<b>"),
            ("&amp;lt;", "&lt;"),
            ("it&#39;s &#x27;x&#X27;", "it's 'x'"),
            ("&#65&#66;C", "ABC"),
            ("&notit; &notin;", "\u{ac}it; \u{2209}"),
            (
                "&copy2024 &hearts; &Hearts;",
                "\u{a9}2024 \u{2665} &Hearts;",
            ),
            ("&#0;&#13;&#x80;&#150;", "\u{FFFD}\r\u{20ac}\u{2013}"),
            ("a&#1;b&#xFFFF;c&#xfdd0;d", "abcd"),
            (
                "&#xD800;&#1114112;&#99999999999999999999;",
                "\u{FFFD}\u{FFFD}\u{FFFD}",
            ),
            ("&# &#x; &; & &&amp", "&# &#x; &; & &&"),
            ("&nbsp;x&NewLine;", "\u{a0}x\n"),
            (
                "&zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz;",
                "&zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz;",
            ),
            ("&ampé;", "&é;"),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape(input), expected, "{input:?}");
        }
    }
}
