//! Reading an upstream text file (plain or gzipped, bounded in size) and splitting it the way
//! the anchors' `datasets` loaders do: WikiText rows, PTB lines, JSON-lines documents. Used by
//! the corpus joins and by the hub's verification of a fetched file.

use anyhow::{Context as _, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Reads a file as UTF-8, gunzipping `*.gz`.
pub fn read_text(path: &Path) -> Result<String> {
    let limit = max_text_bytes();
    let (text, complete) = read_bytes(path, limit)?;
    anyhow::ensure!(
        complete,
        "{} holds more than {limit} bytes of text{}; copal reads at most that much of a file \
         (set COPAL_MAX_TEXT_BYTES to raise it, or use a smaller file)",
        path.display(),
        if is_gz(path) {
            " once decompressed"
        } else {
            ""
        }
    );
    Ok(text)
}

/// Most bytes of text read from one file (after decompression), unless `COPAL_MAX_TEXT_BYTES`
/// says otherwise: a 13 MB gzip can hold 3 GB, and a corpus is held in memory whole. 1 GiB is
/// above every split of the protocol's datasets (C4's train shard is about 0.8 GB).
pub fn max_text_bytes() -> u64 {
    // Checked at start (crate::env::check): a value that does not parse never gets here.
    std::env::var("COPAL_MAX_TEXT_BYTES")
        .ok()
        .and_then(|v| crate::env::parse_max_text_bytes(&v).ok())
        .unwrap_or(1 << 30)
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// At most `limit` bytes of a file (gunzipped), as UTF-8, and whether that is all of it. A
/// cut text ends at its last newline.
pub fn read_bytes(path: &Path, limit: u64) -> Result<(String, bool)> {
    let reader = open(path)?;
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| {
            format!(
                "{} {}",
                if is_gz(path) {
                    "decompressing"
                } else {
                    "reading"
                },
                path.display()
            )
        })?;
    let complete = bytes.len() as u64 <= limit;
    if !complete {
        let cut = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(cut);
    }
    let mut text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    // A UTF-8 byte-order mark (editors on Windows write one) is not text.
    if text.starts_with('\u{feff}') {
        text.drain(..3);
    }
    Ok((text, complete))
}

/// A file's bytes as a buffered stream, gunzipped when it ends in `.gz`.
fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    crate::fsutil::check_regular_file(path, "dataset file")?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(if is_gz(path) {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// The first `lines` non-blank lines of a file (gunzipped), read as a stream.
pub fn read_lines(path: &Path, lines: usize) -> Result<String> {
    let limit = max_text_bytes();
    let mut out = String::new();
    let mut n = 0;
    for line in open(path)?.take(limit).lines() {
        let mut line = line.with_context(|| format!("reading {}", path.display()))?;
        if out.is_empty() && line.starts_with('\u{feff}') {
            line.drain(..3);
        }
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(&line);
        out.push('\n');
        n += 1;
        if n == lines {
            break;
        }
    }
    Ok(out)
}

/// WikiText rows as Hugging Face `datasets` yields them from the raw file.
pub fn wikitext_rows(text: &str) -> Vec<&str> {
    text.split_inclusive('\n')
        .map(|l| if l.trim().is_empty() { "" } else { l })
        .collect()
}

/// PTB sentences: lines stripped, empty ones dropped.
pub fn ptb_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The `field` string of each JSON line (blank lines skipped).
pub fn jsonl_docs(text: &str, field: &str, path: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let t = v
            .get(field)
            .and_then(|t| t.as_str())
            .with_context(|| format!("{}:{}: no string field {field:?}", path.display(), i + 1))?;
        docs.push(t.to_string());
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wikitext_rows_match_hf() {
        let raw = " \n = Title = \n \n Some text .\n";
        assert_eq!(
            wikitext_rows(raw),
            vec!["", " = Title = \n", "", " Some text .\n"]
        );
        assert_eq!(
            wikitext_rows(raw).join("\n\n"),
            "\n\n = Title = \n\n\n\n\n Some text .\n"
        );
    }

    #[test]
    fn ptb_lines_are_stripped() {
        assert_eq!(ptb_lines(" a b \n c\n\n"), vec!["a b", "c"]);
    }
}
