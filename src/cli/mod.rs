//! The command line (clap derive), one file per command. The first line of each doc comment is
//! the `-h` summary; the paragraphs after it are the `--help` text. Each command turns its
//! flags into a request for the library and prints what comes back; the library knows
//! nothing of flags.

mod args;
mod eval;
mod experiment;
mod fetch;
mod import;
mod inspect;
mod prune;
mod synth;

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, Parser, Subcommand};
use copal::usage::UsageError;

#[derive(Debug, Parser)]
#[command(
    name = "copal",
    version,
    about = "Continual pruning of LLaMA models (COPAL) and the baselines it is compared with",
    long_about = "Continual pruning of LLaMA models (COPAL, Malla et al., ICML 2024) and the \
baselines it is compared with.\n\nDatasets arrive one after another; copal keeps only a per-weight \
importance state between them and prunes the dense weights so that the model stays good on every \
domain seen so far. Progress goes to stderr, results to stdout (--json for machine-readable output).\n\n\
Exit codes: 0 success, 1 a valid plan failed, 2 a usage error (a flag, a value, a combination),
130 interrupted (Ctrl-C; finished steps are kept for a rerun to resume).",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    Prune(prune::PruneArgs),
    Eval(eval::EvalArgs),
    ImportGguf(import::ImportArgs),
    Inspect(inspect::InspectArgs),
    Experiment(experiment::ExperimentArgs),
    Fetch(fetch::FetchArgs),
    Synth(synth::SynthArgs),
}

/// Runs the parsed command line; `matches` are the subcommand's (which flags were typed).
pub fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(matches);
    match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::ImportGguf(a) => import::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Prune(a) => prune::run(a, sub),
        Command::Experiment(a) => experiment::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Synth(a) => synth::run(a),
    }
}

/// The flag of a setting (`eps_w` → `--eps-w`, `agg` → `--copal-agg`), from the command's own
/// definition; a setting no flag sets keeps its name.
fn flag_of(setting: &str) -> String {
    let cmd = Cli::command();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.get_id() == setting {
                if let Some(long) = arg.get_long() {
                    return format!("--{long}");
                }
            }
        }
    }
    setting.to_string()
}

/// Prints `error:` and one `caused by:` line per cause; a usage error names its flag. Returns
/// the exit code: 2 for usage errors, 130 after Ctrl-C, 1 otherwise. Each cause is printed
/// by its first line: some libraries (candle) append a backtrace when RUST_BACKTRACE is set,
/// which helps nobody who mistyped a path.
pub fn report_error(err: &anyhow::Error) -> u8 {
    let mut usage = false;
    let interrupted = err
        .chain()
        .any(|c| c.downcast_ref::<copal::ui::Interrupted>().is_some());
    let lines: Vec<String> = err
        .chain()
        .map(|cause| match cause.downcast_ref::<UsageError>() {
            Some(u) => {
                usage = true;
                u.render(&flag_of(&u.setting))
            }
            None => cause.to_string().lines().next().unwrap_or("").to_string(),
        })
        .collect();
    eprintln!("error: {}", lines[0]);
    for l in &lines[1..] {
        eprintln!("  caused by: {l}");
    }
    if interrupted {
        130
    } else if usage {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_are_named_by_their_flags() {
        assert_eq!(flag_of("eps_w"), "--eps-w");
        assert_eq!(flag_of("agg"), "--copal-agg");
        assert_eq!(flag_of("sparsity"), "--sparsity");
        assert_eq!(flag_of("no_such_setting"), "no_such_setting");
    }
}
