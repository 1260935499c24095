//! The continual metrics (COPAL.md §5). R[k][i] is the perplexity on dataset i after step k;
//! with K steps, average PPL = mean_i R[K][i] and BWT = mean_{i<K} (R[K][i] − R[i][i])
//! (positive = forgetting, since lower perplexity is better).

use crate::report::StepRecordOut;

/// Average perplexity and BWT of an R matrix whose rows are steps and whose columns are
/// datasets, the dataset of step k being column `offset + k`.
pub fn continual_metrics(r: &[Vec<f64>], offset: usize) -> (f64, Option<f64>) {
    let Some(last) = r.last() else {
        return (f64::NAN, None);
    };
    let avg = last.iter().sum::<f64>() / last.len().max(1) as f64;
    let k = r.len();
    if k < 2 {
        return (avg, None);
    }
    let bwt = (0..k - 1)
        .map(|i| last[offset + i] - r[i][offset + i])
        .sum::<f64>()
        / (k - 1) as f64;
    (avg, Some(bwt))
}

/// The R matrix: one row per step, one column per dataset, NaN where not evaluated.
pub fn ppl_matrix(steps: &[StepRecordOut], columns: &[String]) -> Vec<Vec<f64>> {
    steps
        .iter()
        .filter_map(|s| s.eval.as_ref())
        .map(|ev| {
            columns
                .iter()
                .map(|c| {
                    ev.iter()
                        .find(|e| &e.dataset == c)
                        .map(|e| e.ppl)
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwt_and_average() {
        // Two steps over two datasets; dataset 0 got worse by 2 after step 1.
        let r = vec![vec![10.0, 30.0], vec![12.0, 20.0]];
        let (avg, bwt) = continual_metrics(&r, 0);
        assert_eq!(avg, 16.0);
        assert_eq!(bwt, Some(2.0));
        assert_eq!(continual_metrics(&r[..1], 0).1, None);
    }
}
