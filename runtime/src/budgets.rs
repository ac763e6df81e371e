//! Attempt budgets for the requests that cost a password hash: a burst per
//! key, then one more every period (GCRA, through governor), answered with
//! 429 `TOO_MANY_ATTEMPTS` and `Retry-After` past it.
//!
//! The hashing pool's shares (per client, and per account for the checks a
//! signed-in account asks for) bound what is held at one moment; these
//! bound what may be spent over time, per entry point:
//! registrations per client (REST and SOAP together, one budget), and
//! current-password checks per client and per account. Login has its own
//! limiter, [`crate::login_limits::LoginLimiter`], built from the same
//! [`Budget`]. Both are hub-core's budget ports, spent by its `SignIn`.
//!
//! A client is an IPv4 address or an IPv6 network of
//! `http.client_ipv6_prefix` bits. Each budget's memory is bounded: past
//! 100,000 keys, idle ones are swept, at most once a second, never in a
//! scan per request; `polyhub_limiter_keys{budget}` shows each one's size.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hub_core::{AccountBudgets, UserId};

use crate::config::{BudgetConfig, LimitsConfig};
use crate::connections::client_key;
use crate::metrics::{Exposition, MetricsSource};

/// Keys kept before idle ones are swept: bounds a budget's memory.
const SWEEP_ABOVE: usize = 100_000;
/// A sweep walks every key, so it runs at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One budget per key: `burst` attempts, then one more every period.
pub struct Budget<K: Hash + Eq + Clone> {
    name: &'static str,
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    last_sweep: Mutex<Instant>,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for Budget<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("name", &self.name)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Budget<K> {
    /// A budget named `name` in /metrics.
    pub fn new(name: &'static str, config: BudgetConfig) -> Self {
        let period = Duration::from_millis(config.replenish_ms.max(1));
        let burst = NonZeroU32::new(config.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            name,
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Spends one attempt of `key`'s budget; when it is empty, how long
    /// until the next one.
    pub fn spend(&self, key: &K) -> Result<(), Duration> {
        self.sweep();
        let now = self.clock.now();
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Forgets idle keys when there are many, at most once a second.
    fn sweep(&self) {
        if self.limiter.len() <= SWEEP_ABOVE {
            return;
        }
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return; // another request is sweeping
        };
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        self.limiter.retain_recent();
    }
}

/// Writes each budget's size as one sample of `polyhub_limiter_keys`.
pub fn expose_sizes(out: &mut Exposition, sizes: &[(&'static str, usize)]) {
    let family = out.family(
        "gauge",
        "polyhub_limiter_keys",
        "Keys an attempt budget remembers (idle ones are swept past 100,000).",
    );
    for (name, size) in sizes {
        family.sample("polyhub_limiter_keys", &[("budget", name)], *size as f64);
    }
}

/// The budgets of registration and current-password checks, shared by
/// every service of the process that offers them (a registration through
/// REST and one through SOAP spend the same client's budget).
#[derive(Debug)]
pub struct AttemptBudgets {
    ipv6_prefix: u8,
    registration_per_client: Budget<IpAddr>,
    password_check_per_client: Budget<IpAddr>,
    password_check_per_account: Budget<UserId>,
    anonymous_lookup_per_client: Budget<IpAddr>,
    soap_calls_per_account: Budget<UserId>,
}

impl AttemptBudgets {
    pub fn new(config: &LimitsConfig, ipv6_prefix: u8) -> Self {
        Self {
            ipv6_prefix,
            registration_per_client: Budget::new(
                "registration_client",
                config.registration_per_client,
            ),
            password_check_per_client: Budget::new(
                "password_check_client",
                config.password_check_per_client,
            ),
            password_check_per_account: Budget::new(
                "password_check_account",
                config.password_check_per_account,
            ),
            anonymous_lookup_per_client: Budget::new(
                "anonymous_lookup_client",
                config.anonymous_lookup_per_client,
            ),
            soap_calls_per_account: Budget::new(
                "soap_calls_account",
                config.soap_calls_per_account,
            ),
        }
    }

    /// One SOAP call by `user`, authenticated by WS-Security.
    pub fn soap_call(&self, user: UserId) -> Result<(), Duration> {
        self.soap_calls_per_account.spend(&user).inspect_err(|_| {
            tracing::warn!(user_id = %user, "SOAP calls limited for this account");
        })
    }

    /// One lookup by `client` with no credentials: anyone may look a name
    /// up, but not every name in a row.
    pub fn anonymous_lookup(&self, client: IpAddr) -> Result<(), Duration> {
        let key = client_key(client, self.ipv6_prefix);
        self.anonymous_lookup_per_client
            .spend(&key)
            .inspect_err(|_| {
                tracing::warn!(client = %key, "anonymous lookups limited for this client");
            })
    }

    /// One registration from `client`.
    pub fn register(&self, client: IpAddr) -> Result<(), Duration> {
        let key = client_key(client, self.ipv6_prefix);
        self.registration_per_client.spend(&key).inspect_err(|_| {
            tracing::warn!(client = %key, "registrations limited for this client");
        })
    }

    /// One check of `user`'s current password, asked by `client`: both
    /// budgets are spent, so neither one address nor one stolen token can
    /// turn the check into a password-guessing or hashing oracle.
    pub fn password_check(&self, client: IpAddr, user: UserId) -> Result<(), Duration> {
        let key = client_key(client, self.ipv6_prefix);
        self.password_check_per_client
            .spend(&key)
            .inspect_err(|_| {
                tracing::warn!(client = %key, "password checks limited for this client");
            })?;
        self.password_check_per_account
            .spend(&user)
            .inspect_err(|_| {
                tracing::warn!(user_id = %user, "password checks limited for this account");
            })
    }
}

impl AccountBudgets for AttemptBudgets {
    fn register(&self, client: IpAddr) -> Result<(), Duration> {
        AttemptBudgets::register(self, client)
    }

    fn password_check(&self, client: IpAddr, user: UserId) -> Result<(), Duration> {
        AttemptBudgets::password_check(self, client, user)
    }
}

#[async_trait::async_trait]
impl MetricsSource for AttemptBudgets {
    async fn collect(&self, out: &mut Exposition) {
        expose_sizes(
            out,
            &[
                (
                    self.registration_per_client.name(),
                    self.registration_per_client.len(),
                ),
                (
                    self.password_check_per_client.name(),
                    self.password_check_per_client.len(),
                ),
                (
                    self.password_check_per_account.name(),
                    self.password_check_per_account.len(),
                ),
                (
                    self.anonymous_lookup_per_client.name(),
                    self.anonymous_lookup_per_client.len(),
                ),
                (
                    self.soap_calls_per_account.name(),
                    self.soap_calls_per_account.len(),
                ),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(burst: u32) -> BudgetConfig {
        BudgetConfig {
            burst,
            replenish_ms: 60_000,
        }
    }

    #[test]
    fn a_budget_refuses_past_its_burst_and_says_how_long() {
        let budget: Budget<u32> = Budget::new("test", budget(2));
        assert!(budget.spend(&1).is_ok());
        assert!(budget.spend(&1).is_ok());
        let wait = budget.spend(&1).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(budget.spend(&2).is_ok(), "another key has its own");
        assert_eq!(budget.len(), 2);
    }

    #[test]
    fn password_checks_spend_the_client_and_the_account() {
        let limits = AttemptBudgets::new(
            &LimitsConfig {
                registration_per_client: budget(1),
                password_check_per_client: budget(3),
                password_check_per_account: budget(2),
                anonymous_lookup_per_client: budget(2),
                soap_calls_per_account: budget(2),
            },
            64,
        );
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.password_check(here, alice).is_ok());
        assert!(limits.password_check(here, alice).is_ok());
        assert!(
            limits.password_check(here, alice).is_err(),
            "alice's budget"
        );
        assert!(
            limits.password_check(here, bob).is_err(),
            "this client's budget"
        );
        let there: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.password_check(there, bob).is_ok());
        assert!(
            limits.password_check(there, alice).is_err(),
            "alice's, from anywhere"
        );
        // Registration is a budget of its own, keyed by the /64.
        assert!(limits.register("2001:db8::1".parse().unwrap()).is_ok());
        assert!(limits.register("2001:db8::2".parse().unwrap()).is_err());
        assert!(limits.register(here).is_ok());
    }
}
