//! An evaluation as named scores, and the continual matrices built from them (COPAL.md §5).
//!
//! A [`Score`] is one measured value: what was evaluated (a dataset, a task), its metric
//! (`ppl`, `acc`, `acc_norm`), which direction is better, the value and its standard error.
//! A [`ScoreMatrix`] holds one metric after every step, R[k][j] = the score of column j after
//! step k, with
//!
//! - average = mean_j R[K][j] over the last step's row;
//! - BWT (backward transfer), in the metric's own units, the later steps' effect on what the
//!   earlier steps left:
//!   - a column that a step calibrated on (a dataset: step i's is column c_i):
//!     BWT = mean_{i<K} (R[K][c_i] − R[i][c_i]);
//!   - columns no step calibrated on (zero-shot tasks):
//!     BWT = mean_{i<K} mean_j (R[K][j] − R[i][j]).
//!
//! Forgetting is a BWT in the worse direction: a rise for perplexity, a fall for accuracy
//! ([`ScoreMatrix::forgetting`] turns it into "positive = forgot" for both).

use serde::{Deserialize, Serialize};

/// The perplexity metric's name: the one metric whose columns are the calibration datasets
/// (and whose matrix copal.json also keeps in its first format's fields).
pub const PPL: &str = "ppl";

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    /// +1 when lower is better, −1 when higher is: `sign · (a − b) > 0` means a is worse.
    pub fn worse_sign(self) -> f64 {
        match self {
            Better::Lower => 1.0,
            Better::Higher => -1.0,
        }
    }
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// What was evaluated: a dataset (`wikitext2`) or a task (`arc_easy`).
    pub name: String,
    /// `ppl`, `acc`, `acc_norm`.
    pub metric: String,
    pub better: Better,
    pub value: f64,
    /// Standard error of `value` (none where it cannot be estimated, e.g. one window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<f64>,
}

impl Score {
    pub fn new(name: &str, metric: &str, better: Better, value: f64, stderr: f64) -> Self {
        Self {
            name: name.to_string(),
            metric: metric.to_string(),
            better,
            value,
            stderr: stderr.is_finite().then_some(stderr),
        }
    }
}

/// How BWT pairs a step with a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transfer {
    /// Step i calibrated on column `offset + i` (the datasets).
    Diagonal { offset: usize },
    /// No step calibrated on any column (the tasks): every column after every earlier step.
    Columns,
}

/// One metric after every step: R[step][column].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreMatrix {
    pub metric: String,
    pub better: Better,
    pub columns: Vec<String>,
    /// The dense model's scores, one per column (none when it was not evaluated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<Vec<Option<f64>>>,
    /// R[k][j]; none where not evaluated.
    pub rows: Vec<Vec<Option<f64>>>,
    pub transfer: Transfer,
    /// mean_j R[K][j] (none if the last row misses a column).
    pub average: Option<f64>,
    /// See the module header; none with fewer than two steps.
    pub bwt: Option<f64>,
}

impl ScoreMatrix {
    /// The matrix of `metric` over `columns` from each step's scores (and the dense
    /// model's), with its average and BWT.
    pub fn build(
        metric: &str,
        columns: &[String],
        dense: Option<&[Score]>,
        steps: &[&[Score]],
        transfer: Transfer,
    ) -> Option<Self> {
        let better = steps
            .iter()
            .copied()
            .chain(dense)
            .flatten()
            .find(|s| s.metric == metric)?
            .better;
        let row = |scores: &[Score]| -> Vec<Option<f64>> {
            columns
                .iter()
                .map(|c| {
                    scores
                        .iter()
                        .find(|s| &s.name == c && s.metric == metric)
                        .map(|s| s.value)
                        .filter(|v| !v.is_nan())
                })
                .collect()
        };
        let rows: Vec<_> = steps.iter().map(|s| row(s)).collect();
        let mut m = Self {
            metric: metric.to_string(),
            better,
            columns: columns.to_vec(),
            dense: dense.map(row),
            rows,
            transfer,
            average: None,
            bwt: None,
        };
        (m.average, m.bwt) = m.continual();
        Some(m)
    }

    /// Average and BWT of the rows (module header).
    fn continual(&self) -> (Option<f64>, Option<f64>) {
        let Some(last) = self.rows.last() else {
            return (None, None);
        };
        let average = mean(last);
        let k = self.rows.len();
        if k < 2 {
            return (average, None);
        }
        let terms: Vec<Option<f64>> = match self.transfer {
            Transfer::Diagonal { offset } => (0..k - 1)
                .map(|i| Some((*last.get(offset + i)?)? - (*self.rows[i].get(offset + i)?)?))
                .collect(),
            Transfer::Columns => (0..k - 1)
                .map(|i| {
                    let d: Vec<Option<f64>> = last
                        .iter()
                        .zip(&self.rows[i])
                        .map(|(a, b)| Some((*a)? - (*b)?))
                        .collect();
                    mean(&d)
                })
                .collect(),
        };
        (average, mean(&terms))
    }

    /// BWT with "positive = forgot" for every metric.
    pub fn forgetting(&self) -> Option<f64> {
        Some(self.bwt? * self.better.worse_sign())
    }

    /// The rows with NaN where a value is missing (the perplexity matrix of copal.json's
    /// first format, `ppl_matrix`).
    pub fn nan_rows(&self) -> Vec<Vec<f64>> {
        self.rows
            .iter()
            .map(|r| r.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
            .collect()
    }
}

/// The mean, or none if a value is missing or there is none.
fn mean(xs: &[Option<f64>]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let v: Option<Vec<f64>> = xs.iter().copied().collect();
    v.map(|v| v.iter().sum::<f64>() / v.len() as f64)
}

/// The metrics among `scores`, in order of first appearance.
pub fn metrics_of<'a>(scores: impl IntoIterator<Item = &'a Score>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in scores {
        if !out.contains(&s.metric.as_str()) {
            out.push(&s.metric);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ppl(name: &str, v: f64) -> Score {
        Score::new(name, "ppl", Better::Lower, v, f64::NAN)
    }
    fn acc(name: &str, v: f64) -> Score {
        Score::new(name, "acc", Better::Higher, v, 0.01)
    }

    #[test]
    fn perplexity_bwt_pairs_each_step_with_its_dataset() {
        // Two steps over two datasets; dataset 0 got worse by 2 after step 1.
        let cols = vec!["a".to_string(), "b".to_string()];
        let s1 = [ppl("a", 10.0), ppl("b", 30.0)];
        let s2 = [ppl("a", 12.0), ppl("b", 20.0)];
        let m = ScoreMatrix::build(
            "ppl",
            &cols,
            None,
            &[&s1, &s2],
            Transfer::Diagonal { offset: 0 },
        )
        .unwrap();
        assert_eq!(m.average, Some(16.0));
        assert_eq!(m.bwt, Some(2.0));
        assert_eq!(m.forgetting(), Some(2.0));
        let one = ScoreMatrix::build("ppl", &cols, None, &[&s1], Transfer::Diagonal { offset: 0 });
        assert_eq!(one.unwrap().bwt, None);
        // A state that held one dataset before the run: its column comes first.
        let m = ScoreMatrix::build("ppl", &cols, None, &[&s2], Transfer::Diagonal { offset: 1 });
        assert_eq!(m.unwrap().bwt, None);
    }

    #[test]
    fn accuracy_bwt_is_the_mean_change_since_each_earlier_step_and_a_fall_is_forgetting() {
        let cols = vec!["x".to_string(), "y".to_string()];
        let s1 = [acc("x", 0.60), acc("y", 0.40)];
        let s2 = [acc("x", 0.50), acc("y", 0.40)];
        let s3 = [acc("x", 0.50), acc("y", 0.30)];
        let m =
            ScoreMatrix::build("acc", &cols, None, &[&s1, &s2, &s3], Transfer::Columns).unwrap();
        assert!((m.average.unwrap() - 0.40).abs() < 1e-12);
        // After step 1: (−0.10 − 0.10)/2 = −0.10; after step 2: (0 − 0.10)/2 = −0.05.
        assert!((m.bwt.unwrap() - (-0.075)).abs() < 1e-12, "{:?}", m.bwt);
        assert!((m.forgetting().unwrap() - 0.075).abs() < 1e-12);
        assert_eq!(
            (Better::Higher.worse_sign(), Better::Lower.worse_sign()),
            (-1.0, 1.0)
        );
    }

    #[test]
    fn a_missing_value_leaves_the_average_empty_and_other_metrics_are_ignored() {
        let cols = vec!["x".to_string(), "y".to_string()];
        let s1 = [acc("x", 0.6), ppl("y", 3.0)];
        let m = ScoreMatrix::build("acc", &cols, Some(&s1), &[&s1], Transfer::Columns).unwrap();
        assert_eq!(m.rows, vec![vec![Some(0.6), None]]);
        assert_eq!(m.dense, Some(vec![Some(0.6), None]));
        assert_eq!(m.average, None);
        assert!(ScoreMatrix::build("acc_norm", &cols, None, &[&s1], Transfer::Columns).is_none());
    }
}
