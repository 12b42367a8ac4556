//! Shared build-script logic for every crate whose binaries or tests link libtorch.
//!
//! torch-sys (a direct dependency of the calling crate, `links = "tch"`) exports the folder that
//! holds libtorch as `DEP_TCH_LIBTORCH_LIB`. From it we emit:
//! - an rpath, so binaries and tests run without `LD_LIBRARY_PATH`;
//! - `--no-as-needed -ltorch_cuda` when the CUDA build of libtorch is present. rustc links with
//!   `--as-needed`, and no symbol of libtorch_cuda is referenced directly, so without this the
//!   library is dropped and `tch::Cuda::is_available()` reads false on a CUDA machine.
//!
//! A cross build for a device (deploy/jetson/cross.sh) sets two more variables:
//! - `TOLK_LIBTORCH_RPATH` (`:`-separated) replaces the rpath: where libtorch lies on the device,
//!   not where the build found it;
//! - `TOLK_LIBTORCH_RPATH_LINK` (`:`-separated): folders the linker searches for libtorch's own
//!   dependencies (the CUDA libraries of PyPI's aarch64 torch), which nothing else names.

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
    println!("cargo:rerun-if-env-changed=TOLK_LIBTORCH_RPATH");
    println!("cargo:rerun-if-env-changed=TOLK_LIBTORCH_RPATH_LINK");
    match std::env::var("TOLK_LIBTORCH_RPATH") {
        Ok(paths) => {
            for p in paths.split(':').filter(|p| !p.is_empty()) {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{p}");
            }
        }
        Err(_) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display()),
    }
    if let Ok(paths) = std::env::var("TOLK_LIBTORCH_RPATH_LINK") {
        for p in paths.split(':').filter(|p| !p.is_empty()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath-link,{p}");
        }
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
