//! `copal prune`.

use crate::cli::PruneArgs;
use anyhow::Result;

pub fn run(_a: PruneArgs) -> Result<()> {
    anyhow::bail!("copal prune is not implemented yet")
}
