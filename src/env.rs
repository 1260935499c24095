//! The environment variables copal reads, checked once at start: a value copal cannot use is
//! a usage error naming the variable (exit 2), never silently replaced by the default.
//!
//! | variable | what |
//! |---|---|
//! | `COPAL_MAX_TEXT_BYTES` | most bytes of text read from one file (after decompression) |
//! | `COPAL_IGNORE_CONFIG_KEYS` | config.json keys declared harmless (model::config) |
//! | `COPAL_GENERIC_KERNELS` | `0`/`1`: the GPU's generic kernels on the CPU (device) |
//! | `HF_HUB_OFFLINE` | `0`/`1` (or true/false, yes/no, on/off): the hub cache only |
//! | `HF_ENDPOINT` | the hub's URL, http(s) |
//! | `COPAL_PROGRESS_INTERVAL` | seconds between progress lines without a terminal (30) |
//!
//! `COPAL_HOME`, `COPAL_DATA_DIR`, `HF_HOME`, `HF_HUB_CACHE` and `HF_TOKEN` are paths or
//! tokens, checked where they are used.

use crate::usage::usage;
use anyhow::Result;

/// The largest `COPAL_MAX_TEXT_BYTES` accepted (1 TiB).
const MAX_TEXT_BYTES_LIMIT: u64 = 1 << 40;

/// `COPAL_PROGRESS_INTERVAL`: seconds between progress lines without a terminal (1..=3600).
pub fn parse_interval(v: &str) -> std::result::Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=3600).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a number of seconds in 1..=3600, got {v:?}"
        )),
    }
}

/// Whether a boolean variable's value is one copal understands (`Some(value)`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// `COPAL_MAX_TEXT_BYTES` as a number of bytes (`Err` with what is wrong).
pub fn parse_max_text_bytes(v: &str) -> std::result::Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 && n <= MAX_TEXT_BYTES_LIMIT => Ok(n),
        Ok(n) => Err(format!(
            "must be a number of bytes in 1..={MAX_TEXT_BYTES_LIMIT}, got {n}"
        )),
        Err(_) => Err(format!(
            "must be a number of bytes (such as 2000000000), got {v:?}"
        )),
    }
}

/// The variables of the table above whose values are checked.
const CHECKED: [&str; 6] = [
    "COPAL_MAX_TEXT_BYTES",
    "COPAL_IGNORE_CONFIG_KEYS",
    "COPAL_PROGRESS_INTERVAL",
    "COPAL_GENERIC_KERNELS",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
];

/// Checks every variable of the table above that is set.
pub fn check() -> Result<()> {
    for k in CHECKED {
        let Some(raw) = std::env::var_os(k) else {
            continue;
        };
        let Some(v) = raw.to_str() else {
            return Err(usage(k, "is not valid UTF-8"));
        };
        let bad = match k {
            "COPAL_MAX_TEXT_BYTES" => parse_max_text_bytes(v).err(),
            "COPAL_PROGRESS_INTERVAL" => parse_interval(v).err(),
            "HF_HUB_OFFLINE" | "COPAL_GENERIC_KERNELS" => parse_bool(v)
                .is_none()
                .then(|| format!("must be 0 or 1 (or true/false), got {v:?}")),
            "HF_ENDPOINT" => {
                let lower = v.to_ascii_lowercase();
                let url = lower.starts_with("http://") || lower.starts_with("https://");
                (!v.trim().is_empty() && (!url || v.len() < 10)).then(|| {
                    format!(
                        "must be the hub's http(s) URL, such as https://huggingface.co, got {v:?}"
                    )
                })
            }
            // Checked where it is read (model::config), with the key names it must hold.
            _ => None,
        };
        if let Some(m) = bad {
            return Err(usage(k, m));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_or_refused() {
        assert_eq!(parse_max_text_bytes("1000"), Ok(1000));
        for bad in ["abc", "-1", "0", "1e9", "99999999999999999999"] {
            assert!(parse_max_text_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
