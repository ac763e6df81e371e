//! Passwords verified a moment ago, so a protocol that sends the password
//! on every call (SOAP's WS-Security UsernameToken) does not pay a full
//! password hash on every call.
//!
//! An entry is keyed by an HMAC of the login name and the password under a
//! key drawn at start and never kept anywhere, so the map holds no password
//! and nothing that can be tested against a guess offline. It remembers the
//! user it verified and a digest of the stored hash it verified against.
//! A hit counts only while that user still has that hash: a password change
//! (anywhere, by any process) ends it as soon as the directory serves the
//! new hash. An entry lives `lifetime` at most.
//!
//! A lockout of the account (its login budget spent by guesses) does not end
//! an entry: like a device that signed in before, a client that proved the
//! password keeps working while someone else guesses, so guessing cannot
//! lock a busy SOAP client out. Concurrent misses of one key wait for one
//! verification ([`VerifiedPasswords::one_at_a_time`]), so a client's calls
//! in flight when its entry expires spend one hash and one attempt, not one
//! each.
//!
//! The trade-off: within `lifetime`, whoever holds the right password of a
//! remembered entry is answered without the hash's cost and without
//! spending a login budget. A wrong password is never remembered, so every
//! guess still costs its hash and its budgets.
//!
//! Memory is bounded: at most `capacity` entries (about 100 bytes each);
//! past it, expired entries go, and if none had expired, the older half.
//! Misses in flight are bounded by the requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::authentication::LoginName;
use crate::error::Error;
use crate::password::PasswordHash;
use crate::user::UserId;

/// Entries kept unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A remembered verification.
#[derive(Debug, Clone, Copy)]
struct Entry {
    user: UserId,
    hash: [u8; 32],
    until: Instant,
}

/// What a lookup key stands for, opaque outside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialKey([u8; 32]);

/// The cache of verified passwords. One per process, shared by every port
/// that verifies a password per call.
pub struct VerifiedPasswords {
    key: [u8; 32],
    lifetime: Duration,
    capacity: usize,
    entries: Mutex<HashMap<CredentialKey, Entry>>,
    /// The keys being verified now, each with the lock its misses queue on.
    in_flight: Mutex<HashMap<CredentialKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn at verifying one key; the next miss of the key waits for its end.
pub struct Turn<'a> {
    cache: &'a VerifiedPasswords,
    key: CredentialKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for Turn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn").finish_non_exhaustive()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut in_flight = self.cache.in_flight();
        // The map's and this turn's: no one else waits on the key.
        if in_flight
            .get(&self.key)
            .is_some_and(|lock| Arc::ptr_eq(lock, &self.lock) && Arc::strong_count(lock) <= 2)
        {
            in_flight.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for VerifiedPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPasswords")
            .field("lifetime", &self.lifetime)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn fingerprint(hash: &PasswordHash) -> [u8; 32] {
    Sha256::digest(hash.as_str().as_bytes()).into()
}

impl VerifiedPasswords {
    /// A cache keeping each verification `lifetime` (zero: nothing is
    /// kept) and at most `capacity` of them.
    pub fn new(lifetime: Duration, capacity: usize) -> Result<Self, Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| Error::internal(format!("no randomness for the credential cache: {e}")))?;
        Ok(Self {
            key,
            lifetime,
            capacity: capacity.max(1),
            entries: Mutex::default(),
            in_flight: Mutex::default(),
        })
    }

    /// A cache that keeps nothing: every call hashes.
    pub fn disabled() -> Self {
        Self {
            key: [0; 32],
            lifetime: Duration::ZERO,
            capacity: 1,
            entries: Mutex::default(),
            in_flight: Mutex::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.lifetime.is_zero()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialKey, Entry>> {
        match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CredentialKey, Arc<tokio::sync::Mutex<()>>>> {
        match self.in_flight.lock() {
            Ok(in_flight) => in_flight,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Waits for any other verification of `key` to end, then holds the
    /// key until the turn is dropped: concurrent misses of one key verify
    /// once, the others finding the first one's entry.
    pub async fn one_at_a_time(&self, key: CredentialKey) -> Turn<'_> {
        let lock = Arc::clone(self.in_flight().entry(key).or_default());
        let guard = Arc::clone(&lock).lock_owned().await;
        Turn {
            cache: self,
            key,
            lock,
            guard: Some(guard),
        }
    }

    /// Whether `key` has an entry (maybe stale): only then is it worth
    /// reading the user to [`Self::check`] it.
    pub fn contains(&self, key: &CredentialKey) -> bool {
        self.is_enabled() && self.entries().contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of `name` with `password`: the name folded as login folds
    /// it, so `Alice` and `alice` are one entry.
    pub fn key(&self, name: &LoginName, password: &str) -> CredentialKey {
        let (kind, raw) = match name {
            LoginName::Username(raw) => (b'u', raw),
            LoginName::Email(raw) => (b'e', raw),
        };
        let folded = raw.trim().to_ascii_lowercase();
        // A fixed 32-byte key always fits HMAC: the fallback never runs.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) else {
            return CredentialKey(Sha256::digest(password.as_bytes()).into());
        };
        mac.update(&[kind]);
        mac.update(&(folded.len() as u64).to_be_bytes());
        mac.update(folded.as_bytes());
        mac.update(password.as_bytes());
        CredentialKey(mac.finalize().into_bytes().into())
    }

    /// The user `key` was verified for, if it was within its lifetime and
    /// `current` (the user's hash now, as the directory has it) is the hash
    /// it was verified against. A stale entry is dropped.
    pub fn check(&self, key: &CredentialKey, user: UserId, current: &PasswordHash) -> bool {
        if !self.is_enabled() {
            return false;
        }
        let mut entries = self.entries();
        let Some(entry) = entries.get(key).copied() else {
            return false;
        };
        if entry.until > Instant::now() && entry.user == user && entry.hash == fingerprint(current)
        {
            return true;
        }
        entries.remove(key);
        false
    }

    /// Remembers that `key` verified against `user`'s hash `verified`.
    pub fn remember(&self, key: CredentialKey, user: UserId, verified: &PasswordHash) {
        if !self.is_enabled() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.until > now);
            if entries.len() >= self.capacity {
                tracing::warn!(
                    capacity = self.capacity,
                    "verified-credential cache full: the older half dropped"
                );
                let mut ends: Vec<Instant> = entries.values().map(|entry| entry.until).collect();
                ends.sort_unstable();
                let median = ends[ends.len() / 2];
                entries.retain(|_, entry| entry.until > median);
            }
        }
        entries.insert(
            key,
            Entry {
                user,
                hash: fingerprint(verified),
                until: now + self.lifetime,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::PasswordHasher;
    use crate::user::{Password, Username};

    fn hash(password: &str) -> PasswordHash {
        let username = Username::parse("alice").unwrap();
        PasswordHasher::insecure_for_tests(1)
            .hash(&Password::parse(password, &username).unwrap())
            .unwrap()
    }

    #[test]
    fn a_hit_needs_the_same_name_password_user_and_hash() {
        let cache = VerifiedPasswords::new(Duration::from_secs(60), 10).unwrap();
        let name = LoginName::Username("Alice".into());
        let user = UserId::generate();
        let stored = hash("correct horse");
        let key = cache.key(&name, "correct horse");
        cache.remember(key, user, &stored);
        assert!(cache.check(
            &cache.key(&LoginName::Username(" alice".into()), "correct horse"),
            user,
            &stored
        ));
        assert!(!cache.check(&cache.key(&name, "correct horsE"), user, &stored));
        assert!(!cache.check(
            &cache.key(&LoginName::Email("alice".into()), "correct horse"),
            user,
            &stored
        ));
        assert!(!cache.check(&key, UserId::generate(), &stored));
        // The password changed: the entry is gone for good.
        assert!(!cache.check(&key, user, &hash("battery staple")));
        assert!(!cache.check(&key, user, &stored));
    }

    #[test]
    fn keys_are_per_process_and_entries_expire_and_are_bounded() {
        let name = LoginName::Username("alice".into());
        let one = VerifiedPasswords::new(Duration::from_secs(60), 2).unwrap();
        let two = VerifiedPasswords::new(Duration::from_secs(60), 2).unwrap();
        assert_ne!(one.key(&name, "pw"), two.key(&name, "pw"));

        let stored = hash("correct horse");
        for n in 0..5 {
            one.remember(
                one.key(&name, &format!("pw{n}")),
                UserId::generate(),
                &stored,
            );
            assert!(one.len() <= 2);
        }
        let expired = VerifiedPasswords::new(Duration::from_nanos(1), 10).unwrap();
        let user = UserId::generate();
        let key = expired.key(&name, "pw");
        expired.remember(key, user, &stored);
        std::thread::sleep(Duration::from_millis(2));
        assert!(!expired.check(&key, user, &stored));
        let off = VerifiedPasswords::disabled();
        off.remember(off.key(&name, "pw"), user, &stored);
        assert!(off.is_empty());
    }

    #[tokio::test]
    async fn misses_of_one_key_take_turns_and_leave_nothing_behind() {
        let cache = Arc::new(VerifiedPasswords::new(Duration::from_secs(60), 10).unwrap());
        let key = cache.key(&LoginName::Username("alice".into()), "pw");
        let first = cache.one_at_a_time(key).await;
        let waiting = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                let _turn = cache.one_at_a_time(key).await;
                cache.contains(&key)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second miss waits");
        cache.remember(key, UserId::generate(), &hash("correct horse"));
        drop(first);
        assert!(
            waiting.await.unwrap(),
            "and then finds the first one's entry"
        );
        assert!(cache.in_flight().is_empty());
    }
}
