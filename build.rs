//! Builds the eBPF programs (ebpf/porin-ebpf) with aya-build and leaves the
//! object in OUT_DIR, where `src/ebpf.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for quick host-only work); an
//! empty object is left in its place and the loader then refuses to start
//! with a message saying so, rather than failing to compile.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "porin-ebpf",
        root_dir: "ebpf/porin-ebpf",
        ..Default::default()
    };
    // porin-common is compiled into the eBPF object too.
    println!("cargo:rerun-if-changed=ebpf/porin-common");
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)?;

    let object = PathBuf::from(env::var("OUT_DIR")?).join("porin");
    if !object.exists() {
        fs::write(&object, b"")?;
    }
    Ok(())
}
