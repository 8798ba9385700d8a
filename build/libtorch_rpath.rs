//! Build script shared by every crate whose binaries, tests or examples link libtorch.
//!
//! Why: binaries must find libtorch at run time with no environment variables, so we
//! embed an rpath to libtorch's `lib/` folder (torch-sys exports it as
//! `DEP_TCH_LIBTORCH_LIB`). The linker's `--as-needed` would drop `libtorch_cuda.so`,
//! since nothing references it directly, and CUDA would then never be available; we
//! keep it linked so that one build uses a GPU wherever libtorch sees one.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
