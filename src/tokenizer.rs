//! The checkpoint's `tokenizer.json`, with its BOS rule made explicit, loaded and used under
//! guards: the file is untrusted.
//!
//! The protocol (COPAL.md §5) tokenises each joined text once with the tokenizer's own
//! special-token rule: a LLaMA tokenizer puts one BOS at the very start, SmolLM's none. The
//! rule comes from `tokenizer.json`'s post-processor; when `tokenizer_config.json` says
//! `add_bos_token` explicitly and the post-processor disagrees, the config wins (as in
//! transformers' slow LLaMA tokenizer). Truncation and padding blocks of the file are switched
//! off, as transformers does for a plain `tokenizer(text)` call: a corpus is one long text.
//!
//! Memory: the `tokenizers` crate keeps about 130 bytes per input byte while encoding (token
//! strings, offsets, masks). A text above [`CHUNK_BYTES`] is therefore encoded in segments
//! that overlap by [`OVERLAP_BYTES`], and stitched where both segments put a token boundary at
//! the same place far from either segment's ends, so only token ids are kept; the result is
//! the same as encoding the text whole (tested on the real datasets). A panic inside the
//! tokenizer (a hostile normaliser or template) becomes an error naming the file.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

/// Texts longer than this are encoded in stitched segments.
pub const CHUNK_BYTES: usize = 1 << 20;
/// How far a seam is from either end of the segments it joins.
pub const OVERLAP_BYTES: usize = 8 << 10;

/// Token ids and their byte ranges in the text.
type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Whether a zero-shot request starts with the BOS token: `auto` as the tokenizer itself does
/// (its post-processor, or `add_bos_token` in tokenizer_config.json: what
/// lm-evaluation-harness 0.4 does by default), or always, or never (Wanda's evaluation).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Bos {
    #[default]
    Auto,
    Yes,
    No,
}
crate::display_as_value!(Bos);

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: Option<u32>,
    fix: BosFix,
    /// Special tokens the post-processor puts before and after a text.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    chunk_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BosFix {
    Keep,
    Prepend(u32),
    Strip(u32),
}

fn token_string(v: &serde_json::Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
}

fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::guard::no_panic(what, "the tokenizer", f)
}

/// The value of a base64 digit (standard alphabet).
fn b64(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// A SentencePiece `Precompiled` normaliser's charsmap starts with the byte size of its trie
/// (u32, little-endian), which the tokenizers crate reserves (× 2 for its usize entries)
/// before reading it: a garbage size there is a multi-GiB allocation that aborts the process
/// under an address-space limit, beyond any panic guard. Checked here against the bytes the
/// charsmap really has.
fn check_precompiled(v: &serde_json::Value) -> Result<()> {
    match v {
        serde_json::Value::Object(o) => {
            if o.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                let map = o
                    .get("precompiled_charsmap")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .as_bytes();
                let digits: Vec<u32> = map.iter().take(8).filter_map(|&c| b64(c)).collect();
                let decoded = map.iter().filter(|&&c| c != b'=').count() * 3 / 4;
                anyhow::ensure!(
                    digits.len() == 8,
                    "its Precompiled normaliser has no readable charsmap"
                );
                let bits = digits.iter().fold(0u64, |a, &d| (a << 6) | d as u64);
                // 8 digits = 6 bytes; the first four are the size, little-endian.
                let b = (bits >> 16).to_be_bytes();
                let trie = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
                anyhow::ensure!(
                    trie <= decoded.saturating_sub(4),
                    "its Precompiled normaliser's charsmap says its trie has {trie} bytes, but the \
                     charsmap holds {decoded}: it is corrupt"
                );
            }
            o.values().try_for_each(check_precompiled)
        }
        serde_json::Value::Array(a) => a.iter().try_for_each(check_precompiled),
        _ => Ok(()),
    }
}

impl Tokenizer {
    /// Opens `dir/tokenizer.json` (and `dir/tokenizer_config.json` if present), and probes it.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        anyhow::ensure!(
            path.exists(),
            "{} is missing: copal needs the checkpoint's fast tokenizer (save it with \
             transformers' tokenizer.save_pretrained, or use `copal import-gguf`)",
            path.display()
        );
        let text =
            crate::fsutil::read_small(&path, "tokenizer.json", crate::fsutil::CAP_TOKENIZER)?;
        let broken = |e: anyhow::Error| {
            e.context(format!(
                "{} is not a usable tokenizer: get the checkpoint's tokenizer.json again",
                path.display()
            ))
        };
        // Parsed a second time only when there is a charsmap to check.
        if text.contains("\"Precompiled\"") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                check_precompiled(&v).map_err(broken)?;
            }
        }
        let mut inner = guarded("loading", || {
            text.parse::<tokenizers::Tokenizer>()
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .map_err(broken)?;
        // A corpus is one text: never cut or pad it.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        inner.with_padding(None);
        let tcfg_path = dir.join("tokenizer_config.json");
        let tcfg: serde_json::Value = if tcfg_path.exists() {
            let text = crate::fsutil::read_small(
                &tcfg_path,
                "tokenizer_config.json",
                crate::fsutil::CAP_CONFIG,
            )?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", tcfg_path.display()))?
        } else {
            serde_json::Value::Null
        };
        let bos = tcfg
            .get("bos_token")
            .and_then(token_string)
            .and_then(|t| inner.token_to_id(t));
        let mut tok = Self {
            inner,
            path: path.clone(),
            bos,
            fix: BosFix::Keep,
            prefix: Vec::new(),
            suffix: Vec::new(),
            chunk_bytes: CHUNK_BYTES,
        };
        // The probe: a plain text through every stage (normaliser, pre-tokeniser, model,
        // post-processor), and the special tokens the post-processor adds around a text. A
        // normaliser that blows text up (a space replaced by thousands of characters) would
        // take a corpus to gigabytes: refused.
        let probe = "The quick brown fox, 1234 times.\n  Done.";
        let n = tok.encode_raw(probe, false).map_err(broken)?.len();
        if n > 8 * probe.len() {
            return Err(broken(anyhow::anyhow!(
                "it turns a {}-byte probe into {n} tokens (its normaliser expands text)",
                probe.len()
            )));
        }
        let with = tok.encode_raw("a", true).map_err(broken)?;
        let without = tok.encode_raw("a", false).map_err(broken)?;
        if let Some(at) = (0..with.len()).find(|&i| with[i..].starts_with(&without)) {
            tok.prefix = with[..at].to_vec();
            tok.suffix = with[at + without.len()..].to_vec();
        }
        if let (Some(add), Some(bos)) = (tcfg.get("add_bos_token").and_then(|v| v.as_bool()), bos) {
            let has = with.first() == Some(&bos);
            tok.fix = match (add, has) {
                (true, false) => BosFix::Prepend(bos),
                (false, true) => BosFix::Strip(bos),
                _ => BosFix::Keep,
            };
        }
        Ok(tok)
    }

    /// Segments longer than this are stitched (tests use small ones to make many seams).
    pub fn with_chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes = n.max(4 * OVERLAP_BYTES);
        self
    }

    fn encode_raw(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        guarded("tokenising", || {
            let enc = self
                .inner
                .encode_fast(text, special)
                .map_err(|e| anyhow::anyhow!("tokenising: {e}"))?;
            Ok(enc.get_ids().to_vec())
        })
        .with_context(|| format!("{}", self.path.display()))
    }

    /// Token ids and byte offsets (into `text`) of a text without special tokens.
    fn encode_offsets(&self, text: &str) -> Result<IdsAndOffsets> {
        guarded("tokenising", || {
            let enc = self
                .inner
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("tokenising: {e}"))?;
            Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
        })
        .with_context(|| format!("{}", self.path.display()))
    }

    /// Token ids of `text`, with the checkpoint's special-token rule applied once.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = if text.len() <= self.chunk_bytes {
            self.encode_raw(text, true)?
        } else {
            let mut ids = self.prefix.clone();
            ids.extend(self.encode_stitched(text)?);
            ids.extend(&self.suffix);
            ids
        };
        match self.fix {
            BosFix::Keep => {}
            BosFix::Prepend(b) => ids.insert(0, b),
            BosFix::Strip(b) => {
                if ids.first() == Some(&b) {
                    ids.remove(0);
                }
            }
        }
        Ok(ids)
    }

    /// The BOS token: tokenizer_config.json's `bos_token`, else the first special token the
    /// post-processor puts before a text.
    pub fn bos(&self) -> Option<u32> {
        self.bos.or_else(|| self.prefix.first().copied())
    }

    /// [`Tokenizer::encode`] with the BOS rule `bos`: `auto` is `encode`'s; `yes` and `no`
    /// put one BOS first or none, the rest unchanged.
    pub fn encode_with(&self, text: &str, bos: Bos) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        match bos {
            Bos::Auto => {}
            Bos::Yes => {
                let b = self.bos().with_context(|| {
                    format!(
                        "{} names no BOS token (tokenizer_config.json's bos_token): a BOS cannot \
                         be prepended; use the tokenizer's own rule (auto) or none",
                        self.path.display()
                    )
                })?;
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
            Bos::No => {
                if let (Some(b), Some(&f)) = (self.bos(), ids.first()) {
                    if f == b {
                        ids.remove(0);
                    }
                }
            }
        }
        Ok(ids)
    }

    /// Encodes a long text segment by segment. Each segment reaches [`OVERLAP_BYTES`] back
    /// before the seam it continues from, so the tokens around the seam are the ones the
    /// whole text has (a tokenizer's context is local: its pre-tokens, and normalisers such
    /// as a prepended "▁" act at the segment's start only). A seam is taken only where the
    /// segment before has a clean token boundary far from its end, and the segment after
    /// starts a token at the same byte.
    fn encode_stitched(&self, text: &str) -> Result<Vec<u32>> {
        let floor = |mut i: usize| {
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let mut out = Vec::with_capacity(text.len() / 3);
        let mut pos = 0usize;
        loop {
            let start = if pos == 0 {
                0
            } else {
                floor(pos - OVERLAP_BYTES.min(pos))
            };
            let end = floor((pos + self.chunk_bytes).min(text.len()));
            let (ids, offsets) = self.encode_offsets(&text[start..end])?;
            let abs = |k: usize| (start + offsets[k].0, start + offsets[k].1);
            let first = (0..ids.len()).find(|&k| abs(k).0 >= pos && abs(k).1 > abs(k).0);
            if pos > 0 && first.map(|k| abs(k).0) != Some(pos) {
                bail!(
                    "{}: no token starts at byte {pos} of the text when it is encoded from \
                     byte {start}; this tokenizer's context is not local",
                    self.path.display()
                );
            }
            let first = first.unwrap_or(ids.len());
            if end == text.len() {
                out.extend(&ids[first..]);
                return Ok(out);
            }
            // The next seam: a token start in the segment's last stretch but one overlap
            // before its end, that follows its predecessor without a gap or an overlap.
            let limit = end - OVERLAP_BYTES;
            let seam = (first + 1..ids.len()).rev().find(|&k| {
                let (s, e) = abs(k);
                s <= limit && s > pos && e > s && abs(k - 1).1 == s && text.is_char_boundary(s)
            });
            let Some(k) = seam else {
                bail!(
                    "{}: no token boundary in bytes {pos}..{limit}; cannot encode this text in \
                     segments",
                    self.path.display()
                );
            };
            out.extend(&ids[first..k]);
            pos = abs(k).0;
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        guarded("decoding", || {
            self.inner
                .decode(ids, true)
                .map_err(|e| anyhow::anyhow!("decoding: {e}"))
        })
    }

    /// Whether `encode` starts every text with BOS.
    pub fn adds_bos(&self) -> Result<bool> {
        Ok(self.bos.is_some() && self.encode("a")?.first() == self.bos.as_ref())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
