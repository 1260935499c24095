//! Hugging Face checkpoints on disk: `config.json`, one or more memory-mapped safetensors
//! shards (with `model.safetensors.index.json` when sharded), and the tokenizer files.
//!
//! Tensors are read straight from the mapping when a layer needs them, so opening even a 65B
//! checkpoint costs only its headers. [`resolve::resolve`] turns `--model` (directory, alias from
//! `configs/models.json`, or hub id) into such a directory.

pub mod gguf;
pub mod resolve;
pub mod synth;
pub mod writer;

use crate::model::{LlamaConfig, TensorSource};
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// Files copied unchanged next to a pruned checkpoint (when present in the input).
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// One memory-mapped `.safetensors` file.
pub struct Shard {
    /// File name inside the checkpoint directory.
    pub file_name: String,
    pub path: PathBuf,
    mmap: memmap2::Mmap,
    data_start: usize,
    pub meta: Metadata,
}

impl Shard {
    /// Maps `path` and validates its header (offsets, sizes, dtypes).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_or(path, "download or convert it again")
    }

    /// As `open`, with `remedy` telling the user what to do if the file is corrupt.
    pub fn open_or(path: &Path, remedy: &str) -> Result<Self> {
        crate::fsutil::check_regular_file(path, "safetensors file")?;
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the file is opened read-only and copal never writes to its inputs; as with
        // every mmap, another process truncating the file meanwhile is undefined behaviour.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("memory-mapping {}", path.display()))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid safetensors file ({e}); it may be truncated or corrupt: \
                 {remedy}",
                path.display()
            )
        })?;
        Ok(Self {
            file_name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + n,
            meta,
        })
    }

    /// Tensor names in file (offset) order.
    pub fn names(&self) -> Vec<String> {
        self.meta.offset_keys()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.meta.info(name)?;
        let (s, e) = info.data_offsets;
        self.mmap.get(self.data_start + s..self.data_start + e)
    }

    /// Drops this tensor's pages from the process's mapping once a copy has been made, so
    /// that resident memory does not grow by one layer's weights per layer streamed (the
    /// pages stay in the page cache; reading the tensor again faults them back in).
    pub fn release(&self, name: &str) {
        if let Some(info) = self.meta.info(name) {
            let (s, e) = info.data_offsets;
            #[cfg(unix)]
            // SAFETY: the map is a read-only shared mapping of a file copal never writes;
            // MADV_DONTNEED only unmaps its pages, and any later read faults in the file's
            // unchanged bytes, so no slice handed out ever observes different data.
            unsafe {
                let _ = self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.data_start + s,
                    e - s,
                );
            }
            #[cfg(not(unix))]
            let _ = (s, e);
        }
    }

    /// The `__metadata__` map of the header.
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.meta.metadata().as_ref()
    }
}

/// A Hugging Face LLaMA checkpoint directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    /// `config.json` exactly as read, to be written back with additions only.
    pub config_json: serde_json::Value,
    pub shards: Vec<Shard>,
    route: HashMap<String, usize>,
}

/// Maps a safetensors dtype to candle's, for the dtypes a checkpoint's weights may have.
pub fn candle_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

impl Checkpoint {
    /// Opens a checkpoint directory: parses `config.json`, maps every shard and checks that
    /// the index and the shards agree.
    pub fn open(dir: &Path) -> Result<Self> {
        ensure!(
            dir.is_dir(),
            "{} is not a directory; ⟨model⟩ takes a checkpoint directory, an alias or a hub id",
            dir.display()
        );
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            bail!(
                "{} is missing: a Hugging Face checkpoint directory has a config.json",
                cfg_path.display()
            );
        }
        let text = crate::fsutil::read_small(&cfg_path, "config.json", crate::fsutil::CAP_CONFIG)?;
        let config_json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let config = LlamaConfig::from_json(&text)
            .with_context(|| format!("{} is not a usable LLaMA config", cfg_path.display()))?;

        let files = shard_files(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut route = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let shard = Shard::open(&dir.join(f))?;
            for name in shard.names() {
                // Two copies of a tensor: which one a loader reads is up to the loader, and a
                // pruned copy written into one of them may not be the one transformers loads.
                if let Some(j) = route.insert(name.clone(), i) {
                    let other: &Shard = &shards[j];
                    bail!(
                        "tensor {name} is in two shards of {}, {} and {}; the checkpoint is \
                         ambiguous: remove one copy or download it again",
                        dir.display(),
                        other.file_name,
                        shard.file_name
                    );
                }
            }
            shards.push(shard);
        }
        let ckpt = Self {
            dir: dir.to_path_buf(),
            config,
            config_json,
            shards,
            route,
        };
        ckpt.check_index()?;
        ckpt.check_shapes()?;
        Ok(ckpt)
    }

    /// Every tensor a LLaMA of this config has (embeddings, norms, linears, head) has the
    /// shape config.json implies: a zero-element or wrong-rank norm would otherwise be pruned
    /// and written, and fail only later inside the forward pass, naming neither tensor nor
    /// file.
    fn check_shapes(&self) -> Result<()> {
        // In name order, so that the first error is the same on every run.
        let mut names: Vec<(&String, usize)> = self.route.iter().map(|(n, &i)| (n, i)).collect();
        names.sort();
        for (name, i) in names {
            let shard = &self.shards[i];
            let Some(want) = expected_shape(name, &self.config) else {
                // The rotary frequencies some LLaMA-1 conversions stored are recomputed from
                // config.json (transformers drops them too). Anything else is a tensor this
                // architecture has no place for: a bias its config says is absent, a q_norm in
                // a model that is not Qwen3. Computing without it would run another model.
                ensure!(
                    name.ends_with(".rotary_emb.inv_freq"),
                    "tensor {name} in {} is not part of a {} model as config.json describes it; \
                     config.json and the weights disagree about the architecture (copal \
                     implements {})",
                    shard.path.display(),
                    self.config.model_type.as_deref().unwrap_or("?"),
                    crate::model::config::Family::supported()
                );
                continue;
            };
            let got = shard
                .info(name)
                .map(|t| t.shape.clone())
                .unwrap_or_default();
            ensure!(
                got == want,
                "tensor {name} in {} has shape {got:?}, but config.json implies {want:?}; the \
                 checkpoint and its config.json do not belong together",
                shard.path.display()
            );
        }
        Ok(())
    }

    /// Every name in the index must live in the shard the index says.
    fn check_index(&self) -> Result<()> {
        let index_path = self.dir.join(INDEX_FILE);
        if !index_path.exists() {
            return Ok(());
        }
        for (name, file) in read_weight_map(&index_path)? {
            let found = self.route.get(&name).map(|&i| &self.shards[i].file_name);
            ensure!(
                found == Some(&file),
                "{} maps {name} to {file}, but that shard does not contain it; the checkpoint \
                 is incomplete: download it again",
                index_path.display()
            );
        }
        Ok(())
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.route.keys()
    }

    /// Which shard holds `name`.
    pub fn shard_of(&self, name: &str) -> Option<usize> {
        self.route.get(name).copied()
    }

    /// Drops a tensor's mapped pages from resident memory (see [`Shard::release`]).
    pub fn release(&self, name: &str) {
        if let Some(i) = self.shard_of(name) {
            self.shards[i].release(name);
        }
    }

    /// Header info and raw bytes of a tensor.
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let shard = &self.shards[self
            .shard_of(name)
            .with_context(|| format!("tensor {name} is not in {}", self.dir.display()))?];
        let info = shard
            .info(name)
            .with_context(|| format!("tensor {name} missing from {}", shard.path.display()))?;
        let bytes = shard.bytes(name).with_context(|| {
            format!(
                "tensor {name} lies past the end of {}",
                shard.path.display()
            )
        })?;
        Ok((info, bytes))
    }

    /// The storage dtype of the prunable weights (that of layer 0's q_proj).
    pub fn weight_dtype(&self) -> Result<DType> {
        let name = crate::model::Linear::Q.tensor_name(0);
        let (info, _) = self.raw(&name)?;
        candle_dtype(info.dtype).with_context(|| unsupported(&name, info.dtype))
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// The files copied unchanged into a pruned copy ([`SIDE_FILES`] and the shard index) that
    /// this checkpoint has. Each must be a regular file inside the checkpoint (a symlink is
    /// followed only into the checkpoint's directory, or for a Hugging Face cache snapshot
    /// into its repository's blobs): an output folder never receives a file from elsewhere on
    /// the machine, such as a `merges.txt` linked to `/etc/passwd` or a key.
    pub fn side_files(&self) -> Result<Vec<(&'static str, PathBuf)>> {
        let roots = trusted_roots(&self.dir);
        let mut out = Vec::new();
        for f in SIDE_FILES.iter().chain(&[INDEX_FILE]) {
            let p = self.dir.join(f);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = p
                    .canonicalize()
                    .with_context(|| format!("{} is a symlink that leads nowhere", p.display()))?;
                ensure!(
                    roots.iter().any(|r| target.starts_with(r)),
                    "{} is a symlink to {}, outside the checkpoint; copal copies only the \
                     checkpoint's own files into a pruned model: replace the link by the file \
                     it should be",
                    p.display(),
                    target.display()
                );
            }
            ensure!(
                p.is_file(),
                "{} is not a regular file; copal copies only the checkpoint's own files",
                p.display()
            );
            out.push((*f, p));
        }
        Ok(out)
    }
}

/// The directories a checkpoint's files may resolve into (see [`Checkpoint::side_files`]).
fn trusted_roots(dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(c) = dir.canonicalize() {
        roots.push(c);
    }
    // …/models--OWNER--NAME/snapshots/REV: files are links into …/models--OWNER--NAME/blobs.
    let snapshots = dir.parent();
    if snapshots
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "snapshots")
    {
        if let Some(repo) = snapshots.and_then(|p| p.parent()) {
            if let Ok(blobs) = repo.join("blobs").canonicalize() {
                roots.push(blobs);
            }
        }
    }
    roots
}

fn unsupported(name: &str, dtype: Dtype) -> String {
    format!(
        "tensor {name} has dtype {dtype:?}; copal reads F32, F16 and BF16 weights \
         (for a quantised GGUF file use `copal import-gguf`)"
    )
}

/// Index of the first NaN or Inf in raw little-endian floats (exponent bits all ones).
pub fn first_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    use rayon::prelude::*;
    let (size, bad): (usize, fn(&[u8]) -> bool) = match dtype {
        Dtype::F32 => (4, |c| {
            (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) >> 23) & 0xFF == 0xFF
        }),
        Dtype::BF16 => (2, |c| {
            (u16::from_le_bytes([c[0], c[1]]) >> 7) & 0xFF == 0xFF
        }),
        Dtype::F16 => (2, |c| {
            (u16::from_le_bytes([c[0], c[1]]) >> 10) & 0x1F == 0x1F
        }),
        _ => return None,
    };
    bytes
        .par_chunks(size * 65536)
        .enumerate()
        .find_map_first(|(b, chunk)| {
            chunk
                .chunks_exact(size)
                .position(bad)
                .map(|i| b * 65536 + i)
        })
}

impl TensorSource for Checkpoint {
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (info, bytes) = self.raw(name)?;
        let src = candle_dtype(info.dtype).with_context(|| unsupported(name, info.dtype))?;
        if let Some(i) = first_non_finite(info.dtype, bytes) {
            bail!(
                "tensor {name} in {} holds NaN or Inf (element {i}); the checkpoint is corrupt",
                self.dir.display()
            );
        }
        let t = Tensor::from_raw_buffer(bytes, src, &info.shape, &Device::Cpu)
            .with_context(|| format!("reading {name} from {}", self.dir.display()))?;
        // `from_raw_buffer` copied the bytes: the mapped pages are no longer needed.
        self.release(name);
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    fn has(&self, name: &str) -> bool {
        self.route.contains_key(name)
    }
}

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
        for l in crate::model::Linear::ALL {
            let name = l.tensor_name(layer);
            let (info, bytes) = ckpt.raw(&name)?;
            let (z, n) = count_zeros(info.dtype, bytes)
                .ok_or_else(|| anyhow::anyhow!("{name}: dtype {:?} not countable", info.dtype))?;
            out.push((name, z, n));
        }
    }
    Ok(out)
}

/// The shard file names of a checkpoint, from its index or the single-file convention.
fn shard_files(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let map = read_weight_map(&index)?;
        let mut files: Vec<String> = map.into_values().collect();
        files.sort();
        files.dedup();
        for f in &files {
            ensure!(
                !f.contains('/') && !f.contains('\\') && f != "..",
                "{} names shard {f:?}, which is not a plain file name",
                index.display()
            );
            ensure!(
                dir.join(f).is_file(),
                "{} names shard {f}, which is missing from {}: download the checkpoint again",
                index.display(),
                dir.display()
            );
        }
        ensure!(!files.is_empty(), "{} lists no shards", index.display());
        return Ok(files);
    }
    if dir.join(SINGLE_FILE).is_file() {
        return Ok(vec![SINGLE_FILE.to_string()]);
    }
    let has_bin = ["pytorch_model.bin", "pytorch_model.bin.index.json"]
        .iter()
        .any(|f| dir.join(f).exists());
    if has_bin {
        bail!(
            "{} holds PyTorch .bin weights only; copal reads safetensors: convert with \
             transformers (`model.save_pretrained(dir, safe_serialization=True)`)",
            dir.display()
        );
    }
    bail!(
        "no {SINGLE_FILE} or {INDEX_FILE} in {}: not a safetensors checkpoint",
        dir.display()
    )
}

/// `weight_map` of a safetensors index: tensor name → shard file name.
pub fn read_weight_map(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = crate::fsutil::read_small(path, "the shard index", crate::fsutil::CAP_CONFIG)?;
    let index: Index =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(index.weight_map)
}

/// The shape a Hugging Face LLaMA tensor must have under `cfg`.
pub(crate) fn expected_shape(hf: &str, cfg: &crate::model::LlamaConfig) -> Option<Vec<usize>> {
    use crate::model::{Linear, EMBED, FINAL_NORM, LM_HEAD};
    if hf == EMBED || hf == LM_HEAD {
        return Some(vec![cfg.vocab_size, cfg.hidden_size]);
    }
    if hf == FINAL_NORM {
        return Some(vec![cfg.hidden_size]);
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, _) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= cfg.num_hidden_layers {
        return None;
    }
    if let Some((_, n)) = crate::model::block::other_tensors(cfg, layer)
        .into_iter()
        .find(|(name, _)| name == hf)
    {
        return Some(vec![n]);
    }
    Linear::ALL
        .iter()
        .find(|l| l.tensor_name(layer) == hf)
        .map(|l| {
            let (o, i) = l.shape(cfg);
            vec![o, i]
        })
}

/// Every tensor a LLaMA checkpoint needs (the LM head only when untied).
pub(crate) fn required_names(cfg: &crate::model::LlamaConfig) -> Vec<String> {
    use crate::model::{block::other_tensors, Linear, EMBED, FINAL_NORM, LM_HEAD};
    let mut v = vec![EMBED.to_string(), FINAL_NORM.to_string()];
    if !cfg.tie_word_embeddings {
        v.push(LM_HEAD.to_string());
    }
    for l in 0..cfg.num_hidden_layers {
        v.extend(Linear::ALL.iter().map(|lin| lin.tensor_name(l)));
        v.extend(other_tensors(cfg, l).into_iter().map(|(n, _)| n));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releasing a tensor's pages must not change what is read afterwards, from the slice
    /// handed out before or from a new load.
    #[test]
    fn released_pages_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let v: Vec<f32> = (0..300_000).map(|i| (i as f32).sin()).collect();
        let w: Vec<f32> = (0..5_000).map(|i| i as f32).collect();
        let a = Tensor::from_vec(v.clone(), (600, 500), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(w.clone(), (5_000,), &Device::Cpu).unwrap();
        safetensors::serialize_to_file([("a", &a), ("b", &b)], None, &path).unwrap();
        let shard = Shard::open(&path).unwrap();
        let before = shard.bytes("a").unwrap().to_vec();
        let slice = shard.bytes("a").unwrap();
        shard.release("a");
        shard.release("b");
        assert_eq!(slice, &before[..]);
        assert_eq!(shard.bytes("a").unwrap(), &before[..]);
        let got: Vec<f32> = shard
            .bytes("b")
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, w);
    }
}
