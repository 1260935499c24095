//! `copal inspect`: the fraction of exact zeros in each prunable linear (Wanda's
//! `check_sparsity`), per layer and in total.

use crate::checkpoint::{self, Checkpoint};
use crate::cli::InspectArgs;
use crate::model::Linear;
use anyhow::Result;
use safetensors::tensor::Dtype;

/// Zeros and total elements of a raw tensor (±0 both count as zero).
pub fn count_zeros(dtype: Dtype, bytes: &[u8]) -> Option<(u64, u64)> {
    let zeros = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) << 1 == 0)
            .count(),
        Dtype::BF16 | Dtype::F16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) << 1 == 0)
            .count(),
        _ => return None,
    };
    let size = if dtype == Dtype::F32 { 4 } else { 2 };
    Some((zeros as u64, (bytes.len() / size) as u64))
}

/// Measured sparsity of every prunable linear: (name, zeros, elements).
pub fn linear_sparsity(ckpt: &Checkpoint) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    for layer in 0..ckpt.config.num_hidden_layers {
        for l in Linear::ALL {
            let name = l.tensor_name(layer);
            let (info, bytes) = ckpt.raw(&name)?;
            let (z, n) = count_zeros(info.dtype, bytes)
                .ok_or_else(|| anyhow::anyhow!("{name}: dtype {:?} not countable", info.dtype))?;
            out.push((name, z, n));
        }
    }
    Ok(out)
}

pub fn run(a: InspectArgs) -> Result<()> {
    crate::ui::set_quiet(a.output.quiet);
    let dir = checkpoint::resolve(&a.model, a.output.quiet)?;
    let ckpt = Checkpoint::open(&dir)?;
    let rows = linear_sparsity(&ckpt)?;
    let (z, n) = rows.iter().fold((0, 0), |(z, n), r| (z + r.1, n + r.2));
    let layers = ckpt.config.num_hidden_layers;
    let per_layer: Vec<f64> = (0..layers)
        .map(|l| {
            let (z, n) = rows[l * 7..l * 7 + 7]
                .iter()
                .fold((0, 0), |(z, n), r| (z + r.1, n + r.2));
            z as f64 / n as f64
        })
        .collect();
    if a.output.json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(name, z, n)| serde_json::json!({"name": name, "zeros": z, "numel": n, "sparsity": *z as f64 / *n as f64}))
            .collect();
        crate::ui::out(serde_json::to_string_pretty(&serde_json::json!({
            "model": dir, "sparsity": z as f64 / n as f64, "zeros": z, "numel": n,
            "layers": per_layer, "tensors": tensors,
            "sparsity_config": ckpt.config_json.get("sparsity_config"),
        }))?)?;
        return Ok(());
    }
    if a.all {
        for (name, z, n) in &rows {
            crate::ui::out(format!("{name:<50} {:>8.4}", *z as f64 / *n as f64))?;
        }
    }
    for (l, s) in per_layer.iter().enumerate() {
        crate::ui::out(format!("layer {l:<3} sparsity {s:.6}"))?;
    }
    crate::ui::out(format!(
        "total sparsity {:.6} ({z} zeros of {n} weights in {} linears)",
        z as f64 / n as f64,
        rows.len()
    ))?;
    Ok(())
}
