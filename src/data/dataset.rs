//! Dataset names and splits: the typed values `--datasets` and `--calib-split` parse into.

use anyhow::Result;
use std::fmt;
use std::path::PathBuf;

/// A dataset split.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
    /// The one file of a `text:` or `jsonl:` dataset (it serves calibration and evaluation).
    File,
}

impl Split {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "train" => Split::Train,
            "valid" | "validation" | "val" => Split::Valid,
            "test" => Split::Test,
            other => crate::usage_bail!(
                "calib_split",
                "names the unknown split {other:?} (train, valid, test)"
            ),
        })
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
            Split::File => "file",
        })
    }
}

/// A calibration/evaluation source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dataset {
    WikiText2,
    Ptb,
    C4,
    /// One plain-text file (calibration and evaluation read the same text).
    Text(PathBuf),
    /// JSON lines, one document per line; `field` holds its text.
    Jsonl {
        path: PathBuf,
        field: String,
    },
}

pub const BUILTIN: [&str; 3] = ["wikitext2", "ptb", "c4"];

impl Dataset {
    /// Parses a dataset name: `wikitext2`, `ptb`, `c4`, `text:PATH` or `jsonl:PATH[:FIELD]`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "wikitext2" | "wikitext-2" | "wikitext" => Dataset::WikiText2,
            "ptb" => Dataset::Ptb,
            "c4" => Dataset::C4,
            _ => {
                if let Some(p) = s.strip_prefix("text:") {
                    crate::usage_ensure!(
                        !p.is_empty(),
                        "datasets",
                        "has \"text:\" without a path: write text:PATH"
                    );
                    Dataset::Text(PathBuf::from(p))
                } else if let Some(rest) = s.strip_prefix("jsonl:") {
                    crate::usage_ensure!(
                        !rest.ends_with(':') && !rest.is_empty(),
                        "datasets",
                        "has {s:?}, whose field name after the last ':' is empty: write \
                         jsonl:PATH (the field \"text\") or jsonl:PATH:FIELD"
                    );
                    // The field is after the last ':' unless that would cut a path (e.g. C:\…).
                    match rest.rsplit_once(':') {
                        Some((p, f))
                            if !f.is_empty() && !f.contains(['/', '\\']) && !p.is_empty() =>
                        {
                            Dataset::Jsonl {
                                path: PathBuf::from(p),
                                field: f.to_string(),
                            }
                        }
                        _ => Dataset::Jsonl {
                            path: PathBuf::from(rest),
                            field: "text".into(),
                        },
                    }
                } else {
                    crate::usage_bail!(
                        "datasets",
                        "names the unknown dataset {s:?}; valid: {}, text:PATH, jsonl:PATH[:FIELD]",
                        BUILTIN.join(", ")
                    )
                }
            }
        })
    }

    /// Parses a comma-separated list, keeping order; a repeated name is an error.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let mut out: Vec<Self> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let d = Self::parse(part)?;
            crate::usage_ensure!(
                !out.contains(&d),
                "datasets",
                "lists {part} twice; a dataset is folded in once"
            );
            out.push(d);
        }
        crate::usage_ensure!(
            !out.is_empty(),
            "datasets",
            "is empty; valid: {}, text:PATH, jsonl:PATH[:FIELD]",
            BUILTIN.join(", ")
        );
        Ok(out)
    }

    /// The name used in reports, state files and the sampler's seed.
    pub fn name(&self) -> String {
        match self {
            Dataset::WikiText2 => "wikitext2".into(),
            Dataset::Ptb => "ptb".into(),
            Dataset::C4 => "c4".into(),
            Dataset::Text(p) => format!("text:{}", p.display()),
            Dataset::Jsonl { path, field } if field == "text" => {
                format!("jsonl:{}", path.display())
            }
            Dataset::Jsonl { path, field } => format!("jsonl:{}:{field}", path.display()),
        }
    }

    /// Calibration split unless overridden: train (a custom dataset's one file).
    pub fn default_calib_split(&self) -> Split {
        match self {
            Dataset::Text(_) | Dataset::Jsonl { .. } => Split::File,
            _ => Split::Train,
        }
    }

    /// Evaluation split: test (validation for C4, which has no test; a custom dataset's one
    /// file, the one it calibrates on).
    pub fn default_eval_split(&self) -> Split {
        match self {
            Dataset::C4 => Split::Valid,
            Dataset::Text(_) | Dataset::Jsonl { .. } => Split::File,
            _ => Split::Test,
        }
    }

    /// Evaluation token cap, as the anchors apply it: C4 uses the first 256 × seqlen tokens.
    pub fn eval_token_cap(&self, seqlen: usize) -> Option<usize> {
        match self {
            Dataset::C4 => Some(256 * seqlen),
            _ => None,
        }
    }
}

/// In plans and reports a dataset is its name.
impl serde::Serialize for Dataset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Dataset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dataset::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `--calib-split wikitext2=valid,c4=train` → overrides per dataset name.
pub fn parse_split_overrides(s: &str) -> Result<Vec<(Dataset, Split)>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let Some((d, sp)) = p.split_once('=') else {
                crate::usage_bail!("calib_split", "takes DATASET=SPLIT, got {p:?}");
            };
            Ok((Dataset::parse(d)?, Split::parse(sp)?))
        })
        .collect()
}

/// The data directory: the one given (a front end's flag or `COPAL_DATA_DIR`, which clap
/// reads), else `./data`.
pub fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from("data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_custom_sources() {
        assert_eq!(
            Dataset::parse_list("wikitext2, ptb,c4").unwrap(),
            vec![Dataset::WikiText2, Dataset::Ptb, Dataset::C4]
        );
        assert_eq!(
            Dataset::parse("jsonl:/x/y.jsonl:body").unwrap(),
            Dataset::Jsonl {
                path: "/x/y.jsonl".into(),
                field: "body".into()
            }
        );
        assert_eq!(
            Dataset::parse("jsonl:/x/y.jsonl").unwrap().name(),
            "jsonl:/x/y.jsonl"
        );
    }

    #[test]
    fn unknown_name_lists_valid_ones() {
        let e = Dataset::parse("wikitext103").unwrap_err().to_string();
        assert!(e.contains("wikitext2, ptb, c4"), "{e}");
        assert!(Dataset::parse_list("ptb,ptb").is_err());
    }

    #[test]
    fn split_overrides() {
        let o = parse_split_overrides("wikitext2=valid").unwrap();
        assert_eq!(o, vec![(Dataset::WikiText2, Split::Valid)]);
        assert!(parse_split_overrides("wikitext2").is_err());
    }
}
