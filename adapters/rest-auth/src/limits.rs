//! Login attempt limits, per client address and per login name, so neither
//! one address nor a spread of addresses can guess one user's password fast.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hub_runtime::config::LoginLimitConfig;

/// Keys kept before old ones are swept: bounds the limiter's memory.
const SWEEP_ABOVE: usize = 100_000;
/// Login names are keys: a long one is cut so it cannot grow the map.
const MAX_NAME_KEY: usize = 254;

pub struct LoginLimiter {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_name: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
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
    pub fn new(config: &LoginLimitConfig) -> Self {
        Self {
            per_ip: RateLimiter::keyed(quota(config.per_ip_burst, config.per_ip_replenish_ms)),
            per_name: RateLimiter::keyed(quota(
                config.per_user_burst,
                config.per_user_replenish_ms,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one attempt; when over either limit, how long to wait.
    pub fn check(&self, ip: IpAddr, name: &str) -> Result<(), Duration> {
        if self.per_ip.len() > SWEEP_ABOVE {
            self.per_ip.retain_recent();
        }
        if self.per_name.len() > SWEEP_ABOVE {
            self.per_name.retain_recent();
        }
        let now = self.clock.now();
        self.per_ip
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(now))?;
        let mut key: String = name.chars().take(MAX_NAME_KEY).collect();
        key.make_ascii_lowercase();
        self.per_name
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(now))
    }
}
