//! Criterion benches of the 3-D ops at VoxTell's shapes (f32, forward, batch 1).
//!
//! ```text
//! cargo bench -p voxtell-vision --bench ops            # all shapes (several minutes)
//! cargo bench -p voxtell-vision --bench ops -- 96      # only names containing "96"
//! ```
//! Throughput is reported in FLOP/s ("elements" = FLOPs). `benches/pytorch_bench.py` runs the
//! same shapes in PyTorch on the same machine.

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use voxtell_vision::ops;

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).expect("random tensor")
}

/// (c_in, c_out, input size, stride): VoxTell's encoder convolutions.
const SHAPES: [(usize, usize, usize, usize); 11] = [
    (32, 32, 96, 1),
    (64, 64, 96, 1),
    (128, 128, 48, 1),
    (256, 256, 24, 1),
    (320, 320, 12, 1),
    (32, 64, 192, 2),
    (64, 128, 96, 2),
    (128, 256, 48, 2),
    (256, 320, 24, 2),
    (320, 320, 12, 2),
    (32, 32, 192, 1),
];

/// The shapes of [`SHAPES`] as one group at `precision`.
fn conv3d_at(c: &mut Criterion, name: &str, precision: ops::ConvPrecision) {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    for (ci, co, s, stride) in SHAPES {
        let x = randn(&[1, ci, s, s, s], 1.0);
        let w = randn(&[co, ci, 3, 3, 3], 0.05);
        let b = randn(&[co], 0.1);
        let o = (s - 1) / stride + 1;
        group.throughput(Throughput::Elements((2 * ci * co * 27 * o * o * o) as u64));
        group.bench_function(BenchmarkId::new(format!("{ci}to{co}_s{stride}"), format!("{s}")), |bench| {
            bench.iter(|| {
                ops::with_conv_precision(precision, || ops::conv3d(&x, &w, Some(&b), [stride; 3]))
                    .expect("conv3d")
            })
        });
    }
    group.finish();
}

fn conv3d(c: &mut Criterion) {
    conv3d_at(c, "conv3d", ops::ConvPrecision::F32);
}

/// The same shapes with [`ops::ConvPrecision::Bf16`] (bf16 products, f32 sums; f32 where the CPU
/// lacks AVX-512 BF16, which the group name then says).
fn conv3d_bf16(c: &mut Criterion) {
    let name = if ops::bf16_supported() { "conv3d_bf16" } else { "conv3d_bf16_unsupported_f32" };
    conv3d_at(c, name, ops::ConvPrecision::Bf16);
}

fn conv3d_backward(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3d_backward");
    group.sample_size(10);
    for (ch, s) in [(32, 96), (320, 12)] {
        let x = candle_core::Var::from_tensor(&randn(&[1, ch, s, s, s], 1.0)).expect("var");
        let w = candle_core::Var::from_tensor(&randn(&[ch, ch, 3, 3, 3], 0.05)).expect("var");
        let g = randn(&[1, ch, s, s, s], 1.0);
        // grad input + grad weight: twice the forward FLOPs.
        group.throughput(Throughput::Elements((2 * 2 * ch * ch * 27 * s * s * s) as u64));
        let y = ops::conv3d(&x, &w, None, [1, 1, 1]).expect("conv3d");
        let loss = (&y * &g).and_then(|t| t.sum_all()).expect("loss");
        group.bench_function(BenchmarkId::new(format!("{ch}to{ch}"), format!("{s}")), |bench| {
            bench.iter(|| loss.backward().expect("backward"))
        });
    }
    group.finish();
}

fn others(c: &mut Criterion) {
    let mut group = c.benchmark_group("pointwise");
    group.sample_size(10);
    for (ci, co, s) in [(320, 320, 6), (64, 32, 96)] {
        let x = randn(&[1, ci, s, s, s], 1.0);
        let w = randn(&[ci, co, 2, 2, 2], 0.05);
        let b = randn(&[co], 0.1);
        group.bench_function(
            BenchmarkId::new(format!("conv_transpose3d_{ci}to{co}"), format!("{s}")),
            |bench| {
                bench.iter(|| ops::conv_transpose3d(&x, &w, Some(&b), [2, 2, 2]).expect("conv_transpose3d"))
            },
        );
    }
    // VoxTell's last decoder stage: 96 channels at 96³ upsampled to 32 at 192³, then the
    // first convolution (the upsampled half) plus the shared skip half; fused and composed.
    {
        let x = randn(&[1, 96, 96, 96, 96], 1.0);
        let uw = randn(&[96, 32, 2, 2, 2], 0.05);
        let ub = randn(&[32], 0.1);
        let cw = randn(&[32, 32, 3, 3, 3], 0.05);
        let addend = randn(&[1, 32, 192, 192, 192], 1.0);
        group.bench_function(BenchmarkId::new("upsample_conv3d_add_fused", "96to192"), |bench| {
            bench.iter(|| {
                ops::upsample_conv3d_add(&x, &uw, Some(&ub), [2, 2, 2], &cw, &addend).expect("fused")
            })
        });
        group.bench_function(BenchmarkId::new("upsample_conv3d_add_composed", "96to192"), |bench| {
            bench.iter(|| {
                let up = ops::conv_transpose3d(&x, &uw, Some(&ub), [2, 2, 2]).expect("up");
                ops::conv3d_add(&up, &cw, &addend, [1, 1, 1]).expect("conv")
            })
        });
    }
    for (ch, s) in [(32, 192), (64, 96)] {
        let x = randn(&[1, ch, s, s, s], 1.0);
        let w = randn(&[ch], 1.0);
        let b = randn(&[ch], 0.1);
        group.bench_function(
            BenchmarkId::new(format!("instance_norm_lrelu_{ch}"), format!("{s}")),
            |bench| {
                bench.iter(|| {
                    ops::instance_norm3d_act(&x, Some(&w), Some(&b), 1e-5, Some(0.01)).expect("norm")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, conv3d, conv3d_bf16, conv3d_backward, others);
criterion_main!(benches);
