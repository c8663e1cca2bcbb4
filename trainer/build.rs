//! Link-time set-up for libtorch (also used by the `tests` crate, whose binaries link it too).
//!
//! `tch`'s build script finds libtorch through `LIBTORCH` (set by `.cargo/config.toml` to the
//! `.cache/libtorch` link that `scripts/setup` makes). Here we add an rpath to its real location so
//! binaries and tests run without `LD_LIBRARY_PATH`, and, when the CUDA libraries are installed
//! (`scripts/setup --cuda`), link `libtorch_cuda` with `--no-as-needed`: nothing in our code refers to
//! it by symbol, so the default `--as-needed` would drop it and `tch::Cuda::is_available()` would be
//! false on a GPU machine.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let lib_dir = libtorch.join("lib");
    let lib_dir = std::fs::canonicalize(&lib_dir).unwrap_or(lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if cuda_libraries_present(&lib_dir) {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// True when `libtorch_cuda.so` and the cuBLAS it needs are both installed (the wheel always holds
/// `libtorch_cuda.so`; the CPU set-up leaves its CUDA dependencies out).
fn cuda_libraries_present(lib_dir: &Path) -> bool {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return false;
    }
    let Some(site) = lib_dir.parent().and_then(Path::parent) else {
        return false;
    };
    ["nvidia/cu13/lib", "nvidia/cublas/lib"].iter().any(|sub| {
        std::fs::read_dir(site.join(sub))
            .map(|entries| {
                entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcublas"))
            })
            .unwrap_or(false)
    })
}
