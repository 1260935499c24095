//! One LLaMA decoder layer, with explicit taps of what every linear sees.
//!
//! h   = x + o_proj(attn(rope(q_proj(n₁)), rope(k_proj(n₁)), v_proj(n₁))),  n₁ = rms₁(x)
//! out = h + down_proj(silu(gate_proj(n₂)) ⊙ up_proj(n₂)),                  n₂ = rms₂(h)
//!
//! The families' differences ([`super::config::Family`]) each enter at one line below: a
//! linear's bias is added after its product (Qwen2's q, k, v), q and k heads are RMS-normed
//! before RoPE (Qwen3), and the attention mask is a sliding window (Mistral, [`Positions`]).
//!
//! Instead of forward hooks (the research code's approach), [`DecoderLayer::forward_tapped`]
//! returns the input and output of each of the seven linears as [`Taps`]; pruners read them
//! directly. Weights keep their Hugging Face names ([`Linear::tensor_name`]) everywhere.

use super::config::LlamaConfig;
use super::rope::Rope;
use super::source::TensorSource;
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};

/// The seven prunable linears of a decoder layer, in the order the forward pass uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Linear {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Linear {
    pub const ALL: [Linear; 7] = [
        Linear::Q,
        Linear::K,
        Linear::V,
        Linear::O,
        Linear::Gate,
        Linear::Up,
        Linear::Down,
    ];

    /// The module path inside a layer, as in Hugging Face checkpoints.
    pub fn module(self) -> &'static str {
        match self {
            Linear::Q => "self_attn.q_proj",
            Linear::K => "self_attn.k_proj",
            Linear::V => "self_attn.v_proj",
            Linear::O => "self_attn.o_proj",
            Linear::Gate => "mlp.gate_proj",
            Linear::Up => "mlp.up_proj",
            Linear::Down => "mlp.down_proj",
        }
    }

    /// The first linear of the layer that reads the same input as this one: q, k and v read
    /// the normed hidden state, gate and up the normed post-attention state.
    pub fn input_source(self) -> Linear {
        match self {
            Linear::K | Linear::V => Linear::Q,
            Linear::Up => Linear::Gate,
            l => l,
        }
    }

    /// The checkpoint name of this linear's weight in layer `layer`.
    pub fn tensor_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.weight", self.module())
    }

    /// Whether this linear adds a bias after its product under `cfg`'s family.
    pub fn has_bias(self, cfg: &LlamaConfig) -> bool {
        match self {
            Linear::Q | Linear::K | Linear::V => cfg.qkv_bias(),
            Linear::O => cfg.o_bias(),
            _ => false,
        }
    }

    /// The checkpoint name of this linear's bias (where [`Linear::has_bias`]).
    pub fn bias_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.bias", self.module())
    }

    fn index(self) -> usize {
        self as usize
    }

    /// (out, in) of the weight for a given config.
    pub fn shape(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (hid, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let q = cfg.num_attention_heads * cfg.head_dim();
        let kv = cfg.num_kv_heads() * cfg.head_dim();
        match self {
            Linear::Q => (q, hid),
            Linear::K | Linear::V => (kv, hid),
            Linear::O => (hid, q),
            Linear::Gate | Linear::Up => (inter, hid),
            Linear::Down => (hid, inter),
        }
    }
}

/// Names of the two RMSNorm weights of a layer.
pub fn norm_names(layer: usize) -> [String; 2] {
    [
        format!("model.layers.{layer}.input_layernorm.weight"),
        format!("model.layers.{layer}.post_attention_layernorm.weight"),
    ]
}

/// Names of Qwen3's per-head q and k RMSNorm weights (each of shape (head_dim,)).
pub fn qk_norm_names(layer: usize) -> [String; 2] {
    [
        format!("model.layers.{layer}.self_attn.q_norm.weight"),
        format!("model.layers.{layer}.self_attn.k_norm.weight"),
    ]
}

/// Every tensor of layer `layer` that is not a prunable weight, with its shape: the two norms,
/// the biases and Qwen3's q/k norms, as `cfg`'s family has them. They are read, never pruned,
/// and written back unchanged.
pub fn other_tensors(cfg: &LlamaConfig, layer: usize) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = norm_names(layer)
        .into_iter()
        .map(|n| (n, cfg.hidden_size))
        .collect();
    for l in Linear::ALL {
        if l.has_bias(cfg) {
            v.push((l.bias_name(layer), l.shape(cfg).0));
        }
    }
    if cfg.qk_norm() {
        v.extend(
            qk_norm_names(layer)
                .into_iter()
                .map(|n| (n, cfg.head_dim())),
        );
    }
    v
}

/// Everything one forward call of a layer saw, flattened to (tokens, features).
///
/// q/k/v are taken before rotary embedding, and every output is the linear's product X Wᵀ
/// before its bias (if any): what the methods' statistics are defined on (a bias cancels in
/// COPAL's dY and does not enter Wanda's or SparseGPT's input statistics).
#[derive(Debug, Clone)]
pub struct Taps {
    pub attn_in: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o_in: Tensor,
    pub o: Tensor,
    pub mlp_in: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down_in: Tensor,
    pub down: Tensor,
}

impl Taps {
    /// The input rows X (tokens × in) that `l` saw.
    pub fn input(&self, l: Linear) -> &Tensor {
        match l {
            Linear::Q | Linear::K | Linear::V => &self.attn_in,
            Linear::O => &self.o_in,
            Linear::Gate | Linear::Up => &self.mlp_in,
            Linear::Down => &self.down_in,
        }
    }

    /// The output rows Y = X Wᵀ (tokens × out) that `l` produced.
    pub fn output(&self, l: Linear) -> &Tensor {
        match l {
            Linear::Q => &self.q,
            Linear::K => &self.k,
            Linear::V => &self.v,
            Linear::O => &self.o,
            Linear::Gate => &self.gate,
            Linear::Up => &self.up,
            Linear::Down => &self.down,
        }
    }
}

/// Position-dependent tensors shared by all layers for one sequence length.
#[derive(Debug, Clone)]
pub struct Positions {
    pub rope: Rope,
    /// Additive causal mask (seqlen, seqlen): 0 where query i sees key j, −∞ elsewhere.
    pub mask: Tensor,
    /// Mistral's sliding window ([`LlamaConfig::attention_window`]), `None` for full causal
    /// attention; the mask above already holds it.
    pub window: Option<usize>,
    /// Packed sequences, where each sequence of the batch has its own positions and mask
    /// ([`Packed`]); `None`: every sequence is one causal text from position 0.
    pub packed: Option<Packed>,
}

/// Several texts that share a prefix, packed into one sequence: the shared tokens once, then
/// each text's own tokens. Token a sees token b when b is shared or in a's own text, b comes
/// no later than a, and (with a window W) pos(a) − pos(b) < W; each text's own tokens continue
/// the shared prefix's positions. Every text's outputs are those of running it alone.
#[derive(Debug, Clone)]
pub struct Packed {
    /// Rotary tables gathered at each token's position, (batch, t, head_dim / 2).
    cos: Tensor,
    sin: Tensor,
    /// Additive masks (batch, t, t): 0 where a sees b, −∞ elsewhere.
    mask: Tensor,
}

/// One packed sequence's layout: each token's position and text (0 = shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackLayout {
    pub position: Vec<u32>,
    pub text: Vec<u32>,
}

impl Packed {
    /// The tables of `layouts` (one per sequence of the batch), padded to `t` tokens: a
    /// padding token sees only itself, and no real token sees it.
    pub fn new(
        cfg: &LlamaConfig,
        layouts: &[PackLayout],
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let top = layouts
            .iter()
            .flat_map(|l| l.position.iter().copied())
            .max()
            .unwrap_or(0) as usize;
        let rope = Rope::new(cfg, top + 1, DType::F32, device)?;
        let w = cfg.attention_window().unwrap_or(usize::MAX);
        let (mut ids, mut mask) = (Vec::new(), Vec::with_capacity(layouts.len() * t * t));
        for l in layouts {
            anyhow::ensure!(
                l.position.len() == l.text.len() && l.position.len() <= t,
                "internal: a packed layout of {} positions, {} texts, for {t} tokens",
                l.position.len(),
                l.text.len()
            );
            let n = l.position.len();
            ids.extend(l.position.iter().copied());
            ids.extend(std::iter::repeat_n(0, t - n));
            for a in 0..t {
                for b in 0..t {
                    let sees = if a >= n || b >= n {
                        a == b
                    } else {
                        let (pa, pb) = (l.position[a] as usize, l.position[b] as usize);
                        b <= a && (l.text[b] == 0 || l.text[b] == l.text[a]) && pa - pb.min(pa) < w
                    };
                    mask.push(if sees { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let ids = Tensor::from_vec(ids, (layouts.len() * t,), device)?;
        let half = rope.cos.dim(1)?;
        let gather = |table: &Tensor| -> Result<Tensor> {
            Ok(table
                .index_select(&ids, 0)?
                .reshape((layouts.len(), t, half))?
                .to_dtype(dtype)?)
        };
        Ok(Self {
            cos: gather(&rope.cos)?,
            sin: gather(&rope.sin)?,
            mask: Tensor::from_vec(mask, (layouts.len(), t, t), device)?,
        })
    }
}

impl Positions {
    pub fn new(cfg: &LlamaConfig, seqlen: usize, dtype: DType, device: &Device) -> Result<Self> {
        let window = cfg.attention_window().filter(|&w| w < seqlen);
        Ok(Self {
            rope: Rope::new(cfg, seqlen, dtype, device)?,
            mask: super::softmax::causal_mask(seqlen, window, device)?,
            window,
            packed: None,
        })
    }

    /// The positions of a batch of packed sequences of `t` tokens ([`Packed`]).
    pub fn packed(
        cfg: &LlamaConfig,
        layouts: &[PackLayout],
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut p = Self::new(cfg, 1, dtype, device)?;
        p.packed = Some(Packed::new(cfg, layouts, t, dtype, device)?);
        Ok(p)
    }
}

/// One decoder layer's weights, materialised in the compute dtype.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub index: usize,
    linears: [Tensor; 7],
    biases: [Option<Tensor>; 7],
    input_norm: Tensor,
    post_norm: Tensor,
    /// Qwen3's per-head RMSNorm weights of q and k.
    qk_norm: Option<(Tensor, Tensor)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
}

/// y = x Wᵀ for x (tokens, in) and W (out, in); the transposed view costs no copy.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

impl DecoderLayer {
    /// Loads layer `index` from `src`, checking every shape against `cfg`.
    pub fn load(
        src: &dyn TensorSource,
        cfg: &LlamaConfig,
        index: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let load_vector = |name: &str, n: usize| -> Result<Tensor> {
            let w = src.load(name, dtype, device)?;
            ensure!(
                w.dims() == [n],
                "{name} has shape {:?}, expected [{n}]",
                w.dims()
            );
            Ok(w)
        };
        let (mut linears, mut biases) = (Vec::with_capacity(7), Vec::with_capacity(7));
        for l in Linear::ALL {
            let name = l.tensor_name(index);
            let w = src.load(&name, dtype, device)?;
            let (o, i) = l.shape(cfg);
            ensure!(
                w.dims() == [o, i],
                "{name} has shape {:?}, config.json implies [{o}, {i}]",
                w.dims()
            );
            linears.push(w);
            biases.push(match l.has_bias(cfg) {
                true => Some(load_vector(&l.bias_name(index), o)?),
                false => None,
            });
        }
        fn seven<T>(_: T) -> anyhow::Error {
            anyhow::anyhow!("internal: seven linears expected")
        }
        let linears: [Tensor; 7] = linears.try_into().map_err(seven)?;
        let biases: [Option<Tensor>; 7] = biases.try_into().map_err(seven)?;
        let [n1, n2] = norm_names(index);
        let [qn, kn] = qk_norm_names(index);
        let qk_norm = match cfg.qk_norm() {
            true => Some((
                load_vector(&qn, cfg.head_dim())?,
                load_vector(&kn, cfg.head_dim())?,
            )),
            false => None,
        };
        Ok(Self {
            index,
            linears,
            biases,
            qk_norm,
            input_norm: load_vector(&n1, cfg.hidden_size)?,
            post_norm: load_vector(&n2, cfg.hidden_size)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_kv_heads(),
            head_dim: cfg.head_dim(),
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub fn weight(&self, l: Linear) -> &Tensor {
        &self.linears[l.index()]
    }

    /// y + b for a linear with a bias (rows of y broadcast), y itself otherwise.
    fn add_bias(&self, y: &Tensor, l: Linear) -> Result<Tensor> {
        Ok(match &self.biases[l.index()] {
            Some(b) => y.broadcast_add(b)?,
            None => y.clone(),
        })
    }

    /// Replaces a linear's weight (e.g. by its pruned version); the shape must not change.
    pub fn set_weight(&mut self, l: Linear, w: Tensor) -> Result<()> {
        let old = &self.linears[l.index()];
        ensure!(
            old.dims() == w.dims(),
            "{}: replacement weight has shape {:?}, expected {:?}",
            l.tensor_name(self.index),
            w.dims(),
            old.dims()
        );
        self.linears[l.index()] = w.to_dtype(old.dtype())?;
        Ok(())
    }

    /// Runs the layer on hidden states `x` (batch, seqlen, hidden).
    pub fn forward(&self, x: &Tensor, pos: &Positions) -> Result<Tensor> {
        Ok(self.forward_tapped(x, pos)?.0)
    }

    /// Runs the layer and returns its output together with every linear's input and output.
    pub fn forward_tapped(&self, x: &Tensor, pos: &Positions) -> Result<(Tensor, Taps)> {
        let (b, t, hidden) = x.dims3()?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let x2 = x.reshape((b * t, hidden))?;

        let attn_in = candle_nn::ops::rms_norm(&x2, &self.input_norm, self.eps)?;
        let q = linear(&attn_in, self.weight(Linear::Q))?;
        let k = linear(&attn_in, self.weight(Linear::K))?;
        let v = linear(&attn_in, self.weight(Linear::V))?;
        // (b·t, n·d) → (b, n, t, d), the bias added first (Qwen2), each head RMS-normed over
        // its d features when `norm` is given (Qwen3's q_norm / k_norm).
        let heads = |y: &Tensor, l: Linear, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let y = self.add_bias(y, l)?.reshape((b, t, n, d))?;
            let y = match norm {
                Some(w) => candle_nn::ops::rms_norm(&y.contiguous()?, w, self.eps)?,
                None => y,
            };
            Ok(y.transpose(1, 2)?.contiguous()?)
        };
        let (qn, kn) = (
            self.qk_norm.as_ref().map(|n| &n.0),
            self.qk_norm.as_ref().map(|n| &n.1),
        );
        let rope = |x: Tensor| -> Result<Tensor> {
            match &pos.packed {
                Some(p) => Ok(candle_nn::rotary_emb::rope(&x, &p.cos, &p.sin)?),
                None => pos.rope.apply(&x),
            }
        };
        let qh = rope(heads(&q, Linear::Q, h, qn)?)?;
        let kh = rope(heads(&k, Linear::K, kvh, kn)?)?;
        let vh = heads(&v, Linear::V, kvh, None)?;

        // softmax(q kᵀ / √d + mask) v, with the softmax in f32 as transformers does: on the
        // CPU in f32 block by block below the diagonal, elsewhere on the full square.
        let scale = 1.0 / (d as f64).sqrt();
        let o_in = match pos.packed {
            None => super::attention::causal(
                &qh,
                &kh,
                &vh,
                super::attention::Heads { b, t, h, kvh, d },
                scale as f32,
                pos.window,
            )?,
            Some(_) => None,
        };
        let o_in = match o_in {
            Some(o) => o.to_dtype(x.dtype())?,
            None => self.attention_full(&qh, &kh, &vh, pos, x.dtype())?,
        };
        let o = linear(&o_in, self.weight(Linear::O))?;
        let hmid = (x2 + self.add_bias(&o, Linear::O)?)?;

        let mlp_in = candle_nn::ops::rms_norm(&hmid, &self.post_norm, self.eps)?;
        let gate = linear(&mlp_in, self.weight(Linear::Gate))?;
        let up = linear(&mlp_in, self.weight(Linear::Up))?;
        let down_in = swiglu(&gate, &up)?;
        let down = linear(&down_in, self.weight(Linear::Down))?;
        let out = (hmid + &down)?.reshape((b, t, hidden))?;
        let taps = Taps {
            attn_in,
            q,
            k,
            v,
            o_in,
            o,
            mlp_in,
            gate,
            up,
            down_in,
            down,
        };
        Ok((out, taps))
    }

    /// softmax(q kᵀ / √d + mask) v on the full (t, t) square of scores, one window at a time:
    /// the path of a GPU, of packed sequences and of dtypes other than f32, returned as
    /// (b·t, h·d). q is (b, h, t, d), k and v (b, kvh, t, d).
    fn attention_full(
        &self,
        qh: &Tensor,
        kh: &Tensor,
        vh: &Tensor,
        pos: &Positions,
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, h, t, d) = qh.dims4()?;
        let kvh = self.kv_heads;
        let rep = h / kvh;
        let scale = 1.0 / (d as f64).sqrt();
        // Grouped-query attention without copying keys and values: query head j uses kv head
        // j / rep, so the rep query heads of a group are stacked as rows, (b, kvh, rep·t, d),
        // and multiplied by their group's keys once.
        let qg = qh.reshape((b, kvh, rep * t, d))?;
        let mask = match pos.packed {
            Some(_) => pos.mask.clone(),
            None => pos.mask.narrow(0, 0, t)?.narrow(1, 0, t)?,
        };
        // One window at a time: its scores are kvh · rep · t² floats (9 MiB on the test model
        // at 512 tokens) instead of the batch's, so they stay in the allocator's heap and in
        // cache; each window's products are the same GEMMs as in a batched call.
        let per_window = (0..b)
            .map(|w| -> Result<Tensor> {
                let scores = qg
                    .narrow(0, w, 1)?
                    .matmul(&kh.narrow(0, w, 1)?.t()?)?
                    .to_dtype(DType::F32)?
                    .reshape((1, kvh, rep, t, t))?;
                let probs = match &pos.packed {
                    Some(p) => super::softmax::masked_softmax(&scores, scale, &p.mask.get(w)?)?,
                    None => super::softmax::causal_softmax(&scores, scale, &mask, pos.window)?,
                }
                .to_dtype(dtype)?
                .reshape((1, kvh, rep * t, t))?;
                Ok(probs.matmul(&vh.narrow(0, w, 1)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let o_in = Tensor::cat(&per_window, 0)?
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b * t, h * d))?;
        Ok(o_in)
    }
}

/// silu(gate) ⊙ up: one vectorised pass on the CPU (candle's silu calls `expf` per element,
/// and the product is a second pass), candle's ops elsewhere.
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    use crate::device::with_f32_slice;
    use rayon::prelude::*;
    anyhow::ensure!(gate.dims() == up.dims(), "internal: gate and up differ");
    let (g, u) = (gate.contiguous()?, up.contiguous()?);
    let fused = with_f32_slice(&g, |ga| {
        with_f32_slice(&u, |ua| {
            let mut out = vec![0f32; ga.len()];
            const CHUNK: usize = 1 << 14;
            out.par_chunks_mut(CHUNK)
                .zip(ga.par_chunks(CHUNK).zip(ua.par_chunks(CHUNK)))
                .for_each(|(o, (g, u))| super::expsum::silu_mul(g, u, o));
            out
        })
    })
    .flatten();
    match fused {
        Some(out) => Ok(Tensor::from_vec(out, gate.shape(), gate.device())?),
        None => Ok((candle_nn::ops::silu(gate)? * up)?),
    }
}

/// Largest |x| over a tensor, as f32 (for tolerance checks and NaN guards).
pub fn max_abs(x: &Tensor) -> Result<f32> {
    Ok(x.abs()?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .max(D::Minus1)?
        .to_scalar::<f32>()?)
}
