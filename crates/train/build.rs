//! Links libtorch (rpath, CUDA kept) and compiles volt's C++ shim over libtorch ops
//! that tch does not expose (the fused optimizer kernels).
include!("../../build/libtorch.rs");

fn main() {
    println!("cargo:rerun-if-changed=csrc/volt_ops.cpp");
    let lib = link_libtorch().expect("torch-sys did not report libtorch's lib folder (DEP_TCH_LIBTORCH_LIB)");
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    cc::Build::new()
        .cpp(true)
        .file("csrc/volt_ops.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .opt_level(2)
        .compile("volt_ops");
}
