//! config.json parsing and everything derived from it (shapes, rope frequencies).
#![no_main]
use copal::model::{Linear, LlamaConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = LlamaConfig::from_json(text) {
        // A validated config must give consistent, non-panicking derived values.
        let _ = (cfg.head_dim(), cfg.num_kv_heads());
        for l in Linear::ALL {
            let (o, i) = l.shape(&cfg);
            assert!(o > 0 && i > 0);
        }
        let inv = copal::model::rope::inv_freq(&cfg);
        assert_eq!(inv.len(), cfg.head_dim() / 2);
    }
});
