//! PBKDF2-HMAC-SHA256 (RFC 8018), written for the one shape polyhub runs
//! 600,000 times per login.
//!
//! Every iteration is `U = HMAC(P, U)` with a 32-byte `U`: one block for the
//! inner hash and one for the outer, each starting from a state keyed with
//! the password once (HMAC's ipad and opad blocks, compressed up front).
//! Here an iteration is exactly those two calls of sha2's own block function
//! ([`compress256`], SHA-NI where the processor has it), on one padded block
//! whose padding never changes. The `pbkdf2` crate's generic loop does the
//! same hashing through `Hmac`'s buffering and finalization on every
//! iteration, which costs about as much again on these processors
//! (docs/BENCHMARKS.md, the PBKDF2 section). The results are the same bytes:
//! the tests compare both on every length that matters.

use sha2::block_api::compress256;
use sha2::{Digest, Sha256};

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK: usize = 64;
const DIGEST: usize = 32;

/// The chaining state after one block of the key XORed with `pad`.
fn keyed_state(key: &[u8; BLOCK], pad: u8) -> [u32; 8] {
    let mut block = *key;
    for byte in &mut block {
        *byte ^= pad;
    }
    let mut state = IV;
    compress256(&mut state, &[block]);
    state
}

fn write_words(words: &[u32; 8], into: &mut [u8]) {
    for (chunk, word) in into.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
}

/// HMAC-SHA256 with its key folded into two chaining states.
struct KeyedHmac {
    key: [u8; BLOCK],
    inner: [u32; 8],
    outer: [u32; 8],
}

impl KeyedHmac {
    fn new(password: &[u8]) -> Self {
        // A key longer than a block is replaced by its digest (RFC 2104).
        let mut key = [0u8; BLOCK];
        if password.len() > BLOCK {
            key[..DIGEST].copy_from_slice(&Sha256::digest(password));
        } else {
            key[..password.len()].copy_from_slice(password);
        }
        Self {
            key,
            inner: keyed_state(&key, 0x36),
            outer: keyed_state(&key, 0x5c),
        }
    }

    /// HMAC of `message`, any length (the first iteration's
    /// `salt || INT(i)`), by the book: once per output block, so sha2's own
    /// buffering and padding do it.
    fn mac(&self, message: &[u8]) -> [u32; 8] {
        let pad = |with: u8| self.key.map(|byte| byte ^ with);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        let mut words = [0u32; 8];
        for (word, bytes) in words.iter_mut().zip(outer.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        words
    }

    /// The outer hash of an inner digest, in `block` (a [`digest_block`]).
    fn outer_of(&self, inner: &[u32; 8], block: &mut [u8; BLOCK]) -> [u32; 8] {
        write_words(inner, &mut block[..DIGEST]);
        let mut outer = self.outer;
        compress256(&mut outer, &[*block]);
        outer
    }

    /// HMAC of a 32-byte message, in `block` (a [`digest_block`]): one
    /// compression for the inner hash, one for the outer.
    fn mac_digest(&self, message: &[u32; 8], block: &mut [u8; BLOCK]) -> [u32; 8] {
        write_words(message, &mut block[..DIGEST]);
        let mut inner = self.inner;
        compress256(&mut inner, &[*block]);
        self.outer_of(&inner, block)
    }
}

/// The last block of a hash whose message is one keyed block and then 32
/// bytes: the 32 bytes go first, then SHA-256's padding for 96 bytes.
fn digest_block() -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[DIGEST] = 0x80;
    block[BLOCK - 8..].copy_from_slice(&(((BLOCK + DIGEST) as u64) * 8).to_be_bytes());
    block
}

/// PBKDF2-HMAC-SHA256 of `password` and `salt`, `iterations` rounds, into
/// `out` (any length). `iterations` of 0 is treated as 1, as the `pbkdf2`
/// crate does.
pub(crate) fn pbkdf2_hmac_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    let hmac = KeyedHmac::new(password);
    let mut block = digest_block();
    let mut first = Vec::with_capacity(salt.len() + 4);
    for (index, chunk) in out.chunks_mut(DIGEST).enumerate() {
        first.clear();
        first.extend_from_slice(salt);
        // Blocks are numbered from 1; an output past 2^32 blocks cannot be asked for.
        first.extend_from_slice(&(index as u32).wrapping_add(1).to_be_bytes());
        let mut u = hmac.mac(&first);
        let mut t = u;
        for _ in 1..iterations {
            u = hmac.mac_digest(&u, &mut block);
            for (t, u) in t.iter_mut().zip(&u) {
                *t ^= u;
            }
        }
        let mut bytes = [0u8; DIGEST];
        write_words(&t, &mut bytes);
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(password: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
        out
    }

    fn ours(password: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        pbkdf2_hmac_sha256(password, salt, iterations, &mut out);
        out
    }

    /// Every length at which the padding changes shape: passwords around
    /// the block (hashed past 64 bytes), salts around the blocks of the
    /// first iteration's message, outputs of several blocks and partial ones.
    #[test]
    fn same_bytes_as_the_pbkdf2_crate() {
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for password_len in [0, 1, 31, 32, 55, 56, 63, 64, 65, 100, 128, 129, 200] {
            for salt_len in [0, 1, 16, 51, 52, 55, 56, 59, 60, 64, 115, 116, 130] {
                let (password, salt) = (&bytes[..password_len], &bytes[200 - salt_len..]);
                for (iterations, len) in [(1, 32), (2, 1), (3, 33), (5, 64), (17, 100)] {
                    assert_eq!(
                        ours(password, salt, iterations, len),
                        reference(password, salt, iterations, len),
                        "password {password_len} bytes, salt {salt_len}, {iterations} iterations, {len} bytes out"
                    );
                }
            }
        }
        assert_eq!(ours(b"p", b"s", 0, 32), reference(b"p", b"s", 1, 32));
    }

    /// RFC 7914, section 11: 80,000 iterations, two output blocks.
    #[test]
    fn known_answer_rfc7914_many_iterations() {
        let out = ours(b"Password", b"NaCl", 80_000, 64);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56\
             a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"
        );
    }
}
