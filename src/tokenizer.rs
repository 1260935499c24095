//! The checkpoint's `tokenizer.json`, with its BOS rule made explicit.
//!
//! The protocol (COPAL.md §5) tokenises each joined text once with the tokenizer's own
//! special-token rule: a LLaMA tokenizer puts one BOS at the very start, SmolLM's none. The
//! rule comes from `tokenizer.json`'s post-processor; when `tokenizer_config.json` says
//! `add_bos_token` explicitly and the post-processor disagrees, the config wins (as in
//! transformers' slow LLaMA tokenizer).

use anyhow::{Context as _, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    fix: BosFix,
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

impl Tokenizer {
    /// Opens `dir/tokenizer.json` (and `dir/tokenizer_config.json` if present).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: copal needs the checkpoint's fast tokenizer (save it with \
             transformers' tokenizer.save_pretrained, or use `copal import-gguf`)",
            path.display()
        );
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            anyhow::anyhow!("{} is not a valid tokenizer.json: {e}", path.display())
        })?;
        let tcfg: serde_json::Value =
            match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
                Ok(text) => serde_json::from_str(&text).with_context(|| {
                    format!("parsing {}", dir.join("tokenizer_config.json").display())
                })?,
                Err(_) => serde_json::Value::Null,
            };
        let bos = tcfg
            .get("bos_token")
            .and_then(token_string)
            .and_then(|t| inner.token_to_id(t));
        let mut tok = Self {
            inner,
            bos,
            fix: BosFix::Keep,
        };
        if let (Some(add), Some(bos)) = (tcfg.get("add_bos_token").and_then(|v| v.as_bool()), bos) {
            let has = tok.encode_raw("a")?.first() == Some(&bos);
            tok.fix = match (add, has) {
                (true, false) => BosFix::Prepend(bos),
                (false, true) => BosFix::Strip(bos),
                _ => BosFix::Keep,
            };
        }
        Ok(tok)
    }

    fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| anyhow::anyhow!("tokenising: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text`, with the checkpoint's special-token rule applied once.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_raw(text)?;
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

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
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
