//! The user-crate example runs `fit` from a TOML file and learns its line.
use std::process::Command;

#[test]
fn fit_from_a_toml_file_learns_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Read at run time: a test binary reused from another checkout must not point there.
    let config =
        std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("fit.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_volt-example-user-crate"))
        .args(["fit", "--config"])
        .arg(&config)
        .arg("--trainer.default_root_dir")
        .arg(dir.path())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("fit finished: max_epochs=20 reached"), "{stdout}");
    let val_loss: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("val_loss: "))
        .and_then(|v| v.parse().ok())
        .expect("a val_loss line");
    assert!(val_loss < 1e-3, "val_loss {val_loss}: the line was not learned");
    let saved = std::fs::read_to_string(dir.path().join("lightning_logs/version_0/config.toml"))
        .expect("config.toml");
    assert!(saved.contains("slope = 3.0"), "{saved}");
    assert!(saved.contains("lr = 0.2"), "{saved}");
}
