//! PBKDF2-HMAC-SHA256 password hashing, stored as PHC strings:
//! `$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>` (B64: standard alphabet, no padding).
//!
//! Stored hashes of other schemes, brought in by `hub users import`, are
//! verified too (PBKDF2-SHA1/SHA512, scrypt, bcrypt, argon2), each by its
//! maintained crate and in constant time; every one of them needs a rehash,
//! so the user's next login replaces it with ours.
//!
//! The parameters travel with every stored hash, so the iteration count can rise
//! later: [`PasswordHasher::needs_rehash`] says when a stored hash is below the
//! current parameters, and login rehashes it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, ErrorCode};
use crate::user::Password;

mod sha256_chain;

const ALGORITHM: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
/// A stored hash above this count is treated as corrupt rather than run:
/// verifying it would pin a worker for minutes.
const MAX_ITERATIONS: u32 = 20_000_000;

/// The most work one verification may spend, in work units (see
/// [`PasswordHash::work`]): what our own hasher spends at the highest
/// iteration count configuration allows. A stored hash that asks more,
/// however it got into the row, is never run: its login fails as a wrong
/// password would, after the same work. Imports are held to the tighter,
/// configured ceiling ([`crate::legacy::HashCeilings`]).
pub(crate) const MAX_WORK: u64 = MAX_ITERATIONS as u64;

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

    /// Whether `candidate` is the password behind `stored`, compared in
    /// constant time, whichever scheme made it.
    ///
    /// A wrong password costs at least a standard verification (the one
    /// [`Self::verify_dummy`] spends for an unknown user), whatever the
    /// stored hash: otherwise a cheap imported hash (`pbkdf2:sha256:1`, a
    /// bare digest, bcrypt at cost 4) would answer at once and tell which
    /// usernames exist. Only a PBKDF2-SHA256 hash (ours, or imported) of
    /// at least today's work is its own proof of that; for any other the
    /// dummy runs too, as the work of other schemes is an estimate, rounded
    /// up for the ceilings (it cannot show that a hash costs at least as
    /// much on this machine). A right password needs no padding: the login
    /// that follows replaces the hash at full cost.
    pub fn verify(&self, candidate: &str, stored: &PasswordHash) -> bool {
        if stored.matches(candidate) {
            return true;
        }
        if !stored.runs_at_least(self.iterations) {
            let _ = self.dummy.matches(candidate);
        }
        false
    }

    /// Spends the time of a real verification and refuses: used when no user
    /// matched, so timing does not tell which usernames exist.
    pub fn verify_dummy(&self, candidate: &str) -> bool {
        let _ = self.dummy.matches(candidate);
        false
    }

    /// Whether a stored hash should be replaced at the next login: another
    /// scheme (an imported one), or ours with weaker parameters.
    pub fn needs_rehash(&self, stored: &PasswordHash) -> bool {
        match &stored.scheme {
            Scheme::Pbkdf2 {
                digest: Pbkdf2Digest::Sha256,
                iterations,
                hash,
                ..
            } => *iterations < self.iterations || hash.len() < OUTPUT_LEN,
            _ => true,
        }
    }
}

/// The digest a PBKDF2 hash was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pbkdf2Digest {
    Sha1,
    Sha256,
    Sha512,
}

impl Pbkdf2Digest {
    /// The bytes of one PBKDF2 output block: the digest's size.
    pub(crate) fn output_len(self) -> usize {
        match self {
            Pbkdf2Digest::Sha1 => 20,
            Pbkdf2Digest::Sha256 => 32,
            Pbkdf2Digest::Sha512 => 64,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Pbkdf2Digest::Sha1 => "pbkdf2-sha1",
            Pbkdf2Digest::Sha256 => "pbkdf2-sha256",
            Pbkdf2Digest::Sha512 => "pbkdf2-sha512",
        }
    }
}

/// The digest of an insecure (fast, unsalted or simply salted) hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsecureDigest {
    Md5,
    Sha1,
    Sha256,
}

impl InsecureDigest {
    pub(crate) fn name(self) -> &'static str {
        match self {
            InsecureDigest::Md5 => "insecure-md5",
            InsecureDigest::Sha1 => "insecure-sha1",
            InsecureDigest::Sha256 => "insecure-sha256",
        }
    }

    pub(crate) fn len(self) -> usize {
        match self {
            InsecureDigest::Md5 => 16,
            InsecureDigest::Sha1 => 20,
            InsecureDigest::Sha256 => 32,
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        fn of<D: sha2::Digest>(salt: &[u8], password: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update(salt);
            d.update(password);
            d.finalize().to_vec()
        }
        match self {
            InsecureDigest::Md5 => of::<md5::Md5>(salt, password),
            InsecureDigest::Sha1 => of::<sha1::Sha1>(salt, password),
            InsecureDigest::Sha256 => of::<Sha256>(salt, password),
        }
    }
}

/// How a stored hash is checked. polyhub makes only PBKDF2-SHA256; the
/// others come from imports (see [`crate::legacy`]) and are replaced at the
/// user's next login.
#[derive(Clone, PartialEq, Eq)]
enum Scheme {
    Pbkdf2 {
        digest: Pbkdf2Digest,
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$2a$`, `$2b$`, `$2y$`; `sha256_prefixed` for Django's
    /// `bcrypt_sha256$`, which bcrypts the hex SHA-256 of the password.
    Bcrypt { sha256_prefixed: bool },
    /// A bare digest of salt then password, imported only with
    /// `--allow-insecure`: verified until `insecure_until`, then refused.
    Insecure {
        digest: InsecureDigest,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Argon2 {
        algorithm: argon2::Algorithm,
        version: argon2::Version,
        m_cost: u32,
        t_cost: u32,
        p_cost: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// [`PasswordHash::UNSET`]: no password at all (a user a directory
    /// provisioned without one, who signs in through it). Nothing matches.
    Unset,
}

/// Parameters a stored hash may have. Rows past these are corrupt, whatever
/// wrote them: no login can take gigabytes. The work they ask for is held
/// to [`MAX_WORK`] besides, when verified; imports apply tighter,
/// configured ceilings ([`crate::legacy::HashCeilings`]).
pub(crate) const MAX_SCRYPT_BYTES: u64 = 1 << 30;
pub(crate) const MAX_SCRYPT_P: u32 = 16;
pub(crate) const MAX_ARGON2_KIB: u32 = 4 << 20;
pub(crate) const MAX_ARGON2_T: u32 = 100;
pub(crate) const MAX_ARGON2_P: u32 = 64;

/// A stored password hash in its string form: a PHC string (ours, or an
/// imported scrypt, argon2 or PBKDF2 one), a bcrypt string, or Django's
/// `bcrypt_sha256$`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    phc: String,
    scheme: Scheme,
}

fn corrupt(why: &str) -> Error {
    Error::internal(format!("stored password hash is corrupt: {why}"))
}

/// The `k=v` parameters of a PHC string.
fn phc_params(params: &str) -> Result<Vec<(&str, &str)>, Error> {
    params
        .split(',')
        .map(|param| {
            param
                .split_once('=')
                .ok_or_else(|| corrupt("bad parameter"))
        })
        .collect()
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, Error> {
    value.parse().map_err(|_| corrupt("bad number"))
}

impl PasswordHash {
    /// What a user without a password has stored: no candidate matches it,
    /// and a sign-in by password spends the dummy verification's time, as
    /// for a wrong password.
    pub const UNSET: &'static str = "$none$";

    /// No password: see [`Self::UNSET`].
    pub fn unset() -> Self {
        Self {
            phc: Self::UNSET.to_owned(),
            scheme: Scheme::Unset,
        }
    }

    /// Whether this is [`Self::UNSET`].
    pub fn is_unset(&self) -> bool {
        matches!(self.scheme, Scheme::Unset)
    }

    /// Reads a hash as stored. A malformed one is an internal error: it can
    /// only come from a damaged row, never from a client.
    pub fn parse(phc: &str) -> Result<Self, Error> {
        if phc == Self::UNSET {
            return Ok(Self::unset());
        }
        let scheme =
            if phc.starts_with("$2a$") || phc.starts_with("$2b$") || phc.starts_with("$2y$") {
                bcrypt_cost(phc)?;
                Scheme::Bcrypt {
                    sha256_prefixed: false,
                }
            } else if let Some(inner) = phc.strip_prefix("bcrypt_sha256$") {
                bcrypt_cost(inner)?;
                Scheme::Bcrypt {
                    sha256_prefixed: true,
                }
            } else {
                parse_phc(phc)?
            };
        Ok(Self {
            phc: phc.to_owned(),
            scheme,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.phc
    }

    /// Whether this is polyhub's own scheme (PBKDF2-SHA256).
    pub fn is_native(&self) -> bool {
        matches!(
            self.scheme,
            Scheme::Pbkdf2 {
                digest: Pbkdf2Digest::Sha256,
                ..
            }
        )
    }

    /// The scheme's name, for logs and metrics (`pbkdf2-sha256`, `bcrypt`...).
    pub fn scheme_name(&self) -> &'static str {
        match &self.scheme {
            Scheme::Pbkdf2 { digest, .. } => digest.name(),
            Scheme::Scrypt { .. } => "scrypt",
            Scheme::Bcrypt {
                sha256_prefixed: false,
            } => "bcrypt",
            Scheme::Bcrypt {
                sha256_prefixed: true,
            } => "bcrypt-sha256",
            Scheme::Insecure { digest, .. } => digest.name(),
            Scheme::Argon2 { algorithm, .. } => match algorithm {
                argon2::Algorithm::Argon2id => "argon2id",
                argon2::Algorithm::Argon2i => "argon2i",
                argon2::Algorithm::Argon2d => "argon2d",
            },
            Scheme::Unset => "none",
        }
    }

    /// The parameters that set the work one verification of this hash asks for.
    pub(crate) fn cost(&self) -> Cost {
        match &self.scheme {
            Scheme::Pbkdf2 {
                digest,
                iterations,
                hash,
                ..
            } => Cost::Pbkdf2 {
                digest: *digest,
                iterations: *iterations,
                blocks: hash.len().div_ceil(digest.output_len()).max(1) as u64,
            },
            Scheme::Scrypt { log_n, r, p, .. } => Cost::Scrypt {
                log_n: *log_n,
                r: *r,
                p: *p,
            },
            Scheme::Insecure { .. } | Scheme::Unset => Cost::Digest,
            Scheme::Bcrypt { .. } => Cost::Bcrypt {
                cost: bcrypt_cost(self.phc.trim_start_matches("bcrypt_sha256$")).unwrap_or(31),
            },
            Scheme::Argon2 {
                m_cost,
                t_cost,
                p_cost,
                ..
            } => Cost::Argon2 {
                kib: *m_cost,
                t: *t_cost,
                p: *p_cost,
            },
        }
    }

    /// The work one verification of this hash asks for, in work units: one
    /// unit is one PBKDF2-HMAC-SHA256 iteration of one 32-byte output block,
    /// so a standard login (ours, 600,000 iterations) is 600,000. Each
    /// scheme's parameters are converted at known ratios ([`Cost::work`]).
    pub fn work(&self) -> u64 {
        self.cost().work()
    }

    /// Whether verifying this hash is known to run at least `iterations` of
    /// PBKDF2-SHA256: counted exactly for a PBKDF2-SHA256 hash that is run
    /// at all (not past [`MAX_WORK`]), never taken on an estimate for other
    /// schemes.
    fn runs_at_least(&self, iterations: u32) -> bool {
        match &self.scheme {
            Scheme::Pbkdf2 {
                digest: Pbkdf2Digest::Sha256,
                ..
            } => (u64::from(iterations)..=MAX_WORK).contains(&self.work()),
            _ => false,
        }
    }

    /// Whether this is a bare digest imported with `--allow-insecure`.
    pub fn is_insecure(&self) -> bool {
        matches!(self.scheme, Scheme::Insecure { .. })
    }

    /// The PBKDF2 iteration count; 0 for other schemes.
    pub fn iterations(&self) -> u32 {
        match &self.scheme {
            Scheme::Pbkdf2 { iterations, .. } => *iterations,
            _ => 0,
        }
    }

    /// Whether `candidate` is the password behind this hash, compared in
    /// constant time. A hash asking more than [`MAX_WORK`] is not run: it
    /// does not match, and the log says why.
    fn matches(&self, candidate: &str) -> bool {
        let work = self.work();
        if work > MAX_WORK {
            tracing::warn!(
                scheme = self.scheme_name(),
                work,
                max_work = MAX_WORK,
                "stored password hash asks more work than any login may spend: not verified, the login fails"
            );
            return false;
        }
        match &self.scheme {
            Scheme::Pbkdf2 {
                digest,
                iterations,
                salt,
                hash,
            } => {
                let computed =
                    derive_with(*digest, candidate.as_bytes(), salt, *iterations, hash.len());
                computed.ct_eq(hash).into()
            }
            Scheme::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
            } => {
                let Ok(params) = scrypt::Params::new(*log_n, *r, *p) else {
                    return false;
                };
                let mut out = vec![0u8; hash.len()];
                scrypt::scrypt(candidate.as_bytes(), salt, &params, &mut out).is_ok()
                    && bool::from(out.ct_eq(hash))
            }
            Scheme::Bcrypt { sha256_prefixed } => {
                if *sha256_prefixed {
                    let hex: String = Sha256::digest(candidate.as_bytes())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    let inner = self.phc.trim_start_matches("bcrypt_sha256$");
                    bcrypt::verify(hex, inner).unwrap_or(false)
                } else {
                    bcrypt::verify(candidate, &self.phc).unwrap_or(false)
                }
            }
            Scheme::Insecure { digest, salt, hash } => {
                digest.digest(salt, candidate.as_bytes()).ct_eq(hash).into()
            }
            Scheme::Argon2 {
                algorithm,
                version,
                m_cost,
                t_cost,
                p_cost,
                salt,
                hash,
            } => {
                let Ok(params) = argon2::Params::new(*m_cost, *t_cost, *p_cost, Some(hash.len()))
                else {
                    return false;
                };
                let mut out = vec![0u8; hash.len()];
                argon2::Argon2::new(*algorithm, *version, params)
                    .hash_password_into(candidate.as_bytes(), salt, &mut out)
                    .is_ok()
                    && bool::from(out.ct_eq(hash))
            }
            Scheme::Unset => false,
        }
    }
}

/// The parameters that set one verification's work, by scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// `blocks` output blocks of the digest's size, each its own chain of
    /// `iterations`.
    Pbkdf2 {
        digest: Pbkdf2Digest,
        iterations: u32,
        blocks: u64,
    },
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
    },
    Bcrypt {
        cost: u32,
    },
    Argon2 {
        kib: u32,
        t: u32,
        p: u32,
    },
    /// One digest of salt and password (an insecure import).
    Digest,
}

/// What one step of each scheme costs, in work units: one unit is one
/// PBKDF2-HMAC-SHA256 iteration (two SHA-256 compressions) of one 32-byte
/// output block, timed on a core without SHA extensions (sha2's software
/// backend: about 350 ns on the benchmark machine, 0.7 us on the pen test's).
///
/// Known ratios, not a calibration at start: whether an import takes a hash
/// must not depend on the machine that runs it or how busy it is (a
/// `--dry-run` on a laptop and the import on a server agree; a loaded
/// server does not refuse hashes at random). Measured by
/// `cargo bench -p hub-core --bench password -- work` (each case there is
/// about 200,000 units), rounded up:
///
/// | step | measured | counted |
/// |---|---|---|
/// | PBKDF2-SHA1 iteration, per 20-byte block | 0.3 to 0.5 | 1 |
/// | PBKDF2-SHA512 iteration, per 64-byte block | 1.4 to 1.7 | 2 |
/// | scrypt, per N * r * p | 0.5 to 0.9 here, 2.8 on the pen test's machine | 3 |
/// | argon2, per KiB of m per pass t | 2.0 to 3.0 | 3 |
/// | bcrypt, per 2^cost | 155 to 205 | 200 |
///
/// argon2's lanes (p) add no work: they split m, and our argon2 is built
/// without its `parallel` feature, so they run one after another on the
/// hashing pool's one thread; p is capped apart. A core with SHA
/// extensions (SHA-NI, ARMv8 SHA2) runs PBKDF2 three to four times faster
/// than counted and the other schemes not at all faster, so a unit is the
/// dearer, software time: a ceiling in units is a ceiling in time on either.
const SHA1_ITERATION: u64 = 1;
const SHA512_ITERATION: u64 = 2;
const SCRYPT_STEP: u64 = 3;
const ARGON2_KIB_PASS: u64 = 3;
const BCRYPT_ROUND: u64 = 200;

impl Cost {
    /// The work of one verification, in work units (saturating: a hash
    /// whose work does not fit is over every ceiling anyway).
    pub(crate) fn work(self) -> u64 {
        match self {
            Cost::Pbkdf2 {
                digest,
                iterations,
                blocks,
            } => {
                let per_iteration = match digest {
                    Pbkdf2Digest::Sha1 => SHA1_ITERATION,
                    Pbkdf2Digest::Sha256 => 1,
                    Pbkdf2Digest::Sha512 => SHA512_ITERATION,
                };
                u64::from(iterations)
                    .saturating_mul(blocks)
                    .saturating_mul(per_iteration)
            }
            Cost::Scrypt { log_n, r, p } => 1u64
                .checked_shl(u32::from(log_n))
                .unwrap_or(u64::MAX)
                .saturating_mul(u64::from(r))
                .saturating_mul(u64::from(p))
                .saturating_mul(SCRYPT_STEP),
            Cost::Bcrypt { cost } => 1u64
                .checked_shl(cost)
                .unwrap_or(u64::MAX)
                .saturating_mul(BCRYPT_ROUND),
            Cost::Argon2 { kib, t, .. } => u64::from(kib)
                .saturating_mul(u64::from(t))
                .saturating_mul(ARGON2_KIB_PASS),
            Cost::Digest => 1,
        }
    }
}

/// A bcrypt string's cost, checked against bcrypt's own range.
pub(crate) fn bcrypt_cost(hash: &str) -> Result<u32, Error> {
    let cost: u32 = hash
        .get(4..6)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| corrupt("bad bcrypt cost"))?;
    if !(4..=31).contains(&cost) || hash.len() != 60 || hash.as_bytes().get(6) != Some(&b'$') {
        return Err(corrupt("bad bcrypt string"));
    }
    Ok(cost)
}

/// PBKDF2, scrypt and argon2 PHC strings (standard base64, no padding).
fn parse_phc(phc: &str) -> Result<Scheme, Error> {
    let mut parts = phc.split('$');
    let (Some(""), Some(alg)) = (parts.next(), parts.next()) else {
        return Err(corrupt("not a PHC string"));
    };
    let rest: Vec<&str> = parts.collect();
    let decode = |v: &str, what: &str| {
        B64.decode(v)
            .map_err(|_| corrupt(&format!("bad {what} encoding")))
    };
    match alg {
        "pbkdf2-sha1" | "pbkdf2-sha256" | "pbkdf2-sha512" => {
            let [params, salt, hash] = rest[..] else {
                return Err(corrupt("not a PHC string"));
            };
            let digest = match alg {
                "pbkdf2-sha1" => Pbkdf2Digest::Sha1,
                "pbkdf2-sha256" => Pbkdf2Digest::Sha256,
                _ => Pbkdf2Digest::Sha512,
            };
            let (mut iterations, mut length) = (None, None);
            for (k, v) in phc_params(params)? {
                match k {
                    "i" => iterations = Some(number::<u32>(v)?),
                    "l" => length = Some(number::<usize>(v)?),
                    _ => return Err(corrupt("unknown parameter")),
                }
            }
            let iterations = iterations
                .filter(|i| (1..=MAX_ITERATIONS).contains(i))
                .ok_or_else(|| corrupt("bad iteration count"))?;
            let salt = decode(salt, "salt")?;
            let hash = decode(hash, "hash")?;
            if salt.is_empty()
                || hash.is_empty()
                || hash.len() > 128
                || length.is_some_and(|l| l != hash.len())
            {
                return Err(corrupt("bad salt or output length"));
            }
            Ok(Scheme::Pbkdf2 {
                digest,
                iterations,
                salt,
                hash,
            })
        }
        "scrypt" => {
            let [params, salt, hash] = rest[..] else {
                return Err(corrupt("not a PHC string"));
            };
            let (mut log_n, mut r, mut p) = (None, None, None);
            for (k, v) in phc_params(params)? {
                match k {
                    "ln" => log_n = Some(number::<u8>(v)?),
                    "r" => r = Some(number::<u32>(v)?),
                    "p" => p = Some(number::<u32>(v)?),
                    _ => return Err(corrupt("unknown parameter")),
                }
            }
            let (Some(log_n), Some(r), Some(p)) = (log_n, r, p) else {
                return Err(corrupt("missing scrypt parameter"));
            };
            if log_n == 0
                || log_n >= 32
                || r == 0
                || p == 0
                || p > MAX_SCRYPT_P
                || scrypt_bytes(log_n, r) > MAX_SCRYPT_BYTES
            {
                return Err(corrupt("scrypt parameters out of range"));
            }
            let salt = decode(salt, "salt")?;
            let hash = decode(hash, "hash")?;
            if hash.is_empty() || hash.len() > 128 {
                return Err(corrupt("bad output length"));
            }
            Ok(Scheme::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
            })
        }
        "insecure-md5" | "insecure-sha1" | "insecure-sha256" => {
            let [salt, hash] = rest[..] else {
                return Err(corrupt("not an insecure digest"));
            };
            let digest = match alg {
                "insecure-md5" => InsecureDigest::Md5,
                "insecure-sha1" => InsecureDigest::Sha1,
                _ => InsecureDigest::Sha256,
            };
            let salt = decode(salt, "salt")?;
            let hash = decode(hash, "hash")?;
            if hash.len() != digest.len() {
                return Err(corrupt("bad digest length"));
            }
            Ok(Scheme::Insecure { digest, salt, hash })
        }
        "argon2id" | "argon2i" | "argon2d" => {
            let (version, params, salt, hash) = match rest[..] {
                [version, params, salt, hash] => (Some(version), params, salt, hash),
                [params, salt, hash] => (None, params, salt, hash),
                _ => return Err(corrupt("not a PHC string")),
            };
            let version = match version {
                None | Some("v=16") => argon2::Version::V0x10,
                Some("v=19") => argon2::Version::V0x13,
                Some(_) => return Err(corrupt("unknown argon2 version")),
            };
            let (mut m, mut t, mut p) = (None, None, None);
            for (k, v) in phc_params(params)? {
                match k {
                    "m" => m = Some(number::<u32>(v)?),
                    "t" => t = Some(number::<u32>(v)?),
                    "p" => p = Some(number::<u32>(v)?),
                    _ => return Err(corrupt("unknown parameter")),
                }
            }
            let (Some(m_cost), Some(t_cost), Some(p_cost)) = (m, t, p) else {
                return Err(corrupt("missing argon2 parameter"));
            };
            if m_cost > MAX_ARGON2_KIB || t_cost > MAX_ARGON2_T || p_cost > MAX_ARGON2_P {
                return Err(corrupt("argon2 parameters out of range"));
            }
            let salt = decode(salt, "salt")?;
            let hash = decode(hash, "hash")?;
            argon2::Params::new(m_cost, t_cost, p_cost, Some(hash.len()))
                .map_err(|_| corrupt("argon2 parameters out of range"))?;
            let algorithm = match alg {
                "argon2id" => argon2::Algorithm::Argon2id,
                "argon2i" => argon2::Algorithm::Argon2i,
                _ => argon2::Algorithm::Argon2d,
            };
            Ok(Scheme::Argon2 {
                algorithm,
                version,
                m_cost,
                t_cost,
                p_cost,
                salt,
                hash,
            })
        }
        _ => Err(corrupt("unknown algorithm")),
    }
}

/// The memory one scrypt verification takes: 128 * r * N bytes.
pub(crate) fn scrypt_bytes(log_n: u8, r: u32) -> u64 {
    128u64
        .saturating_mul(u64::from(r))
        .saturating_mul(1u64.checked_shl(u32::from(log_n)).unwrap_or(u64::MAX))
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PasswordHash({}, i={}, <redacted>)",
            self.scheme_name(),
            self.iterations()
        )
    }
}

fn derive_with(
    digest: Pbkdf2Digest,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    len: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; len];
    match digest {
        Pbkdf2Digest::Sha1 => {
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out)
        }
        Pbkdf2Digest::Sha256 => {
            #[cfg(test)]
            meter::add(u64::from(iterations.max(1)) * len.div_ceil(OUTPUT_LEN) as u64);
            sha256_chain::pbkdf2_hmac_sha256(password, salt, iterations, &mut out)
        }
        Pbkdf2Digest::Sha512 => {
            pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out)
        }
    }
    out
}

/// The PBKDF2-SHA256 work this thread has run, so tests show what a
/// verification spent by counting it, not by timing it.
#[cfg(test)]
pub(crate) mod meter {
    use std::cell::Cell;

    thread_local! {
        static SHA256_ITERATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn add(iterations: u64) {
        SHA256_ITERATIONS.with(|count| count.set(count.get() + iterations));
    }

    /// The PBKDF2-SHA256 iterations (one per output block) `f` runs.
    pub(crate) fn sha256_iterations_during(f: impl FnOnce()) -> u64 {
        let before = SHA256_ITERATIONS.with(Cell::get);
        f();
        SHA256_ITERATIONS.with(Cell::get) - before
    }
}

fn derive_raw(password: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
    derive_with(Pbkdf2Digest::Sha256, password, salt, iterations, len)
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
        scheme: Scheme::Pbkdf2 {
            digest: Pbkdf2Digest::Sha256,
            iterations,
            salt: salt.to_vec(),
            hash,
        },
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

    /// Counted, not timed: a wrong password against any stored hash runs
    /// at least the standard verification (the dummy an unknown user
    /// costs), so a cheap imported hash does not answer sooner than a
    /// username that does not exist.
    #[test]
    fn a_wrong_password_costs_a_standard_verification_whatever_the_stored_hash() {
        use crate::legacy::{HashCeilings, import_hash, import_hash_with};
        let hasher = PasswordHasher::insecure_for_tests(1_000);
        let unknown_user = meter::sha256_iterations_during(|| {
            assert!(!hasher.verify_dummy("wrong password"));
        });
        assert_eq!(unknown_user, 1_000);
        let ceilings = HashCeilings::default();
        let werkzeug_one_iteration = import_hash(
            "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
            &ceilings,
        )
        .unwrap();
        let user = Username::parse("alice").unwrap();
        let ours_below_today = PasswordHasher::insecure_for_tests(10)
            .hash(&Password::parse("s3cret-enough", &user).unwrap())
            .unwrap();
        let cheap = [
            werkzeug_one_iteration.clone(),
            ours_below_today,
            import_hash(
                "pbkdf2:sha1:2$salt$ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957",
                &ceilings,
            )
            .unwrap(),
            import_hash(
                "$2b$04$IulLTpl451KOmw2nOGAIeOk2GVpLNHSh8XXDxtnc2yq9ScpjoVuvu",
                &ceilings,
            )
            .unwrap(),
            import_hash(
                "$scrypt$ln=4,r=1,p=1$c2FsdHNhbHQ$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
                &ceilings,
            )
            .unwrap(),
            import_hash(
                "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
                &ceilings,
            )
            .unwrap(),
            import_hash_with("5f4dcc3b5aa765d61d8327deb882cf99", &ceilings, true).unwrap(),
        ];
        for stored in &cheap {
            let spent = meter::sha256_iterations_during(|| {
                assert!(!hasher.verify("wrong password", stored));
            });
            assert!(
                spent >= unknown_user,
                "{}: a wrong password ran {spent} PBKDF2-SHA256 iterations, an unknown user {unknown_user}",
                stored.scheme_name()
            );
        }
        // The right password costs its own work: the login's rehash follows.
        let spent = meter::sha256_iterations_during(|| {
            assert!(hasher.verify("password", &werkzeug_one_iteration));
        });
        assert_eq!(spent, 1);
        // A hash of ours at today's parameters is the standard work itself.
        let ours = hasher
            .hash(&Password::parse("s3cret-enough", &user).unwrap())
            .unwrap();
        let spent = meter::sha256_iterations_during(|| {
            assert!(!hasher.verify("wrong password", &ours));
        });
        assert_eq!(spent, 1_000);
    }

    /// Each parameter counts: PBKDF2's output blocks and digest, scrypt's
    /// p, argon2's m times t (its lanes split m and add nothing).
    #[test]
    fn work_counts_every_parameter() {
        let work = |phc: &str| PasswordHash::parse(phc).unwrap().work();
        let salt = "c2FsdHNhbHRzYWx0c2FsdA";
        let b64 = |len: usize| B64.encode((0..len).map(|i| i as u8).collect::<Vec<u8>>());
        assert_eq!(
            work(&format!("$pbkdf2-sha256$i=600000,l=32${salt}${}", b64(32))),
            600_000
        );
        assert_eq!(
            work(&format!(
                "$pbkdf2-sha256$i=2000000,l=128${salt}${}",
                b64(128)
            )),
            8_000_000
        );
        assert_eq!(
            work(&format!("$pbkdf2-sha256$i=1000,l=33${salt}${}", b64(33))),
            2_000
        );
        assert_eq!(
            work(&format!("$pbkdf2-sha1$i=1000,l=20${salt}${}", b64(20))),
            1_000
        );
        assert_eq!(
            work(&format!("$pbkdf2-sha1$i=1000,l=64${salt}${}", b64(64))),
            4_000
        );
        assert_eq!(
            work(&format!("$pbkdf2-sha512$i=210000,l=64${salt}${}", b64(64))),
            420_000
        );
        assert_eq!(
            work(&format!("$scrypt$ln=16,r=8,p=1${salt}${}", b64(32))),
            65_536 * 8 * 3
        );
        assert_eq!(
            work(&format!("$scrypt$ln=16,r=8,p=16${salt}${}", b64(32))),
            65_536 * 8 * 16 * 3
        );
        for p in [1, 8] {
            assert_eq!(
                work(&format!(
                    "$argon2id$v=19$m=262144,t=10,p={p}${salt}${}",
                    b64(32)
                )),
                262_144 * 10 * 3
            );
        }
        assert_eq!(
            work("$2b$12$JOGTfjcFrVkdsC3S8J4AfOGL3hJAmWdXBI7SvBEAkbDyr0xA5BKSu"),
            4_096 * 200
        );
        assert_eq!(
            work("bcrypt_sha256$$2b$12$Crqw4eSNlTeBckSscqdA6.lR8ZE.nR289qBwvexn0dZOG5a7X41KK"),
            4_096 * 200
        );
    }

    /// However a hash got into its row, one that asks more than any login
    /// may spend is not run: it fails as a wrong password would, after the
    /// standard work only.
    #[test]
    fn a_stored_hash_over_the_hard_limit_is_never_run() {
        let hasher = PasswordHasher::insecure_for_tests(1_000);
        // Within the row's caps (20,000,000 iterations, 128 bytes), but four
        // output blocks: 80,000,000 units.
        let salt = "c2FsdHNhbHRzYWx0c2FsdA";
        let four_blocks = PasswordHash::parse(&format!(
            "$pbkdf2-sha256$i=20000000,l=128${salt}${}",
            B64.encode([7u8; 128])
        ))
        .unwrap();
        assert_eq!(four_blocks.work(), 80_000_000);
        let spent = meter::sha256_iterations_during(|| {
            assert!(!hasher.verify("anything", &four_blocks));
        });
        assert_eq!(spent, 1_000, "only the standard dummy ran");
        // 4 GiB and 100 passes: never allocated, never run.
        let argon2 = PasswordHash::parse(&format!(
            "$argon2id$v=19$m=4194304,t=100,p=1${salt}${}",
            B64.encode([7u8; 32])
        ))
        .unwrap();
        assert!(argon2.work() > MAX_WORK);
        assert!(!hasher.verify("anything", &argon2));
        // The most our own hasher may be configured to spend still runs.
        let ours_at_most = PasswordHash::parse(&format!(
            "$pbkdf2-sha256$i=20000000,l=32${salt}${}",
            B64.encode([7u8; 32])
        ))
        .unwrap();
        assert_eq!(ours_at_most.work(), MAX_WORK);
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
