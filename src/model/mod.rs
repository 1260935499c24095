//! The LLaMA forward pass, written out so that a caller can run it one decoder layer at a time
//! and see every linear's input and output (see [`block`]).
//!
//! embedding → layers 0..L → RMSNorm → LM head, logits at every position. Only the embedding,
//! final norm and LM head live in [`Llama`]; decoder layers are loaded on demand from a
//! [`TensorSource`] (a memory-mapped checkpoint, or tensors built in memory by tests), so the
//! weights resident at any time are one layer's plus the embedding and head.

pub mod attention;
pub mod block;
pub mod config;
pub(crate) mod expsum;
pub mod head;
pub mod llama;
pub mod rope;
pub mod softmax;
pub mod source;

pub use block::{DecoderLayer, Linear, Positions, Taps};
pub use config::LlamaConfig;
pub use head::window_nll;
pub use llama::{Llama, EMBED, FINAL_NORM, LM_HEAD};
pub use source::TensorSource;
