// Shared by the build scripts of every crate that links libtorch (included, not a crate).
//
// Why: binaries must find libtorch at run time with no environment variables, so we
// embed an rpath to libtorch's `lib/` folder (torch-sys exports it as
// `DEP_TCH_LIBTORCH_LIB`). The linker's `--as-needed` would drop `libtorch_cuda.so`,
// since nothing references it directly, and CUDA would then never be available; we
// keep it linked so that one build uses a GPU wherever libtorch sees one.

/// Emits the link arguments; returns libtorch's `lib/` folder.
fn link_libtorch() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::path::PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    Some(lib)
}
