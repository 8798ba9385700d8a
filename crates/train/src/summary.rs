//! The model summary printed when `fit` starts: parameters per top-level module.
use std::collections::BTreeMap;
use std::fmt;
use tch::nn;

/// Parameter counts of a model, grouped by the first component of each variable's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSummary {
    /// `(module, parameter count)`, in name order.
    pub modules: Vec<(String, i64)>,
    /// Parameters that receive gradients.
    pub trainable: i64,
    /// Parameters that do not (buffers, frozen weights).
    pub non_trainable: i64,
}

impl ModelSummary {
    /// The summary of `vs`.
    pub fn of(vs: &nn::VarStore) -> Self {
        let mut modules: BTreeMap<String, i64> = BTreeMap::new();
        let (mut trainable, mut non_trainable) = (0, 0);
        for (name, t) in vs.variables() {
            let n = t.numel() as i64;
            let top = name.split('.').next().unwrap_or(&name).to_owned();
            *modules.entry(top).or_default() += n;
            if t.requires_grad() {
                trainable += n;
            } else {
                non_trainable += n;
            }
        }
        ModelSummary { modules: modules.into_iter().collect(), trainable, non_trainable }
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.modules.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
        writeln!(f, "  | {:<width$} | Params", "Name")?;
        for (i, (name, n)) in self.modules.iter().enumerate() {
            writeln!(f, "{i} | {name:<width$} | {n}")?;
        }
        let total = self.trainable + self.non_trainable;
        writeln!(f, "{} trainable params", self.trainable)?;
        writeln!(f, "{} non-trainable params", self.non_trainable)?;
        writeln!(f, "{total} total params")?;
        write!(f, "{:.3} MB total estimated model params size", total as f64 * 4.0 / 1e6)
    }
}
