//! Progress bars and log lines, all on stderr; `--quiet` silences both.
//!
//! stdout is reserved for results (tables, `--json`), so that `copal … --json | jq` works.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// All bars share one stderr area, so that a run's overall bar stays above the current one.
fn multi() -> &'static MultiProgress {
    static M: OnceLock<MultiProgress> = OnceLock::new();
    M.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints one line to stderr unless quiet (above any progress bars).
pub fn info(msg: impl AsRef<str>) {
    if quiet() {
        return;
    }
    let m = multi();
    if m.is_hidden() {
        // stderr is not a terminal: no bars to draw around, plain lines (logs, CI).
        eprintln!("{}", msg.as_ref());
    } else {
        let _ = m.println(msg.as_ref());
    }
}

/// Prints `warning: MSG` to stderr unless quiet.
pub fn warn(msg: impl AsRef<str>) {
    info(format!("warning: {}", msg.as_ref()));
}

/// A bar of `len` steps with an ETA; hidden when quiet or when stderr is not a terminal.
pub fn bar(len: u64, prefix: impl Into<String>) -> ProgressBar {
    styled(
        len,
        prefix.into(),
        "{prefix:>12.bold} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        false,
    )
}

/// A bar of `total` bytes with the rate and an ETA (downloads); hidden when quiet or when
/// stderr is not a terminal.
pub fn bytes_bar(total: u64, prefix: impl Into<String>) -> ProgressBar {
    styled(
        total,
        prefix.into(),
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
        true,
    )
}

/// A bar in the shared stderr area with `template`, also reported by the ticker of
/// [`watch`] when stderr is not a terminal (`bytes`: its positions are bytes).
fn styled(len: u64, prefix: String, template: &str, bytes: bool) -> ProgressBar {
    if quiet() {
        return ProgressBar::hidden();
    }
    let pb = multi().add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb.enable_steady_tick(Duration::from_millis(500));
    watch(&pb, bytes);
    pb
}

/// Seconds between the progress lines of bars on a stderr that is not a terminal
/// (`COPAL_PROGRESS_INTERVAL`, default 30, checked at start by `crate::env`).
fn interval() -> Duration {
    let secs = std::env::var("COPAL_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| crate::env::parse_interval(&v).ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Without a terminal indicatif draws nothing, and a long run would be silent for minutes:
/// a ticker prints each unfinished bar as one line (what, how far, elapsed, ETA; for a bytes
/// bar the sizes and the rate) every [`interval`], as cargo does in CI logs.
fn watch(pb: &ProgressBar, bytes: bool) {
    use indicatif::{HumanBytes, HumanDuration};
    use std::sync::{Mutex, Once};
    type Watched = Mutex<Vec<(indicatif::WeakProgressBar, bool)>>;
    static BARS: OnceLock<Watched> = OnceLock::new();
    static TICKER: Once = Once::new();
    if quiet() || !multi().is_hidden() {
        return;
    }
    let bars = BARS.get_or_init(|| Mutex::new(Vec::new()));
    if let Ok(mut b) = bars.lock() {
        b.push((pb.downgrade(), bytes));
    }
    TICKER.call_once(|| {
        std::thread::spawn(move || loop {
            std::thread::sleep(interval());
            let Ok(mut b) = bars.lock() else { return };
            b.retain(|(w, _)| w.upgrade().is_some_and(|p| !p.is_finished()));
            for (p, bytes) in b.iter().filter_map(|(w, k)| Some((w.upgrade()?, *k))) {
                let (pos, len) = (p.position(), p.length().unwrap_or(0));
                let how_far = if bytes {
                    format!(
                        "{} of {} ({}/s)",
                        HumanBytes(pos),
                        HumanBytes(len),
                        HumanBytes(p.per_sec() as u64)
                    )
                } else {
                    format!("{pos}/{len}")
                };
                // The mean rate since the start: indicatif's estimate follows the recent rate,
                // which falls towards zero while a bar waits (the run's bar during an
                // evaluation between steps) and then promises weeks.
                let eta = match (pos, len) {
                    (1.., _) if len > pos => Duration::from_secs_f64(
                        p.elapsed().as_secs_f64() * (len - pos) as f64 / pos as f64,
                    ),
                    _ => p.eta(),
                };
                let msg = p.message();
                eprintln!(
                    "{}: {how_far}{}{} ({} elapsed, about {} left)",
                    p.prefix().trim(),
                    if msg.is_empty() { "" } else { " " },
                    msg,
                    HumanDuration(p.elapsed()),
                    HumanDuration(eta)
                );
            }
        });
    });
}

/// Writes a line of results to stdout; a closed pipe comes back as an error (which `main`
/// treats as success) instead of a panic, as `println!` would.
pub fn out(line: impl AsRef<str>) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(line.as_ref().as_bytes())?;
    o.write_all(b"\n")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The signal that asked to stop (0: Ctrl-C, SIGINT, or none).
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// SIGTERM's number on Linux and the BSDs.
const SIGTERM: i32 = 15;

/// Records which signal asked to stop (an atomic store: safe in a signal handler).
pub fn set_signal(sig: i32) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Records a request to stop (Ctrl-C); returns whether one was already recorded. Only an
/// atomic store: safe to call from a signal handler.
pub fn interrupt() -> bool {
    INTERRUPTED.swap(true, Ordering::SeqCst)
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The error a run stops with after Ctrl-C (the binary exits 130, as shells expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if SIGNAL.load(Ordering::SeqCst) == SIGTERM {
            f.write_str("terminated (SIGTERM)")
        } else {
            f.write_str("interrupted (Ctrl-C)")
        }
    }
}

impl std::error::Error for Interrupted {}

/// Stops long work at a safe point (between layers, windows, tensors) once Ctrl-C was pressed.
pub fn check_interrupt() -> anyhow::Result<()> {
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(())
}
