//! Password hashes made by other systems, as `hub users import` reads them:
//! each accepted format is rewritten once, at import, into a form
//! [`PasswordHash`] verifies (a PHC string, or a bcrypt string), and every
//! one of them is replaced by polyhub's own PBKDF2-SHA256 at the user's
//! next login (`PasswordHasher::needs_rehash` is true for all).
//!
//! | source | format | stored as |
//! |---|---|---|
//! | Werkzeug | `pbkdf2:sha256:N$salt$hex` (sha1, sha512 too) | `$pbkdf2-sha256$i=N,l=L$..$..` |
//! | Werkzeug | `scrypt:N:r:p$salt$hex` | `$scrypt$ln=..,r=..,p=..$..$..` |
//! | Django | `pbkdf2_sha256$N$salt$b64`, `pbkdf2_sha1$...` | `$pbkdf2-sha256$...` |
//! | Django | `bcrypt_sha256$$2b$...`, `bcrypt$$2b$...` | as given, `$2b$...` |
//! | Django | `argon2$argon2id$v=19$...` | `$argon2id$v=19$...` |
//! | passlib, PHC | `$pbkdf2-sha256$N$ab64$ab64` (also `$pbkdf2$`, `$pbkdf2-sha512$`, and the `i=` PHC form) | `$pbkdf2-...$i=N,l=L$..$..` |
//! | passlib, PHC | `$scrypt$ln=..,r=..,p=..$..$..`, `$argon2id$`, `$argon2i$` | as given (standard base64) |
//! | bcrypt | `$2a$`, `$2b$`, `$2y$` | as given |
//!
//! A hash whose work is above the configured [`HashCeilings`] is refused at
//! import: an import file must not become a denial of service at login.
//! The work is the real one ([`PasswordHash::work`]): PBKDF2's iterations
//! times its output blocks, scrypt's N * r * p, argon2's m * t, bcrypt's
//! 2^cost, all in one unit, so no parameter left out multiplies it.
//!
//! There is no floor: a cheap hash (`pbkdf2:sha256:1`) is imported, as its
//! user could not log in otherwise. It tells nothing by its speed (a wrong
//! password against it costs a standard verification, see
//! `PasswordHasher::verify`), and it is replaced at the user's next login.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64_PADDED, STANDARD_NO_PAD as B64};

use crate::error::Error;
use crate::password::{Cost, MAX_WORK, PasswordHash, PasswordHasher, Pbkdf2Digest, scrypt_bytes};
use crate::ports::{Clock, ImportOutcome, User, UserRepository};
use crate::user::{Email, Role, UserId, Username};

/// The most work an imported hash may ask of one login. A hash over any of
/// them is refused at import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCeilings {
    /// The most work of any scheme, in work units ([`PasswordHash::work`]):
    /// as many PBKDF2-SHA256 iterations of one output block as cost as
    /// much. For PBKDF2-SHA256 with a 32-byte output it is the iteration
    /// count, hence the setting's name (`import.max_pbkdf2_iterations`);
    /// more output blocks, a dearer digest, scrypt, argon2 and bcrypt all
    /// count against it too. Never more than [`MAX_WORK`], which no stored
    /// hash may pass.
    pub max_pbkdf2_iterations: u32,
    /// bcrypt's cost (2^cost rounds).
    pub max_bcrypt_cost: u32,
    /// scrypt's memory, 128 * r * N bytes, in MiB.
    pub max_scrypt_mib: u32,
    pub max_scrypt_p: u32,
    /// argon2's memory (m), in MiB.
    pub max_argon2_mib: u32,
    pub max_argon2_t: u32,
    /// argon2's lanes: they add no work here (see [`PasswordHash::work`]),
    /// but a hash made for many threads is capped all the same.
    pub max_argon2_p: u32,
}

impl Default for HashCeilings {
    /// 2,000,000 work units: 3 1/3 standard logins, about 0.7 s of one core
    /// without SHA extensions (1.4 s on the pen test's), the "about a
    /// second" the ceilings promise, whatever the scheme; at most 256 MiB.
    /// Above every default of Werkzeug, Django, passlib, argon2-cffi,
    /// bcrypt (12) and Keycloak; bcrypt 14 would be 3,276,800 units.
    fn default() -> Self {
        Self {
            max_pbkdf2_iterations: 2_000_000,
            max_bcrypt_cost: 13,
            max_scrypt_mib: 64,
            max_scrypt_p: 16,
            max_argon2_mib: 256,
            max_argon2_t: 10,
            max_argon2_p: 8,
        }
    }
}

/// Why an imported hash was refused; shown in the import report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashRefusal {
    /// No listed format.
    UnknownFormat,
    /// A listed format, badly formed.
    Malformed(String),
    /// Well formed, but more work than the ceilings allow.
    OverCeiling(String),
    /// A bare MD5, SHA-1 or SHA-256 digest, refused unless the import
    /// allows insecure hashes.
    Insecure,
}

impl fmt::Display for HashRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashRefusal::UnknownFormat => f.write_str("unknown password hash format"),
            HashRefusal::Malformed(why) => write!(f, "malformed password hash: {why}"),
            HashRefusal::OverCeiling(why) => {
                write!(f, "password hash parameters over the ceiling: {why}")
            }
            HashRefusal::Insecure => f.write_str(
                "insecure password hash (a bare MD5, SHA-1 or SHA-256 digest): import it only with --allow-insecure",
            ),
        }
    }
}

fn malformed(why: &str) -> HashRefusal {
    HashRefusal::Malformed(why.to_owned())
}

fn hex(value: &str) -> Result<Vec<u8>, HashRefusal> {
    if !value.len().is_multiple_of(2) || value.is_empty() {
        return Err(malformed("the hash is not hex"));
    }
    (0..value.len())
        .step_by(2)
        .map(|i| {
            value
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| malformed("the hash is not hex"))
        })
        .collect()
}

/// passlib's adapted base64 ('.' for '+', no padding) to standard bytes.
fn ab64(value: &str) -> Result<Vec<u8>, HashRefusal> {
    B64.decode(value.replace('.', "+"))
        .map_err(|_| malformed("bad base64"))
}

fn digest(name: &str) -> Option<Pbkdf2Digest> {
    match name {
        "sha1" => Some(Pbkdf2Digest::Sha1),
        "sha256" => Some(Pbkdf2Digest::Sha256),
        "sha512" => Some(Pbkdf2Digest::Sha512),
        _ => None,
    }
}

fn pbkdf2_phc(
    digest: Pbkdf2Digest,
    iterations: &str,
    salt: &[u8],
    hash: &[u8],
) -> Result<String, HashRefusal> {
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| malformed("bad iteration count"))?;
    Ok(format!(
        "${}$i={iterations},l={}${}${}",
        digest.name(),
        hash.len(),
        B64.encode(salt),
        B64.encode(hash)
    ))
}

/// A bare digest (`hex`, `md5$salt$hex`, `sha1$$hex`, Django's
/// `unsalted_sha1$$hex`...) as `$insecure-<digest>$<salt>$<hash>`: the
/// digest of salt then password. `None` when `raw` is not one.
fn insecure(raw: &str) -> Option<Result<String, HashRefusal>> {
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let by_len = |len: usize| match len {
        32 => Some("md5"),
        40 => Some("sha1"),
        64 => Some("sha256"),
        _ => None,
    };
    let (name, salt, digest) = if is_hex(raw) {
        (by_len(raw.len())?, "", raw)
    } else {
        // Django's unsalted hashers write `unsalted_sha1$$hex`.
        let raw = raw.strip_prefix("unsalted_").unwrap_or(raw);
        let mut parts = raw.splitn(3, '$');
        let (Some(name), Some(salt), Some(digest)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if !matches!(name, "md5" | "sha1" | "sha256") || !is_hex(digest) {
            return None;
        }
        if by_len(digest.len()) != Some(name) {
            return Some(Err(malformed("the digest's length is not its algorithm's")));
        }
        return Some(hex(digest).map(|hash| {
            format!(
                "$insecure-{name}${}${}",
                B64.encode(salt.as_bytes()),
                B64.encode(hash)
            )
        }));
    };
    Some(hex(digest).map(|hash| {
        format!(
            "$insecure-{name}${}${}",
            B64.encode(salt.as_bytes()),
            B64.encode(hash)
        )
    }))
}

/// The stored form of `raw`, in any listed format.
fn canonical(raw: &str) -> Result<String, HashRefusal> {
    // Werkzeug: `method$salt$hex`.
    if let Some(method) = raw.strip_prefix("pbkdf2:") {
        let [method, salt, hash] = raw_parts::<3>(method)?;
        let (name, iterations) = method
            .split_once(':')
            .ok_or_else(|| malformed("no iteration count"))?;
        let digest = digest(name).ok_or_else(|| malformed("unsupported digest"))?;
        return pbkdf2_phc(digest, iterations, salt.as_bytes(), &hex(hash)?);
    }
    if let Some(method) = raw.strip_prefix("scrypt:") {
        let [method, salt, hash] = raw_parts::<3>(method)?;
        let mut numbers = method.split(':').map(str::parse::<u64>);
        let (Some(Ok(n)), Some(Ok(r)), Some(Ok(p)), None) = (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) else {
            return Err(malformed("scrypt needs n:r:p"));
        };
        if !n.is_power_of_two() || n < 2 {
            return Err(malformed("scrypt's n must be a power of two"));
        }
        return Ok(format!(
            "$scrypt$ln={},r={r},p={p}${}${}",
            n.trailing_zeros(),
            B64.encode(salt.as_bytes()),
            B64.encode(hex(hash)?)
        ));
    }
    // Django: `algorithm$...`.
    for (prefix, digest) in [
        ("pbkdf2_sha256$", Pbkdf2Digest::Sha256),
        ("pbkdf2_sha1$", Pbkdf2Digest::Sha1),
    ] {
        if let Some(rest) = raw.strip_prefix(prefix) {
            let [iterations, salt, hash] = raw_parts::<3>(rest)?;
            let hash = B64_PADDED
                .decode(hash)
                .map_err(|_| malformed("bad base64"))?;
            return pbkdf2_phc(digest, iterations, salt.as_bytes(), &hash);
        }
    }
    if raw.starts_with("bcrypt_sha256$$2") {
        return Ok(raw.to_owned());
    }
    if let Some(inner) = raw.strip_prefix("bcrypt$") {
        return Ok(inner.to_owned());
    }
    if let Some(inner) = raw.strip_prefix("argon2$argon2") {
        return Ok(format!("$argon2{inner}"));
    }
    // passlib's PBKDF2: `$pbkdf2-sha256$rounds$salt$checksum`, adapted base64.
    for (prefix, digest) in [
        ("$pbkdf2$", Pbkdf2Digest::Sha1),
        ("$pbkdf2-sha1$", Pbkdf2Digest::Sha1),
        ("$pbkdf2-sha256$", Pbkdf2Digest::Sha256),
        ("$pbkdf2-sha512$", Pbkdf2Digest::Sha512),
    ] {
        if let Some(rest) = raw.strip_prefix(prefix) {
            if rest.starts_with("i=") {
                return Ok(raw.to_owned()); // the PHC form: ours, and others'
            }
            let [rounds, salt, hash] = raw_parts::<3>(rest)?;
            return pbkdf2_phc(digest, rounds, &ab64(salt)?, &ab64(hash)?);
        }
    }
    if let Some(rest) = raw.strip_prefix("$scrypt$") {
        let [params, salt, hash] = raw_parts::<3>(rest)?;
        return Ok(format!(
            "$scrypt${params}${}${}",
            B64.encode(ab64(salt)?),
            B64.encode(ab64(hash)?)
        ));
    }
    if raw.starts_with("$argon2")
        || raw.starts_with("$2a$")
        || raw.starts_with("$2b$")
        || raw.starts_with("$2y$")
    {
        return Ok(raw.to_owned());
    }
    Err(HashRefusal::UnknownFormat)
}

fn raw_parts<const N: usize>(value: &str) -> Result<[&str; N], HashRefusal> {
    let parts: Vec<&str> = value.split('$').collect();
    parts
        .try_into()
        .map_err(|_| malformed("wrong number of '$'-separated fields"))
}

/// Reads an imported hash in any listed format and checks its work
/// against `ceilings`; a bare digest is refused.
pub fn import_hash(raw: &str, ceilings: &HashCeilings) -> Result<PasswordHash, HashRefusal> {
    import_hash_with(raw, ceilings, false)
}

/// As [`import_hash`]; with `allow_insecure`, bare MD5, SHA-1 and SHA-256
/// digests are imported too, marked insecure.
pub fn import_hash_with(
    raw: &str,
    ceilings: &HashCeilings,
    allow_insecure: bool,
) -> Result<PasswordHash, HashRefusal> {
    let raw = raw.trim();
    if raw.len() > 1024 {
        return Err(malformed("longer than 1024 characters"));
    }
    let stored = match insecure(raw) {
        Some(_) if !allow_insecure => return Err(HashRefusal::Insecure),
        Some(stored) => stored?,
        None => canonical(raw)?,
    };
    let hash = PasswordHash::parse(&stored).map_err(|e| {
        HashRefusal::Malformed(
            e.internal_cause()
                .map_or_else(|| e.to_string(), ToString::to_string)
                .trim_start_matches("stored password hash is corrupt: ")
                .to_owned(),
        )
    })?;
    let over = |what: String| Err(HashRefusal::OverCeiling(what));
    let cost = hash.cost();
    match cost {
        Cost::Bcrypt { cost } if cost > ceilings.max_bcrypt_cost => {
            return over(format!(
                "bcrypt cost {cost}, ceiling {}",
                ceilings.max_bcrypt_cost
            ));
        }
        Cost::Scrypt { log_n, r, p }
            if scrypt_bytes(log_n, r) > u64::from(ceilings.max_scrypt_mib) << 20
                || p > ceilings.max_scrypt_p =>
        {
            return over(format!(
                "scrypt needs {} MiB with p={p}, ceilings {} MiB and p={}",
                scrypt_bytes(log_n, r) >> 20,
                ceilings.max_scrypt_mib,
                ceilings.max_scrypt_p
            ));
        }
        Cost::Argon2 { kib, t, p }
            if kib > ceilings.max_argon2_mib.saturating_mul(1024)
                || t > ceilings.max_argon2_t
                || p > ceilings.max_argon2_p =>
        {
            return over(format!(
                "argon2 m={kib} KiB, t={t}, p={p}; ceilings {} MiB, t={}, p={}",
                ceilings.max_argon2_mib, ceilings.max_argon2_t, ceilings.max_argon2_p
            ));
        }
        _ => {}
    }
    // Each parameter may be within its own ceiling and their product not.
    let work = cost.work();
    let ceiling = u64::from(ceilings.max_pbkdf2_iterations).min(MAX_WORK);
    if work > ceiling {
        return over(format!(
            "{} is the work of {work} PBKDF2-SHA256 iterations ({:.1} standard logins), ceiling {ceiling}",
            what_costs(cost),
            work as f64 / f64::from(PasswordHasher::MIN_ITERATIONS)
        ));
    }
    Ok(hash)
}

/// The parameters that make a hash's work, as a refusal names them.
fn what_costs(cost: Cost) -> String {
    match cost {
        Cost::Pbkdf2 {
            digest,
            iterations,
            blocks: 1,
        } => format!("{}, {iterations} iterations", digest.name()),
        Cost::Pbkdf2 {
            digest,
            iterations,
            blocks,
        } => format!(
            "{}, {iterations} iterations x {blocks} output blocks of {} bytes",
            digest.name(),
            digest.output_len()
        ),
        Cost::Scrypt { log_n, r, p } => format!(
            "scrypt N={}, r={r}, p={p}",
            1u64.checked_shl(u32::from(log_n)).unwrap_or(u64::MAX)
        ),
        Cost::Bcrypt { cost } => format!("bcrypt cost {cost}"),
        Cost::Argon2 { kib, t, p } => format!("argon2 m={kib} KiB, t={t} (p={p})"),
        Cost::Digest => "a bare digest".to_owned(),
    }
}

/// One user as an import file gives it.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    pub username: String,
    pub email: String,
    pub password_hash: String,
    /// `user` (the default) or `admin`.
    #[serde(default)]
    pub role: Option<String>,
    /// RFC 3339; the import time when absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<time::OffsetDateTime>,
}

impl fmt::Debug for ImportRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportRecord")
            .field("username", &self.username)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// What an import did, line by line where it refused one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: u64,
    /// Lines whose username was already there (a rerun imports nothing).
    pub already_present: u64,
    /// Line numbers and why each was refused.
    pub rejected: Vec<(u64, String)>,
}

impl ImportReport {
    pub fn add(&mut self, other: ImportReport) {
        self.imported += other.imported;
        self.already_present += other.already_present;
        self.rejected.extend(other.rejected);
    }
}

/// The import use case: records checked with registration's value rules
/// and the hash ceilings, stored a batch at a time.
#[derive(Clone)]
pub struct Importer {
    users: Arc<dyn UserRepository>,
    clock: Arc<dyn Clock>,
    ceilings: HashCeilings,
    allow_insecure: bool,
}

impl fmt::Debug for Importer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Importer")
            .field("ceilings", &self.ceilings)
            .finish_non_exhaustive()
    }
}

impl Importer {
    pub fn new(
        users: Arc<dyn UserRepository>,
        clock: Arc<dyn Clock>,
        ceilings: HashCeilings,
    ) -> Self {
        Self {
            users,
            clock,
            ceilings,
            allow_insecure: false,
        }
    }

    /// Imports bare MD5, SHA-1 and SHA-256 digests too (`--allow-insecure`).
    pub fn allowing_insecure(mut self, allow: bool) -> Self {
        self.allow_insecure = allow;
        self
    }

    /// The user a record stands for, or why it cannot be imported. The
    /// username and email follow registration's rules (a username is
    /// folded to lower case; one the rules refuse is refused, never changed).
    fn user(&self, record: ImportRecord) -> Result<User, String> {
        let username = Username::parse(&record.username)
            .map_err(|e| format!("bad username: {}", e.message()))?;
        let email =
            Email::parse(&record.email).map_err(|e| format!("bad email: {}", e.message()))?;
        let role = match record.role.as_deref() {
            None | Some("") | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(other) => return Err(format!("bad role {other:?}: user or admin")),
        };
        let password_hash =
            import_hash_with(&record.password_hash, &self.ceilings, self.allow_insecure)
                .map_err(|e| e.to_string())?;
        let now = self.clock.now();
        Ok(User {
            id: UserId::generate(),
            username,
            email,
            password_hash,
            role,
            active: true,
            created_at: record.created_at.unwrap_or(now),
            updated_at: now,
        })
    }

    /// Imports `records` on behalf of `principal`, who must be an admin,
    /// `batch` at a time; each refusal names the record's place (from 1).
    pub async fn import_as(
        &self,
        principal: &crate::token::Principal,
        records: Vec<ImportRecord>,
        batch: usize,
        dry_run: bool,
    ) -> Result<ImportReport, Error> {
        crate::administration::require_admin(
            &*self.users,
            principal,
            "importing users is for admins",
        )
        .await?;
        let mut report = ImportReport::default();
        let mut numbered = (1u64..).zip(records).peekable();
        while numbered.peek().is_some() {
            let chunk: Vec<_> = numbered.by_ref().take(batch.max(1)).collect();
            report.add(self.import_batch(chunk, dry_run).await?);
        }
        tracing::info!(
            user_id = %principal.user_id,
            imported = report.imported,
            already_present = report.already_present,
            rejected = report.rejected.len(),
            dry_run,
            "users imported over the API"
        );
        Ok(report)
    }

    /// Imports one batch of numbered records; `dry_run` checks everything,
    /// the database's uniqueness included, and keeps nothing.
    pub async fn import_batch(
        &self,
        records: Vec<(u64, ImportRecord)>,
        dry_run: bool,
    ) -> Result<ImportReport, Error> {
        let mut report = ImportReport::default();
        let mut users = Vec::with_capacity(records.len());
        let mut lines = Vec::with_capacity(records.len());
        let (mut names, mut emails) = (HashSet::new(), HashSet::new());
        for (line, record) in records {
            match self.user(record) {
                Ok(user) => {
                    if !names.insert(user.username.as_str().to_owned()) {
                        report
                            .rejected
                            .push((line, "duplicate username within the file".into()));
                    } else if !emails.insert(user.email.as_str().to_owned()) {
                        report
                            .rejected
                            .push((line, "duplicate email within the file".into()));
                    } else {
                        lines.push(line);
                        users.push(user);
                    }
                }
                Err(why) => report.rejected.push((line, why)),
            }
        }
        if users.is_empty() {
            return Ok(report);
        }
        for (line, outcome) in lines
            .into_iter()
            .zip(self.users.import(&users, dry_run).await?)
        {
            match outcome {
                ImportOutcome::Imported => report.imported += 1,
                ImportOutcome::UsernamePresent => report.already_present += 1,
                ImportOutcome::EmailTaken => report
                    .rejected
                    .push((line, "email belongs to another account".into())),
            }
        }
        report.rejected.sort_by_key(|(line, _)| *line);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PasswordHasher;

    fn verifies(raw: &str, password: &str) -> bool {
        let hash = import_hash(raw, &HashCeilings::default()).unwrap();
        let hasher = PasswordHasher::insecure_for_tests(1_000);
        assert!(
            hasher.needs_rehash(&hash),
            "{raw}: every imported hash is replaced"
        );
        hasher.verify(password, &hash)
    }

    /// Known answers computed by the reference implementations (the
    /// integration tests generate fresh ones at test time too).
    #[test]
    fn known_answers_of_each_family() {
        // Python: hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 1).hex()
        let werkzeug =
            "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
        assert!(verifies(werkzeug, "password"));
        assert!(!verifies(werkzeug, "Password"));
        // RFC 6070: PBKDF2-HMAC-SHA1("password", "salt", 2, 20).
        let sha1 = "pbkdf2:sha1:2$salt$ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957";
        assert!(verifies(sha1, "password"));
        // RFC 7914 section 12: scrypt("password", "NaCl", N=1024, r=8, p=16, 64).
        let scrypt = "scrypt:1024:8:16$NaCl$fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640";
        assert!(verifies(scrypt, "password"));
        assert!(!verifies(scrypt, "passwordx"));
    }

    #[tokio::test]
    async fn a_batch_reports_each_line_and_a_rerun_imports_nothing() {
        let importer = Importer::new(
            Arc::new(crate::ports::memory::InMemoryUsers::default()),
            Arc::new(crate::ports::SystemClock),
            HashCeilings::default(),
        );
        let record = |username: &str, email: &str, hash: &str| ImportRecord {
            username: username.into(),
            email: email.into(),
            password_hash: hash.into(),
            ..ImportRecord::default()
        };
        let good =
            "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
        let batch = vec![
            (1, record("Anna", "anna@example.com", good)),
            (2, record("an na", "anna2@example.com", good)),
            (3, record("bert", "not-an-email", good)),
            (4, record("carl", "carl@example.com", "md5$00")),
            (5, record("anna", "anna3@example.com", good)),
            (6, record("dora", "ANNA@example.com", good)),
            (7, record("emil", "emil@example.com", good)),
        ];
        let report = importer.import_batch(batch.clone(), false).await.unwrap();
        assert_eq!(report.imported, 2, "{report:?}");
        let lines: Vec<u64> = report.rejected.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6], "{report:?}");
        assert!(
            report.rejected[2]
                .1
                .contains("unknown password hash format")
        );
        assert!(report.rejected[3].1.contains("duplicate username"));
        let again = importer.import_batch(batch, false).await.unwrap();
        assert_eq!((again.imported, again.already_present), (0, 2), "{again:?}");
    }

    #[test]
    fn bare_digests_need_allow_insecure_and_verify_salt_first() {
        let ceilings = HashCeilings::default();
        // md5("password"), sha1("saltpassword"), sha256("password").
        let md5 = "5f4dcc3b5aa765d61d8327deb882cf99";
        let salted_sha1 = "sha1$salt$59b3e8d637cf97edbe2384cf59cb7453dfe30789";
        let sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
        for raw in [
            md5,
            salted_sha1,
            sha256,
            "unsalted_md5$$5f4dcc3b5aa765d61d8327deb882cf99",
        ] {
            assert_eq!(
                import_hash(raw, &ceilings).unwrap_err(),
                HashRefusal::Insecure,
                "{raw}"
            );
            let hash = import_hash_with(raw, &ceilings, true).unwrap();
            assert!(hash.is_insecure());
            let hasher = PasswordHasher::insecure_for_tests(1_000);
            assert!(hasher.verify("password", &hash), "{raw}");
            assert!(!hasher.verify("passwordx", &hash), "{raw}");
            assert!(hasher.needs_rehash(&hash));
        }
        assert!(matches!(
            import_hash_with(
                "md5$salt$59b3e8d637cf97edbe2384cf59cb7453dfe30789",
                &ceilings,
                true
            ),
            Err(HashRefusal::Malformed(_))
        ));
    }

    /// The pen test's three hashes: each parameter within its own ceiling,
    /// their product far over the work ceiling. Refused at import, before
    /// anything is hashed, saying what makes the work.
    #[test]
    fn the_pen_tests_hashes_are_refused_for_their_real_work() {
        let ceilings = HashCeilings::default();
        for (raw, reason) in [
            (
                FOUR_BLOCK_PBKDF2,
                "pbkdf2-sha256, 2000000 iterations x 4 output blocks of 32 bytes is the work of 8000000 PBKDF2-SHA256 iterations (13.3 standard logins), ceiling 2000000",
            ),
            (
                WERKZEUG_SCRYPT_P16,
                "scrypt N=65536, r=8, p=16 is the work of 25165824 PBKDF2-SHA256 iterations (41.9 standard logins), ceiling 2000000",
            ),
            (
                ARGON2_M256_T10_P8,
                "argon2 m=262144 KiB, t=10 (p=8) is the work of 7864320 PBKDF2-SHA256 iterations (13.1 standard logins), ceiling 2000000",
            ),
        ] {
            let refusal = import_hash(raw, &ceilings).unwrap_err();
            assert_eq!(refusal, HashRefusal::OverCeiling(reason.into()), "{raw}");
            assert_eq!(
                refusal.to_string(),
                format!("password hash parameters over the ceiling: {reason}")
            );
        }
    }

    /// What the reference libraries make at their defaults (made by each,
    /// password "correct horse battery staple"), Keycloak's, PHP's and
    /// polyhub's own: all within the default ceilings.
    #[test]
    fn every_librarys_default_hash_is_accepted() {
        let ceilings = HashCeilings::default();
        for (source, raw) in [
            (
                "werkzeug pbkdf2:sha256",
                "pbkdf2:sha256:1000000$vyUX1vKZdwTXTxjW$a7d7a777cc6c5eba5bf7f59e3f9645f9e4431e6150c92bdd19b1392c67279ee2",
            ),
            (
                "werkzeug pbkdf2:sha512",
                "pbkdf2:sha512:1000000$WR6vIa0evEZdtBTp$5326b6634a23994f4b3d24bbe323ac4018cfdcb5bb20e31387162d8ac7c6f4abfab828d0bd89ca3667c630c067da7722faf01d88e66a0f54740ee507b4893de2",
            ),
            (
                "werkzeug scrypt",
                "scrypt:32768:8:1$UuReOlJ3hH1MtFwT$a2ad5a675deabc2042f3e435d161f68464aae1797619ff679cc379649f72bf2716cb96ea5def520ad2f96850da1329c323639c893a97d6d72aec615fb1762cff",
            ),
            (
                "django pbkdf2_sha256",
                "pbkdf2_sha256$1000000$Vsnhb98vTPyjiRzpRETILc$lIqh0WYtRJxBg0aK6+/2OcKaBo6H26chAPgFuCWPRBY=",
            ),
            (
                "django pbkdf2_sha1",
                "pbkdf2_sha1$1000000$rRwmO2a4mFegBVgf3LBRKp$pZ/yWtvwv1qK4MHYwZchB+Hd2hE=",
            ),
            (
                "django bcrypt_sha256",
                "bcrypt_sha256$$2b$12$Crqw4eSNlTeBckSscqdA6.lR8ZE.nR289qBwvexn0dZOG5a7X41KK",
            ),
            (
                "django argon2",
                "argon2$argon2id$v=19$m=102400,t=2,p=8$amVxRGt6enBxVVdWYlFFWWNMN2x3Tg$n2CXqEF5GfhjiOMu9Lh32VrsdC7oSpGOo9jvY4PB2sg",
            ),
            (
                "passlib pbkdf2_sha256",
                "$pbkdf2-sha256$29000$yZlzrhVCyLkXolQqhfDe.w$WXqJ6pAXwzB3.FY5vQsdhlstU12ql48gASgA98OeROw",
            ),
            (
                "passlib pbkdf2_sha512",
                "$pbkdf2-sha512$25000$w3iv1VorZUwpZYwxRihFCA$sk0Rad3omY6uo2wTNNKeO0WXgiGrU3vatUaUePRN/t7x./2I4oAXAHxBmlL8ZuRkcAI45BfFZ8WWstxErRFu0A",
            ),
            (
                "passlib pbkdf2 (sha1)",
                "$pbkdf2$131000$LQUAACAE4DwnhFAqpdS6Vw$as8XoMvn0RIsJZRrxuoLJgs8kZg",
            ),
            (
                "passlib scrypt",
                "$scrypt$ln=16,r=8,p=1$o3ROSYkR4rz3XsuZc641Zg$HNMHup6GevWvl7CyRHRvRccF8pfUaABXH/hWl4Pf09s",
            ),
            (
                "argon2-cffi",
                "$argon2id$v=19$m=65536,t=3,p=4$c5uXMF8f0Km3Cu/4tGdAJQ$8NrzBgBNYyX6640kOmcWVLdLm0tFN2/FzWxuWw1rYOM",
            ),
            (
                "PHP argon2id",
                "$argon2id$v=19$m=65536,t=4,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            ),
            (
                "bcrypt",
                "$2b$12$JOGTfjcFrVkdsC3S8J4AfOGL3hJAmWdXBI7SvBEAkbDyr0xA5BKSu",
            ),
            (
                "bcrypt 13",
                "$2b$13$yKBAbHOvOuoG7m9oFbgPLOQcou38SM25/pQfqOIRYFV1V.EPHvPpm",
            ),
            (
                "keycloak pbkdf2-sha512",
                "$pbkdf2-sha512$i=210000,l=64$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw",
            ),
            (
                "keycloak pbkdf2-sha256",
                "$pbkdf2-sha256$i=27500,l=64$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw",
            ),
            (
                "polyhub, the seed's services",
                "$pbkdf2-sha256$i=600000,l=32$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            ),
        ] {
            let hash = import_hash(raw, &ceilings).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert!(hash.work() <= 2_000_000, "{source}: {}", hash.work());
        }
    }

    /// The work ceiling is inclusive, counts output blocks, and is the
    /// configured one (but never past what a stored hash may ask).
    #[test]
    fn the_work_ceiling_counts_output_blocks_and_follows_the_setting() {
        let ceilings = HashCeilings::default();
        let pbkdf2 = |iterations: u32, hash: &str| {
            format!("$pbkdf2-sha256$i={iterations}$c2FsdHNhbHRzYWx0c2FsdA${hash}")
        };
        let one_block = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
        let two_blocks = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g";
        assert!(import_hash(&pbkdf2(2_000_000, one_block), &ceilings).is_ok());
        assert!(matches!(
            import_hash(&pbkdf2(2_000_001, one_block), &ceilings),
            Err(HashRefusal::OverCeiling(_))
        ));
        assert!(import_hash(&pbkdf2(1_000_000, two_blocks), &ceilings).is_ok());
        assert!(matches!(
            import_hash(&pbkdf2(1_000_001, two_blocks), &ceilings),
            Err(HashRefusal::OverCeiling(_))
        ));
        let raised = HashCeilings {
            max_pbkdf2_iterations: 8_000_000,
            ..ceilings
        };
        assert!(import_hash(FOUR_BLOCK_PBKDF2, &raised).is_ok());
        let past_any_login = HashCeilings {
            max_pbkdf2_iterations: u32::MAX,
            ..ceilings
        };
        assert_eq!(
            import_hash(&pbkdf2(20_000_000, two_blocks), &past_any_login),
            Err(HashRefusal::OverCeiling(
                "pbkdf2-sha256, 20000000 iterations x 2 output blocks of 32 bytes is the work of 40000000 PBKDF2-SHA256 iterations (66.7 standard logins), ceiling 20000000".into()
            ))
        );
        // Each parameter keeps its own ceiling and message.
        assert_eq!(
            import_hash(
                "$2b$14$abcdefghijklmnopqrstuuWJ6X6c6pUJmLqwi8xZNaW8eFVQqaL0y",
                &ceilings
            ),
            Err(HashRefusal::OverCeiling(
                "bcrypt cost 14, ceiling 13".into()
            ))
        );
    }

    /// `$pbkdf2-sha256$i=2000000,l=128$`: 2,000,000 iterations, four times.
    const FOUR_BLOCK_PBKDF2: &str = "$pbkdf2-sha256$i=2000000,l=128$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8";
    /// Werkzeug's `scrypt:65536:8:16`: 64 MiB, sixteen times.
    const WERKZEUG_SCRYPT_P16: &str = "scrypt:65536:8:16$saltsaltsaltsalt$000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
    /// argon2id at 256 MiB and ten passes.
    const ARGON2_M256_T10_P8: &str = "$argon2id$v=19$m=262144,t=10,p=8$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    #[test]
    fn unknown_malformed_and_costly_hashes_are_refused() {
        let ceilings = HashCeilings::default();
        assert_eq!(
            import_hash("md5$abc", &ceilings).unwrap_err(),
            HashRefusal::UnknownFormat
        );
        assert!(matches!(
            import_hash("pbkdf2:sha256$salt$00", &ceilings).unwrap_err(),
            HashRefusal::Malformed(_)
        ));
        assert!(matches!(
            import_hash("pbkdf2:md5:1000$salt$00", &ceilings).unwrap_err(),
            HashRefusal::Malformed(_)
        ));
        assert!(matches!(
            import_hash("pbkdf2:sha256:3000000$salt$00ff", &ceilings).unwrap_err(),
            HashRefusal::OverCeiling(_)
        ));
        assert!(matches!(
            import_hash("scrypt:1048576:8:1$salt$00ff", &ceilings).unwrap_err(),
            HashRefusal::OverCeiling(_)
        ));
        assert!(matches!(
            import_hash(
                "$2b$15$abcdefghijklmnopqrstuuWJ6X6c6pUJmLqwi8xZNaW8eFVQqaL0y",
                &ceilings
            )
            .unwrap_err(),
            HashRefusal::OverCeiling(_)
        ));
        assert!(matches!(
            import_hash(
                "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                &ceilings
            )
            .unwrap_err(),
            HashRefusal::OverCeiling(_)
        ));
    }
}
