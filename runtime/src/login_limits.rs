//! Login attempt limits, per client and per account, so neither one client
//! nor a spread of clients can guess one user's password fast: hub-core's
//! [`LoginBudgets`], kept here because they are per-process state on
//! [`Budget`]s. One per process; every port that signs users in spends it
//! through hub-core's `SignIn`.
//!
//! A client is an IPv4 address or an IPv6 network (`http.client_ipv6_prefix`
//! bits, /64 by default: one host gets a whole /64 and rotates inside it).
//! An account is what `Authentication::account_key` resolves a login name
//! to, so a user's username and email share one budget.
//!
//! Anyone can spend an account's budget, so anyone could lock its owner
//! out. A device that has signed in to the account before shows the device
//! token it was given then (OWASP's device cookie): it does not spend the
//! account's budget, only its own budget of failures; past that it counts
//! as unknown again until the budget refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hub_core::{AccountKey, LoginBudgets};

use crate::budgets::{Budget, expose_sizes};
use crate::config::LoginLimitConfig;
use crate::connections::client_key;
use crate::metrics::{Exposition, MetricsSource};

/// Account keys are cut to this length so none can grow the map.
const MAX_ACCOUNT_KEY: usize = 300;
/// Devices locked out at once; only a device that signed in before and then
/// failed its whole budget gets here, so it stays small. Past it, expired
/// locks are dropped, and if none had expired the oldest half goes.
const MAX_LOCKED_DEVICES: usize = 100_000;

/// Login budgets per client, per account and per known device.
#[derive(Debug)]
pub struct LoginLimiter {
    per_client: Budget<IpAddr>,
    per_account: Budget<String>,
    per_device: Budget<String>,
    /// Known devices that used up their failure budget, until when.
    locked_devices: Mutex<HashMap<String, Instant>>,
    ipv6_prefix: u8,
}

impl LoginLimiter {
    pub fn new(config: &LoginLimitConfig, ipv6_prefix: u8) -> Self {
        Self {
            per_client: Budget::new("login_client", config.per_ip()),
            per_account: Budget::new("login_account", config.per_user()),
            per_device: Budget::new("login_device", config.per_device()),
            locked_devices: Mutex::default(),
            ipv6_prefix,
        }
    }

    fn locked_devices(&self) -> usize {
        match self.locked_devices.lock() {
            Ok(locked) => locked.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }
}

impl LoginBudgets for LoginLimiter {
    /// Counts one attempt from `ip`; when over the client's limit, how long
    /// to wait.
    fn check_client(&self, ip: IpAddr) -> Result<(), Duration> {
        self.per_client.spend(&client_key(ip, self.ipv6_prefix))
    }

    /// Counts one attempt on `account` from a device not known to it; when
    /// over its limit, how long to wait.
    fn check_account(&self, account: &AccountKey) -> Result<(), Duration> {
        let key: String = account.to_string().chars().take(MAX_ACCOUNT_KEY).collect();
        self.per_account.spend(&key)
    }

    /// Whether a known device has used up its failure budget.
    fn device_locked(&self, device: &str) -> bool {
        let locked = match self.locked_devices.lock() {
            Ok(locked) => locked,
            Err(poisoned) => poisoned.into_inner(),
        };
        locked
            .get(device)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Counts a failed attempt from a known device; past its budget the
    /// device counts as unknown (the account's budget applies) until the
    /// budget has room again.
    fn device_failed(&self, device: &str) {
        let Err(wait) = self.per_device.spend(&device.to_owned()) else {
            return;
        };
        tracing::warn!("a known device used up its login failures; it counts as unknown for now");
        let mut locked = match self.locked_devices.lock() {
            Ok(locked) => locked,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        if locked.len() >= MAX_LOCKED_DEVICES {
            locked.retain(|_, until| *until > now);
            if locked.len() >= MAX_LOCKED_DEVICES {
                let mut ends: Vec<Instant> = locked.values().copied().collect();
                ends.sort_unstable();
                let median = ends[ends.len() / 2];
                locked.retain(|_, until| *until > median);
            }
        }
        locked.insert(device.to_owned(), now + wait);
    }
}

#[async_trait::async_trait]
impl MetricsSource for LoginLimiter {
    async fn collect(&self, out: &mut Exposition) {
        expose_sizes(
            out,
            &[
                (self.per_client.name(), self.per_client.len()),
                (self.per_account.name(), self.per_account.len()),
                (self.per_device.name(), self.per_device.len()),
                ("login_device_locked", self.locked_devices()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(
            &LoginLimitConfig {
                per_ip_burst: 2,
                per_ip_replenish_ms: 60_000,
                per_user_burst: 2,
                per_user_replenish_ms: 60_000,
                per_device_burst: 2,
                per_device_replenish_ms: 60_000,
                device_lifetime_days: 1,
                max_devices_per_user: 10,
            },
            64,
        )
    }

    #[test]
    fn addresses_of_one_ipv6_network_share_a_budget() {
        let limiter = limiter();
        for host in ["2001:db8:7:7::1", "2001:db8:7:7::2"] {
            assert!(
                limiter.check_client(host.parse().unwrap()).is_ok(),
                "{host}"
            );
        }
        let rotated: IpAddr = "2001:db8:7:7:ffff::3".parse().unwrap();
        assert!(
            limiter.check_client(rotated).is_err(),
            "a third address of the /64"
        );
        let elsewhere: IpAddr = "2001:db8:7:8::1".parse().unwrap();
        assert!(
            limiter.check_client(elsewhere).is_ok(),
            "another /64 has its own"
        );
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check_client(v4).is_ok());
    }

    #[test]
    fn an_account_has_one_budget() {
        let limiter = limiter();
        let (one, two) = (
            AccountKey::User(hub_core::UserId::generate()),
            AccountKey::Unknown("nobody".into()),
        );
        assert!(limiter.check_account(&one).is_ok());
        assert!(limiter.check_account(&one).is_ok());
        assert!(limiter.check_account(&one).is_err());
        assert!(limiter.check_account(&two).is_ok());
    }

    #[test]
    fn a_known_device_is_locked_after_its_failures_only() {
        let limiter = limiter();
        limiter.device_failed("d1");
        assert!(!limiter.device_locked("d1"), "one failure of two");
        limiter.device_failed("d1");
        assert!(
            !limiter.device_locked("d1"),
            "the budget is used, not exceeded"
        );
        limiter.device_failed("d1");
        assert!(limiter.device_locked("d1"));
        assert!(!limiter.device_locked("d2"));
    }
}
