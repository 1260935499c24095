//! The LLaMA model outside its decoder layers: embedding, final RMSNorm and LM head, and the
//! whole forward that loads each decoder layer in turn from a [`TensorSource`].

use super::block::{self, DecoderLayer, Positions};
use super::config::LlamaConfig;
use super::source::TensorSource;
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Device, Tensor};

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Largest block of f32 logits [`Llama::next_token_nll`] materialises at once. Blocks of fewer
/// than ~100 rows made the head's GEMM slower (measured: 8 MiB blocks, 42 rows of SmolLM2's
/// 49,152-token vocabulary, doubled evaluation time on 2 cores); 24 MiB is 128 rows there.
const LOGIT_BLOCK_BYTES: usize = 24 << 20;

/// The non-layer parts of a LLaMA model: embedding, final norm and LM head.
#[derive(Debug, Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    pub dtype: DType,
    pub device: Device,
    embed: Tensor,
    norm: Tensor,
    lm_head: Tensor,
}

impl Llama {
    /// Loads the embedding, final norm and LM head (tied to the embedding when the
    /// config says so or when the checkpoint has no `lm_head.weight`).
    pub fn load(
        src: &dyn TensorSource,
        cfg: &LlamaConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let embed = src.load(EMBED, dtype, device)?;
        ensure!(
            embed.dims() == [cfg.vocab_size, cfg.hidden_size],
            "{EMBED} has shape {:?}, config.json implies [{}, {}]",
            embed.dims(),
            cfg.vocab_size,
            cfg.hidden_size
        );
        let norm = src.load(FINAL_NORM, dtype, device)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else if src.has(LM_HEAD) {
            let w = src.load(LM_HEAD, dtype, device)?;
            ensure!(
                w.dims() == embed.dims(),
                "{LM_HEAD} has shape {:?}, expected {:?}",
                w.dims(),
                embed.dims()
            );
            w
        } else {
            bail!("checkpoint has no {LM_HEAD} and config.json does not tie it to the embedding");
        };
        Ok(Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            embed,
            norm,
            lm_head,
        })
    }

    /// Loads decoder layer `i`.
    pub fn layer(&self, src: &dyn TensorSource, i: usize) -> Result<DecoderLayer> {
        DecoderLayer::load(src, &self.cfg, i, self.dtype, &self.device)
            .with_context(|| format!("loading decoder layer {i}"))
    }

    pub fn positions(&self, seqlen: usize) -> Result<Positions> {
        Positions::new(&self.cfg, seqlen, self.dtype, &self.device)
    }

    /// Token ids → hidden states (1, T, hidden).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary ({}): tokenizer and model do not match",
                self.cfg.vocab_size
            );
        }
        let idx = Tensor::new(ids, &self.device)?;
        Ok(self.embed.index_select(&idx, 0)?.unsqueeze(0)?)
    }

    /// Final norm and LM head: hidden (b, t, hidden) → logits (b·t, vocab) in f32.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let (b, t, hid) = h.dims3()?;
        self.head(&self.final_norm(&h.reshape((b * t, hid))?)?)
    }

    /// The final RMSNorm of rows of hidden states (n, hidden).
    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            x,
            &self.norm,
            self.cfg.rms_norm_eps as f32,
        )?)
    }

    /// The LM head on normed rows (n, hidden) → logits (n, vocab) in f32.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(block::linear(x, &self.lm_head)?.to_dtype(DType::F32)?)
    }

    /// Next-token NLL at every position of one window but the last, from the final hidden
    /// states `h` (1, T, hidden): nll_t = logsumexp(z_t) − z_t[ids_{t+1}], z_t = head · rms(h_t).
    ///
    /// The head is applied to blocks of rows, so the (T, vocab) logits never exist at once: a
    /// window's full logits are T × vocab × 4 bytes (100 MB for 512 × 49,152), and allocating
    /// and faulting in two of those per window cost more than the log-softmax itself.
    pub fn next_token_nll(&self, h: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
        let rows = LOGIT_BLOCK_BYTES / (self.cfg.vocab_size * 4);
        self.next_token_nll_in_blocks(h, ids, rows)
    }

    /// [`Llama::next_token_nll`] with the LM head applied to `rows` positions at a time.
    pub fn next_token_nll_in_blocks(
        &self,
        h: &Tensor,
        ids: &[u32],
        rows: usize,
    ) -> Result<Vec<f32>> {
        let (b, t, hid) = h.dims3()?;
        ensure!(
            b == 1 && t == ids.len() && t >= 2,
            "next_token_nll: hidden states {:?} for {} ids",
            h.dims(),
            ids.len()
        );
        let x = self.final_norm(&h.reshape((t, hid))?.narrow(0, 0, t - 1)?)?;
        let rows = rows.max(1);
        let mut nll = Vec::with_capacity(t - 1);
        let mut start = 0;
        while start < t - 1 {
            let n = rows.min(t - 1 - start);
            let z = self.head(&x.narrow(0, start, n)?)?;
            nll.extend(super::head::window_nll(&z, &ids[start..=start + n])?);
            start += n;
        }
        Ok(nll)
    }

    /// −log p(targets_i) from the final hidden states `rows` (n, hidden) of the positions
    /// that predict them: nll_i = logsumexp(z_i) − z_i[targets_i], z_i = head · rms(row_i).
    /// Zero-shot scoring needs a continuation's few positions, not a whole window's.
    pub fn target_nll(&self, rows: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        let n = targets.len();
        ensure!(
            rows.dim(0)? == n,
            "target_nll: {} rows for {n} targets",
            rows.dim(0)?
        );
        let x = self.final_norm(rows)?;
        // window_nll reads targets from ids[1..]: ids = [any, targets...].
        let ids: Vec<u32> = std::iter::once(0).chain(targets.iter().copied()).collect();
        let block = (LOGIT_BLOCK_BYTES / (self.cfg.vocab_size * 4)).max(1);
        let mut nll = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let m = block.min(n - start);
            let z = self.head(&x.narrow(0, start, m)?)?;
            nll.extend(super::head::window_nll(&z, &ids[start..=start + m])?);
            start += m;
        }
        Ok(nll)
    }

    /// Whole forward for one sequence, loading each layer in turn: logits (T, vocab).
    pub fn forward(&self, src: &dyn TensorSource, ids: &[u32]) -> Result<Tensor> {
        let pos = self.positions(ids.len())?;
        let mut h = self.embed(ids)?;
        for i in 0..self.cfg.num_hidden_layers {
            h = self.layer(src, i)?.forward(&h, &pos)?;
        }
        self.logits(&h)
    }
}
