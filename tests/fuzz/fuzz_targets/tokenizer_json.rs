//! tokenizer.json loading and the probe copal runs (a corpus-sized text never goes through a
//! tokenizer that failed it): no input may panic or abort the process.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("copal-fuzz-tok-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("tokenizer.json"), data).is_err() {
        return;
    }
    if let Ok(tok) = copal::tokenizer::Tokenizer::open(&dir) {
        let _ = tok.encode("A short text, with 12 numbers.\nAnd lines.");
    }
});
