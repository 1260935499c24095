//! Errors in what the user asked for, as opposed to failures of a valid plan.
//!
//! A [`UsageError`] names the **setting** it is about (`sparsity`, `eps_w`, `datasets`), not a
//! flag: the same check serves `copal prune`'s flags and an experiment file's keys, and each
//! front end says it in its own words (`--sparsity` on the command line, `sparsities` in an
//! experiment file). The binary exits with code 2 for these, 1 for everything else.

use std::fmt;

/// A setting whose value cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// The setting, as a plan or an experiment file names it (`sparsity`, `eps_w`).
    pub setting: String,
    /// What is wrong, written to follow the setting's name ("must be …", "0.5 is …").
    pub message: String,
}

impl UsageError {
    /// The message with the setting named as `name` (a flag, a JSON key).
    pub fn render(&self, name: &str) -> String {
        format!("{name} {}", self.message)
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&self.setting))
    }
}

impl std::error::Error for UsageError {}

/// A usage error about `setting`.
pub fn usage(setting: &str, message: impl Into<String>) -> anyhow::Error {
    UsageError {
        setting: setting.to_string(),
        message: message.into(),
    }
    .into()
}

/// A setting named inside a message (`lower ⟨seqlen⟩ or use a larger file`): the library
/// writes the setting's name between ⟨ ⟩, and each front end renders it in its own words
/// ([`render_settings`]: `--seqlen` on the command line, the key in an experiment file).
pub fn setting(name: &str) -> String {
    format!("⟨{name}⟩")
}

/// `text` with every `⟨name⟩` written as `name_of(name)`.
pub fn render_settings(text: &str, name_of: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('⟨') {
        let after = &rest[i + '⟨'.len_utf8()..];
        match after.find('⟩') {
            Some(j)
                if after[..j]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                out.push_str(&rest[..i]);
                out.push_str(&name_of(&after[..j]));
                rest = &after[j + '⟩'.len_utf8()..];
            }
            _ => {
                out.push_str(&rest[..i + '⟨'.len_utf8()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Returns early with a usage error about a setting: `usage_bail!("sparsity", "must be …")`.
#[macro_export]
macro_rules! usage_bail {
    ($setting:expr, $($fmt:tt)+) => {
        return Err($crate::usage::usage($setting, format!($($fmt)+)))
    };
}

/// `usage_bail!` unless `cond` holds.
#[macro_export]
macro_rules! usage_ensure {
    ($cond:expr, $setting:expr, $($fmt:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            $crate::usage_bail!($setting, $($fmt)+);
        }
    };
}

/// `Display` for an enum a user names on the command line or in a file, spelled as clap's
/// `ValueEnum` spells it (`accumulate`, `matrix`, `sparsegpt`), beside the enum's definition.
#[macro_export]
macro_rules! display_as_value {
    ($($t:ty),+ $(,)?) => {$(
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let v = <$t as ::clap::ValueEnum>::to_possible_value(self)
                    .expect("every variant has a value name");
                f.write_str(v.get_name())
            }
        }
        impl ::std::str::FromStr for $t {
            type Err = $crate::usage::UsageError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t as ::clap::ValueEnum>::from_str(s, false).map_err(|_| {
                    let names: Vec<String> = <$t as ::clap::ValueEnum>::value_variants()
                        .iter()
                        .filter_map(::clap::ValueEnum::to_possible_value)
                        .map(|p| p.get_name().to_string())
                        .collect();
                    $crate::usage::UsageError {
                        setting: String::new(),
                        message: format!("{s:?} is not one of {}", names.join(", ")),
                    }
                })
            }
        }
    )+};
}

/// The closest of `candidates` to `word`, for "did you mean" hints: within an edit distance of
/// a third of its length, or one of the two a prefix of the other (`nsamples_typo`).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = word.len().div_ceil(3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            let prefix =
                c.len().min(word.len()) >= 4 && (word.starts_with(c) || c.starts_with(word));
            (if prefix { 0 } else { edit_distance(word, c) }, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_words_only() {
        let keys = ["nsamples", "seqlen", "sparsities", "patterns"];
        assert_eq!(did_you_mean("nsamples_typo", keys), Some("nsamples"));
        assert_eq!(did_you_mean("nsample", keys), Some("nsamples"));
        assert_eq!(did_you_mean("sparsity", keys), Some("sparsities"));
        assert_eq!(did_you_mean("zzz", keys), None);
    }

    #[test]
    fn settings_inside_a_message_are_rendered_by_the_front_end() {
        let flag = |s: &str| format!("--{}", s.replace('_', "-"));
        assert_eq!(
            render_settings("lower ⟨seqlen⟩ or pass ⟨calib_split⟩ x", flag),
            "lower --seqlen or pass --calib-split x"
        );
        assert_eq!(
            render_settings("⟨not a setting⟩ ⟨", flag),
            "⟨not a setting⟩ ⟨"
        );
        assert_eq!(render_settings(&setting("force"), flag), "--force");
    }

    #[test]
    fn a_usage_error_is_rendered_with_the_front_ends_name() {
        let e = UsageError {
            setting: "sparsity".into(),
            message: "must be a percentage strictly between 0 and 100, got 0".into(),
        };
        assert_eq!(
            e.render("--sparsity"),
            "--sparsity must be a percentage strictly between 0 and 100, got 0"
        );
        assert!(e.to_string().starts_with("sparsity must be"));
    }
}
