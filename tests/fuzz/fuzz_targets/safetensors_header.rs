//! Safetensors shards, state files and index files as copal opens them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("copal-fuzz-st-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("x.safetensors");
    std::fs::File::create(&path).unwrap().write_all(data).unwrap();
    if let Ok(shard) = copal::checkpoint::Shard::open(&path) {
        for name in shard.names() {
            let info = shard.info(&name).unwrap();
            if let Some(bytes) = shard.bytes(&name) {
                let _ = copal::checkpoint::first_non_finite(info.dtype, bytes);
            }
        }
    }
    let _ = copal::state::StateReader::open(&path);
    let index = dir.join("model.safetensors.index.json");
    std::fs::File::create(&index).unwrap().write_all(data).unwrap();
    let _ = copal::checkpoint::read_weight_map(&index);
});
