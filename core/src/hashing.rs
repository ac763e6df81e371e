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
//! Admission is fair across clients: work attributed to a client (the
//! adapters run each request inside [`as_client`], keyed by its address)
//! holds at most `max_per_client` places, running or waiting, so a flood from
//! one client is refused on its own share and a quiet client still gets in.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::{Error, ErrorCode};
use crate::password::PasswordHasher;

/// Sizes of the hashing pool.
#[derive(Debug, Clone, Copy)]
pub struct HashingPoolConfig {
    /// Hashes that run at once; by default one per core.
    pub workers: usize,
    /// Requests that may wait for a worker before new ones are refused.
    pub max_waiting: usize,
    /// How long one request may wait for a worker.
    pub max_wait: Duration,
    /// Places (running or waiting) that one client's work may hold at once;
    /// 0 means a quarter of `workers + max_waiting`.
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

/// One client's place in the pool; given back when its job is done.
struct Share {
    client: Arc<str>,
    shares: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut shares = match self.shares.lock() {
            Ok(shares) => shares,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(held) = shares.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                shares.remove(&self.client);
            }
        }
    }
}

impl Default for HashingPoolConfig {
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
    shares: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    config: HashingPoolConfig,
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
    pub fn new(hasher: PasswordHasher, config: HashingPoolConfig) -> Self {
        Self::start("hashing", hasher, config)
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.context
    }
}

impl<C: Send + Sync + 'static> WorkPool<C> {
    /// `config.workers` threads named `{name}-N`, each job given `context`.
    pub fn start(name: &'static str, context: C, config: HashingPoolConfig) -> Self {
        let workers = config.workers.max(1);
        let max_per_client = match config.max_per_client {
            0 => ((workers + config.max_waiting) / 4).max(1),
            n => n,
        };
        let config = HashingPoolConfig {
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
            config,
        }
    }

    /// Takes a place of `client`'s share, when the work is attributed to
    /// one; `OVERLOADED` when its share is full.
    fn share(&self, client: Option<Arc<str>>) -> Result<Option<Share>, Error> {
        let Some(client) = client else {
            return Ok(None);
        };
        let mut shares = match self.shares.lock() {
            Ok(shares) => shares,
            Err(poisoned) => poisoned.into_inner(),
        };
        let held = shares.entry(Arc::clone(&client)).or_insert(0);
        if *held >= self.config.max_per_client {
            tracing::warn!(pool = self.name, %client, held = *held, "one client's share of the pool is full, request refused");
            return Err(Error::new(ErrorCode::Overloaded));
        }
        *held += 1;
        Ok(Some(Share {
            client,
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

    /// As [`Self::run`], counted against `client`'s share (a user, say).
    pub async fn run_for<T, F>(&self, client: Option<Arc<str>>, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&C) -> T + Send + 'static,
    {
        let overloaded = || Error::new(ErrorCode::Overloaded);
        let share = self.share(client)?;
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
            HashingPoolConfig {
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
            pool.shares.lock().unwrap().is_empty(),
            "every place given back"
        );
        as_client("flooder".into(), pool.run(|_| ())).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_at_once_when_full() {
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            HashingPoolConfig {
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
            HashingPoolConfig {
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
            HashingPoolConfig::default(),
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
            HashingPoolConfig {
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
