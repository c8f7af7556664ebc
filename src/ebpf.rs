//! The eBPF object built by `build.rs` and embedded in the binary, and loading
//! it into the kernel with errors that keep the verifier's log.

use std::sync::OnceLock;

use aya::{programs::ProgramError, Ebpf, EbpfError, EbpfLoader};

use crate::kernel::{EventsTransport, KernelFeatures};

/// The programs' object file, as built for this binary's architecture, with
/// flow events through a ring buffer (kernel 5.8+), zlib-compressed by
/// `build.rs` (the binary's size budget; see there).
static OBJECT_ZLIB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/porin.zlib"));
/// The same programs with flow events through a perf event array, for
/// kernels without ring buffers (see `build.rs`).
static OBJECT_PERF_ZLIB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/porin-perf.zlib"));

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
    #[error(
        "the eBPF object embedded in this binary does not inflate ({0}); the binary is damaged"
    )]
    Inflate(String),
}

/// An eBPF object inflated from the binary. Its bytes start 8-byte aligned,
/// as the ELF parser reads headers in place. Dropped once loaded, so the
/// daemon does not keep a second copy of its programs on the heap.
pub struct Object {
    words: Vec<u64>,
    len: usize,
}

impl std::ops::Deref for Object {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialised bytes (see
        // `inflate`), u8 has no alignment or validity requirements, and the
        // slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// The object for [`transport`], or an error when the build skipped the
/// eBPF build.
pub fn object() -> Result<Object, LoadError> {
    object_for(transport())
}

/// The object with flow events through `t`.
pub fn object_for(t: EventsTransport) -> Result<Object, LoadError> {
    let packed = match t {
        EventsTransport::RingBuf => OBJECT_ZLIB,
        EventsTransport::Perf => OBJECT_PERF_ZLIB,
    };
    if packed.is_empty() {
        return Err(LoadError::NotEmbedded);
    }
    inflate(packed)
}

fn inflate(packed: &[u8]) -> Result<Object, LoadError> {
    let bytes = miniz_oxide::inflate::decompress_to_vec_zlib(packed)
        .map_err(|e| LoadError::Inflate(format!("{:?}", e.status)))?;
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_ne_bytes(b);
    }
    Ok(Object {
        words,
        len: bytes.len(),
    })
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
        .load(&object_for(t)?)
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

    /// Both embedded objects inflate to 8-byte aligned ELF files for BPF,
    /// and a damaged one is an error, not a panic or a wrong object.
    #[test]
    fn the_embedded_objects_inflate_to_aligned_bpf_elf_files() {
        for t in [EventsTransport::RingBuf, EventsTransport::Perf] {
            let Ok(obj) = object_for(t) else {
                eprintln!("SKIPPED: no eBPF objects in an AYA_BUILD_SKIP build");
                return;
            };
            assert_eq!(&obj[..4], b"\x7fELF", "{t:?}");
            assert_eq!(
                u16::from_le_bytes([obj[18], obj[19]]),
                247,
                "{t:?}: e_machine EM_BPF"
            );
            assert_eq!(obj.as_ptr() as usize % 8, 0, "{t:?}");
            assert!(obj.len() > OBJECT_ZLIB.len(), "{t:?}: inflated");
        }
        let mut damaged = OBJECT_ZLIB.to_vec();
        if damaged.len() > 100 {
            damaged.truncate(damaged.len() / 2);
            assert!(matches!(inflate(&damaged), Err(LoadError::Inflate(_))));
        }
    }

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
            let obj = aya_obj::Object::parse(&bytes).expect("the object parses");
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
