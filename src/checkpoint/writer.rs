//! Streaming safetensors writers.
//!
//! [`ShardWriter`] lays the whole file out before any data exists (header first, every
//! tensor's offsets fixed), then accepts tensors in any order, so pruned layers can be written
//! as soon as they are finished and nothing but the current layer stays in memory.
//! [`CheckpointWriter`] mirrors an input checkpoint: same shard files, same tensor order and
//! dtypes, untouched tensors copied byte for byte, `__metadata__` with `format: pt` (older
//! transformers versions refuse files without it), the index and tokenizer files alongside.

use super::Checkpoint;
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Tensor};
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One tensor's place in a file being written.
#[derive(Debug, Clone)]
struct Slot {
    dtype: Dtype,
    shape: Vec<usize>,
    start: u64,
    len: u64,
}

/// The digests a writer fills in at the end: the header to rewrite, the metadata key of the
/// digest block, and each tensor's SHA-256 so far.
type Digests = (
    serde_json::Map<String, serde_json::Value>,
    String,
    BTreeMap<String, String>,
);

/// A safetensors file whose layout is fixed at creation and whose tensors arrive in any order.
pub struct ShardWriter {
    path: PathBuf,
    file: File,
    data_start: u64,
    slots: HashMap<String, Slot>,
    written: HashSet<String>,
    /// With [`ShardWriter::create_with_digests`]: the header (rewritten at the end with the
    /// digests filled in), the metadata key that holds them, and each tensor's SHA-256.
    digests: Option<Digests>,
}

/// What a digest block holds: SHA-256 of the other `__metadata__` entries and of each tensor's
/// bytes, as `{"metadata": HEX, "tensors": {NAME: HEX, …}}`.
pub fn digest_block(metadata_sha: &str, tensors: &BTreeMap<String, String>) -> String {
    serde_json::json!({"metadata": metadata_sha, "tensors": tensors}).to_string()
}

/// SHA-256 of a file's `__metadata__` entries other than `skip`, in key order
/// (`key\0value\0`…).
pub fn metadata_sha256<'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    skip: &str,
) -> String {
    let mut sorted: Vec<(&String, &String)> =
        entries.into_iter().filter(|(k, _)| *k != skip).collect();
    sorted.sort();
    crate::fsutil::sha256_hex(
        sorted
            .into_iter()
            .flat_map(|(k, v)| [k.as_bytes(), &[0], v.as_bytes(), &[0]]),
    )
}

fn dtype_size(d: Dtype) -> Result<usize> {
    match d {
        Dtype::F32 | Dtype::I32 | Dtype::U32 => Ok(4),
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => Ok(2),
        Dtype::U8 | Dtype::I8 | Dtype::BOOL => Ok(1),
        Dtype::F64 | Dtype::I64 | Dtype::U64 => Ok(8),
        other => bail!("writing dtype {other:?} is not supported"),
    }
}

impl ShardWriter {
    /// Creates `path` with a header for `tensors` (in file order) and `metadata`.
    pub fn create(
        path: &Path,
        tensors: &[(String, Dtype, Vec<usize>)],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        Self::create_inner(path, tensors, metadata, None)
    }

    /// Like [`create`](Self::create), and records in metadata entry `key` the SHA-256 of the
    /// other metadata and of every tensor ([`digest_block`]): the header holds a placeholder of
    /// the same length, filled in by [`finish`](Self::finish).
    pub fn create_with_digests(
        path: &Path,
        tensors: &[(String, Dtype, Vec<usize>)],
        metadata: &BTreeMap<String, String>,
        key: &str,
    ) -> Result<Self> {
        Self::create_inner(path, tensors, metadata, Some(key))
    }

    fn create_inner(
        path: &Path,
        tensors: &[(String, Dtype, Vec<usize>)],
        metadata: &BTreeMap<String, String>,
        digest_key: Option<&str>,
    ) -> Result<Self> {
        let mut metadata = metadata.clone();
        let zeros = "0".repeat(64);
        if let Some(k) = digest_key {
            let placeholder: BTreeMap<String, String> = tensors
                .iter()
                .map(|(n, ..)| (n.clone(), zeros.clone()))
                .collect();
            metadata.insert(k.to_string(), digest_block(&zeros, &placeholder));
        }
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
        }
        let mut slots = HashMap::new();
        let mut offset = 0u64;
        for (name, dtype, shape) in tensors {
            let len = (shape.iter().product::<usize>() * dtype_size(*dtype)?) as u64;
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": dtype,
                    "shape": shape,
                    "data_offsets": [offset, offset + len],
                }),
            );
            slots.insert(
                name.clone(),
                Slot {
                    dtype: *dtype,
                    shape: shape.clone(),
                    start: offset,
                    len,
                },
            );
            offset += len;
        }
        let mut json = serde_json::to_vec(&header)?;
        // The data section starts 8-byte aligned, as the reference writer pads it.
        while (json.len() + 8) % 8 != 0 {
            json.push(b' ');
        }
        let data_start = 8 + json.len() as u64;
        let mut file =
            File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&(json.len() as u64).to_le_bytes())?;
        file.write_all(&json)?;
        file.set_len(data_start + offset).with_context(|| {
            format!(
                "reserving {} bytes for {} (is there enough free disk space?)",
                data_start + offset,
                path.display()
            )
        })?;
        let digests = digest_key.map(|k| (header, k.to_string(), BTreeMap::new()));
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            slots,
            written: HashSet::new(),
            digests,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    /// The dtype and shape the file declares for `name`.
    pub fn declared(&self, name: &str) -> Option<(Dtype, &[usize])> {
        self.slots.get(name).map(|s| (s.dtype, s.shape.as_slice()))
    }

    /// Writes the raw bytes of `name`; their length must match the declared dtype and shape.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let slot = self
            .slots
            .get(name)
            .with_context(|| format!("{name} is not declared in {}", self.path.display()))?;
        ensure!(
            bytes.len() as u64 == slot.len,
            "{name}: {} bytes given, {} declared in {}",
            bytes.len(),
            slot.len,
            self.path.display()
        );
        self.file
            .seek(SeekFrom::Start(self.data_start + slot.start))?;
        self.file.write_all(bytes).with_context(|| {
            format!(
                "writing {name} to {} (is there enough free disk space?)",
                self.path.display()
            )
        })?;
        self.written.insert(name.to_string());
        if let Some((_, _, d)) = &mut self.digests {
            d.insert(name.to_string(), crate::fsutil::sha256_hex([bytes]));
        }
        crate::fsutil::fault_point();
        Ok(())
    }

    /// Writes a tensor, converting it to the declared dtype.
    pub fn write_tensor(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let (dtype, shape) = self
            .declared(name)
            .with_context(|| format!("{name} is not declared in {}", self.path.display()))?;
        ensure!(
            t.dims() == shape,
            "{name}: tensor has shape {:?}, file declares {shape:?}",
            t.dims()
        );
        let bytes = tensor_bytes(t, dtype)?;
        self.write_bytes(name, &bytes)
    }

    /// Names declared but not yet written.
    pub fn missing(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .slots
            .keys()
            .filter(|k| !self.written.contains(*k))
            .cloned()
            .collect();
        m.sort();
        m
    }

    /// Checks that every tensor was written, fills in the digests if asked for, and flushes
    /// the file to disk.
    pub fn finish(mut self) -> Result<()> {
        let missing = self.missing();
        ensure!(
            missing.is_empty(),
            "internal: {} tensors never written to {} (first: {})",
            missing.len(),
            self.path.display(),
            missing[0]
        );
        if let Some((mut header, key, tensors)) = self.digests.take() {
            let md = header
                .get_mut("__metadata__")
                .and_then(|m| m.as_object_mut())
                .context("internal: a digest block needs the metadata")?;
            let entries: BTreeMap<String, String> = md
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            let block = digest_block(&metadata_sha256(&entries, &key), &tensors);
            md.insert(key, block.into());
            let mut json = serde_json::to_vec(&header)?;
            while (json.len() + 8) % 8 != 0 {
                json.push(b' ');
            }
            ensure!(
                8 + json.len() as u64 == self.data_start,
                "internal: the digest block changed the header's length"
            );
            self.file.seek(SeekFrom::Start(8))?;
            self.file.write_all(&json)?;
        }
        crate::fsutil::fault_point();
        self.file
            .sync_all()
            .with_context(|| format!("flushing {} to disk", self.path.display()))?;
        crate::fsutil::fault_point();
        Ok(())
    }
}

/// A tensor's little-endian bytes in safetensors dtype `dtype`.
pub fn tensor_bytes(t: &Tensor, dtype: Dtype) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match dtype {
        Dtype::F32 => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        Dtype::BF16 => flat
            .to_dtype(DType::BF16)?
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        Dtype::F16 => flat
            .to_dtype(DType::F16)?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        Dtype::U8 => flat.to_dtype(DType::U8)?.to_vec1::<u8>()?,
        other => bail!("writing tensors as {other:?} is not supported"),
    })
}

/// Writes a pruned copy of a checkpoint: the same shards, tensor order and dtypes as the input.
pub struct CheckpointWriter {
    dir: PathBuf,
    shards: Vec<ShardWriter>,
}

impl CheckpointWriter {
    /// Lays out `dir` (which must exist and be empty) after `input`.
    pub fn create(
        input: &Checkpoint,
        dir: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut meta = metadata.clone();
        meta.insert("format".into(), "pt".into());
        let mut shards = Vec::with_capacity(input.shards.len());
        for shard in &input.shards {
            let tensors: Vec<(String, Dtype, Vec<usize>)> = shard
                .names()
                .into_iter()
                .map(|n| {
                    let info = shard.info(&n).expect("name from the same header");
                    (n, info.dtype, info.shape.clone())
                })
                .collect();
            shards.push(ShardWriter::create(
                &dir.join(&shard.file_name),
                &tensors,
                &meta,
            )?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
        })
    }

    /// Writes a (pruned) tensor in the input's dtype for that name.
    pub fn put(&mut self, name: &str, t: &Tensor) -> Result<()> {
        match self.shards.iter_mut().find(|s| s.contains(name)) {
            Some(s) => s.write_tensor(name, t),
            None => bail!("{name} is not a tensor of the input checkpoint"),
        }
    }

    /// Copies every tensor not written yet from `input`, writes `config_json`, the index and
    /// the tokenizer files, and flushes everything to disk.
    pub fn finish(self, input: &Checkpoint, config_json: &serde_json::Value) -> Result<()> {
        for mut shard in self.shards {
            for name in shard.missing() {
                let (_, bytes) = input.raw(&name)?;
                shard.write_bytes(&name, bytes)?;
                input.release(&name);
            }
            shard.finish()?;
        }
        write_json(&self.dir.join("config.json"), config_json)?;
        for (f, src) in input.side_files()? {
            std::fs::copy(&src, self.dir.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
        }
        crate::fsutil::sync_dir(&self.dir)
    }
}

/// Writes pretty JSON and flushes it to disk.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(&mut f, value)?;
    f.write_all(b"\n")?;
    f.sync_all()
        .with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}
