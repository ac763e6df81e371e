//! The bounded pools CPU-heavy work runs on: [`WorkPool`], and its
//! password-hashing instance [`HashingPool`] (sanitizing images has one too).
//!
//! PBKDF2 at production parameters costs a core for tens of milliseconds, so it
//! never runs on the async workers. It runs on `workers` threads of its own,
//! started at a lower scheduling priority (nice 10): under a login flood they
//! take every idle cycle, yet a health probe or a token check still gets a core
//! at once. At most `max_waiting` more requests wait, each for at most
//! `max_wait`; anything past that is refused at once with `OVERLOADED`
//! (TooMany) instead of joining an unbounded queue.
//!
//! Admission is fair across clients and across accounts. Work attributed to
//! a client (the adapters run each request inside [`as_client`], keyed by its
//! address) holds at most `max_per_client` places, running or waiting, so a
//! flood from one client is refused on its own share and a quiet client still
//! gets in. Work done for a signed-in account ([`WorkPool::run_for_account`])
//! counts twice: against the account's own share (a quarter of a client's),
//! wherever its requests come from, and against its client's, of which
//! accounts together hold at most half. The other half stays for work no
//! account is signed in for (logins, registrations), so behind one address
//! (a NAT, a gateway) one account's flood leaves room for the other
//! accounts, and many accounts' floods still leave the logins theirs.
//!
//! Shares are counted only while their places are held, and a place is held
//! only with one of the pool's admission permits: whatever the number of
//! clients and accounts, the counts never have more keys than the pool has
//! places (`workers + max_waiting`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::{Error, ErrorCode};
use crate::password::PasswordHasher;
use crate::user::UserId;

/// Sizes of a work pool (the hashing pool's, or the sanitizing pool's).
#[derive(Debug, Clone, Copy)]
pub struct WorkPoolConfig {
    /// Hashes that run at once; by default one per core.
    pub workers: usize,
    /// Requests that may wait for a worker before new ones are refused.
    pub max_waiting: usize,
    /// How long one request may wait for a worker.
    pub max_wait: Duration,
    /// Places (running or waiting) that one client's work may hold at once;
    /// 0 means a quarter of `workers + max_waiting`. Accounts' shares follow
    /// from it (see [`ShareLimits`]).
    pub max_per_client: usize,
}

tokio::task_local! {
    static CLIENT: Arc<str>;
}

/// Runs `work` with every hash it asks for counted against `client`'s share
/// of the pool (see the module's documentation).
pub async fn as_client<F: Future>(client: Arc<str>, work: F) -> F::Output {
    CLIENT.scope(client, work).await
}

/// What the shares of the pool may hold, running or waiting, all derived
/// from `max_per_client` so that one setting sizes them (and a client share
/// of `usize::MAX`, fairness off, turns the account shares off too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareLimits {
    /// Everything one client's requests hold.
    pub per_client: usize,
    /// What the accounts' work from one client holds together: half of the
    /// client's share (rounded up), so the other half is always there for
    /// its work that no account is signed in for.
    pub accounts_per_client: usize,
    /// What one account's work holds, from whichever clients: a quarter of
    /// a client's share, at least one place.
    pub per_account: usize,
}

impl ShareLimits {
    fn for_client_share(per_client: usize) -> Self {
        let per_client = per_client.max(1);
        Self {
            per_client,
            accounts_per_client: per_client.div_ceil(2),
            per_account: (per_client / 4).max(1),
        }
    }
}

/// The places that clients and accounts hold now. A key is here only while
/// it holds a place, so there are never more keys than places.
#[derive(Debug, Default)]
struct Shares {
    clients: HashMap<Arc<str>, ClientPlaces>,
    accounts: HashMap<UserId, usize>,
}

/// One client's places: all of them, and those of them taken by accounts.
#[derive(Debug, Default, Clone, Copy)]
struct ClientPlaces {
    all: usize,
    for_accounts: usize,
}

fn lock(shares: &Mutex<Shares>) -> std::sync::MutexGuard<'_, Shares> {
    // The counts are updated in one step each, so a poisoned lock still
    // guards consistent counts.
    match shares.lock() {
        Ok(shares) => shares,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A job's places in the shares of its client and its account; given back
/// when the job is done.
struct Share {
    client: Option<Arc<str>>,
    account: Option<UserId>,
    shares: Arc<Mutex<Shares>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut shares = lock(&self.shares);
        if let Some(client) = &self.client
            && let Some(held) = shares.clients.get_mut(client)
        {
            held.all -= 1;
            if self.account.is_some() {
                held.for_accounts -= 1;
            }
            if held.all == 0 {
                shares.clients.remove(client);
            }
        }
        if let Some(account) = &self.account
            && let Some(held) = shares.accounts.get_mut(account)
        {
            *held -= 1;
            if *held == 0 {
                shares.accounts.remove(account);
            }
        }
    }
}

impl Default for WorkPoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers: cores,
            max_waiting: cores * 32,
            max_wait: Duration::from_secs(10),
            max_per_client: 0,
        }
    }
}

type Job<C> = Box<dyn FnOnce(&C) + Send + 'static>;

/// The scheduling priority of pool threads: below the async workers'.
const HASHING_NICE: i32 = 10;

/// Runs CPU-heavy work on a bounded set of dedicated threads at a lower
/// priority, each job handed the pool's context `C` (the password hasher,
/// or the image limits), with fair admission across clients.
pub struct WorkPool<C: Send + Sync + 'static> {
    name: &'static str,
    context: Arc<C>,
    jobs: mpsc::Sender<Job<C>>,
    admission: Arc<Semaphore>,
    running: Arc<Semaphore>,
    shares: Arc<Mutex<Shares>>,
    limits: ShareLimits,
    config: WorkPoolConfig,
}

/// Runs password hashing on a bounded set of dedicated threads.
pub type HashingPool = WorkPool<PasswordHasher>;

impl<C: Send + Sync + 'static> Clone for WorkPool<C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            context: Arc::clone(&self.context),
            jobs: self.jobs.clone(),
            admission: Arc::clone(&self.admission),
            running: Arc::clone(&self.running),
            shares: Arc::clone(&self.shares),
            limits: self.limits,
            config: self.config,
        }
    }
}

impl<C: Send + Sync + 'static> std::fmt::Debug for WorkPool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkPool")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lower_own_priority(name: &str) {
    // Linux applies PRIO_PROCESS with a thread id to that thread alone.
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASHING_NICE)
    {
        tracing::warn!(pool = name, error = %e, "cannot lower a pool thread's priority; it competes with request handling");
    }
}

fn start_workers<C: Send + Sync + 'static>(
    name: &'static str,
    context: &Arc<C>,
    workers: usize,
) -> mpsc::Sender<Job<C>> {
    let (tx, rx) = mpsc::channel::<Job<C>>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..workers {
        let (rx, hasher) = (Arc::clone(&rx), Arc::clone(context));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                lower_own_priority(name);
                loop {
                    // The lock is held only to take the next job, never while hashing.
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking job must not take its thread with it; its
                        // caller sees the dropped result as an internal error.
                        Ok(job) => {
                            let run = std::panic::AssertUnwindSafe(|| job(&hasher));
                            if std::panic::catch_unwind(run).is_err() {
                                tracing::error!(pool = name, "a pool job panicked");
                            }
                        }
                        Err(_) => return, // the pool is gone
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(pool = name, error = %e, "cannot start a pool thread");
        }
    }
    tx
}

/// How busy the pool is now, for metrics and readiness details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLoad {
    pub running: usize,
    pub waiting: usize,
    pub capacity: usize,
}

impl WorkPool<PasswordHasher> {
    pub fn new(hasher: PasswordHasher, config: WorkPoolConfig) -> Self {
        Self::start("hashing", hasher, config)
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.context
    }
}

impl<C: Send + Sync + 'static> WorkPool<C> {
    /// `config.workers` threads named `{name}-N`, each job given `context`.
    pub fn start(name: &'static str, context: C, config: WorkPoolConfig) -> Self {
        let workers = config.workers.max(1);
        let max_per_client = match config.max_per_client {
            0 => ((workers + config.max_waiting) / 4).max(1),
            n => n,
        };
        let config = WorkPoolConfig {
            workers,
            max_per_client,
            ..config
        };
        let context = Arc::new(context);
        Self {
            name,
            jobs: start_workers(name, &context, workers),
            context,
            admission: Arc::new(Semaphore::new(workers + config.max_waiting)),
            running: Arc::new(Semaphore::new(workers)),
            shares: Arc::default(),
            limits: ShareLimits::for_client_share(max_per_client),
            config,
        }
    }

    /// What each client's and account's share may hold.
    pub fn share_limits(&self) -> ShareLimits {
        self.limits
    }

    /// Takes a place of `client`'s share and of `account`'s, for those the
    /// work is attributed to; `OVERLOADED`, taking nothing, when one is full.
    fn share(
        &self,
        client: Option<Arc<str>>,
        account: Option<UserId>,
    ) -> Result<Option<Share>, Error> {
        if client.is_none() && account.is_none() {
            return Ok(None);
        }
        let limits = self.limits;
        let refused = || Err(Error::new(ErrorCode::Overloaded));
        let mut shares = lock(&self.shares);
        if let Some(account) = account {
            let held = shares.accounts.get(&account).copied().unwrap_or(0);
            if held >= limits.per_account {
                tracing::warn!(pool = self.name, user_id = %account, held, "one account's share of the pool is full, request refused");
                return refused();
            }
        }
        if let Some(client) = &client {
            let held = shares.clients.get(client).copied().unwrap_or_default();
            if held.all >= limits.per_client {
                tracing::warn!(pool = self.name, %client, held = held.all, "one client's share of the pool is full, request refused");
                return refused();
            }
            if account.is_some() && held.for_accounts >= limits.accounts_per_client {
                tracing::warn!(pool = self.name, %client, held = held.for_accounts, "the accounts' part of one client's share of the pool is full, request refused");
                return refused();
            }
        }
        if let Some(account) = account {
            *shares.accounts.entry(account).or_insert(0) += 1;
        }
        if let Some(client) = &client {
            let held = shares.clients.entry(Arc::clone(client)).or_default();
            held.all += 1;
            if account.is_some() {
                held.for_accounts += 1;
            }
        }
        Ok(Some(Share {
            client,
            account,
            shares: Arc::clone(&self.shares),
        }))
    }

    pub fn load(&self) -> PoolLoad {
        let capacity = self.config.workers + self.config.max_waiting;
        let admitted = capacity - self.admission.available_permits();
        let running = self.config.workers - self.running.available_permits();
        PoolLoad {
            running,
            waiting: admitted.saturating_sub(running),
            capacity,
        }
    }

    /// Runs `work` on a pool thread once one is free, counted against the
    /// current client's share (see [`as_client`]), or refuses with
    /// `OVERLOADED` when the pool and its queue are full or the wait is too long.
    pub async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&C) -> T + Send + 'static,
    {
        self.run_for(CLIENT.try_with(Arc::clone).ok(), work).await
    }

    /// As [`Self::run`], for work done on behalf of the signed-in `account`
    /// (a token verified, never a login's claimed name): counted against the
    /// account's own share wherever it comes from, and against the accounts'
    /// half of the current client's share, so it never takes the places
    /// the client keeps for work no account is signed in for.
    pub async fn run_for_account<T, F>(&self, account: UserId, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&C) -> T + Send + 'static,
    {
        let share = self.share(CLIENT.try_with(Arc::clone).ok(), Some(account))?;
        self.admit(share, work).await
    }

    /// As [`Self::run`], counted against `client`'s share (a user, say).
    pub async fn run_for<T, F>(&self, client: Option<Arc<str>>, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&C) -> T + Send + 'static,
    {
        let share = self.share(client, None)?;
        self.admit(share, work).await
    }

    /// Runs `work` holding `share`, once the pool admits it and a worker is
    /// free.
    async fn admit<T, F>(&self, share: Option<Share>, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&C) -> T + Send + 'static,
    {
        let overloaded = || Error::new(ErrorCode::Overloaded);
        let admitted = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                tracing::warn!(pool = self.name, load = ?self.load(), "pool full, request refused");
                overloaded()
            })?;
        let worker = tokio::time::timeout(
            self.config.max_wait,
            Arc::clone(&self.running).acquire_owned(),
        )
        .await
        .map_err(|_| {
            tracing::warn!(pool = self.name, wait = ?self.config.max_wait, "no pool worker free in time");
            overloaded()
        })?
        .map_err(Error::internal)?;
        let (done, result) = oneshot::channel();
        // The permits move into the job: if the caller goes away, the slot stays
        // taken until the hash really finishes.
        let slots: (OwnedSemaphorePermit, OwnedSemaphorePermit, Option<Share>) =
            (admitted, worker, share);
        let job: Job<C> = Box::new(move |hasher| {
            let result = work(hasher);
            // Free the slots before answering, so a caller that has its answer
            // never sees its own job still counted as running.
            drop(slots);
            let _ = done.send(result);
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::internal("the pool's threads are gone"))?;
        result
            .await
            .map_err(|_| Error::internal("a pool job ended without a result"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A client that floods holds its share and no more: its next request is
    /// refused, another client's gets in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_cannot_take_another_clients_place() {
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig {
                workers: 1,
                max_waiting: 7,
                max_wait: Duration::from_secs(30),
                max_per_client: 0,
            },
        );
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let flood: Vec<_> = (0..2)
            .map(|_| {
                let (pool, gate) = (pool.clone(), Arc::clone(&gate));
                tokio::spawn(as_client("flooder".into(), async move {
                    pool.run(move |_| {
                        let _ = gate.lock().unwrap().recv();
                    })
                    .await
                }))
            })
            .collect();
        for _ in 0..200 {
            if pool.load().running + pool.load().waiting == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A quarter of 8 places: the flooder's third is refused at once...
        let refused = as_client("flooder".into(), pool.run(|_| ()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Overloaded);
        // ...while a quiet client waits its turn and is served.
        let quiet = {
            let pool = pool.clone();
            tokio::spawn(as_client(
                "quiet".into(),
                async move { pool.run(|_| 7).await },
            ))
        };
        release.send(()).unwrap();
        release.send(()).unwrap();
        assert_eq!(quiet.await.unwrap().unwrap(), 7);
        for f in flood {
            f.await.unwrap().unwrap();
        }
        assert!(
            lock(&pool.shares).clients.is_empty(),
            "every place given back"
        );
        as_client("flooder".into(), pool.run(|_| ())).await.unwrap();
    }

    /// Jobs that hold their places until the test lets them go.
    struct Gate {
        release: mpsc::Sender<()>,
        gate: Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
    }

    impl Gate {
        fn new() -> Self {
            let (release, gate) = mpsc::channel();
            Self {
                release,
                gate: Arc::new(std::sync::Mutex::new(gate)),
            }
        }

        fn open(&self, jobs: usize) {
            for _ in 0..jobs {
                self.release.send(()).unwrap();
            }
        }
    }

    /// One worker, and `places` places in all (running or waiting).
    fn pool_of(places: usize) -> HashingPool {
        HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig {
                workers: 1,
                max_waiting: places - 1,
                max_wait: Duration::from_secs(30),
                max_per_client: 0,
            },
        )
    }

    fn held(pool: &HashingPool) -> usize {
        let load = pool.load();
        load.running + load.waiting
    }

    type Held = tokio::task::JoinHandle<Result<(), Error>>;

    /// Starts a job that waits at `gate`, from `client` and for `account`
    /// (either may be none), and returns it once it holds a place in the
    /// pool, or `None` once it was refused with `OVERLOADED`.
    async fn try_hold(
        pool: &HashingPool,
        gate: &Gate,
        client: Option<&str>,
        account: Option<UserId>,
    ) -> Option<Held> {
        let before = held(pool);
        let (pool_, gate_) = (pool.clone(), Arc::clone(&gate.gate));
        let job = move |_: &PasswordHasher| {
            let _ = gate_.lock().unwrap().recv();
        };
        let work = async move {
            match account {
                Some(account) => pool_.run_for_account(account, job).await,
                None => pool_.run(job).await,
            }
        };
        let task = match client {
            Some(client) => tokio::spawn(as_client(client.into(), work)),
            None => tokio::spawn(work),
        };
        for _ in 0..1_000 {
            if task.is_finished() {
                let refused = task.await.unwrap().unwrap_err();
                assert_eq!(refused.code(), ErrorCode::Overloaded);
                return None;
            }
            if held(pool) > before {
                return Some(task);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("a job neither got a place nor was refused");
    }

    /// Tries `tries` jobs one after another; the places they got.
    async fn flood(
        pool: &HashingPool,
        gate: &Gate,
        tries: usize,
        from: impl Fn(usize) -> (Option<String>, Option<UserId>),
    ) -> Vec<Held> {
        let mut holding = Vec::new();
        for i in 0..tries {
            let (client, account) = from(i);
            holding.extend(try_hold(pool, gate, client.as_deref(), account).await);
        }
        holding
    }

    /// Lets every held job finish, and checks that every place was given back.
    async fn release(pool: &HashingPool, gate: &Gate, holding: Vec<Held>) {
        gate.open(holding.len());
        for job in holding {
            job.await.unwrap().unwrap();
        }
        let shares = lock(&pool.shares);
        assert!(
            shares.clients.is_empty() && shares.accounts.is_empty(),
            "every place given back: {shares:?}"
        );
    }

    #[test]
    fn the_account_shares_follow_the_client_share() {
        let limits = |per_client, accounts_per_client, per_account| ShareLimits {
            per_client,
            accounts_per_client,
            per_account,
        };
        // Two cores by default: 2 + 64 places, a client a quarter of them.
        assert_eq!(ShareLimits::for_client_share(16), limits(16, 8, 4));
        assert_eq!(ShareLimits::for_client_share(3), limits(3, 2, 1));
        assert_eq!(ShareLimits::for_client_share(1), limits(1, 1, 1));
        assert_eq!(ShareLimits::for_client_share(0), limits(1, 1, 1));
        // Fairness turned off (the benchmark's one load generator).
        let off = ShareLimits::for_client_share(usize::MAX);
        assert!(off.accounts_per_client > usize::MAX / 2 && off.per_account >= usize::MAX / 4 - 1);
        assert_eq!(pool_of(32).share_limits(), limits(8, 4, 2));
    }

    /// The penetration test's finding: one account flooding current-password
    /// checks from one address held that address's whole share, and another
    /// user's login from the same address was refused at once. Now the
    /// account holds its own share, wherever it asks from, and the login and
    /// another account's check from that address get their places.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_account_flooding_leaves_its_address_room_for_other_users() {
        let pool = pool_of(32); // a client's share 8, the accounts' part 4, an account's 2
        let gate = Gate::new();
        let (mallory, trudy) = (UserId::generate(), UserId::generate());
        let mut holding = flood(&pool, &gate, 90, |_| (Some("nat".into()), Some(mallory))).await;
        let mallorys = holding.len();
        let victor_login = try_hold(&pool, &gate, Some("nat"), None).await;
        assert!(
            victor_login.is_some(),
            "a login from mallory's address is refused"
        );
        holding.extend(victor_login);
        let trudy_check = try_hold(&pool, &gate, Some("nat"), Some(trudy)).await;
        assert!(
            trudy_check.is_some(),
            "another account's check from mallory's address is refused"
        );
        holding.extend(trudy_check);
        assert_eq!(mallorys, 2, "mallory holds her account's share, no more");
        assert!(
            try_hold(&pool, &gate, Some("far"), Some(mallory))
                .await
                .is_none(),
            "nor more from another address"
        );
        release(&pool, &gate, holding).await;
    }

    /// Many accounts from one address fill the accounts' half of its share
    /// and no more: the other half stays for its logins, and the accounts
    /// still have their own shares elsewhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_accounts_from_one_address_leave_its_logins_their_half() {
        let pool = pool_of(32);
        let gate = Gate::new();
        let accounts: Vec<_> = (0..3).map(|_| UserId::generate()).collect();
        let mut holding = flood(&pool, &gate, 4, |i| {
            (Some("nat".into()), Some(accounts[i / 2]))
        })
        .await;
        assert_eq!(holding.len(), 4, "two accounts, two places each");
        assert!(
            try_hold(&pool, &gate, Some("nat"), Some(accounts[2]))
                .await
                .is_none(),
            "a third account finds the accounts' half of the address full"
        );
        let logins = flood(&pool, &gate, 5, |_| (Some("nat".into()), None)).await;
        assert_eq!(
            logins.len(),
            4,
            "the logins' half, then the address's share is full"
        );
        holding.extend(logins);
        let elsewhere = try_hold(&pool, &gate, Some("home"), Some(accounts[2])).await;
        assert!(
            elsewhere.is_some(),
            "the third account is served from another address"
        );
        holding.extend(elsewhere);
        release(&pool, &gate, holding).await;
    }

    /// One account asking from many addresses (or from none: work no client
    /// is attributed to) holds its own share and no more; the addresses'
    /// other users are not touched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_account_from_many_addresses_holds_its_share_and_no_more() {
        let pool = pool_of(32);
        let gate = Gate::new();
        let mallory = UserId::generate();
        let mut holding = flood(&pool, &gate, 6, |i| {
            (Some(format!("bot-{i}")), Some(mallory))
        })
        .await;
        assert_eq!(holding.len(), 2, "mallory's share, whichever address asks");
        assert!(try_hold(&pool, &gate, None, Some(mallory)).await.is_none());
        let other = try_hold(&pool, &gate, Some("bot-5"), None).await;
        assert!(other.is_some(), "a login from one of mallory's addresses");
        holding.extend(other);
        release(&pool, &gate, holding).await;
    }

    /// Counts are kept only for the keys that hold places, so their memory
    /// is bounded by the pool's places, however many clients and accounts
    /// come, and they are all forgotten when the work is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shares_hold_no_more_keys_than_the_pool_has_places() {
        let pool = pool_of(4);
        let gate = Gate::new();
        let holding = flood(&pool, &gate, 200, |i| {
            (Some(format!("client-{i}")), Some(UserId::generate()))
        })
        .await;
        assert_eq!(holding.len(), 4, "the pool is full");
        {
            let shares = lock(&pool.shares);
            assert_eq!((shares.clients.len(), shares.accounts.len()), (4, 4));
        }
        release(&pool, &gate, holding).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_at_once_when_full() {
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig {
                workers: 1,
                max_waiting: 1,
                max_wait: Duration::from_secs(30),
                max_per_client: 0,
            },
        );
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let blockers: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                let gate = Arc::clone(&gate);
                tokio::spawn(async move {
                    pool.run(move |_| {
                        let _ = gate.lock().unwrap().recv();
                    })
                    .await
                })
            })
            .collect();
        // Wait until one runs and one waits.
        for _ in 0..200 {
            if pool.load().running == 1 && pool.load().waiting == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            pool.load(),
            PoolLoad {
                running: 1,
                waiting: 1,
                capacity: 2
            }
        );
        let started = std::time::Instant::now();
        let refused = pool.run(|_| ()).await.unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Overloaded);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refusal must not queue"
        );
        release.send(()).unwrap();
        release.send(()).unwrap();
        for b in blockers {
            b.await.unwrap().unwrap();
        }
        assert_eq!(pool.load().running, 0);
        pool.run(|_| ()).await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_worker_survives() {
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig {
                workers: 1,
                max_waiting: 1,
                max_wait: Duration::from_secs(5),
                max_per_client: 0,
            },
        );
        let err = pool.run(|_| -> () { panic!("boom") }).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Internal);
        assert_eq!(
            pool.run(|_| 7).await.unwrap(),
            7,
            "the one worker still runs jobs"
        );
    }

    #[tokio::test]
    async fn hashing_threads_run_below_normal_priority() {
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig::default(),
        );
        let nice = pool
            .run(|_| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(nice, HASHING_NICE);
    }

    #[tokio::test]
    async fn refuses_after_waiting_too_long() {
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig {
                workers: 1,
                max_waiting: 4,
                max_wait: Duration::from_millis(50),
                max_per_client: 0,
            },
        );
        let (release, gate) = mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move |_| {
                    let _ = gate.recv();
                })
                .await
            })
        };
        while pool.load().running == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = pool.run(|_| ()).await.unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Overloaded);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
    }
}
