//! Replays every file of every fuzz target's corpus (`fuzz/corpus/<target>/`) through the
//! target, as an ordinary test: what a fuzzing campaign found stays fixed.
use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_of_every_target_passes() {
    for (name, target) in volt_fuzz::TARGETS {
        let dir = corpus(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has no corpus at {}", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name}: {} fails", file.display());
            }
        }
    }
}
