//! The element-wise pieces of the statistics path, fused on the CPU: a method observes every
//! window of every linear of every layer, so a pass that candle spends an allocation (or, for
//! a sum over rows, a division per element) on is paid thousands of times per step.
//!
//! Each function gives the bits of the candle composition it replaces (the same operations in
//! the same order; Rust does not contract `a * b + c` into a fused multiply-add), which a test
//! checks, and falls back to that composition off the CPU or with `COPAL_GENERIC_KERNELS=1`.

use crate::device::with_f32_slice as with_slice;
use anyhow::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Columns per task of a parallel sum over rows: each task adds its columns' rows in order,
/// so the split changes nothing but the speed.
const COLUMNS_PER_TASK: usize = 256;

/// Σ_t x_tj² for each column j of `x` (tokens × in), f32: `x.sqr()?.sum(0)`, whose CPU
/// reduction adds the rows in order from 0, as this does.
pub fn column_sumsq(x: &Tensor) -> Result<Tensor> {
    let (t, n) = x.dims2()?;
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let fused = with_slice(&x, |v| {
        let mut acc = vec![0f32; n];
        acc.par_chunks_mut(COLUMNS_PER_TASK)
            .enumerate()
            .for_each(|(c, out)| {
                let j = c * COLUMNS_PER_TASK;
                for r in 0..t {
                    let row = &v[r * n + j..r * n + j + out.len()];
                    for (o, &e) in out.iter_mut().zip(row) {
                        *o += e * e;
                    }
                }
            });
        acc
    });
    match fused {
        Some(acc) => Ok(Tensor::from_vec(acc, n, x.device())?),
        None => Ok(x.sqr()?.sum(0)?),
    }
}

/// |c · y| element-wise, f32: `(y * c)?.abs()` (candle's affine is `v * c + 0`).
pub fn abs_scaled(y: &Tensor, c: f64) -> Result<Tensor> {
    let y = y.to_dtype(DType::F32)?.contiguous()?;
    let cf = c as f32;
    let fused = with_slice(&y, |v| {
        let mut out = vec![0f32; v.len()];
        out.par_chunks_mut(1 << 14)
            .zip(v.par_chunks(1 << 14))
            .for_each(|(o, v)| {
                for (o, &e) in o.iter_mut().zip(v) {
                    *o = (e * cf + 0.0).abs();
                }
            });
        out
    });
    match fused {
        Some(out) => Ok(Tensor::from_vec(out, y.shape(), y.device())?),
        None => Ok((y * c)?.abs()?),
    }
}

/// A sum of f32 tensors of one shape kept in one buffer: each `add` is `acc + inc` in place,
/// so a statistic summed window by window allocates nothing after its first window.
#[derive(Debug, Default)]
pub struct Sum {
    acc: Option<(Vec<f32>, candle_core::Shape, candle_core::Device)>,
    /// Off the fused CPU path: the candle sum.
    generic: Option<Tensor>,
}

impl Sum {
    pub fn add(&mut self, inc: &Tensor) -> Result<()> {
        let inc = inc.to_dtype(DType::F32)?.contiguous()?;
        if let Some(g) = self.generic.take() {
            self.generic = Some((g + inc)?);
            return Ok(());
        }
        let added = with_slice(&inc, |b| match self.acc.as_mut() {
            None => {
                self.acc = Some((b.to_vec(), inc.shape().clone(), inc.device().clone()));
                Ok(())
            }
            Some((a, shape, _)) => {
                anyhow::ensure!(
                    shape == inc.shape(),
                    "internal: adding {:?} to {shape:?}",
                    inc.dims()
                );
                a.par_chunks_mut(1 << 14)
                    .zip(b.par_chunks(1 << 14))
                    .for_each(|(a, b)| {
                        for (a, &b) in a.iter_mut().zip(b) {
                            *a += b;
                        }
                    });
                Ok(())
            }
        });
        match added {
            Some(r) => r,
            None => {
                anyhow::ensure!(self.acc.is_none(), "internal: a sum changed device");
                self.generic = Some(inc);
                Ok(())
            }
        }
    }

    /// Adds aᵀ·b for a (tokens × m) and b (tokens × n), f32, the product summed into the
    /// buffer by the GEMM itself instead of written to a new m × n tensor and added in a second
    /// pass. The GEMM adds its blocks of K (512 tokens on these machines) to the buffer one by
    /// one, so for longer windows the bits differ from `add(&a.t()?.matmul(b)?)` by rounding;
    /// the order is fixed by the shapes alone, so the sum still does not depend on the batch
    /// or the thread count. Off the fused CPU path it is that composition.
    pub fn add_tn(&mut self, a: &Tensor, b: &Tensor) -> Result<()> {
        let (t, m) = a.dims2()?;
        let (tb, n) = b.dims2()?;
        anyhow::ensure!(t == tb, "internal: aᵀb over {t} and {tb} rows");
        let (a, b) = (
            a.to_dtype(DType::F32)?.contiguous()?,
            b.to_dtype(DType::F32)?.contiguous()?,
        );
        let fused_here = self.generic.is_none()
            && match &self.acc {
                Some((_, shape, _)) => shape.dims() == [m, n],
                None => true,
            };
        let done = fused_here
            .then(|| {
                with_slice(&a, |av| {
                    with_slice(&b, |bv| {
                        use crate::device::{gemm, MatView, Store};
                        let first = self.acc.is_none();
                        let acc = self.acc.get_or_insert_with(|| {
                            (vec![0f32; m * n], (m, n).into(), a.device().clone())
                        });
                        // aᵀ: the rows of a read as columns.
                        let at = MatView::rows(0, t, m, m).t();
                        let store = if first { Store::Set } else { Store::Add };
                        gemm(
                            &mut acc.0,
                            MatView::rows(0, m, n, n),
                            (av, at),
                            (bv, MatView::rows(0, t, n, n)),
                            store,
                            true,
                        );
                    })
                })
                .flatten()
            })
            .flatten();
        match done {
            Some(()) => Ok(()),
            None => self.add(&a.t()?.matmul(&b)?),
        }
    }

    /// The sum (None: nothing was added).
    pub fn into_tensor(self) -> Result<Option<Tensor>> {
        if let Some(g) = self.generic {
            return Ok(Some(g));
        }
        self.acc
            .map(|(a, shape, device)| Ok(Tensor::from_vec(a, shape, &device)?))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(seed: u64, r: usize, c: usize) -> Tensor {
        let v = crate::rng::gaussian(seed, r * c);
        Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap()
    }

    use crate::device::f32_bits as bits;

    #[test]
    fn fused_kernels_give_the_bits_of_the_candle_ops() {
        // 300 columns: a full task of 256 and a short one; rows long enough for rounding to
        // differ between summation orders.
        let x = (randn(1, 517, 300) * 3.0).unwrap();
        assert_eq!(
            bits(&column_sumsq(&x).unwrap()),
            bits(&x.sqr().unwrap().sum(0).unwrap())
        );
        let c = 0.01 + 0.01;
        assert_eq!(
            bits(&abs_scaled(&x, c).unwrap()),
            bits(&(&x * c).unwrap().abs().unwrap())
        );
        let (y, z) = (randn(2, 517, 300), randn(3, 517, 300));
        let mut sum = Sum::default();
        for t in [&x, &y, &z] {
            sum.add(t).unwrap();
        }
        let candle = ((&x + &y).unwrap() + &z).unwrap();
        assert_eq!(bits(&sum.into_tensor().unwrap().unwrap()), bits(&candle));
        // aᵀb summed by the GEMM: the first product's bits exactly; then equal up to the
        // rounding of adding the GEMM's blocks of K (517 rows is longer than one) one by one.
        let (mut fused, mut plain) = (Sum::default(), Sum::default());
        for (k, (a, b)) in [(&x, &y), (&z, &x), (&y, &y)].into_iter().enumerate() {
            fused.add_tn(a, b).unwrap();
            plain.add(&a.t().unwrap().matmul(b).unwrap()).unwrap();
            let (f, p) = (
                Tensor::from_vec(
                    fused.acc.as_ref().unwrap().0.clone(),
                    (300, 300),
                    &Device::Cpu,
                )
                .unwrap(),
                Tensor::from_vec(
                    plain.acc.as_ref().unwrap().0.clone(),
                    (300, 300),
                    &Device::Cpu,
                )
                .unwrap(),
            );
            if k == 0 {
                assert_eq!(bits(&f), bits(&p));
            }
            let rel = ((&f - &p).unwrap().abs().unwrap().max_all().unwrap())
                .to_scalar::<f32>()
                .unwrap()
                / p.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            assert!(rel < 1e-6, "after {} products: {rel}", k + 1);
        }
        assert!(Sum::default().into_tensor().unwrap().is_none());
        // A transposed view is taken as its values, not its storage.
        let yt = y.t().unwrap();
        assert_eq!(
            bits(&column_sumsq(&yt).unwrap()),
            bits(&yt.sqr().unwrap().sum(0).unwrap())
        );
    }
}
