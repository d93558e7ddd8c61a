//! Serialises the `ftyp` and `moov` boxes: the timing, sample tables and codec setup that make the `mdat` playable.
//!
//! Kept apart from the streaming writer so the box layout can be checked without encoding video.
//! Layout follows ISO/IEC 14496-12 (ISOBMFF) and 14496-15 (`avcC`), choosing the forms every
//! player reads: version 0 boxes unless a duration needs 64 bits, `stco` unless an offset does.

use super::EncodeSettings;
use super::encode::ParameterSets;

/// Ticks per frame; the timescale is `fps * TICKS_PER_FRAME` so each frame lasts a whole number
/// of ticks and the movie duration is exact.
pub(crate) const TICKS_PER_FRAME: u32 = 1000;

const UNITY_MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];
// BT.601 (SMPTE 170M) primaries, transfer and matrix, as the encoder's VUI says.
const COLOUR_SMPTE_170M: u16 = 6;

/// Per-sample facts gathered while streaming: a few bytes per frame.
#[derive(Default)]
pub(crate) struct SampleLog {
    pub(crate) sizes: Vec<u32>,
    pub(crate) offsets: Vec<u64>,
    /// 1-based numbers of the IDR samples.
    pub(crate) sync_samples: Vec<u32>,
}

pub(crate) fn file_type_box() -> Vec<u8> {
    let mut b = BoxBuilder::default();
    b.open(b"ftyp");
    b.bytes(b"isom");
    b.u32(0x200);
    for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
        b.bytes(brand);
    }
    b.close();
    b.into_bytes()
}

pub(crate) fn movie_box(
    settings: &EncodeSettings,
    log: &SampleLog,
    parameter_sets: &ParameterSets,
) -> Vec<u8> {
    let timescale = settings.fps * TICKS_PER_FRAME;
    let duration = log.sizes.len() as u64 * u64::from(TICKS_PER_FRAME);
    let long_duration = u32::try_from(duration).is_err();
    let version = u8::from(long_duration);
    let mut b = BoxBuilder::default();
    b.open(b"moov");

    b.open_full(b"mvhd", version, 0);
    b.times_and_duration(long_duration, Some(timescale), duration);
    b.u32(0x0001_0000); // playback rate 1.0
    b.u16(0x0100); // volume 1.0
    b.zeros(10);
    UNITY_MATRIX.iter().for_each(|&m| b.u32(m));
    b.zeros(24);
    b.u32(2); // next track id
    b.close();

    b.open(b"trak");
    b.open_full(b"tkhd", version, 0x3); // enabled, in movie
    b.times_and_duration(long_duration, None, duration);
    b.zeros(16); // reserved, layer, alternate group, volume, reserved
    UNITY_MATRIX.iter().for_each(|&m| b.u32(m));
    b.u32(settings.width << 16);
    b.u32(settings.height << 16);
    b.close();

    b.open(b"mdia");
    b.open_full(b"mdhd", version, 0);
    b.times_and_duration(long_duration, Some(timescale), duration);
    b.u16(0x55c4); // language "und"
    b.u16(0);
    b.close();
    b.open_full(b"hdlr", 0, 0);
    b.u32(0);
    b.bytes(b"vide");
    b.zeros(12);
    b.bytes(b"VideoHandler\0");
    b.close();

    b.open(b"minf");
    b.open_full(b"vmhd", 0, 1);
    b.zeros(8);
    b.close();
    b.open(b"dinf");
    b.open_full(b"dref", 0, 0);
    b.u32(1);
    b.open_full(b"url ", 0, 1); // media is in this file
    b.close();
    b.close();
    b.close();
    b.open(b"stbl");
    sample_description(&mut b, settings, parameter_sets);
    sample_tables(&mut b, log);
    b.close(); // stbl
    b.close(); // minf
    b.close(); // mdia
    b.close(); // trak
    b.close(); // moov
    b.into_bytes()
}

fn sample_description(b: &mut BoxBuilder, settings: &EncodeSettings, sets: &ParameterSets) {
    b.open_full(b"stsd", 0, 0);
    b.u32(1);
    b.open(b"avc1");
    b.zeros(6);
    b.u16(1); // data reference index
    b.zeros(16);
    // `EncodeSettings::validate` keeps both sides within 16 bits.
    b.u16(settings.width as u16);
    b.u16(settings.height as u16);
    b.u32(0x0048_0000); // 72 dpi
    b.u32(0x0048_0000);
    b.u32(0);
    b.u16(1); // frames per sample
    b.zeros(32); // compressor name
    b.u16(0x0018); // colour, no alpha
    b.u16(0xffff);

    b.open(b"avcC");
    let profile = sets.sps.get(1).copied().unwrap_or(66);
    b.u8(1);
    b.u8(profile);
    b.u8(sets.sps.get(2).copied().unwrap_or(0));
    b.u8(sets.sps.get(3).copied().unwrap_or(0));
    b.u8(0xfc | 3); // 4-byte NAL lengths
    b.u8(0xe0 | 1);
    b.u16(sets.sps.len() as u16);
    b.bytes(&sets.sps);
    b.u8(1);
    b.u16(sets.pps.len() as u16);
    b.bytes(&sets.pps);
    if matches!(profile, 100 | 110 | 122 | 144) {
        // High profiles must state chroma format and bit depths: 4:2:0, 8-bit.
        b.bytes(&[0xfc | 1, 0xf8, 0xf8, 0]);
    }
    b.close();

    b.open(b"colr");
    b.bytes(b"nclx");
    b.u16(COLOUR_SMPTE_170M);
    b.u16(COLOUR_SMPTE_170M);
    b.u16(COLOUR_SMPTE_170M);
    b.u8(0); // limited range
    b.close();
    b.open(b"pasp");
    b.u32(1);
    b.u32(1);
    b.close();
    b.close(); // avc1
    b.close(); // stsd
}

fn sample_tables(b: &mut BoxBuilder, log: &SampleLog) {
    let sample_count = log.sizes.len() as u32;
    b.open_full(b"stts", 0, 0);
    b.u32(1);
    b.u32(sample_count);
    b.u32(TICKS_PER_FRAME);
    b.close();

    b.open_full(b"stss", 0, 0);
    b.u32(log.sync_samples.len() as u32);
    log.sync_samples.iter().for_each(|&s| b.u32(s));
    b.close();

    // One sample per chunk keeps the chunk table trivially aligned with the samples.
    b.open_full(b"stsc", 0, 0);
    b.u32(1);
    b.u32(1);
    b.u32(1);
    b.u32(1);
    b.close();

    b.open_full(b"stsz", 0, 0);
    b.u32(0);
    b.u32(sample_count);
    log.sizes.iter().for_each(|&s| b.u32(s));
    b.close();

    let last_offset = log.offsets.last().copied().unwrap_or(0);
    if u32::try_from(last_offset).is_ok() {
        b.open_full(b"stco", 0, 0);
        b.u32(sample_count);
        log.offsets.iter().for_each(|&o| b.u32(o as u32));
    } else {
        b.open_full(b"co64", 0, 0);
        b.u32(sample_count);
        log.offsets.iter().for_each(|&o| b.u64(o));
    }
    b.close();
}

/// Big-endian box serialiser; `close` back-patches the size of the innermost open box.
#[derive(Default)]
struct BoxBuilder {
    bytes: Vec<u8>,
    open_boxes: Vec<usize>,
}

impl BoxBuilder {
    fn open(&mut self, box_type: &[u8; 4]) {
        self.open_boxes.push(self.bytes.len());
        self.u32(0);
        self.bytes(box_type);
    }

    fn open_full(&mut self, box_type: &[u8; 4], version: u8, flags: u32) {
        self.open(box_type);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
    }

    fn close(&mut self) {
        if let Some(start) = self.open_boxes.pop() {
            let size = (self.bytes.len() - start) as u32;
            self.bytes[start..start + 4].copy_from_slice(&size.to_be_bytes());
        }
    }

    /// Creation/modification times (zero: renders must be byte-reproducible), then for `mvhd`
    /// and `mdhd` the timescale, or for `tkhd` the track id and a reserved word, then duration.
    fn times_and_duration(&mut self, long: bool, timescale: Option<u32>, duration: u64) {
        self.zeros(if long { 16 } else { 8 });
        match timescale {
            Some(timescale) => self.u32(timescale),
            None => {
                self.u32(1); // track id
                self.u32(0);
            }
        }
        if long {
            self.u64(duration)
        } else {
            self.u32(duration as u32)
        }
    }

    fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }
    fn u16(&mut self, value: u16) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }
    fn bytes(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
    }
    fn zeros(&mut self, count: usize) {
        self.bytes.resize(self.bytes.len() + count, 0);
    }
    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::Quality;

    fn settings() -> EncodeSettings {
        EncodeSettings {
            width: 848,
            height: 480,
            fps: 24,
            quality: Quality::Delivery,
        }
    }

    fn parameter_sets() -> ParameterSets {
        ParameterSets {
            sps: vec![0x67, 66, 0xc0, 30, 0xda],
            pps: vec![0x68, 0xce, 0x3c, 0x80],
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    }

    fn log_of(count: u32, first_offset: u64) -> SampleLog {
        SampleLog {
            sizes: vec![100; count as usize],
            offsets: (0..u64::from(count))
                .map(|i| first_offset + i * 100)
                .collect(),
            sync_samples: vec![1],
        }
    }

    #[test]
    fn sizes_are_back_patched_and_nested() {
        let moov = movie_box(&settings(), &log_of(3, 48), &parameter_sets());
        assert_eq!(
            u32::from_be_bytes([moov[0], moov[1], moov[2], moov[3]]) as usize,
            moov.len()
        );
        assert_eq!(&moov[4..8], b"moov");
        let ftyp = file_type_box();
        assert_eq!((ftyp.len(), &ftyp[4..8]), (32, &b"ftyp"[..]));
    }

    #[test]
    fn timing_is_exact_in_ticks() {
        let moov = movie_box(&settings(), &log_of(7, 48), &parameter_sets());
        let stts = find(&moov, b"stts").unwrap();
        // entry count 1: 7 samples of 1000 ticks each at timescale 24000.
        assert_eq!(
            &moov[stts + 8..stts + 20],
            &[0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0x03, 0xe8]
        );
        let mdhd = find(&moov, b"mdhd").unwrap();
        let timescale_and_duration = &moov[mdhd + 16..mdhd + 24];
        assert_eq!(
            timescale_and_duration,
            &[0, 0, 0x5d, 0xc0, 0, 0, 0x1b, 0x58]
        );
    }

    #[test]
    fn offsets_past_4_gib_switch_to_co64() {
        let small = movie_box(&settings(), &log_of(2, 48), &parameter_sets());
        assert!(find(&small, b"stco").is_some() && find(&small, b"co64").is_none());
        let large = movie_box(
            &settings(),
            &log_of(2, u64::from(u32::MAX) - 50),
            &parameter_sets(),
        );
        assert!(find(&large, b"co64").is_some() && find(&large, b"stco").is_none());
    }

    #[test]
    fn avcc_carries_the_parameter_sets_and_profile() {
        let moov = movie_box(&settings(), &log_of(1, 48), &parameter_sets());
        let avcc = find(&moov, b"avcC").unwrap() + 4;
        assert_eq!(&moov[avcc..avcc + 6], &[1, 66, 0xc0, 30, 0xff, 0xe1]);
        assert_eq!(&moov[avcc + 6..avcc + 8], &[0, 5]);
        assert_eq!(&moov[avcc + 8..avcc + 13], &parameter_sets().sps[..]);
        assert!(find(&moov, b"nclx").is_some());
    }
}
