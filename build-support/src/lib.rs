//! Shared build-script logic for every crate whose binaries or tests link libtorch.
//!
//! torch-sys (a direct dependency of the calling crate, `links = "tch"`) exports the folder that
//! holds libtorch as `DEP_TCH_LIBTORCH_LIB`. From it we emit:
//! - an rpath, so binaries and tests run without `LD_LIBRARY_PATH`;
//! - `--no-as-needed -ltorch_cuda` when the CUDA build of libtorch is present. rustc links with
//!   `--as-needed`, and no symbol of libtorch_cuda is referenced directly, so without this the
//!   library is dropped and `tch::Cuda::is_available()` reads false on a CUDA machine.

use std::path::Path;

/// Call from `build.rs`. Emits the link arguments for this package's binaries, tests and examples.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: add torch-sys as a direct dependency"
        );
        return;
    };
    let lib = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
