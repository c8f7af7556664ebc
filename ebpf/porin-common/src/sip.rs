//! SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input
//! PRF", 2012) with a streaming interface made for the HTTP parser: bytes
//! go in one at a time ([`Sip::update`]) and [`Sip::finish`] reads the
//! hash of everything so far without consuming the state, so the parser
//! takes the hash of a path prefix at each `/` and goes on hashing.
//!
//! The HTTP rule keys are hashes of attacker-supplied bytes (paths, header
//! values), so the hash is a keyed PRF with a secret 128-bit [`SipKey`]
//! per install: a client cannot compute which bytes hash to an allowed
//! key. 2-4 (two compression rounds per 8-byte word, four finalisation
//! rounds) is the variant with the published security claims. Its cost
//! was measured, not assumed: about 0.1-0.2 µs more per HTTP request head
//! than FNV-1a (docs/BENCHMARKS.md, "Keyed hashes"), the finalisation
//! being paid once per hash taken; and the kernel's parse chunks (32
//! bytes per tail call) still pass the verifier with it, 5.10 included.
//! So nothing argued for the weaker 1-3.
//!
//! Everything is straight-line code on `u64`s (no loops over bytes, no
//! tables): the same functions run in the kernel's HTTP stage and on the
//! host.

/// A SipHash key: `k0` and `k1` are the little-endian words of the 16 key
/// bytes (bytes 0..8 and 8..16). All zeroes means "not set" to the HTTP
/// stage, which then denies every request (`PORIN_HTTPK_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct SipKey {
    pub k0: u64,
    pub k1: u64,
}

impl SipKey {
    pub const ZERO: SipKey = SipKey { k0: 0, k1: 0 };

    /// The key of 16 bytes, as the reference implementation reads them.
    pub const fn from_bytes(b: [u8; 16]) -> SipKey {
        SipKey {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    pub const fn to_bytes(&self) -> [u8; 16] {
        let a = self.k0.to_le_bytes();
        let b = self.k1.to_le_bytes();
        [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5],
            b[6], b[7],
        ]
    }

    pub const fn is_zero(&self) -> bool {
        self.k0 == 0 && self.k1 == 0
    }
}

/// The hashing state: the four SipHash words, the bytes of the current
/// word not compressed yet, and how many bytes went in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sip {
    pub v: [u64; 4],
    /// Bytes `8 * (n / 8) ..` of the input, little-endian, rest zero.
    pub m: u64,
    /// Bytes absorbed.
    pub n: u64,
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// Absorbs one 8-byte word (`c` = 2 rounds).
#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    round(v);
    v[0] ^= m;
}

impl Sip {
    /// The state before any byte, under `key`.
    #[inline(always)]
    pub const fn new(key: &SipKey) -> Sip {
        Sip {
            v: [
                key.k0 ^ 0x736f_6d65_7073_6575,
                key.k1 ^ 0x646f_7261_6e64_6f6d,
                key.k0 ^ 0x6c79_6765_6e65_7261,
                key.k1 ^ 0x7465_6462_7974_6573,
            ],
            m: 0,
            n: 0,
        }
    }

    /// Absorbs one byte.
    #[inline(always)]
    pub fn update(&mut self, b: u8) {
        let n = self.n;
        let m = self.m | (u64::from(b) << ((n & 7) * 8));
        if n & 7 == 7 {
            compress(&mut self.v, m);
            self.m = 0;
        } else {
            self.m = m;
        }
        self.n = n + 1;
    }

    /// The hash of the bytes absorbed so far; the state is unchanged, so
    /// more bytes may follow.
    #[inline(always)]
    pub fn finish(&self) -> u64 {
        let mut v = self.v;
        let b = self.m | (self.n << 56);
        compress(&mut v, b);
        v[2] ^= 0xff;
        round(&mut v);
        round(&mut v);
        round(&mut v);
        round(&mut v);
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

/// SipHash-2-4 of `bytes` under `key`.
pub fn siphash(key: &SipKey, bytes: &[u8]) -> u64 {
    let mut s = Sip::new(key);
    for &b in bytes {
        s.update(b);
    }
    s.finish()
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], two u64, valid for any bytes.
unsafe impl aya::Pod for SipKey {}

const _: () = assert!(core::mem::size_of::<SipKey>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    /// SipHash-2-4 with key 00 01 .. 0f of the messages 00 01 .. (n-1),
    /// n = 0..64: `vectors_sip64` of the reference implementation
    /// (github.com/veorq/SipHash, `vectors.h`), each 8-byte output read
    /// little-endian. Entry 15 is also the worked example of the paper's
    /// appendix A (a129ca6149be45e5).
    const VECTORS: [u64; 64] = [
        0x726fdb47dd0e0e31,
        0x74f839c593dc67fd,
        0x0d6c8009d9a94f5a,
        0x85676696d7fb7e2d,
        0xcf2794e0277187b7,
        0x18765564cd99a68d,
        0xcbc9466e58fee3ce,
        0xab0200f58b01d137,
        0x93f5f5799a932462,
        0x9e0082df0ba9e4b0,
        0x7a5dbbc594ddb9f3,
        0xf4b32f46226bada7,
        0x751e8fbc860ee5fb,
        0x14ea5627c0843d90,
        0xf723ca908e7af2ee,
        0xa129ca6149be45e5,
        0x3f2acc7f57c29bdb,
        0x699ae9f52cbe4794,
        0x4bc1b3f0968dd39c,
        0xbb6dc91da77961bd,
        0xbed65cf21aa2ee98,
        0xd0f2cbb02e3b67c7,
        0x93536795e3a33e88,
        0xa80c038ccd5ccec8,
        0xb8ad50c6f649af94,
        0xbce192de8a85b8ea,
        0x17d835b85bbb15f3,
        0x2f2e6163076bcfad,
        0xde4daaaca71dc9a5,
        0xa6a2506687956571,
        0xad87a3535c49ef28,
        0x32d892fad841c342,
        0x7127512f72f27cce,
        0xa7f32346f95978e3,
        0x12e0b01abb051238,
        0x15e034d40fa197ae,
        0x314dffbe0815a3b4,
        0x027990f029623981,
        0xcadcd4e59ef40c4d,
        0x9abfd8766a33735c,
        0x0e3ea96b5304a7d0,
        0xad0c42d6fc585992,
        0x187306c89bc215a9,
        0xd4a60abcf3792b95,
        0xf935451de4f21df2,
        0xa9538f0419755787,
        0xdb9acddff56ca510,
        0xd06c98cd5c0975eb,
        0xe612a3cb9ecba951,
        0xc766e62cfcadaf96,
        0xee64435a9752fe72,
        0xa192d576b245165a,
        0x0a8787bf8ecb74b2,
        0x81b3e73d20b49b6f,
        0x7fa8220ba3b2ecea,
        0x245731c13ca42499,
        0xb78dbfaf3a8d83bd,
        0xea1ad565322a1a0b,
        0x60e61c23a3795013,
        0x6606d7e446282b93,
        0x6ca4ecb15c5f91e1,
        0x9f626da15c9625f3,
        0xe51b38608ef25f57,
        0x958a324ceb064572,
    ];

    fn reference_key() -> SipKey {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        SipKey::from_bytes(k)
    }

    #[test]
    fn reference_vectors() {
        let key = reference_key();
        let mut msg = [0u8; 64];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = i as u8;
        }
        for (n, want) in VECTORS.iter().enumerate() {
            assert_eq!(siphash(&key, &msg[..n]), *want, "message of {n} bytes");
        }
    }

    #[test]
    fn finish_does_not_consume_the_state() {
        let key = reference_key();
        let mut s = Sip::new(&key);
        for n in 0..64u8 {
            // Every prefix's hash read mid-stream equals the vector.
            assert_eq!(s.finish(), VECTORS[n as usize]);
            assert_eq!(s.finish(), VECTORS[n as usize], "finish twice");
            s.update(n);
        }
    }

    #[test]
    fn another_key_gives_other_hashes() {
        let a = reference_key();
        let mut b = a;
        b.k1 ^= 1 << 63;
        for msg in [&b""[..], b"/metrics", b"host:web"] {
            assert_ne!(siphash(&a, msg), siphash(&b, msg));
        }
        assert_eq!(SipKey::from_bytes(a.to_bytes()), a);
        assert!(SipKey::ZERO.is_zero() && !a.is_zero());
    }
}
