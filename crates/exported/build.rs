//! Links libtorch (rpath, CUDA kept) and compiles volt's AOTInductor shim, which tch
//! does not expose.
include!("../../build/libtorch.rs");

fn main() {
    println!("cargo:rerun-if-changed=csrc/volt_aoti.cpp");
    let lib = link_libtorch().expect("torch-sys did not report libtorch's lib folder (DEP_TCH_LIBTORCH_LIB)");
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    cc::Build::new()
        .cpp(true)
        .file("csrc/volt_aoti.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .opt_level(2)
        .compile("volt_aoti");
}
