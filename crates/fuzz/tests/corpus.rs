//! Replays every file of every fuzz target's seeds and corpus (`fuzz/seeds/<target>/`,
//! `fuzz/corpus/<target>/`) through the target, as an ordinary test: the inputs of fixed
//! defects and what the campaigns found stay passing.
use std::path::PathBuf;

/// Every file of `fuzz/<folder>/<target>/`, sorted (none when the folder is absent).
fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../fuzz")
        .join(folder)
        .join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_corpus_file_of_every_target_passes() {
    for (name, target) in volt_fuzz::TARGETS {
        let seeds = inputs("seeds", name);
        assert!(!seeds.is_empty(), "{name} has no seeds in fuzz/seeds/{name}");
        for file in seeds.into_iter().chain(inputs("corpus", name)) {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name}: {} fails", file.display());
            }
        }
    }
}
