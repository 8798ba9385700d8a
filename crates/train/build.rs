//! Links libtorch (rpath, CUDA kept) and compiles volt's C++ shims over libtorch:
//! the fused optimizer kernels and c10d (TCPStore + ProcessGroupGloo) for DDP, neither
//! of which tch exposes.
include!("../../build/libtorch.rs");

use std::path::PathBuf;

/// Gloo's headers, which c10d's ProcessGroupGloo.hpp includes but the torch wheel does
/// not ship: `VOLT_GLOO_INCLUDE` (scripts/setup points it at Debian's libgloo-dev
/// headers through .cargo/config.toml), else the system's.
fn gloo_include() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=VOLT_GLOO_INCLUDE");
    let candidates = std::env::var_os("VOLT_GLOO_INCLUDE").map(PathBuf::from).into_iter();
    candidates.chain([PathBuf::from("/usr/include")]).find(|dir| dir.join("gloo/context.h").is_file())
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/volt_ops.cpp");
    println!("cargo:rerun-if-changed=csrc/volt_dist.cpp");
    let lib = link_libtorch().expect("torch-sys did not report libtorch's lib folder (DEP_TCH_LIBTORCH_LIB)");
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    let gloo = gloo_include().unwrap_or_else(|| {
        panic!(
            "gloo headers not found (needed for the ddp strategy): run scripts/setup, \
             or set VOLT_GLOO_INCLUDE to a folder holding gloo/context.h"
        )
    });
    cc::Build::new()
        .cpp(true)
        .file("csrc/volt_ops.cpp")
        .file("csrc/volt_dist.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(gloo)
        .define("USE_C10D_GLOO", None)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .opt_level(2)
        .compile("volt_ops");
}
