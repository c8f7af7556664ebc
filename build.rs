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
//! Each object is then stripped of its DWARF (`llvm-objcopy --strip-debug`
//! from the nightly toolchain's `llvm-tools` component): aya-build compiles
//! with full debug info so bpf-linker can emit BTF, and the BTF sections
//! (`.BTF`, `.BTF.ext`: types and the line info that verifier logs quote)
//! stay, but the DWARF is about three quarters of each object and nothing
//! at load time reads it. Without `llvm-objcopy` the objects are embedded
//! unstripped (a warning says so): the binary is then about 2 MiB larger.
//!
//! Last, each object is zlib-compressed next to itself (`porin.zlib`,
//! `porin-perf.zlib`), and those are what the binary embeds: stripped, the
//! two objects are still about 1.3 MB (code, BTF line info and its
//! relocations), compressed about 0.26 MB. `src/ebpf.rs` inflates one when
//! it is loaded.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for quick host-only work); empty
//! objects are left in their place and the loader then refuses to start
//! with a message saying so, rather than failing to compile.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

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
    let objcopy = llvm_objcopy();
    for object in [&ring, &perf] {
        if !object.exists() {
            fs::write(object, b"")?;
        } else if fs::metadata(object)?.len() > 0 {
            strip_debug(objcopy.as_deref(), object)?;
        }
        compress(object)?;
    }
    Ok(())
}

/// Writes `object` zlib-compressed to `object.zlib` (empty stays empty: the
/// loader's sign of a skipped build).
fn compress(object: &Path) -> anyhow::Result<()> {
    let raw = fs::read(object)?;
    let packed = if raw.is_empty() {
        Vec::new()
    } else {
        miniz_oxide::deflate::compress_to_vec_zlib(&raw, 10)
    };
    fs::write(object.with_extension("zlib"), packed)?;
    Ok(())
}

/// `llvm-objcopy` of the nightly toolchain's `llvm-tools` component (or
/// `$LLVM_OBJCOPY`), if installed.
fn llvm_objcopy() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=LLVM_OBJCOPY");
    if let Some(p) = env::var_os("LLVM_OBJCOPY") {
        return Some(PathBuf::from(p));
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout).ok()?.trim());
    let host = env::var("HOST").ok()?;
    let path = sysroot
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-objcopy");
    path.exists().then_some(path)
}

/// Removes the DWARF sections of `object` in place (BTF stays).
fn strip_debug(objcopy: Option<&Path>, object: &Path) -> anyhow::Result<()> {
    let Some(objcopy) = objcopy else {
        println!(
            "cargo:warning=llvm-objcopy not found (rustup component add llvm-tools \
             --toolchain nightly): {} keeps its DWARF, the binary is about 1 MiB larger",
            object.display()
        );
        return Ok(());
    };
    let status = Command::new(objcopy)
        .arg("--strip-debug")
        .arg(object)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "{} --strip-debug {} failed: {status}",
        objcopy.display(),
        object.display()
    );
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
