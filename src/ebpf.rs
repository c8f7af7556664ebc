//! The eBPF object built by `build.rs` and embedded in the binary, and loading
//! it into the kernel with errors that keep the verifier's log.

use std::sync::OnceLock;

use aya::{programs::ProgramError, Ebpf, EbpfError, EbpfLoader};

use crate::kernel::{EventsTransport, KernelFeatures};

/// The programs' object file, as built for this binary's architecture, with
/// flow events through a ring buffer (kernel 5.8+).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/porin"));
/// The same programs with flow events through a perf event array, for
/// kernels without ring buffers (see `build.rs`).
static OBJECT_PERF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/porin-perf"));

/// The transport [`open`] loads, once chosen.
static TRANSPORT: OnceLock<EventsTransport> = OnceLock::new();

/// Fixes the transport every later [`open`] uses (the daemon calls it once
/// with its config's choice, before the self-test); returns the one in
/// force (an earlier choice stays).
pub fn set_transport(t: EventsTransport) -> EventsTransport {
    *TRANSPORT.get_or_init(|| t)
}

/// The transport [`open`] loads: the one set, or the kernel probe's.
pub fn transport() -> EventsTransport {
    *TRANSPORT.get_or_init(|| KernelFeatures::probe().events_transport(None))
}

/// Why the programs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this porin binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
         rebuild without it"
    )]
    NotEmbedded,
    #[error("loading the eBPF object into the kernel failed: {0}")]
    Object(#[source] EbpfError),
    #[error("program `{name}` is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("program `{name}` has an unexpected type in the eBPF object")]
    WrongProgramType { name: &'static str },
    #[error("the kernel refused program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map `{name}` is missing from the eBPF object")]
    MissingMap { name: &'static str },
}

/// The raw object bytes for [`transport`], or an error when the build
/// skipped the eBPF build.
pub fn object() -> Result<&'static [u8], LoadError> {
    object_for(transport())
}

/// The raw object bytes with flow events through `t`.
pub fn object_for(t: EventsTransport) -> Result<&'static [u8], LoadError> {
    let bytes = match t {
        EventsTransport::RingBuf => OBJECT,
        EventsTransport::Perf => OBJECT_PERF,
    };
    if bytes.is_empty() {
        Err(LoadError::NotEmbedded)
    } else {
        Ok(bytes)
    }
}

/// Parses the object for [`transport`] and creates its maps in the kernel.
/// Programs are loaded one by one by their users (see [`load_program`]) so
/// each error names its program.
pub fn open() -> Result<Ebpf, LoadError> {
    open_with(transport())
}

/// [`open`] with the object for transport `t` (tests run both).
pub fn open_with(t: EventsTransport) -> Result<Ebpf, LoadError> {
    // The programs use no CO-RE relocations, so the kernel's BTF (several
    // MiB, parsed into far more heap) is not needed: skipping it keeps the
    // daemon small and the load fast.
    EbpfLoader::new()
        .btf(None)
        .load(object_for(t)?)
        .map_err(LoadError::Object)
}

/// Loads program `name` of type `P` (e.g. `aya::programs::Xdp`) from `ebpf`
/// into the kernel and returns it. The verifier log, if any, is inside the
/// error.
pub fn load_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    P: Loadable + 'a,
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?;
    let program: &mut P = program
        .try_into()
        .map_err(|_| LoadError::WrongProgramType { name })?;
    program
        .load_into_kernel()
        .map_err(|source| LoadError::Program { name, source })?;
    Ok(program)
}

/// Program types whose `load()` takes no arguments (XDP and TC classifiers).
pub trait Loadable {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError>;
}

impl Loadable for aya::programs::Xdp {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for aya::programs::SchedClassifier {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No program may hold a BPF-to-BPF call: 5.10's arm64 JIT refuses
    /// them in programs that tail-call ("tail_calls are not allowed in
    /// non-JITed programs with bpf-to-bpf calls"), the HTTP stage then
    /// fails to load there, and LLVM makes such calls without a word from
    /// a zero-fill it turns into `memset` (see `parse::HeaderBuf`).
    #[test]
    fn no_program_makes_bpf_to_bpf_calls() {
        const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
        const PSEUDO_CALL: u8 = 1; // src_reg of a call to a subprogram
        for t in [EventsTransport::RingBuf, EventsTransport::Perf] {
            let Ok(bytes) = object_for(t) else {
                // Host-only work (docs/DEVELOPING.md); CI always builds them.
                eprintln!("SKIPPED: no eBPF objects in an AYA_BUILD_SKIP build");
                return;
            };
            let obj = aya_obj::Object::parse(bytes).expect("the object parses");
            assert!(obj.programs.contains_key("http_parse"));
            for (name, prog) in &obj.programs {
                let f = &obj.functions[&prog.function_key()];
                let calls = f
                    .instructions
                    .iter()
                    .filter(|i| i.code == CALL && i.src_reg() == PSEUDO_CALL)
                    .count();
                assert_eq!(calls, 0, "{t:?} object, program {name}: BPF-to-BPF calls");
            }
        }
    }
}
