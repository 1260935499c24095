//! One function per subcommand: resolve the arguments, call the library, print the results.

mod eval;
mod experiment;
mod import;
mod inspect;
mod prune;

use crate::checkpoint::{self, Checkpoint};
use crate::cli::{Cli, Command, ComputeDtype, ModelArgs};
use anyhow::{bail, ensure, Context as _, Result};
use candle_core::{DType, Device};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::ImportGguf(a) => import::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Synth(a) => synth(a),
    }
}

/// `--device cpu|cuda|cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("--device {s}: expected cuda:N with N a GPU index"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!(
                    "--device {s}: this copal was built without CUDA; rebuild with --features cuda"
                );
            }
            Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}

pub fn dtype_of(d: Option<ComputeDtype>, device: &Device) -> DType {
    match d {
        Some(ComputeDtype::F32) => DType::F32,
        Some(ComputeDtype::Bf16) => DType::BF16,
        Some(ComputeDtype::F16) => DType::F16,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    }
}

/// A model opened for computing: the checkpoint, where and in which dtype it runs.
pub struct Opened {
    pub ckpt: Checkpoint,
    pub device: Device,
    pub dtype: DType,
}

pub fn open_model(args: &ModelArgs, quiet: bool) -> Result<Opened> {
    let device = parse_device(&args.device)?;
    let dtype = dtype_of(args.dtype, &device);
    let dir = checkpoint::resolve(&args.model, quiet)?;
    let ckpt = Checkpoint::open(&dir).with_context(|| format!("opening model {}", args.model))?;
    Ok(Opened {
        ckpt,
        device,
        dtype,
    })
}

/// The window length: the flag if given (checked against the model), else 2048 capped by it.
pub fn resolve_seqlen(flag: Option<usize>, max_pos: usize) -> Result<usize> {
    match flag {
        Some(0) => bail!("--seqlen must be at least 2"),
        Some(s) => {
            ensure!(s >= 2, "--seqlen must be at least 2, got {s}");
            ensure!(
                s <= max_pos,
                "--seqlen {s} exceeds the model's max_position_embeddings ({max_pos}); use \
                 --seqlen {max_pos} or less"
            );
            Ok(s)
        }
        None => Ok(2048.min(max_pos)),
    }
}

/// `copal synth`: a random checkpoint with a preset's shapes, written atomically.
fn synth(a: crate::cli::SynthArgs) -> Result<()> {
    crate::ui::set_quiet(a.output.quiet);
    ensure!(a.layers > 0, "--layers must be at least 1");
    if a.out.exists() {
        ensure!(
            a.force,
            "{} already exists; pass --force to replace it",
            a.out.display()
        );
    }
    let cfg = crate::checkpoint::synth::preset(&a.preset, a.layers)?;
    let staging = crate::fsutil::staging_dir(&a.out)?;
    let dtype = dtype_of(Some(a.dtype), &Device::Cpu);
    match crate::checkpoint::synth::write(&cfg, &staging, dtype, a.seed) {
        Ok(params) => {
            crate::fsutil::replace_dir(&staging, &a.out)?;
            crate::ui::out(format!(
                "wrote {} ({} layers of {}, {params} parameters, {:?})",
                a.out.display(),
                a.layers,
                a.preset,
                dtype
            ))?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}
