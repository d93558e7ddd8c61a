//! Models that render at their own frame rate (Wan: 16 fps) deliver the sequence's rate: how many native frames a clip needs, and which native frame each output frame shows, so the output frame count is always exactly the one asked for.
//!
//! Output frame j (at j / fps seconds) shows the native frame nearest in time,
//! round(j · native / fps). Frame 0 maps to native frame 0, so a continuing window still
//! starts on its conditioning picture. No blending: nearest-frame keeps every output frame a
//! real rendered frame (a 16 → 24 fps clip repeats every other frame, a judder studios know
//! from 3:2-style pulldown; blending would ghost motion instead).

/// Native frames a clip of `frames` output frames at `fps` needs when the model renders at
/// `native_fps` in counts of `stride · n + 1`: at least one native frame per output instant.
pub fn native_frames(frames: u32, fps: u32, native_fps: u32, stride: u32) -> u32 {
    let last = native_index(frames.saturating_sub(1), fps, native_fps);
    let needed = last + 1;
    let stride = stride.max(1);
    (needed - 1).div_ceil(stride) * stride + 1
}

/// The native frame output frame `index` shows.
pub fn native_index(index: u32, fps: u32, native_fps: u32) -> u32 {
    if fps == native_fps || fps == 0 {
        return index;
    }
    // Integer round-half-up of index · native / fps.
    ((2 * u64::from(index) * u64::from(native_fps) + u64::from(fps)) / (2 * u64::from(fps))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_seconds_at_24_fps_from_16_fps_is_240_frames_from_161() {
        let native = native_frames(240, 24, 16, 4);
        assert_eq!(native, 161);
        let map: Vec<u32> = (0..240).map(|j| native_index(j, 24, 16)).collect();
        assert_eq!(map.len(), 240);
        assert_eq!(&map[..7], &[0, 1, 1, 2, 3, 3, 4]);
        assert!(map.iter().all(|&i| i < native));
        assert_eq!(*map.last().unwrap(), 159);
    }

    #[test]
    fn every_output_frame_maps_inside_the_render_and_in_order() {
        for fps in [8, 12, 16, 24, 25, 30, 60] {
            for frames in [1, 2, 5, 81, 120, 121, 240, 481] {
                let native = native_frames(frames, fps, 16, 4);
                assert_eq!((native - 1) % 4, 0);
                let mut previous = 0;
                for j in 0..frames {
                    let i = native_index(j, fps, 16);
                    assert!(
                        i < native,
                        "{frames} frames at {fps}: {j} → {i} of {native}"
                    );
                    assert!(i >= previous);
                    previous = i;
                    // Nearest in time: within half a native frame.
                    let error = (f64::from(i) / 16.0 - f64::from(j) / f64::from(fps)).abs();
                    assert!(error <= 0.5 / 16.0 + 1e-9);
                }
            }
        }
    }

    #[test]
    fn at_the_native_rate_nothing_changes() {
        assert_eq!(native_frames(81, 16, 16, 4), 81);
        assert_eq!(native_frames(80, 16, 16, 4), 81);
        assert_eq!(native_index(37, 16, 16), 37);
    }
}
