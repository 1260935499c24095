//! Untrusted files go through libraries that sometimes panic on what they were not written
//! for (a GGUF alignment of 0, a tokenizer normaliser with an empty pattern). [`no_panic`] runs
//! such a call and turns a panic into an error, without the panic's message on stderr: the
//! user gets one `error:` line naming the file, not a crash.

use anyhow::{bail, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic inside becomes the error "`what` failed inside `library` (message)".
pub fn no_panic<T>(what: &str, library: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            bail!("{what} failed inside {library} ({msg})")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error() {
        let e = super::no_panic("dividing", "a test", || -> anyhow::Result<u32> {
            let zero = std::hint::black_box(0u32);
            Ok(1 / zero)
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("dividing failed inside a test"),
            "{e}"
        );
        assert_eq!(super::no_panic("x", "y", || Ok(3)).unwrap(), 3);
    }
}
