//! The `copal` binary: parse, run, print the error chain.

mod cli;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

/// Keeps freed activation buffers in the process instead of handing them back to the kernel.
///
/// Every decoder layer allocates and frees the same large tensors (hidden states, MLP
/// activations, attention scores) once per batch. glibc serves blocks above its mmap threshold
/// (128 KiB, adapting up to 32 MiB) with fresh mmaps, so each one costs page faults and page
/// zeroing again, and returns freed heap tops to the kernel. Here the threshold is pinned at
/// its ceiling (32 MiB), the heap grows in 256 MiB steps and is trimmed only above 2 GiB free:
/// in three alternated runs of a 16 × 512 COPAL step on the test model, system time went from
/// 4.7–11.9 s to 2.0–2.4 s and wall time from 26.2–31.6 s to 23.9–25.5 s (docs/performance.md). The peak resident size is set by the live tensors either way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Ctrl-C (and SIGTERM) asks the run to stop at the next layer, so it can say where its
/// finished steps are kept; a second Ctrl-C exits at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn catch_interrupts() {
    extern "C" fn on_signal(sig: libc::c_int) {
        copal::ui::set_signal(sig);
        if copal::ui::interrupt() {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
        let msg: &[u8] = if sig == libc::SIGTERM {
            b"\nterminated (SIGTERM): stopping at the next safe point (send it again to exit now)\n"
        } else {
            b"\ninterrupted: stopping at the next safe point (Ctrl-C again to exit now)\n"
        };
        // SAFETY: write(2) is async-signal-safe; the buffer outlives the call.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs a handler that only touches an atomic and async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn catch_interrupts() {}

fn main() -> ExitCode {
    tune_allocator();
    catch_interrupts();
    let matches = cli::Cli::command().get_matches();
    let parsed = match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let sub = matches.subcommand_name().map(str::to_string);
    let result = copal::env::check().and_then(|()| cli::run(parsed, &matches));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`copal … | head`) is not an error.
            let broken_pipe = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            ExitCode::from(cli::report_error(&err, sub.as_deref()))
        }
    }
}
