//! The GGUF importer end to end: header, metadata, tensors, config and tokenizer rebuild.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("copal-fuzz-gguf-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("x.gguf");
    std::fs::File::create(&path).unwrap().write_all(data).unwrap();
    let out = dir.join("out");
    let _ = copal::checkpoint::gguf::import(&path, &out, candle_core::DType::F32);
    let _ = std::fs::remove_dir_all(&out);
});
