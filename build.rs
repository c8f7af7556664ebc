//! Builds the eBPF programs (ebpf/porin-ebpf) with aya-build, twice from the
//! same source, and leaves both objects in OUT_DIR, where `src/ebpf.rs`
//! embeds them:
//!
//! * `porin`: flow events through a BPF ring buffer (kernel 5.8+);
//! * `porin-perf`: the same programs with the `perf-events` feature, flow
//!   events through a perf event array (kernels without ring buffers).
//!
//! One object cannot carry both maps: the kernel creates every map an object
//! names before it verifies a program, and a ring buffer cannot be created
//! before 5.8. Both builds share aya-build's target directory, so `core`,
//! `aya-ebpf` and `porin-common` are compiled once; only `porin-ebpf` itself
//! is compiled twice (cargo keeps one fingerprint per feature set, so neither
//! build invalidates the other).
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for quick host-only work); empty
//! objects are left in their place and the loader then refuses to start
//! with a message saying so, rather than failing to compile.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let (ring, perf) = (out.join("porin"), out.join("porin-perf"));
    // porin-common is compiled into the eBPF objects too.
    println!("cargo:rerun-if-changed=ebpf/porin-common");
    // Objects of an earlier run must not survive a skipped build under the
    // other name.
    for object in [&ring, &perf] {
        let _ = fs::remove_file(object);
    }
    // aya-build copies the binary to OUT_DIR under its bin name (`porin`)
    // after each build: build the perf variant first and rename it.
    build(&["perf-events"])?;
    if ring.exists() {
        fs::rename(&ring, &perf)?;
    }
    build(&[])?;
    for object in [&ring, &perf] {
        if !object.exists() {
            fs::write(object, b"")?;
        }
    }
    Ok(())
}

fn build(features: &[&str]) -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "porin-ebpf",
        root_dir: "ebpf/porin-ebpf",
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
