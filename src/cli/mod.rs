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
/// definition: `sub`'s own flags first, then any command's; in `copal experiment` a setting
/// that is not one of its flags is a key of the experiment file (`allow_calib_on_eval`,
/// `sparsities`). A setting nothing names keeps its name.
fn flag_of(setting: &str, sub: Option<&str>) -> String {
    let cmd = Cli::command();
    let long = |c: &clap::Command| {
        c.get_arguments()
            .find(|a| a.get_id() == setting)
            .and_then(|a| a.get_long())
            .map(|l| format!("--{l}"))
    };
    if let Some(own) = sub.and_then(|s| cmd.find_subcommand(s)).and_then(long) {
        return own;
    }
    if sub == Some("experiment") {
        return copal::experiment::config::key_of(setting).to_string();
    }
    let any = cmd.get_subcommands().find_map(long);
    any.unwrap_or_else(|| setting.to_string())
}

/// A message with the settings it names (`⟨seqlen⟩`, see [`copal::usage::setting`]) in the
/// front end's words.
fn render(text: &str, sub: Option<&str>) -> String {
    copal::usage::render_settings(text, |s| flag_of(s, sub))
}

/// Prints `error:` and one `caused by:` line per cause; a usage error names its flag. Returns
/// the exit code: 2 for usage errors, 130 after Ctrl-C, 1 otherwise. Each cause is printed
/// by its first line: some libraries (candle) append a backtrace when RUST_BACKTRACE is set,
/// which helps nobody who mistyped a path.
pub fn report_error(err: &anyhow::Error, sub: Option<&str>) -> u8 {
    let mut usage = false;
    let interrupted = err
        .chain()
        .any(|c| c.downcast_ref::<copal::ui::Interrupted>().is_some());
    let lines: Vec<String> = err
        .chain()
        .map(|cause| match cause.downcast_ref::<UsageError>() {
            Some(u) => {
                usage = true;
                render(&u.render(&flag_of(&u.setting, sub)), sub)
            }
            None => render(cause.to_string().lines().next().unwrap_or(""), sub),
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
        let prune = Some("prune");
        assert_eq!(flag_of("eps_w", prune), "--eps-w");
        assert_eq!(flag_of("agg", prune), "--copal-agg");
        assert_eq!(flag_of("sparsity", prune), "--sparsity");
        assert_eq!(flag_of("allocate.m", prune), "--owl-m");
        assert_eq!(flag_of("no_such_setting", prune), "no_such_setting");
        // In an experiment: its own flags, else the file's keys.
        let exp = Some("experiment");
        assert_eq!(flag_of("run_index", exp), "--run-index");
        assert_eq!(flag_of("sparsity", exp), "sparsities");
        assert_eq!(flag_of("allow_calib_on_eval", exp), "allow_calib_on_eval");
        assert_eq!(
            render("split (⟨calib_split⟩), pass ⟨force⟩", prune),
            "split (--calib-split), pass --force"
        );
    }
}
