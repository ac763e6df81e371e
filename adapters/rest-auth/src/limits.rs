//! Login attempt limits, per client and per account, so neither one client
//! nor a spread of clients can guess one user's password fast.
//!
//! A client is an IPv4 address or an IPv6 network (`http.client_ipv6_prefix`
//! bits, /64 by default: one host gets a whole /64 and rotates inside it).
//! An account is what `Authentication::account_key` resolves a login name
//! to, so a user's username and email share one budget.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hub_runtime::config::LoginLimitConfig;
use hub_runtime::connections::client_key;
use hub_runtime::metrics::{Exposition, MetricsSource};

/// Keys kept before idle ones are swept: bounds the limiter's memory.
const SWEEP_ABOVE: usize = 100_000;
/// A sweep walks every key, so it runs at most this often, never per request.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Account keys are cut to this length so none can grow the map.
const MAX_ACCOUNT_KEY: usize = 300;

pub struct LoginLimiter {
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    per_account: DefaultKeyedRateLimiter<String>,
    ipv6_prefix: u8,
    clock: DefaultClock,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter").finish_non_exhaustive()
    }
}

fn quota(burst: u32, replenish_ms: u64) -> Quota {
    let period = Duration::from_millis(replenish_ms.max(1));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl LoginLimiter {
    pub fn new(config: &LoginLimitConfig, ipv6_prefix: u8) -> Self {
        Self {
            per_client: RateLimiter::keyed(quota(config.per_ip_burst, config.per_ip_replenish_ms)),
            per_account: RateLimiter::keyed(quota(
                config.per_user_burst,
                config.per_user_replenish_ms,
            )),
            ipv6_prefix,
            clock: DefaultClock::default(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Forgets idle keys when there are many, at most once a second.
    fn sweep(&self) {
        if self.per_client.len() <= SWEEP_ABOVE && self.per_account.len() <= SWEEP_ABOVE {
            return;
        }
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return; // another request is sweeping
        };
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        self.per_client.retain_recent();
        self.per_account.retain_recent();
    }

    /// Counts one attempt from `ip`; when over the client's limit, how long
    /// to wait.
    pub fn check_client(&self, ip: IpAddr) -> Result<(), Duration> {
        self.sweep();
        let now = self.clock.now();
        self.per_client
            .check_key(&client_key(ip, self.ipv6_prefix))
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Counts one attempt on `account`; when over its limit, how long to wait.
    pub fn check_account(&self, account: &str) -> Result<(), Duration> {
        let now = self.clock.now();
        let key: String = account.chars().take(MAX_ACCOUNT_KEY).collect();
        self.per_account
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(now))
    }
}

#[async_trait::async_trait]
impl MetricsSource for LoginLimiter {
    async fn collect(&self, out: &mut Exposition) {
        out.family(
            "gauge",
            "polyhub_login_limiter_keys",
            "Clients and accounts the login limiter remembers (idle ones are swept past 100,000).",
        )
        .sample(
            "polyhub_login_limiter_keys",
            &[("kind", "client")],
            self.per_client.len() as f64,
        )
        .sample(
            "polyhub_login_limiter_keys",
            &[("kind", "account")],
            self.per_account.len() as f64,
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
        assert!(limiter.check_account("user:1").is_ok());
        assert!(limiter.check_account("user:1").is_ok());
        assert!(limiter.check_account("user:1").is_err());
        assert!(limiter.check_account("user:2").is_ok());
    }
}
