//! Kernel benchmarks at the test model's shapes (SmolLM2-135M: hidden 576, intermediate
//! 1536) and LLaMA-7B's (hidden 4096, intermediate 11008). Names carry backend and shape.
//!
//!   cargo bench --bench kernels            (all)
//!   cargo bench --bench kernels -- 576     (test-model shapes only)
//!   cargo bench --bench kernels -- gemm    (the GEMM rate behind the README's FLOP bound)

use candle_core::{Device, Tensor};
use copal::prune::copal::{CopalPruner, Perturbation, PerturbationKind};
use copal::prune::mask::{select, Group, Pattern};
use copal::prune::sparsegpt::{SparseGptConfig, SparseGptPruner};
use copal::prune::LayerPruner;
use copal::rng::gaussian;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn randn(seed: u64, r: usize, c: usize) -> Tensor {
    Tensor::from_vec(gaussian(seed, r * c), (r, c), &Device::Cpu).unwrap()
}

/// The machine's GEMM rate, the FLOP bound's denominator: Y = X Wᵀ as the forward runs it
/// (X: tokens × in, W: out × in, the transposed view handed to the GEMM as is), at the
/// linears' shapes with a calibration batch's rows (4096 on the test model, 2048 at LLaMA-7B).
fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    for &(t, inp, out) in &[
        (4096, 576, 576),
        (4096, 576, 1536),
        (4096, 1536, 576),
        (2048, 4096, 4096),
        (2048, 4096, 11008),
        (2048, 11008, 4096),
    ] {
        let x = randn(1, t, inp);
        let w = randn(2, out, inp);
        g.throughput(Throughput::Elements((2 * t * inp * out) as u64)); // FLOPs
        g.bench_function(
            BenchmarkId::new(format!("cpu_{t}x{inp}x{out}"), "flops"),
            |b| b.iter(|| x.matmul(&w.t().unwrap()).unwrap()),
        );
    }
    g.finish();
}

/// COPAL's score increment for one batch: dY, |dY|ᵀ|X| (one GEMM) and the accumulation.
fn copal_score(c: &mut Criterion) {
    let mut g = c.benchmark_group("copal_score");
    g.sample_size(10);
    for &(out, t, inp) in &[
        (576, 2048, 576),
        (1536, 2048, 576),
        (576, 2048, 1536),
        (4096, 2048, 4096),
        (11008, 2048, 4096),
    ] {
        let w = randn(1, out, inp);
        let x = randn(2, t, inp);
        let y = x.matmul(&w.t().unwrap()).unwrap();
        g.throughput(Throughput::Elements((2 * out * t * inp) as u64)); // FLOPs of the GEMM
        let pert = Perturbation {
            kind: PerturbationKind::Scaled,
            eps_w: 0.01,
            eps_x: 0.01,
        };
        let mut p = CopalPruner::new(&w, None, pert, 0).unwrap();
        g.bench_function(
            BenchmarkId::new(format!("cpu_scaled_{out}x{t}x{inp}"), "flops"),
            |b| b.iter(|| p.observe(&x, &y).unwrap()),
        );
    }
    g.finish();
}

/// Mask selection over a whole matrix and per row.
fn mask_select(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask_select");
    g.sample_size(10);
    for &(r, cols) in &[(1536, 576), (11008, 4096)] {
        let s = gaussian(3, r * cols);
        g.throughput(Throughput::Elements((r * cols) as u64));
        for (name, group) in [("matrix", Group::Matrix), ("row", Group::Row)] {
            g.bench_function(format!("cpu_{name}_{r}x{cols}"), |b| {
                b.iter(|| {
                    select(&s, r, cols, &Pattern::Unstructured { percent: 50.0 }, group).unwrap()
                })
            });
        }
        g.bench_function(format!("cpu_2of4_{r}x{cols}"), |b| {
            b.iter(|| select(&s, r, cols, &Pattern::NM { n: 2, m: 4 }, Group::Row).unwrap())
        });
    }
    g.finish();
}

/// SparseGPT's finish (Cholesky, blocked OBS update) for one linear.
fn sparsegpt_finish(c: &mut Criterion) {
    let mut g = c.benchmark_group("sparsegpt_finish");
    g.sample_size(10);
    for &(out, inp) in &[(576, 576), (576, 1536), (4096, 4096)] {
        let w = randn(4, out, inp);
        let x = randn(5, 2 * inp, inp);
        g.bench_function(format!("cpu_{out}x{inp}"), |b| {
            b.iter(|| {
                let mut p = SparseGptPruner::new(&w, SparseGptConfig::default()).unwrap();
                p.observe(&x, &x).unwrap();
                Box::new(p)
                    .finish(&Pattern::Unstructured { percent: 50.0 }, Group::Matrix)
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// One decoder layer forward (with taps) on one window, at the test model's and LLaMA-7B's
/// shapes; throughput in tokens/s.
fn layer_forward(c: &mut Criterion) {
    use copal::model::{block::norm_names, DecoderLayer, Linear, LlamaConfig, Positions};
    let mut g = c.benchmark_group("layer_forward");
    g.sample_size(10);
    for (preset, t) in [
        ("smollm2-135m", 512usize),
        ("smollm2-135m", 2048),
        ("llama-7b", 512),
        ("llama-7b", 2048),
    ] {
        let cfg_json = copal::checkpoint::synth::preset(preset, 1).unwrap();
        let cfg = LlamaConfig::from_json(&cfg_json.to_string()).unwrap();
        let mut src = std::collections::HashMap::new();
        for (k, lin) in Linear::ALL.iter().enumerate() {
            let (o, i) = lin.shape(&cfg);
            let w = (randn(10 + k as u64, o, i) * (1.0 / (i as f64).sqrt())).unwrap();
            src.insert(lin.tensor_name(0), w);
        }
        for n in norm_names(0) {
            src.insert(
                n,
                Tensor::ones(cfg.hidden_size, candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let layer =
            DecoderLayer::load(&src, &cfg, 0, candle_core::DType::F32, &Device::Cpu).unwrap();
        let pos = Positions::new(&cfg, t, candle_core::DType::F32, &Device::Cpu).unwrap();
        let x = randn(3, t, cfg.hidden_size).unsqueeze(0).unwrap();
        g.throughput(Throughput::Elements(t as u64));
        g.bench_function(format!("cpu_{preset}_t{t}"), |b| {
            b.iter(|| layer.forward_tapped(&x, &pos).unwrap())
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    gemm,
    copal_score,
    mask_select,
    sparsegpt_finish,
    layer_forward
);
criterion_main!(benches);
