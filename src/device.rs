//! Where a model computes (`cpu`, `cuda`, `cuda:N`) and in which dtype.

use anyhow::{Context as _, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// The dtype of the forward passes. Statistics are always kept in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
    F16,
}

crate::display_as_value!(ComputeDtype);

impl ComputeDtype {
    pub fn dtype(self) -> DType {
        match self {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::Bf16 => DType::BF16,
            ComputeDtype::F16 => DType::F16,
        }
    }

    /// The default on a device: bf16 on CUDA (as the anchors run), f32 on the CPU.
    pub fn default_for(device: &str) -> Self {
        if is_cuda(device) {
            ComputeDtype::Bf16
        } else {
            ComputeDtype::F32
        }
    }
}

fn is_cuda(spec: &str) -> bool {
    spec == "cuda" || spec.starts_with("cuda:")
}

/// The CUDA ordinal of `cuda` / `cuda:N`, or None for `cpu`; a usage error for anything else.
fn parse(spec: &str) -> Result<Option<usize>> {
    match spec {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(_)) => {
                crate::usage_bail!("device", "{spec}: expected cuda:N with N a GPU index")
            }
            None => crate::usage_bail!("device", "{spec}: expected cpu, cuda or cuda:N"),
        },
    }
}

/// Checks a device name without opening the device: its syntax, and that this build has CUDA.
pub fn check(spec: &str) -> Result<()> {
    if parse(spec)?.is_some() && !candle_core::utils::cuda_is_available() {
        crate::usage_bail!(
            "device",
            "{spec}: this copal was built without CUDA; rebuild with --features cuda \
             (docs/cuda.md)"
        );
    }
    Ok(())
}

/// Whether tensors on `device` take copal's fused CPU kernels (the causal softmax, the head's
/// NLL) rather than the generic candle composition that a GPU runs. `COPAL_GENERIC_KERNELS=1`
/// sends the CPU down the generic path too, so that the GPU's path is exercised and compared
/// with the fused one on machines without a GPU (tests, `scripts/gpu-check.sh`'s rehearsal).
pub fn fused_cpu(device: &Device) -> bool {
    static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    device.is_cpu()
        && !*GENERIC.get_or_init(|| {
            std::env::var("COPAL_GENERIC_KERNELS")
                .ok()
                .and_then(|v| crate::env::parse_bool(&v))
                .unwrap_or(false)
        })
}

/// Runs `f` on the f32 elements of a contiguous tensor when it takes the fused CPU kernels
/// ([`fused_cpu`]); None for another device or dtype, a strided layout, or the generic kernels
/// asked for, where the caller uses candle's ops instead.
pub fn with_f32_slice<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    use candle_core::{CpuStorage, DType, Storage};
    if !fused_cpu(t.device()) || t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(all)), Some((a, b))) => Some(f(&all[a..b])),
        _ => None,
    }
}

/// Whether the CPU has the AVX-512 subsets (and FMA) that the hand-dispatched kernels are
/// compiled for (`#[target_feature]` copies chosen at run time), detected once.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
    })
}

/// A strided matrix view for [`gemm`]: `data[offset + r·row_stride + c·col_stride]`
/// is element (r, c) of a `rows` × `cols` matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatView {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatView {
    /// A row-major `rows` × `cols` block starting at `offset`, rows `row_stride` apart.
    pub fn rows(offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The same elements read as the transposed matrix.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// One past the largest index the view reads (its offset for an empty view).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.offset;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// The element types [`gemm`] multiplies (the `gemm` crate's f32 and f64 kernels).
pub trait GemmScalar: Copy + 'static {
    const ZERO: Self;
    const ONE: Self;
    const MINUS_ONE: Self;
}

impl GemmScalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const MINUS_ONE: Self = -1.0;
}

impl GemmScalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const MINUS_ONE: Self = -1.0;
}

/// How [`gemm`] stores the product P = A·B into its destination C. Each is one rounding of
/// the same P: `Sub` is C − P exactly as a separate subtraction of P would round it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// C = P.
    Set,
    /// C = −P.
    Neg,
    /// C = C + P.
    Add,
    /// C = C − P.
    Sub,
}

/// C = A · B (or as [`Store`] says) with the `gemm` crate that candle's CPU matmul also
/// calls, on one thread (for kernels that split their work between threads themselves) or,
/// with `parallel`, on rayon's threads as candle's matmul runs it. Either way an element's
/// sum runs in the same order whatever the thread count. The views read and write in place:
/// no operand is copied into a tensor and no product is materialised beside C.
///
/// Panics if a view reaches past its slice or the shapes do not chain; `dst` must not overlap
/// the inputs (it is a `&mut`, so it cannot).
pub fn gemm<T: GemmScalar>(
    dst: &mut [T],
    d: MatView,
    (a, av): (&[T], MatView),
    (b, bv): (&[T], MatView),
    store: Store,
    parallel: bool,
) {
    assert!(
        av.rows == d.rows && bv.cols == d.cols && av.cols == bv.rows,
        "gemm: ({} × {}) · ({} × {}) into ({} × {})",
        av.rows,
        av.cols,
        bv.rows,
        bv.cols,
        d.rows,
        d.cols
    );
    assert!(d.end() <= dst.len() && av.end() <= a.len() && bv.end() <= b.len());
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = match parallel && threads > 1 {
        true => gemm::Parallelism::Rayon(threads),
        false => gemm::Parallelism::None,
    };
    // The crate computes C = alpha·C + beta·P (C not read when `read_dst` is false; with
    // alpha = 1 as one fused multiply-add of beta·P, exact for beta = ±1).
    let (read_dst, beta) = match store {
        Store::Set => (false, T::ONE),
        Store::Neg => (false, T::MINUS_ONE),
        Store::Add => (true, T::ONE),
        Store::Sub => (true, T::MINUS_ONE),
    };
    let alpha = if read_dst { T::ONE } else { T::ZERO };
    // SAFETY: every element the three views address lies inside its slice (checked above),
    // and `dst` is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            av.cols,
            dst.as_mut_ptr().add(d.offset),
            d.col_stride as isize,
            d.row_stride as isize,
            read_dst,
            a.as_ptr().add(av.offset),
            av.col_stride as isize,
            av.row_stride as isize,
            b.as_ptr().add(bv.offset),
            bv.col_stride as isize,
            bv.row_stride as isize,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The bit patterns of a tensor's f32 values, in order: for tests of bit-identical results.
#[cfg(test)]
pub fn f32_bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Opens the device.
pub fn open(spec: &str) -> Result<Device> {
    check(spec)?;
    match parse(spec)? {
        None => Ok(Device::Cpu),
        Some(n) => Device::new_cuda(n).with_context(|| {
            format!(
                "opening CUDA device {n}: is the NVIDIA driver loaded and the GPU visible? \
                 (nvidia-smi lists the GPUs; CUDA_VISIBLE_DEVICES may hide them)"
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse("cpu").unwrap(), None);
        assert_eq!(parse("cuda").unwrap(), Some(0));
        assert_eq!(parse("cuda:3").unwrap(), Some(3));
        for bad in ["gpu", "cuda:x", "cuda:"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                e.downcast_ref::<crate::usage::UsageError>()
                    .unwrap()
                    .setting,
                "device"
            );
        }
        assert_eq!(ComputeDtype::default_for("cuda:1"), ComputeDtype::Bf16);
        assert_eq!(ComputeDtype::default_for("cpu"), ComputeDtype::F32);
    }
}
