//! Writes a PNG grid of procedural scenes (first and last frame of a 3 s clip) for eyeballing the generator.
use reelfarm_media::frame::RgbFrame;
use reelfarm_tiny::scenes::{Scene, prompts, render::render_frame};

fn main() {
    let (w, h) = (212u32, 120u32);
    let count = 12u32;
    let mut sheet = RgbFrame::filled(w * 2 + 8, (h + 4) * count, [0, 0, 0]);
    for index in 0..count {
        let scene = Scene::random(u64::from(index) + 100);
        println!(
            "{index}: {:?} {:?} {:?} {:?} | {}",
            scene.time_of_day,
            scene.setting,
            scene.weather,
            scene.camera,
            prompts::describe(&scene, u64::from(index))
        );
        for (slot, seconds) in [0.0f32, 3.0].iter().enumerate() {
            let frame = render_frame(&scene, *seconds, w, h);
            for y in 0..h {
                for x in 0..w {
                    let src = ((y * w + x) * 3) as usize;
                    let dx = x + slot as u32 * (w + 8);
                    let dy = y + index * (h + 4);
                    let dst = ((dy * sheet.width + dx) * 3) as usize;
                    sheet.data[dst..dst + 3].copy_from_slice(&frame.data[src..src + 3]);
                }
            }
        }
    }
    let png = reelfarm_media::video::encode_png(&sheet).expect("png");
    std::fs::write(
        std::env::args().nth(1).unwrap_or("/tmp/scenes.png".into()),
        png,
    )
    .expect("write");
}
