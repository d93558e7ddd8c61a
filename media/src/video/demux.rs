//! Minimal MP4 demuxer: finds the H.264 video track and where each sample's bytes lie in the file.
//!
//! Built for the files `mux` writes, but reads any non-fragmented `avc1`/`avc3` MP4. All reads go
//! through `boxes`, and every sample range is checked against the file before decoding starts:
//! malformed input yields `Err`, never a panic or a huge allocation.

use super::VideoError;
use super::boxes::{ByteReader, child_boxes, find_child, malformed, require_child, split_box};

/// Where one sample's bytes are inside the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SampleRange {
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// What decoding needs from the first video track.
#[derive(Debug)]
pub(crate) struct VideoTrack {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) timescale: u32,
    pub(crate) total_duration: u64,
    pub(crate) samples: Vec<SampleRange>,
    pub(crate) nal_length_size: usize,
    pub(crate) sequence_parameter_sets: Vec<Vec<u8>>,
    pub(crate) picture_parameter_sets: Vec<Vec<u8>>,
}

/// Parses the first video track of an MP4 held in memory.
pub(crate) fn read_video_track(file: &[u8]) -> Result<VideoTrack, VideoError> {
    let moov = find_child(file, b"moov")?
        .ok_or_else(|| malformed("no 'moov' box; the file is truncated or not an mp4"))?;
    let mut media = None;
    for child in child_boxes(moov) {
        let child = child?;
        if &child.box_type != b"trak" {
            continue;
        }
        let mdia = require_child(child.body, b"mdia")?;
        let mut hdlr = ByteReader::new(require_child(mdia, b"hdlr")?, "hdlr");
        hdlr.full_box_version()?;
        hdlr.u32()?;
        if &hdlr.take_array::<4>()? == b"vide" {
            media = Some(mdia);
            break;
        }
    }
    let mdia = media.ok_or_else(|| VideoError::UnsupportedMp4("no video track".into()))?;

    let mut mdhd = ByteReader::new(require_child(mdia, b"mdhd")?, "mdhd");
    let long_fields = mdhd.full_box_version()? == 1;
    mdhd.take(if long_fields { 16 } else { 8 })?;
    let timescale = mdhd.u32()?;
    if timescale == 0 {
        return Err(malformed("media timescale is zero"));
    }

    let stbl = require_child(require_child(mdia, b"minf")?, b"stbl")?;
    let mut track = read_sample_description(require_child(stbl, b"stsd")?)?;
    track.timescale = timescale;
    let (stts_samples, total_duration) = read_time_to_sample(require_child(stbl, b"stts")?)?;
    track.total_duration = total_duration;
    let sizes = read_sample_sizes(require_child(stbl, b"stsz")?, file.len())?;
    let chunk_offsets = match find_child(stbl, b"stco")? {
        Some(stco) => read_chunk_offsets(stco, "stco", 4)?,
        None => read_chunk_offsets(require_child(stbl, b"co64")?, "co64", 8)?,
    };
    track.samples = locate_samples(require_child(stbl, b"stsc")?, &chunk_offsets, &sizes)?;
    if let Some(ctts) = find_child(stbl, b"ctts")? {
        reject_reordering(ctts)?;
    }

    if track.samples.is_empty() {
        return Err(malformed("the video track has no samples"));
    }
    if stts_samples != track.samples.len() as u64 {
        return Err(malformed(
            "sample timing and size tables disagree on the sample count",
        ));
    }
    if total_duration == 0 {
        return Err(malformed("the video track has zero duration"));
    }
    for (index, sample) in track.samples.iter().enumerate() {
        if sample
            .start
            .checked_add(sample.len)
            .is_none_or(|end| end > file.len())
        {
            return Err(malformed(format!(
                "sample {index} lies beyond the end of the file (truncated?)"
            )));
        }
    }
    Ok(track)
}

fn read_sample_description(stsd: &[u8]) -> Result<VideoTrack, VideoError> {
    let mut reader = ByteReader::new(stsd, "stsd");
    reader.full_box_version()?;
    if reader.u32()? == 0 {
        return Err(malformed("stsd has no sample entry"));
    }
    let (entry, _) = split_box(reader.data)?;
    if &entry.box_type != b"avc1" && &entry.box_type != b"avc3" {
        let codec = String::from_utf8_lossy(&entry.box_type).into_owned();
        return Err(VideoError::UnsupportedMp4(format!(
            "codec '{codec}'; only h264 is supported"
        )));
    }
    let mut visual = ByteReader::new(entry.body, "avc1");
    visual.take(24)?;
    let width = u32::from(visual.u16()?);
    let height = u32::from(visual.u16()?);
    visual.take(50)?;
    let mut avcc = ByteReader::new(require_child(visual.data, b"avcC")?, "avcC");
    avcc.take(4)?; // version, profile, compatibility, level: the SPS says the same
    let nal_length_size = usize::from(avcc.u8()? & 0x3) + 1;
    let sps_count = avcc.u8()? & 0x1f;
    let sequence_parameter_sets = read_parameter_sets(&mut avcc, sps_count)?;
    let pps_count = avcc.u8()?;
    let picture_parameter_sets = read_parameter_sets(&mut avcc, pps_count)?;
    if sequence_parameter_sets.is_empty() || picture_parameter_sets.is_empty() {
        return Err(VideoError::UnsupportedMp4("avcC lacks sps or pps".into()));
    }
    Ok(VideoTrack {
        width,
        height,
        timescale: 0,
        total_duration: 0,
        samples: Vec::new(),
        nal_length_size,
        sequence_parameter_sets,
        picture_parameter_sets,
    })
}

fn read_parameter_sets(avcc: &mut ByteReader<'_>, count: u8) -> Result<Vec<Vec<u8>>, VideoError> {
    (0..count)
        .map(|_| {
            let length = usize::from(avcc.u16()?);
            Ok(avcc.take(length)?.to_vec())
        })
        .collect()
}

/// Returns (sample count, total duration in timescale ticks).
fn read_time_to_sample(stts: &[u8]) -> Result<(u64, u64), VideoError> {
    let mut reader = ByteReader::new(stts, "stts");
    reader.full_box_version()?;
    let entry_count = reader.u32()?;
    let mut entries = reader.table(entry_count, 8)?;
    let (mut samples, mut duration) = (0u64, 0u64);
    for _ in 0..entry_count {
        let count = u64::from(entries.u32()?);
        let delta = u64::from(entries.u32()?);
        samples += count;
        duration = duration.saturating_add(count * delta);
    }
    Ok((samples, duration))
}

/// We hand frames out in decode order, which is display order only when every sample has the
/// same composition offset (no B-frames); anything else would come out silently shuffled.
fn reject_reordering(ctts: &[u8]) -> Result<(), VideoError> {
    let mut reader = ByteReader::new(ctts, "ctts");
    reader.full_box_version()?;
    let entry_count = reader.u32()?;
    let mut entries = reader.table(entry_count, 8)?;
    let mut first_offset = None;
    for _ in 0..entry_count {
        entries.u32()?; // sample count
        let offset = entries.u32()?;
        if *first_offset.get_or_insert(offset) != offset {
            return Err(VideoError::UnsupportedMp4(
                "reordered frames (b-frames) are not supported".into(),
            ));
        }
    }
    Ok(())
}

fn read_sample_sizes(stsz: &[u8], file_len: usize) -> Result<Vec<u32>, VideoError> {
    let mut reader = ByteReader::new(stsz, "stsz");
    reader.full_box_version()?;
    let uniform_size = reader.u32()?;
    let count = reader.u32()?;
    if uniform_size == 0 {
        let mut table = reader.table(count, 4)?;
        return (0..count).map(|_| table.u32()).collect();
    }
    // A uniform size has no table to bound the count, so the file length has to.
    if u64::from(uniform_size) * u64::from(count) > file_len as u64 {
        return Err(malformed(
            "stsz describes more sample data than the file holds",
        ));
    }
    Ok(vec![uniform_size; count as usize])
}

fn read_chunk_offsets(
    body: &[u8],
    name: &'static str,
    width: usize,
) -> Result<Vec<u64>, VideoError> {
    let mut reader = ByteReader::new(body, name);
    reader.full_box_version()?;
    let count = reader.u32()?;
    let mut table = reader.table(count, width)?;
    (0..count)
        .map(|_| {
            if width == 8 {
                table.u64()
            } else {
                table.u32().map(u64::from)
            }
        })
        .collect()
}

/// Walks the sample-to-chunk runs to place every sample at its chunk offset plus the sizes before it.
fn locate_samples(
    stsc: &[u8],
    chunk_offsets: &[u64],
    sizes: &[u32],
) -> Result<Vec<SampleRange>, VideoError> {
    let mut reader = ByteReader::new(stsc, "stsc");
    reader.full_box_version()?;
    let run_count = reader.u32()?;
    let mut table = reader.table(run_count, 12)?;
    let mut runs = Vec::with_capacity(run_count as usize);
    for _ in 0..run_count {
        let first_chunk = table.u32()?;
        let samples_per_chunk = table.u32()?;
        table.u32()?; // sample description index: we only read the first description
        let previous_first = runs.last().map_or(0, |&(first, _)| first);
        if first_chunk <= previous_first {
            return Err(malformed("stsc runs are not in increasing chunk order"));
        }
        runs.push((first_chunk, samples_per_chunk));
    }

    let mut samples = Vec::with_capacity(sizes.len());
    let mut remaining_sizes = sizes.iter();
    for (run_index, &(first_chunk, samples_per_chunk)) in runs.iter().enumerate() {
        let end_chunk = runs
            .get(run_index + 1)
            .map_or(chunk_offsets.len() as u64 + 1, |&(next, _)| u64::from(next));
        for chunk in u64::from(first_chunk)..end_chunk {
            let offset = chunk_offsets
                .get((chunk - 1) as usize)
                .ok_or_else(|| malformed("stsc refers to a chunk that stco does not list"))?;
            let mut position = *offset;
            for _ in 0..samples_per_chunk {
                let Some(&size) = remaining_sizes.next() else {
                    return Ok(samples);
                };
                let start = usize::try_from(position)
                    .map_err(|_| malformed("sample offset exceeds memory"))?;
                samples.push(SampleRange {
                    start,
                    len: size as usize,
                });
                position = position.saturating_add(u64::from(size));
            }
        }
    }
    if remaining_sizes.next().is_some() {
        return Err(malformed("stsz lists samples that no chunk holds"));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::Mp4Reader;
    use crate::video::Quality;
    use crate::video::test_support::encode_gradient;

    fn small_mp4() -> Vec<u8> {
        encode_gradient(64, 48, 8, 20, Quality::Delivery)
    }

    /// Opens and fully decodes; any outcome but a panic is acceptable for broken input.
    fn read_everything(bytes: Vec<u8>) -> Result<u64, VideoError> {
        let mut reader = Mp4Reader::open(bytes)?;
        let mut frames = 0;
        while reader.next_frame()?.is_some() {
            frames += 1;
        }
        Ok(frames)
    }

    #[test]
    fn reads_back_what_the_writer_declared() {
        let mp4 = small_mp4();
        let track = read_video_track(&mp4).unwrap();
        assert_eq!((track.width, track.height, track.timescale), (64, 48, 8000));
        assert_eq!(track.samples.len(), 20);
        assert_eq!(track.total_duration, 20_000);
        assert_eq!(track.nal_length_size, 4);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Mp4Reader::open(Vec::new()).is_err());
        assert!(Mp4Reader::open(b"hello, this is not a video at all".to_vec()).is_err());
        let noise: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(Mp4Reader::open(noise).is_err());
        // Plausible headers with absurd sizes and counts.
        assert!(Mp4Reader::open([&[0, 0, 0, 1][..], b"moov", &[0xff; 8]].concat()).is_err());
        assert!(
            Mp4Reader::open([&[0, 0, 0, 16][..], b"moov", &[0, 0, 0, 8], b"trak"].concat())
                .is_err()
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mp4 = small_mp4();
        for cut in (0..mp4.len()).step_by(7) {
            assert!(
                read_everything(mp4[..cut].to_vec()).is_err(),
                "cut at {cut} of {}",
                mp4.len()
            );
        }
    }

    #[test]
    fn corrupted_tables_never_panic() {
        let mp4 = small_mp4();
        let moov_start = mp4.windows(4).position(|w| w == b"moov").unwrap() - 4;
        for position in moov_start..mp4.len() {
            for replacement in [0x00, 0xff, mp4[position] ^ 0x01] {
                let mut broken = mp4.clone();
                broken[position] = replacement;
                // Some flips are harmless (e.g. in a reserved field); the point is no panic.
                let _ = read_everything(broken);
            }
        }
    }

    #[test]
    fn reordered_streams_are_refused() {
        let entries = |offsets: &[u32]| {
            let mut body = vec![0, 0, 0, 0];
            body.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
            for offset in offsets {
                body.extend_from_slice(&1u32.to_be_bytes());
                body.extend_from_slice(&offset.to_be_bytes());
            }
            body
        };
        assert!(reject_reordering(&entries(&[1000, 1000, 1000])).is_ok());
        assert!(matches!(
            reject_reordering(&entries(&[2000, 0, 1000])),
            Err(VideoError::UnsupportedMp4(_))
        ));
        assert!(reject_reordering(&entries(&[])[..6]).is_err());
    }

    #[test]
    fn non_video_tracks_are_reported_as_unsupported() {
        let mut mp4 = small_mp4();
        let handler = mp4.windows(4).position(|w| w == b"vide").unwrap();
        mp4[handler..handler + 4].copy_from_slice(b"soun");
        assert!(matches!(
            Mp4Reader::open(mp4),
            Err(VideoError::UnsupportedMp4(_))
        ));
    }
}
