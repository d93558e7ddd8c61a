//! The contact sheet: the first, middle and last frame of every shot in one labelled
//! picture, so a person sees the whole sequence (and its grade) at a glance without playing it.

use reelfarm_media::frame::RgbFrame;

/// One shot's row: its label and its first, middle and last frames.
#[derive(Clone)]
pub struct ContactRow {
    /// The shot it shows (an alternate take's row goes under its shot's).
    pub shot_index: u32,
    pub label: String,
    pub frames: [RgbFrame; 3],
}

const BACKGROUND: [u8; 3] = [28, 28, 30];
const INK: [u8; 3] = [225, 225, 220];
const MARGIN: u32 = 8;
/// Text is drawn at twice the glyph size: 10×14 pixels a character, 12 with spacing.
const SCALE: u32 = 2;
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
const ADVANCE: u32 = (GLYPH_W + 1) * SCALE;
const TEXT_H: u32 = GLYPH_H * SCALE;

/// Area-averaged downscale to `width` (aspect kept); frames narrower than that stay as they are.
pub fn thumbnail(frame: &RgbFrame, width: u32) -> RgbFrame {
    if frame.width <= width || frame.width == 0 {
        return frame.clone();
    }
    let height = ((u64::from(frame.height) * u64::from(width)).div_ceil(u64::from(frame.width))
        as u32)
        .max(1);
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for ty in 0..height {
        let (y0, y1) = span(ty, height, frame.height);
        for tx in 0..width {
            let (x0, x1) = span(tx, width, frame.width);
            let mut sum = [0u64; 3];
            for y in y0..y1 {
                let row = (y * frame.width) as usize * 3;
                for x in x0..x1 {
                    let i = row + x as usize * 3;
                    for (total, &value) in sum.iter_mut().zip(&frame.data[i..i + 3]) {
                        *total += u64::from(value);
                    }
                }
            }
            let count = u64::from((y1 - y0) * (x1 - x0)).max(1);
            data.extend(sum.map(|s| ((s + count / 2) / count) as u8));
        }
    }
    RgbFrame::new(width, height, data)
}

/// Source pixels `[start, end)` that output pixel `index` of `out` averages over `source`.
fn span(index: u32, out: u32, source: u32) -> (u32, u32) {
    let start = (u64::from(index) * u64::from(source) / u64::from(out)) as u32;
    let end =
        ((u64::from(index + 1) * u64::from(source)).div_ceil(u64::from(out)) as u32).max(start + 1);
    (start, end.min(source))
}

/// Lays out a title line, then per row a label line over three thumbnails `thumb_width` wide.
pub fn contact_sheet(title: &str, rows: &[ContactRow], thumb_width: u32) -> RgbFrame {
    let thumbs: Vec<[RgbFrame; 3]> = rows
        .iter()
        .map(|row| {
            row.frames
                .each_ref()
                .map(|frame| thumbnail(frame, thumb_width))
        })
        .collect();
    let cell_w = thumbs
        .iter()
        .flatten()
        .map(|t| t.width)
        .max()
        .unwrap_or(thumb_width);
    let width = (MARGIN + 3 * (cell_w + MARGIN)).max(MARGIN * 2 + ADVANCE * 20);
    let row_heights: Vec<u32> = thumbs
        .iter()
        .map(|row| TEXT_H + MARGIN / 2 + row.iter().map(|t| t.height).max().unwrap_or(0) + MARGIN)
        .collect();
    let height = MARGIN + TEXT_H + MARGIN + row_heights.iter().sum::<u32>();
    let mut sheet = RgbFrame::filled(width, height, BACKGROUND);
    draw_text(&mut sheet, MARGIN, MARGIN, title);
    let mut y = MARGIN + TEXT_H + MARGIN;
    for ((row, thumbs), row_height) in rows.iter().zip(&thumbs).zip(&row_heights) {
        draw_text(&mut sheet, MARGIN, y, &row.label);
        let top = y + TEXT_H + MARGIN / 2;
        for (slot, thumb) in thumbs.iter().enumerate() {
            blit(
                &mut sheet,
                thumb,
                MARGIN + slot as u32 * (cell_w + MARGIN),
                top,
            );
        }
        y += row_height;
    }
    sheet
}

fn blit(sheet: &mut RgbFrame, picture: &RgbFrame, left: u32, top: u32) {
    for y in 0..picture.height.min(sheet.height.saturating_sub(top)) {
        let columns = picture.width.min(sheet.width.saturating_sub(left)) as usize * 3;
        let from = (y * picture.width) as usize * 3;
        let to = (((top + y) * sheet.width) + left) as usize * 3;
        sheet.data[to..to + columns].copy_from_slice(&picture.data[from..from + columns]);
    }
}

/// Draws `text` with its top-left at (`left`, `top`), clipped to the sheet; characters
/// outside printable ASCII are drawn as `?`.
pub fn draw_text(sheet: &mut RgbFrame, left: u32, top: u32, text: &str) {
    for (index, character) in text.chars().enumerate() {
        let code = character as u32;
        let glyph = GLYPHS[if (32..127).contains(&code) {
            code - 32
        } else {
            u32::from(b'?') - 32
        } as usize];
        let x0 = left + index as u32 * ADVANCE;
        if x0 + GLYPH_W * SCALE > sheet.width {
            break;
        }
        for (row, bits) in glyph.iter().enumerate() {
            for column in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - column)) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (x, y) = (x0 + column * SCALE + dx, top + row as u32 * SCALE + dy);
                        if y < sheet.height {
                            let i = ((y * sheet.width + x) * 3) as usize;
                            sheet.data[i..i + 3].copy_from_slice(&INK);
                        }
                    }
                }
            }
        }
    }
}

/// 5×7 glyphs for printable ASCII (space to `~`), one byte per row, bit 4 the leftmost pixel.
const GLYPHS: [[u8; 7]; 95] = [
    [
        0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000,
    ], // ' '
    [
        0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100,
    ], // '!'
    [
        0b01010, 0b01010, 0b01010, 0b00000, 0b00000, 0b00000, 0b00000,
    ], // '"'
    [
        0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010,
    ], // '#'
    [
        0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100,
    ], // '$'
    [
        0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011,
    ], // '%'
    [
        0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101,
    ], // '&'
    [
        0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000,
    ], // "'"
    [
        0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010,
    ], // '('
    [
        0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000,
    ], // ')'
    [
        0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000,
    ], // '*'
    [
        0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000,
    ], // '+'
    [
        0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000,
    ], // ','
    [
        0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000,
    ], // '-'
    [
        0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100,
    ], // '.'
    [
        0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000,
    ], // '/'
    [
        0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
    ], // '0'
    [
        0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
    ], // '1'
    [
        0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
    ], // '2'
    [
        0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
    ], // '3'
    [
        0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
    ], // '4'
    [
        0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
    ], // '5'
    [
        0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
    ], // '6'
    [
        0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
    ], // '7'
    [
        0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
    ], // '8'
    [
        0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
    ], // '9'
    [
        0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000,
    ], // ':'
    [
        0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000,
    ], // ';'
    [
        0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010,
    ], // '<'
    [
        0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000,
    ], // '='
    [
        0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000,
    ], // '>'
    [
        0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100,
    ], // '?'
    [
        0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110,
    ], // '@'
    [
        0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
    ], // 'A'
    [
        0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
    ], // 'B'
    [
        0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110,
    ], // 'C'
    [
        0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110,
    ], // 'D'
    [
        0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
    ], // 'E'
    [
        0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000,
    ], // 'F'
    [
        0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111,
    ], // 'G'
    [
        0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
    ], // 'H'
    [
        0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
    ], // 'I'
    [
        0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
    ], // 'J'
    [
        0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001,
    ], // 'K'
    [
        0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
    ], // 'L'
    [
        0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
    ], // 'M'
    [
        0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001,
    ], // 'N'
    [
        0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
    ], // 'O'
    [
        0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
    ], // 'P'
    [
        0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101,
    ], // 'Q'
    [
        0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
    ], // 'R'
    [
        0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
    ], // 'S'
    [
        0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
    ], // 'T'
    [
        0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
    ], // 'U'
    [
        0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
    ], // 'V'
    [
        0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010,
    ], // 'W'
    [
        0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001,
    ], // 'X'
    [
        0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100,
    ], // 'Y'
    [
        0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111,
    ], // 'Z'
    [
        0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110,
    ], // '['
    [
        0b00000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00000,
    ], // '\\'
    [
        0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110,
    ], // ']'
    [
        0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000, 0b00000,
    ], // '^'
    [
        0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111,
    ], // '_'
    [
        0b01000, 0b00100, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000,
    ], // '`'
    [
        0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111,
    ], // 'a'
    [
        0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110,
    ], // 'b'
    [
        0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110,
    ], // 'c'
    [
        0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111,
    ], // 'd'
    [
        0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110,
    ], // 'e'
    [
        0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000,
    ], // 'f'
    [
        0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110,
    ], // 'g'
    [
        0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
    ], // 'h'
    [
        0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110,
    ], // 'i'
    [
        0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100,
    ], // 'j'
    [
        0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010,
    ], // 'k'
    [
        0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
    ], // 'l'
    [
        0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001,
    ], // 'm'
    [
        0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
    ], // 'n'
    [
        0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110,
    ], // 'o'
    [
        0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000,
    ], // 'p'
    [
        0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001,
    ], // 'q'
    [
        0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000,
    ], // 'r'
    [
        0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110,
    ], // 's'
    [
        0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110,
    ], // 't'
    [
        0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101,
    ], // 'u'
    [
        0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
    ], // 'v'
    [
        0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010,
    ], // 'w'
    [
        0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001,
    ], // 'x'
    [
        0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110,
    ], // 'y'
    [
        0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111,
    ], // 'z'
    [
        0b00010, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00010,
    ], // '{'
    [
        0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
    ], // '|'
    [
        0b01000, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01000,
    ], // '}'
    [
        0b00000, 0b00000, 0b01000, 0b10101, 0b00010, 0b00000, 0b00000,
    ], // '~'
];

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, rgb: [u8; 3]) -> ContactRow {
        ContactRow {
            shot_index: 0,
            label: label.into(),
            frames: std::array::from_fn(|_| RgbFrame::filled(480, 270, rgb)),
        }
    }

    #[test]
    fn a_thumbnail_averages_areas_and_keeps_the_aspect() {
        let flat = thumbnail(&RgbFrame::filled(480, 270, [10, 200, 90]), 160);
        assert_eq!((flat.width, flat.height), (160, 90));
        assert!(flat.data.chunks_exact(3).all(|p| p == [10, 200, 90]));
        // A one-pixel checkerboard averages to grey, where nearest-neighbour would alias.
        let checker: Vec<u8> = (0..64 * 64)
            .flat_map(|i| {
                if (i % 64 + i / 64) % 2 == 0 {
                    [0u8; 3]
                } else {
                    [255u8; 3]
                }
            })
            .collect();
        let grey = thumbnail(&RgbFrame::new(64, 64, checker), 16);
        assert!(
            grey.data.iter().all(|&v| (120..=135).contains(&v)),
            "{:?}",
            &grey.data[..12]
        );
    }

    #[test]
    fn the_layout_holds_every_row_and_the_thumbnails_keep_their_colour() {
        let rows = [
            row("shot 0 | cut", [200, 40, 40]),
            row("shot 1 | continue", [40, 200, 40]),
        ];
        let sheet = contact_sheet("coastline", &rows, 160);
        let row_height = TEXT_H + MARGIN / 2 + 90 + MARGIN;
        assert_eq!(sheet.width, MARGIN + 3 * (160 + MARGIN));
        assert_eq!(sheet.height, MARGIN + TEXT_H + MARGIN + 2 * row_height);
        let first_top = MARGIN + TEXT_H + MARGIN + TEXT_H + MARGIN / 2;
        assert_eq!(sheet.pixel(MARGIN + 80, first_top + 45), [200, 40, 40]);
        assert_eq!(
            sheet.pixel(
                MARGIN + 2 * (160 + MARGIN) + 80,
                first_top + row_height + 45
            ),
            [40, 200, 40]
        );
    }

    #[test]
    fn text_is_drawn_in_its_band_only() {
        let mut sheet = RgbFrame::filled(200, 40, BACKGROUND);
        draw_text(&mut sheet, 4, 10, "Shot 12: dusk, éé");
        let ink_rows: Vec<u32> = (0..40)
            .filter(|&y| (0..200).any(|x| sheet.pixel(x, y) == INK))
            .collect();
        assert!(!ink_rows.is_empty());
        assert!(
            ink_rows.iter().all(|&y| (10..10 + TEXT_H).contains(&y)),
            "{ink_rows:?}"
        );
        // Different characters draw differently.
        let mut a = RgbFrame::filled(20, 20, BACKGROUND);
        let mut b = a.clone();
        draw_text(&mut a, 0, 0, "A");
        draw_text(&mut b, 0, 0, "B");
        assert_ne!(a, b);
    }
}
