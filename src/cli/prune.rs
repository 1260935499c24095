//! `copal prune`: flags → plan, run the dataset sequence, print the results.

use super::args::{finite, DataArgs, ModelArgs, OutputArgs};
use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use copal::plan::{Propagate, PrunePlan, Request};
use copal::prune::allocate::{Allocation, AllocationKind};
use copal::prune::copal::{Aggregation, CopalConfig, PerturbationKind};
use copal::prune::obs::ObsConfig;
use copal::prune::ria::RiaConfig;
use copal::prune::update::dsnot::{DsnotConfig, Skip};
use copal::prune::update::Update;
use copal::prune::{Group, Method, MethodConfig, Mode};
use copal::{continual, report};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Prune a model over a sequence of datasets with COPAL (continual pruning).
///
/// Datasets are taken in the given order. For each, calibration windows are drawn (nsamples
/// × seqlen tokens, seeded by --seed and the dataset name), decoder layers are processed one
/// at a time, and the model is pruned. By default COPAL's sensitivity Σ|W ⊙ ∇W ‖dy‖²| is
/// accumulated over every dataset so far, thresholded per row at the sparsity (--group matrix:
/// the paper's per-matrix threshold), and the dense weights are masked. --state carries the
/// accumulated statistics to a later run, so a new domain can be added without the old data.
///
/// The baselines are a flag away: --method wanda, sparsegpt, magnitude, ria, each in
/// accumulate (its own statistic summed over the datasets), global or sequential mode.
/// --update obs reconstructs the kept weights of a mask-only method (SparseGPT's OBS update
/// with the method's mask); --allocate owl spreads the sparsity over the layers (OWL).
///
/// Sparsity patterns: `unstructured` prunes --sparsity percent of each comparison group
/// (--group); `N:M` zeroes N of every M consecutive weights along the input dimension of each
/// row (2:4 zeroes 2 of every 4 = 50%, as Wanda and SparseGPT read it).
///
/// A method's own flags (under its heading below) are refused for another method.
///
/// DIR receives the pruned model in the input's shard layout and dtype (loadable by
/// transformers unchanged), config.json with a sparsity_config block, the tokenizer files
/// and copal.json, the run record. DIR appears only when the run succeeds.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Calibration datasets in the order they arrive: wikitext2, ptb, c4, text:PATH, jsonl:PATH[:FIELD].
    #[arg(long, short = 'd', value_name = "LIST")]
    pub datasets: String,

    /// Output directory for the pruned model (refused if it exists, unless --force).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,

    /// Pruning method.
    #[arg(long, value_enum, default_value_t = copal::prune::DEFAULT_METHOD)]
    pub method: Method,

    /// How a method is used across datasets [default: accumulate, global for magnitude and dense].
    ///
    /// accumulate: sum the method's statistics over every dataset so far, prune the dense
    /// weights (as COPAL does). global: prune the dense model from the newest dataset only
    /// (forgetting). sequential: prune the previous step's pruned model with the newest
    /// dataset (weight stasis).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,

    /// Percentage of weights to prune, 0 < s < 100 [default: 50] (for N:M patterns it is implied).
    #[arg(long, value_name = "PERCENT", allow_negative_numbers = true, value_parser = finite)]
    pub sparsity: Option<f64>,

    /// unstructured, or N:M (N of every M consecutive input weights zeroed: 2:4, 4:8).
    #[arg(long, default_value = "unstructured", value_name = "PATTERN")]
    pub pattern: String,

    /// Comparison group of the unstructured threshold [default: row for copal and wanda,
    /// matrix for magnitude and sparsegpt]; `--group matrix` is the COPAL paper's per-matrix
    /// threshold. SparseGPT applies the group within each --blocksize block of columns.
    #[arg(long, value_enum)]
    pub group: Option<Group>,

    /// Which activations feed the next layer: those of the pruned layer, or the dense one.
    #[arg(long, value_enum, default_value_t = copal::plan::DEFAULT_PROPAGATE)]
    pub propagate: Propagate,

    /// Calibration windows per dataset.
    #[arg(long, default_value_t = copal::plan::DEFAULT_NSAMPLES, value_name = "N")]
    pub nsamples: usize,

    /// Calibration windows forwarded through a layer together [default: as many as fit in 4096
    /// tokens and 512 MiB of taps: 8 × 512 on the test model, 1 × 2048 at LLaMA-7B shapes].
    ///
    /// Larger batches keep the GEMMs busy; 1 holds the least memory. Each window's statistics
    /// are computed alone and summed in window order, so the pruned model is bit-identical
    /// whatever the batch.
    #[arg(long, value_name = "N")]
    pub calib_batch: Option<usize>,

    /// Seed of the calibration sampler (and of COPAL's Gaussian perturbation).
    #[arg(long, default_value_t = copal::plan::DEFAULT_SEED)]
    pub seed: u64,

    #[command(flatten)]
    pub data: DataArgs,

    /// Calibration split per dataset, e.g. wikitext2=valid [default: train].
    #[arg(long, value_name = "DATASET=SPLIT,...")]
    pub calib_split: Option<String>,

    /// Accumulated statistics (accumulate mode: SparseGPT's XᵀX, Wanda's Σx², COPAL's
    /// importance): loaded if the file exists, saved after every dataset.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Also write the pruned model after each step to DIR/steps/K-DATASET.
    #[arg(long)]
    pub save_steps: bool,

    /// Also write masks.safetensors: packed bits per linear, 1 = kept, LSB first along the input.
    #[arg(long)]
    pub save_masks: bool,

    /// Measure perplexity after every step on every dataset: the matrix R, average PPL, BWT.
    #[arg(long)]
    pub eval: bool,

    /// With --eval: evaluate only the first N windows of each dataset.
    #[arg(long, value_name = "N", requires = "eval")]
    pub max_windows: Option<usize>,

    /// With --eval: after step k, evaluate only the datasets seen so far (enough for average
    /// PPL and BWT; the matrix's upper triangle is left empty).
    #[arg(long, requires = "eval")]
    pub eval_seen_only: bool,

    /// With --eval: allow evaluating a dataset on the text it calibrates on (its test split
    /// via --calib-split, or a text:/jsonl: file, which serves both); those perplexities are
    /// marked in the output and copal.json.
    #[arg(long, requires = "eval")]
    pub allow_calib_on_eval: bool,

    /// Zero-shot tasks scored on the dense model and after every step, as `copal eval --tasks`
    /// scores them (boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, or
    /// wanda7): a matrix of accuracies per metric, average and BWT (a fall is forgetting).
    #[arg(long, value_name = "LIST")]
    pub eval_tasks: Option<String>,

    /// With --eval-tasks: score only the first N items of each task (a quick estimate).
    #[arg(long, value_name = "N", requires = "eval_tasks")]
    pub task_limit: Option<usize>,

    /// With --eval-tasks: the tasks' local copies, DIR/TASK/SPLIT.parquet (default
    /// $COPAL_HOME/tasks, where scripts/fetch-task-data.sh puts them); a task without one is
    /// read from its pinned upstream file in the hub cache (`copal fetch --tasks`).
    #[arg(long, value_name = "DIR", env = "COPAL_TASKS_DIR")]
    pub tasks_dir: Option<PathBuf>,

    /// With --eval-tasks: a BOS token before each request: auto (the tokenizer's own rule,
    /// lm-eval's default), yes, or no.
    #[arg(long, value_enum, requires = "eval_tasks")]
    pub bos: Option<copal::tokenizer::Bos>,

    /// Replace DIR if it exists and copal wrote it (a directory holding other files is
    /// never replaced).
    #[arg(long)]
    pub force: bool,

    /// Check everything a run needs (model, datasets and their windows, state, output), print
    /// the resolved plan with the FLOPs and bytes it implies as JSON, and exit.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub allocate: AllocateArgs,

    #[command(flatten)]
    pub copal: CopalArgs,

    #[command(flatten)]
    pub update: UpdateArgs,

    #[command(flatten)]
    pub dsnot: DsnotArgs,

    #[command(flatten)]
    pub ria: RiaArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// The allocation stage's flags. The settings' ids are their names in the plan
/// (`allocate.m`), so a usage error about one is rendered as its flag.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sparsity over the layers (--allocate)")]
pub struct AllocateArgs {
    /// How the sparsity is spread over the decoder layers: the same everywhere, or OWL's
    /// outlier-weighted layer sparsities (Yin et al., ICML 2024; any method, unstructured).
    ///
    /// owl adds a dense pass over the calibration windows: each layer's share of Wanda scores
    /// above --owl-m times their mean sets its density, spread over ±--owl-lambda around
    /// 1 − sparsity, so the mean sparsity is unchanged. depth reads no data: layer sparsities
    /// rise linearly from s − --depth-spread at the first layer to s + --depth-spread at the
    /// last.
    #[arg(long, value_enum, default_value_t = AllocationKind::Uniform)]
    pub allocate: AllocationKind,

    /// OWL: outlier threshold M, a multiple of the layer's mean Wanda score [default: 5].
    #[arg(id = "allocate.m", long = "owl-m", value_name = "M", value_parser = finite)]
    pub owl_m: Option<f64>,

    /// OWL: half-width λ of the range of layer densities [default: 0.08].
    #[arg(id = "allocate.lambda", long = "owl-lambda", value_name = "LAMBDA", value_parser = finite)]
    pub owl_lambda: Option<f64>,

    /// depth: half-width δ of the layer sparsities, s − δ at the first layer to s + δ at the
    /// last [default: 0.08].
    #[arg(id = "allocate.spread", long = "depth-spread", value_name = "DELTA", value_parser = finite)]
    pub depth_spread: Option<f64>,
}

impl AllocateArgs {
    /// The allocation the flags name, its settings checked by the library.
    pub fn allocation(&self) -> Result<Allocation> {
        let settings: Map<String, Value> = [
            ("m", self.owl_m),
            ("lambda", self.owl_lambda),
            ("spread", self.depth_spread),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), Value::from(v?))))
        .collect();
        Allocation::from_settings(self.allocate, &settings)
    }
}

/// COPAL's flags; each is named by its setting (`agg` is `--copal-agg`).
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "COPAL (--method copal)")]
pub struct CopalArgs {
    /// Perturbation of weights and inputs.
    #[arg(long, value_enum, default_value_t = CopalConfig::default().perturbation)]
    pub perturbation: PerturbationKind,

    /// Weight perturbation scale ε_W.
    #[arg(long, default_value_t = CopalConfig::default().eps_w, value_name = "EPS", value_parser = finite)]
    pub eps_w: f64,

    /// Input perturbation scale ε_x.
    #[arg(long, default_value_t = CopalConfig::default().eps_x, value_name = "EPS", value_parser = finite)]
    pub eps_x: f64,

    /// Aggregation over tokens: l1 = Σ|W ⊙ ∇| (the paper), l2 = Σ(W ⊙ ∇)².
    #[arg(long = "copal-agg", value_enum, default_value_t = CopalConfig::default().agg)]
    pub agg: Aggregation,

    /// Divide each dataset's importance increment by its mean over the matrix.
    #[arg(long = "copal-normalize")]
    pub normalize: bool,

    /// Decay γ of the accumulated importance per new dataset: W* = γ·W*_prev + increment.
    #[arg(long, default_value_t = CopalConfig::default().decay, value_name = "GAMMA", value_parser = finite)]
    pub decay: f64,
}

/// The OBS reconstruction's flags: SparseGPT's, and a mask-only method's with --update obs.
#[derive(Debug, Clone, Args, Serialize)]
#[command(
    next_help_heading = "Weight reconstruction (sparsegpt; copal, wanda, magnitude, ria with --update obs)"
)]
pub struct UpdateArgs {
    /// After a mask-only method (copal, wanda, magnitude, ria) chose its mask: none keeps the
    /// dense values of the kept weights; obs reconstructs them by SparseGPT's OBS update
    /// from XᵀX (accumulated like the method's statistic), the mask unchanged.
    #[arg(long, value_enum, default_value_t = Update::None)]
    pub update: Update,

    /// Damping, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = ObsConfig::default().percdamp, value_name = "FRACTION", value_parser = finite)]
    pub percdamp: f64,

    /// Column block size of the OBS update.
    #[arg(long, default_value_t = ObsConfig::default().blocksize, value_name = "N")]
    pub blocksize: usize,
}

/// DSnoT's flags (a mask-only method with --update dsnot).
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Mask refinement (copal, wanda, magnitude, ria with --update dsnot)")]
pub struct DsnotArgs {
    /// Most grow-and-prune cycles per matrix.
    #[arg(long = "dsnot-cycles", default_value_t = DsnotConfig::default().dsnot_cycles, value_name = "N")]
    pub dsnot_cycles: usize,

    /// A row stops swapping once its expected output error |Σ_pruned W·x̄| is at most this.
    #[arg(long = "dsnot-threshold", default_value_t = DsnotConfig::default().dsnot_threshold, value_name = "E", value_parser = finite)]
    pub dsnot_threshold: f64,

    /// Power of the input variance dividing the growing score.
    #[arg(long = "dsnot-var-power", default_value_t = DsnotConfig::default().dsnot_var_power, value_name = "P", allow_negative_numbers = true, value_parser = finite)]
    pub dsnot_var_power: f64,

    /// Linears left as the method pruned them (the authors skip the MLP).
    #[arg(long = "dsnot-skip", value_enum, default_value_t = DsnotConfig::default().dsnot_skip)]
    pub dsnot_skip: Skip,
}

/// RIA's flags.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "RIA (--method ria)")]
pub struct RiaArgs {
    /// Exponent a of the input norm in RIA's score (|W|/Σcol + |W|/Σrow) · ‖X_j‖₂^a.
    #[arg(
        long = "ria-a",
        default_value_t = RiaConfig::default().a,
        value_name = "A",
        allow_negative_numbers = true,
        value_parser = finite
    )]
    pub a: f64,
}

/// The flag groups of methods' settings: the clap group derive names after the struct, and
/// its values by setting name.
fn method_groups(a: &PruneArgs) -> Vec<(&'static str, Value)> {
    vec![
        ("CopalArgs", to_json(&a.copal)),
        ("UpdateArgs", to_json(&a.update)),
        ("DsnotArgs", to_json(&a.dsnot)),
        ("RiaArgs", to_json(&a.ria)),
    ]
}

fn to_json(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The methods' settings typed on the command line. One that the chosen method does not have
/// (the method table says which have it) is a usage error naming the methods it belongs to.
fn method_params(a: &PruneArgs, m: &ArgMatches) -> Result<Map<String, Value>> {
    let typed = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let own = MethodConfig::defaults(a.method).params();
    let mut params = Map::new();
    for (_group, values) in method_groups(a) {
        let Value::Object(values) = values else {
            continue;
        };
        for (setting, value) in values {
            if !typed(&setting) {
                continue;
            }
            if !own.contains_key(&setting) {
                let owners: Vec<String> = Method::ALL
                    .iter()
                    .filter(|m| MethodConfig::defaults(**m).params().contains_key(&setting))
                    .map(|m| format!("--method {m}"))
                    .collect();
                copal::usage_bail!(
                    &setting,
                    "is a flag of {}, but this run uses --method {}; choose such a method or \
                     drop it",
                    owners.join(", "),
                    a.method
                );
            }
            params.insert(setting, value);
        }
    }
    Ok(params)
}

/// What the flags ask for.
pub fn request(a: &PruneArgs, m: &ArgMatches) -> Result<Request> {
    let datasets = copal::data::Dataset::parse_list(&a.datasets)?;
    let calib_split = match &a.calib_split {
        Some(s) => copal::data::parse_split_overrides(s)?,
        None => Vec::new(),
    };
    Ok(Request {
        model: a.model.model.clone(),
        datasets,
        calib_split,
        data_dir: a.data.data_dir.clone(),
        method: Some(a.method),
        params: method_params(a, m)?,
        mode: a.mode,
        sparsity: a.sparsity,
        pattern: Some(a.pattern.clone()),
        group: a.group,
        propagate: Some(a.propagate),
        allocate: Some(a.allocate.allocation()?),
        nsamples: Some(a.nsamples),
        seqlen: a.data.seqlen,
        calib_batch: a.calib_batch,
        seed: Some(a.seed),
        state: a.state.clone(),
        out: a.out.clone(),
        force: a.force,
        save_steps: a.save_steps,
        save_masks: a.save_masks,
        eval: a.eval,
        max_windows: a.max_windows,
        eval_seen_only: a.eval_seen_only,
        eval_cache: None,
        allow_calib_on_eval: a.allow_calib_on_eval,
        eval_tasks: match &a.eval_tasks {
            Some(t) => copal::eval::tasks::Task::parse_list(t)?,
            None => Vec::new(),
        },
        task_limit: a.task_limit,
        // COPAL_TASKS_DIR set for other commands does not ask for tasks; the flag without
        // --eval-tasks is refused by the plan.
        tasks_dir: match m.value_source("tasks_dir") {
            Some(clap::parser::ValueSource::EnvVariable) if a.eval_tasks.is_none() => None,
            _ => a.tasks_dir.clone(),
        },
        bos: a.bos,
        device: Some(a.model.device.clone()),
        dtype: a.model.dtype,
    })
}

pub fn run(a: PruneArgs, m: &ArgMatches) -> Result<()> {
    copal::ui::set_quiet(a.output.quiet);
    let plan = PrunePlan::resolve(request(&a, m)?)?;
    // Every check that needs no computation runs here, before the first step (a dry run
    // lists the pinned datasets a run would download instead of fetching them).
    let prepared = continual::prepare_with(plan, !a.dry_run)?;
    if a.dry_run {
        let mut v = serde_json::to_value(&prepared.plan)?;
        v["estimate"] = prepared.estimate();
        copal::ui::out(serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let out = prepared.plan.out.clone();
    let rec = continual::run(prepared)?;
    let out = &out;
    if a.output.json {
        let v = serde_json::json!({
            "out": out,
            "datasets": rec.datasets,
            "ppl_matrix": rec.ppl_matrix,
            "dense_ppl": rec.dense_eval.as_ref().map(|d| d.iter().map(|e| e.ppl).collect::<Vec<_>>()),
            "avg_ppl": rec.avg_ppl,
            "bwt": rec.bwt,
            "scores": rec.scores,
            "sparsity": rec.sparsity,
            "seconds": rec.seconds,
            "peak_rss_bytes": rec.peak_rss_bytes,
        });
        copal::ui::out(serde_json::to_string_pretty(&v)?)?;
    } else {
        let table = report::score_tables(&rec);
        if !table.is_empty() {
            copal::ui::out(table.trim_end())?;
        }
        copal::ui::out(format!(
            "wrote {} (sparsity {:.4} over the pruned linears, {:.1}s)",
            out.display(),
            rec.sparsity,
            rec.seconds
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_method_group_is_a_clap_group_of_its_flags() {
        let cmd = super::super::Cli::command();
        let prune = cmd.find_subcommand("prune").unwrap();
        let args = PruneArgs {
            model: ModelArgs {
                model: String::new(),
                device: String::new(),
                dtype: None,
            },
            datasets: String::new(),
            out: PathBuf::new(),
            method: Method::Copal,
            mode: None,
            sparsity: None,
            pattern: String::new(),
            group: None,
            propagate: Propagate::Pruned,
            allocate: AllocateArgs {
                allocate: AllocationKind::Uniform,
                owl_m: None,
                owl_lambda: None,
                depth_spread: None,
            },
            nsamples: 1,
            calib_batch: None,
            seed: 0,
            data: DataArgs {
                data_dir: None,
                seqlen: None,
            },
            calib_split: None,
            state: None,
            save_steps: false,
            save_masks: false,
            eval: false,
            max_windows: None,
            eval_seen_only: false,
            allow_calib_on_eval: false,
            eval_tasks: None,
            task_limit: None,
            tasks_dir: None,
            bos: None,
            force: false,
            dry_run: false,
            copal: CopalArgs {
                perturbation: PerturbationKind::Scaled,
                eps_w: 0.0,
                eps_x: 0.0,
                agg: Aggregation::L1,
                normalize: false,
                decay: 1.0,
            },
            update: UpdateArgs {
                update: Update::None,
                percdamp: 0.0,
                blocksize: 1,
            },
            dsnot: DsnotArgs {
                dsnot_cycles: 1,
                dsnot_threshold: 0.0,
                dsnot_var_power: 0.0,
                dsnot_skip: Skip::None,
            },
            ria: RiaArgs { a: 0.5 },
            output: OutputArgs {
                json: false,
                quiet: false,
            },
        };
        let all: Vec<String> = Method::ALL
            .iter()
            .flat_map(|m| {
                MethodConfig::defaults(*m)
                    .params()
                    .into_iter()
                    .map(|(k, _)| k)
            })
            .collect();
        for (group, values) in method_groups(&args) {
            let g = prune
                .get_groups()
                .find(|g| g.get_id() == group)
                .unwrap_or_else(|| panic!("no clap group {group}"));
            let mut ids: Vec<String> = g.get_args().map(|a| a.to_string()).collect();
            ids.sort();
            let keys: Vec<String> = values.as_object().unwrap().keys().cloned().collect();
            assert_eq!(ids, keys, "{group}: flags and settings differ");
            // Every flag sets a setting of some method.
            assert!(keys.iter().all(|k| all.contains(k)), "{group}: {keys:?}");
        }
    }
}
