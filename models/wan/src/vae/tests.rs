//! Unit tests of the VAE's pieces that the parity fixtures only see end to end: the causal Conv3d against a naive loop, the feature cache's chunking semantics at each kind of site, the tile blend, and the config.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::VaeConfig;
use super::blocks::{Resample, ResampleMode};
use super::conv3d::{CausalConv3d, FeatCache};
use super::im2col::Conv2d;
use super::tiling::blend;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(values(dims.iter().product(), seed), dims, &Device::Cpu).unwrap()
}

/// `[B, C, T, H, W]` <-> `[B, T, C, H, W]`.
fn swap_ct(x: &Tensor) -> Tensor {
    x.permute((0, 2, 1, 3, 4)).unwrap().contiguous().unwrap()
}

/// WanCausalConv3d by definition, channels-first: `cache` frames then `2*pt - cache` zero
/// frames in front, none behind, `ph`/`pw` zeros around each frame, spatial stride 1.
fn naive_conv3d(
    x: &Tensor,
    cache: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    padding: (usize, usize, usize),
    stride_t: usize,
) -> Tensor {
    let (b, ci, t, h, w) = x.dims5().unwrap();
    let (co, _, kt, kh, kw) = weight.dims5().unwrap();
    let (pt, ph, pw) = padding;
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ws = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bs = bias.to_vec1::<f32>().unwrap();
    let (cache_t, cs) = match cache {
        Some(c) if pt > 0 => (
            c.dim(2).unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        ),
        _ => (0, vec![]),
    };
    let zeros = 2 * pt - cache_t;
    let tp = zeros + cache_t + t;
    // Value of padded frame `f` (0-based in the padded sequence).
    let at = |bi: usize, c: usize, f: usize, y: isize, x_: isize| -> f64 {
        if y < 0 || x_ < 0 || y >= h as isize || x_ >= w as isize || f < zeros {
            return 0.0;
        }
        let (y, x_) = (y as usize, x_ as usize);
        if f < zeros + cache_t {
            let f = f - zeros;
            cs[(((bi * ci + c) * cache_t + f) * h + y) * w + x_] as f64
        } else {
            let f = f - zeros - cache_t;
            xs[(((bi * ci + c) * t + f) * h + y) * w + x_] as f64
        }
    };
    let (to, ho, wo) = (
        (tp - kt) / stride_t + 1,
        h + 2 * ph - kh + 1,
        w + 2 * pw - kw + 1,
    );
    let mut out = vec![0f32; b * co * to * ho * wo];
    for bi in 0..b {
        for o in 0..co {
            for j in 0..to {
                for y in 0..ho {
                    for x_ in 0..wo {
                        let mut acc = bs[o] as f64;
                        for c in 0..ci {
                            for a in 0..kt {
                                for p in 0..kh {
                                    for q in 0..kw {
                                        let wv =
                                            ws[(((o * ci + c) * kt + a) * kh + p) * kw + q] as f64;
                                        let yy = (y + p) as isize - ph as isize;
                                        let xx = (x_ + q) as isize - pw as isize;
                                        acc += wv * at(bi, c, j * stride_t + a, yy, xx);
                                    }
                                }
                            }
                        }
                        out[(((bi * co + o) * to + j) * ho + y) * wo + x_] = acc as f32;
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (b, co, to, ho, wo), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_near(what: &str, actual: &Tensor, expected: &Tensor) {
    let d = max_diff(actual, expected);
    assert!(d <= 1e-5, "{what}: max abs diff {d:e}");
}

/// (kernel, padding, time stride, cached frames, im2col budget)
type ConvCase = (
    (usize, usize, usize),
    (usize, usize, usize),
    usize,
    usize,
    Option<usize>,
);

#[test]
fn causal_conv3d_matches_the_naive_loop() {
    let cases: &[ConvCase] = &[
        ((3, 3, 3), (1, 1, 1), 1, 0, None),
        ((3, 3, 3), (1, 1, 1), 1, 1, None),
        ((3, 3, 3), (1, 1, 1), 1, 2, None),
        ((3, 1, 1), (1, 0, 0), 1, 0, None),
        ((3, 1, 1), (0, 0, 0), 2, 0, None),
        ((1, 1, 1), (0, 0, 0), 1, 0, None),
        ((2, 3, 3), (1, 0, 0), 1, 0, None),
        // Bands of rows (a row of the im2col buffer is Tp*C*9*Wp = 7*3*9*7 values).
        ((3, 3, 3), (1, 1, 1), 1, 0, Some(2 * 7 * 3 * 9 * 7)),
        ((3, 3, 3), (1, 1, 1), 1, 1, Some(1)),
        ((3, 1, 1), (0, 0, 0), 2, 0, Some(1)),
    ];
    for (i, &(kernel, padding, stride, cached, budget)) in cases.iter().enumerate() {
        let (kt, kh, kw) = kernel;
        let (b, ci, co, t, h, w) = (2, 3, 4, 5, 4, 5);
        let x = tensor(&[b, ci, t, h, w], 10 + i as u64);
        let weight = tensor(&[co, ci, kt, kh, kw], 20 + i as u64);
        let bias = tensor(&[co], 30 + i as u64);
        let cache = (cached > 0).then(|| tensor(&[b, ci, cached, h, w], 40 + i as u64));
        let mut conv = CausalConv3d::from_weights(&weight, &bias, stride, padding).unwrap();
        if let Some(budget) = budget {
            conv = conv.with_im2col_budget(budget);
        }
        let got = conv
            .forward(&swap_ct(&x), cache.as_ref().map(swap_ct).as_ref())
            .unwrap();
        let expected = naive_conv3d(&x, cache.as_ref(), &weight, &bias, padding, stride);
        assert_near(
            &format!("case {i} {kernel:?} {padding:?} s{stride} cache {cached}"),
            &swap_ct(&got),
            &expected,
        );
    }
}

#[test]
fn causal_conv3d_pads_only_in_front() {
    let weight = tensor(&[2, 2, 3, 3, 3], 1);
    let bias = tensor(&[2], 2);
    let conv = CausalConv3d::from_weights(&weight, &bias, 1, (1, 1, 1)).unwrap();
    let x = tensor(&[1, 6, 2, 4, 4], 3);
    let y = conv.forward(&x, None).unwrap();
    assert_eq!(y.dims(), &[1, 6, 2, 4, 4], "same number of frames out");
    // Changing frame 4 leaves outputs 0..4 alone and changes output 4.
    let changed = Tensor::cat(
        &[
            x.narrow(1, 0, 4).unwrap(),
            tensor(&[1, 1, 2, 4, 4], 4),
            x.narrow(1, 5, 1).unwrap(),
        ],
        1,
    )
    .unwrap();
    let y2 = conv.forward(&changed, None).unwrap();
    assert_eq!(
        max_diff(&y.narrow(1, 0, 4).unwrap(), &y2.narrow(1, 0, 4).unwrap()),
        0.0
    );
    assert!(max_diff(&y.narrow(1, 4, 1).unwrap(), &y2.narrow(1, 4, 1).unwrap()) > 1e-3);
}

#[test]
fn cached_chunks_equal_the_whole_sequence() {
    let weight = tensor(&[3, 2, 3, 3, 3], 5);
    let bias = tensor(&[3], 6);
    let conv = CausalConv3d::from_weights(&weight, &bias, 1, (1, 1, 1)).unwrap();
    let x = tensor(&[1, 9, 2, 3, 3], 7);
    let whole = conv.forward(&x, None).unwrap();
    for chunks in [vec![1, 4, 4], vec![1; 9], vec![1, 1, 2, 1, 4]] {
        let mut cache = FeatCache::new();
        let mut outs = vec![];
        let mut start = 0;
        for len in &chunks {
            cache.start_chunk();
            outs.push(
                conv.forward_cached(&x.narrow(1, start, *len).unwrap(), &mut cache)
                    .unwrap(),
            );
            start += len;
        }
        assert_eq!(cache.len(), 1);
        assert_near(
            &format!("chunks {chunks:?}"),
            &Tensor::cat(&outs, 1).unwrap(),
            &whole,
        );
    }
}

fn resample(mode: ResampleMode, dim: usize) -> (Resample, Tensor, Tensor) {
    let (out, time_out) = match mode {
        ResampleMode::Upsample2d | ResampleMode::Upsample3d => (dim / 2, 2 * dim),
        ResampleMode::Downsample2d | ResampleMode::Downsample3d => (dim, dim),
    };
    let tw = tensor(&[time_out, dim, 3, 1, 1], 50);
    let tb = tensor(&[time_out], 51);
    let map: HashMap<String, Tensor> = [
        (
            "resample.1.weight".to_string(),
            tensor(&[out, dim, 3, 3], 52),
        ),
        ("resample.1.bias".to_string(), tensor(&[out], 53)),
        ("time_conv.weight".to_string(), tw.clone()),
        ("time_conv.bias".to_string(), tb.clone()),
    ]
    .into();
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    (Resample::new(vb, dim, mode).unwrap(), tw, tb)
}

/// The spatial half of a resample alone (a 2d resample with the same weights).
fn spatial_only(r2d: &Resample, x: &Tensor) -> Tensor {
    r2d.forward(x, &mut FeatCache::new()).unwrap()
}

#[test]
fn upsample3d_passes_the_first_frame_and_doubles_the_rest() {
    let dim = 4;
    let (up3, tw, tb) = resample(ResampleMode::Upsample3d, dim);
    let (up2, _, _) = resample(ResampleMode::Upsample2d, dim);
    let x = tensor(&[1, 5, dim, 3, 3], 60); // frames-major, 5 latent-level frames
    // Expected: frame 0 alone; frames 1.. through time_conv with 2 zero frames in front (not
    // frame 0), each step giving two frames (channel halves), then the spatial step.
    let rest = naive_conv3d(
        &swap_ct(&x.narrow(1, 1, 4).unwrap()),
        None,
        &tw,
        &tb,
        (1, 0, 0),
        1,
    );
    let rest = swap_ct(&rest); // [1, 4, 2*dim, 3, 3]
    let doubled = rest.reshape((1, 8, dim, 3, 3)).unwrap();
    let expected = Tensor::cat(&[x.narrow(1, 0, 1).unwrap(), doubled], 1).unwrap();
    let expected = spatial_only(&up2, &expected);
    for chunks in [vec![1, 1, 1, 1, 1], vec![1, 2, 1, 1], vec![1, 1, 3]] {
        let mut cache = FeatCache::new();
        let (mut outs, mut start) = (vec![], 0);
        for len in &chunks {
            cache.start_chunk();
            outs.push(
                up3.forward(&x.narrow(1, start, *len).unwrap(), &mut cache)
                    .unwrap(),
            );
            start += len;
        }
        let got = Tensor::cat(&outs, 1).unwrap();
        assert_eq!(got.dims(), &[1, 9, dim / 2, 6, 6]);
        assert_near(&format!("upsample3d chunks {chunks:?}"), &got, &expected);
    }
}

#[test]
fn downsample3d_keeps_the_first_frame_and_halves_the_rest() {
    let dim = 3;
    let (down3, tw, tb) = resample(ResampleMode::Downsample3d, dim);
    let (down2, _, _) = resample(ResampleMode::Downsample2d, dim);
    let x = tensor(&[1, 9, dim, 4, 4], 70);
    let s = spatial_only(&down2, &x); // [1, 9, dim, 2, 2]
    // out[0] = s[0]; out[j] = time_conv(s[2j-2], s[2j-1], s[2j]) for j >= 1.
    let rest = swap_ct(&naive_conv3d(&swap_ct(&s), None, &tw, &tb, (0, 0, 0), 2));
    let expected = Tensor::cat(&[s.narrow(1, 0, 1).unwrap(), rest], 1).unwrap();
    let mut cache = FeatCache::new();
    let (mut outs, mut start) = (vec![], 0);
    for len in [1, 4, 4] {
        cache.start_chunk();
        outs.push(
            down3
                .forward(&x.narrow(1, start, len).unwrap(), &mut cache)
                .unwrap(),
        );
        start += len;
    }
    let got = Tensor::cat(&outs, 1).unwrap();
    assert_eq!(got.dims(), &[1, 5, dim, 2, 2]);
    assert_near("downsample3d chunks [1, 4, 4]", &got, &expected);
}

#[test]
fn blend_is_diffusers_loop() {
    for (dim, extent) in [(3usize, 4usize), (4, 3), (3, 9), (4, 0)] {
        let mut short = vec![1, 2, 3, 6, 7];
        short[dim] -= 1;
        let (a, b) = (tensor(&[1, 2, 3, 6, 7], 80), tensor(&short, 81));
        let got = blend(&a, &b, extent, dim).unwrap();
        let e = extent.min(a.dim(dim).unwrap()).min(b.dim(dim).unwrap());
        let (la, lb) = (a.dim(dim).unwrap(), b.dim(dim).unwrap());
        let mut rows = vec![];
        for y in 0..lb {
            let row = b.narrow(dim, y, 1).unwrap();
            rows.push(if y < e {
                let above = a.narrow(dim, la - e + y, 1).unwrap();
                ((above * (1.0 - y as f64 / e as f64)).unwrap()
                    + (row * (y as f64 / e as f64)).unwrap())
                .unwrap()
            } else {
                row
            });
        }
        let expected = Tensor::cat(&rows, dim).unwrap();
        assert_near(&format!("blend dim {dim} extent {extent}"), &got, &expected);
    }
}

#[test]
fn config_defaults_are_the_classes() {
    let config: VaeConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, VaeConfig::default());
    assert_eq!(
        (config.base_dim, config.z_dim, config.num_res_blocks),
        (96, 16, 2)
    );
    assert_eq!((config.spatial_stride(), config.temporal_stride()), (8, 4));
    let residual: VaeConfig = serde_json::from_str(r#"{"is_residual": true}"#).unwrap();
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let error = super::WanVae::new(&residual, vb).unwrap_err().to_string();
    assert!(error.contains("Wan 2.2"), "{error}");
}

#[test]
fn conv2d_engines_match_candle() {
    let x = tensor(&[3, 4, 7, 6], 90);
    for (kernel, padding, stride, budget) in [
        (3, 1, 1, None),
        (1, 0, 1, None),
        (3, 1, 1, Some(50)),
        (3, 0, 2, None),
        (3, 0, 2, Some(100)),
        (3, 0, 2, Some(1)),
    ] {
        let weight = tensor(&[5, 4, kernel, kernel], 91);
        let bias = tensor(&[5], 92);
        let mut conv = Conv2d::from_weights(&weight, &bias, padding, stride).unwrap();
        if let Some(budget) = budget {
            conv = conv.with_budget(budget);
        }
        let expected = x
            .conv2d(&weight, padding, stride, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        assert_near(
            &format!("conv2d k{kernel} p{padding} s{stride} budget {budget:?}"),
            &conv.forward(&x).unwrap(),
            &expected,
        );
    }
}

#[test]
#[ignore = "timing on a 96-channel layer; run with --ignored --nocapture"]
fn bench_conv() {
    let (c, t, h, w) = (96usize, 4usize, 120usize, 208usize);
    let weight = tensor(&[c, c, 3, 3, 3], 1);
    let bias = tensor(&[c], 2);
    let conv = CausalConv3d::from_weights(&weight, &bias, 1, (1, 1, 1)).unwrap();
    let x = tensor(&[1, t, c, h, w], 3);
    let cache = tensor(&[1, 2, c, h, w], 4);
    let flops = 2.0 * (c * c * 27 * t * h * w) as f64;
    for _ in 0..3 {
        let s = std::time::Instant::now();
        let y = conv.forward(&x, Some(&cache)).unwrap();
        let dt = s.elapsed().as_secs_f64();
        eprintln!(
            "causal conv3d {:?} {dt:.3}s {:.1} GFLOP/s",
            y.dims(),
            flops / dt / 1e9
        );
    }
    for budget in [1usize << 23, 1 << 24, 1 << 26, 1 << 28] {
        let conv = conv.clone().with_im2col_budget(budget);
        let s = std::time::Instant::now();
        let _ = conv.forward(&x, Some(&cache)).unwrap();
        eprintln!("budget {budget}: {:.3}s", s.elapsed().as_secs_f64());
    }
    let xp = Tensor::cat(&[&cache, &x], 1).unwrap().squeeze(0).unwrap();
    let s = std::time::Instant::now();
    for k in 0..3 {
        let tap = weight
            .narrow(2, k, 1)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .contiguous()
            .unwrap();
        let _ = xp
            .narrow(0, k, t)
            .unwrap()
            .conv2d(&tap, 1, 1, 1, 1)
            .unwrap();
    }
    eprintln!("candle conv2d per tap {:.3}s", s.elapsed().as_secs_f64());
}
