//! `copal prune`: resolve the plan, run the dataset sequence, print the results.

use crate::cli::PruneArgs;
use crate::config::PrunePlan;
use crate::continual;
use crate::report;
use anyhow::Result;

pub fn run(a: PruneArgs) -> Result<()> {
    crate::ui::set_quiet(a.output.quiet);
    let mut plan = PrunePlan::resolve(&a)?;
    if a.dry_run {
        crate::ui::out(serde_json::to_string_pretty(&plan)?)?;
        return Ok(());
    }
    let rec = continual::run(&mut plan)?;
    if a.output.json {
        let v = serde_json::json!({
            "out": plan.out,
            "datasets": rec.datasets,
            "ppl_matrix": rec.ppl_matrix,
            "dense_ppl": rec.dense_eval.as_ref().map(|d| d.iter().map(|e| e.ppl).collect::<Vec<_>>()),
            "avg_ppl": rec.avg_ppl,
            "bwt": rec.bwt,
            "sparsity": rec.sparsity,
            "seconds": rec.seconds,
            "peak_rss_bytes": rec.peak_rss_bytes,
        });
        crate::ui::out(serde_json::to_string_pretty(&v)?)?;
    } else {
        let table = report::ppl_table(&rec);
        if !table.is_empty() {
            crate::ui::out(table.trim_end())?;
        }
        crate::ui::out(format!(
            "wrote {} (sparsity {:.4} over the pruned linears, {:.1}s)",
            plan.out.display(),
            rec.sparsity,
            rec.seconds
        ))?;
    }
    Ok(())
}
