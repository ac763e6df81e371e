//! PBKDF2-HMAC-SHA256 password hashing, stored as PHC strings:
//! `$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>` (B64: standard alphabet, no padding).
//!
//! The parameters travel with every stored hash, so the iteration count can rise
//! later: [`PasswordHasher::needs_rehash`] says when a stored hash is below the
//! current parameters, and login rehashes it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{Error, ErrorCode};
use crate::user::Password;

const ALGORITHM: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
/// A stored hash above this count is treated as corrupt rather than run:
/// verifying it would pin a worker for minutes.
const MAX_ITERATIONS: u32 = 20_000_000;

/// Hashes and verifies passwords at the current parameters.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    iterations: u32,
    dummy: PasswordHash,
}

impl PasswordHasher {
    /// OWASP's current figure for PBKDF2-HMAC-SHA256; configuration may only raise it.
    pub const MIN_ITERATIONS: u32 = 600_000;

    /// A hasher at `iterations`, which may not be below [`Self::MIN_ITERATIONS`].
    pub fn new(iterations: u32) -> Result<Self, Error> {
        if !(Self::MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(Error::with_message(
                ErrorCode::Internal,
                format!(
                    "password hashing iterations must be between {} and {MAX_ITERATIONS}, got {iterations}",
                    Self::MIN_ITERATIONS
                ),
            ));
        }
        Ok(Self::build(iterations))
    }

    /// A hasher below the production floor, so tests elsewhere can register users
    /// quickly. Only the `test-support` feature exposes it; no config reaches it.
    #[cfg(any(test, feature = "test-support"))]
    pub fn insecure_for_tests(iterations: u32) -> Self {
        Self::build(iterations.max(1))
    }

    fn build(iterations: u32) -> Self {
        // The dummy hash costs what a real one costs, so an unknown user takes as
        // long to refuse as a wrong password. Its salt need not be secret.
        let dummy = derive(b"polyhub-dummy-password", &[0x5a; SALT_LEN], iterations);
        Self { iterations, dummy }
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Hashes a new password with a fresh 16-byte random salt.
    pub fn hash(&self, password: &Password) -> Result<PasswordHash, Error> {
        self.hash_secret(password.expose())
    }

    /// Hashes a secret that is already known to be the user's password (a
    /// rehash at login), whatever today's policy says of it.
    pub(crate) fn hash_secret(&self, secret: &str) -> Result<PasswordHash, Error> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| {
            Error::internal(format!("the operating system's random source failed: {e}"))
        })?;
        Ok(derive(secret.as_bytes(), &salt, self.iterations))
    }

    /// Whether `candidate` is the password behind `stored`, compared in constant time.
    pub fn verify(&self, candidate: &str, stored: &PasswordHash) -> bool {
        let computed = derive_raw(
            candidate.as_bytes(),
            &stored.salt,
            stored.iterations,
            stored.hash.len(),
        );
        computed.ct_eq(&stored.hash).into()
    }

    /// Spends the time of a real verification and refuses: used when no user
    /// matched, so timing does not tell which usernames exist.
    pub fn verify_dummy(&self, candidate: &str) -> bool {
        let _ = self.verify(candidate, &self.dummy);
        false
    }

    /// Whether a stored hash was made with weaker parameters than the current ones.
    pub fn needs_rehash(&self, stored: &PasswordHash) -> bool {
        stored.iterations < self.iterations || stored.hash.len() < OUTPUT_LEN
    }
}

/// A stored password hash in PHC string form.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    phc: String,
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    /// Reads a PHC string as stored. A malformed one is an internal error: it can
    /// only come from a damaged row, never from a client.
    pub fn parse(phc: &str) -> Result<Self, Error> {
        let corrupt =
            |why: &str| Error::internal(format!("stored password hash is corrupt: {why}"));
        let mut parts = phc.split('$');
        let (Some(""), Some(alg), Some(params), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(corrupt("not a PHC string"));
        };
        if alg != ALGORITHM {
            return Err(corrupt("unknown algorithm"));
        }
        let mut iterations = None;
        let mut length = None;
        for param in params.split(',') {
            match param.split_once('=') {
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                Some(("l", v)) => length = v.parse::<usize>().ok(),
                _ => return Err(corrupt("unknown parameter")),
            }
        }
        let iterations = iterations
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .ok_or_else(|| corrupt("bad iteration count"))?;
        let salt = B64.decode(salt).map_err(|_| corrupt("bad salt encoding"))?;
        let hash = B64.decode(hash).map_err(|_| corrupt("bad hash encoding"))?;
        if salt.len() < 8 || hash.is_empty() || length.is_some_and(|l| l != hash.len()) {
            return Err(corrupt("bad salt or output length"));
        }
        Ok(Self {
            phc: phc.to_owned(),
            iterations,
            salt,
            hash,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.phc
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PasswordHash({ALGORITHM}, i={}, <redacted>)",
            self.iterations
        )
    }
}

fn derive_raw(password: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

fn derive(password: &[u8], salt: &[u8], iterations: u32) -> PasswordHash {
    let hash = derive_raw(password, salt, iterations, OUTPUT_LEN);
    let phc = format!(
        "${ALGORITHM}$i={iterations},l={OUTPUT_LEN}${}${}",
        B64.encode(salt),
        B64.encode(&hash)
    );
    PasswordHash {
        phc,
        iterations,
        salt: salt.to_vec(),
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::Username;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 7914, section 11: PBKDF2-HMAC-SHA256 of "passwd"/"salt", 1 iteration.
    #[test]
    fn known_answer_rfc7914() {
        let out = derive_raw(b"passwd", b"salt", 1, 64);
        assert_eq!(
            hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
    }

    /// A PHC string at the production parameters, computed independently with
    /// Python's hashlib.pbkdf2_hmac("sha256", b"correct horse battery",
    /// b"polyhub-kat-salt", 600000).
    #[test]
    fn known_answer_phc_at_production_parameters() {
        let hasher = PasswordHasher::new(600_000).unwrap();
        let stored = PasswordHash::parse(
            "$pbkdf2-sha256$i=600000,l=32$cG9seWh1Yi1rYXQtc2FsdA$oUaKwHbJk/mQYH+TO+4dkg0yL5REfU9xhFf9h3vEZe8",
        )
        .unwrap();
        assert!(hasher.verify("correct horse battery", &stored));
        assert!(!hasher.verify("correct horse batterY", &stored));
        assert!(!hasher.needs_rehash(&stored));
    }

    #[test]
    fn hash_then_verify() {
        let hasher = PasswordHasher::insecure_for_tests(1_000);
        let user = Username::parse("alice").unwrap();
        let password = Password::parse("s3cret-enough", &user).unwrap();
        let stored = hasher.hash(&password).unwrap();
        assert!(stored.as_str().starts_with("$pbkdf2-sha256$i=1000,l=32$"));
        assert!(hasher.verify("s3cret-enough", &stored));
        assert!(!hasher.verify("s3cret-enougH", &stored));
        let reparsed = PasswordHash::parse(stored.as_str()).unwrap();
        assert_eq!(reparsed, stored);
    }

    #[test]
    fn salts_differ_between_hashes() {
        let hasher = PasswordHasher::insecure_for_tests(1);
        let user = Username::parse("alice").unwrap();
        let password = Password::parse("s3cret-enough", &user).unwrap();
        assert_ne!(
            hasher.hash(&password).unwrap(),
            hasher.hash(&password).unwrap()
        );
    }

    #[test]
    fn rehash_when_stored_parameters_are_lower() {
        let old = PasswordHasher::insecure_for_tests(1_000);
        let user = Username::parse("alice").unwrap();
        let stored = old
            .hash(&Password::parse("s3cret-enough", &user).unwrap())
            .unwrap();
        assert!(!old.needs_rehash(&stored));
        let current = PasswordHasher::insecure_for_tests(2_000);
        assert!(current.needs_rehash(&stored));
        // Still verifies at its own stored parameters.
        assert!(current.verify("s3cret-enough", &stored));
    }

    #[test]
    fn iterations_only_go_up_from_the_floor() {
        assert!(PasswordHasher::new(599_999).is_err());
        assert!(PasswordHasher::new(1).is_err());
        assert_eq!(PasswordHasher::new(700_000).unwrap().iterations(), 700_000);
    }

    #[test]
    fn corrupt_phc_strings_are_refused() {
        for bad in [
            "",
            "plaintext",
            "$pbkdf2-sha512$i=1,l=32$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha256$i=0,l=4$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha256$i=4294967295,l=4$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha256$i=1,l=32$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha256$i=1,x=2$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha256$i=1$!!!$aGFzaA",
            "$pbkdf2-sha256$i=1$c2FsdHNhbHQ$aGFzaA$extra",
        ] {
            let err = PasswordHash::parse(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Internal, "{bad:?}");
        }
    }

    #[test]
    fn dummy_verification_always_refuses() {
        let hasher = PasswordHasher::insecure_for_tests(10);
        assert!(!hasher.verify_dummy("polyhub-dummy-password"));
    }

    #[test]
    fn debug_hides_the_hash() {
        let hasher = PasswordHasher::insecure_for_tests(1);
        let user = Username::parse("alice").unwrap();
        let stored = hasher
            .hash(&Password::parse("s3cret-enough", &user).unwrap())
            .unwrap();
        let b64_hash = stored.as_str().rsplit('$').next().unwrap().to_owned();
        assert!(!format!("{stored:?}").contains(&b64_hash));
    }
}
