//! Build script of crates that only link libtorch (see libtorch.rs).
include!("libtorch.rs");

fn main() {
    link_libtorch();
}
