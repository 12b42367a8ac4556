//! A persistent thread pool for the ~120 small matrix-vector products of one decode step.
//!
//! `n - 1` worker threads live as long as the pool; the calling thread is part 0 of every job.
//! A job is published by bumping an epoch counter: workers spin on it for a short while
//! ([`SPIN`], 200 µs) and then park on a condition variable, so dispatch
//! within a decode step costs about a microsecond (no allocation, no syscall while workers are
//! spinning) and an idle pool costs no CPU. A work-stealing pool (rayon) pays for job allocation,
//! stealing and sleeping threads' wake-up on every call, which matters for matrices that take
//! 10-100 µs; here the split is fixed, one part per thread.
//!
//! [`ThreadPool::run`] calls a borrowed closure on every part and returns only after all parts
//! finished; [`ThreadPool::split_rows`] splits an output slice into one contiguous row range per
//! thread (aligned to the kernels' 4-row blocks), the same split for the same sizes every time,
//! so results do not depend on timing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker spins on the epoch before parking, and the caller on the parts before
/// yielding: longer than the gaps between the products of a decode step (and the sampling
/// between steps), short enough that an idle pool stops burning CPU at once.
const SPIN: Duration = Duration::from_micros(200);

/// Spins until `done()` or `SPIN` has passed; true when `done()`.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() > SPIN {
            return done();
        }
    }
}

/// Most threads a pool runs (the output split keeps one slot per thread on the stack).
pub const MAX_THREADS: usize = 64;

type Job = &'static (dyn Fn(usize) + Sync);

/// One part's output rows and the index of its first row, taken once by that part.
type PartSlot<'a> = Mutex<Option<(usize, &'a mut [f32])>>;

struct Shared {
    /// Bumped once per job.
    epoch: AtomicUsize,
    /// The job of the current epoch; `None` between jobs.
    job: Mutex<Option<Job>>,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
    /// A part of the current job panicked.
    panicked: AtomicBool,
}

/// A fixed set of threads running one job at a time (see the module doc).
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes jobs when several callers share the pool.
    dispatch: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` threads (the caller included): `threads - 1` workers are started.
    /// `threads` is clamped to `1..=MAX_THREADS`.
    pub fn new(threads: usize) -> Self {
        let threads = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|part| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tolk-native-{part}"))
                    .spawn(move || worker(&shared, part))
                    .expect("spawning a thread of the native decoder's pool")
            })
            .collect();
        Self {
            shared,
            workers,
            dispatch: Mutex::new(()),
        }
    }

    /// Threads running each job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(part)` for every `part` in `0..self.threads()`, part 0 on the calling thread, and
    /// returns when all have returned. A panic in any part is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            return f(0);
        }
        let _one_job = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the `'static` lifetime is a lie told only to the workers, and never observed
        // beyond the borrow: a worker reads the job after seeing the new epoch, calls it, then
        // decrements `remaining`; this function clears the job and returns only once
        // `remaining` is 0, i.e. after every worker's last use of `f`. `f` is `Sync`, so the
        // concurrent calls are allowed.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        s.remaining.store(self.workers.len(), Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        if !spin_until(|| s.remaining.load(Ordering::Acquire) == 0) {
            while s.remaining.load(Ordering::Acquire) != 0 {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a thread of the native decoder's pool panicked");
        }
    }

    /// Splits `y` into one contiguous run of rows per thread (each a multiple of `align` rows
    /// except the last) and calls `f(first_row, rows)` on each, in parallel.
    pub fn split_rows(&self, y: &mut [f32], align: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let n = self.threads();
        let total = y.len();
        let align = align.max(1);
        let chunk = total.div_ceil(n).div_ceil(align) * align;
        if n == 1 || total <= align {
            return f(0, y);
        }
        // One slot per part; each part takes its own slot, so the locks never contend.
        let parts: [PartSlot<'_>; MAX_THREADS] = std::array::from_fn(|_| Mutex::new(None));
        let mut rest = y;
        let mut start = 0;
        for slot in parts.iter().take(n) {
            let take = chunk.min(rest.len());
            let (mine, tail) = rest.split_at_mut(take);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((start, mine));
            start += take;
            rest = tail;
        }
        self.run(&|part| {
            let taken = parts[part].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((first, rows)) = taken {
                if !rows.is_empty() {
                    f(first, rows);
                }
            }
        });
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The loop of worker `part`. It starts from epoch 0, the epoch of a new pool: a job published
/// before the thread first runs is still seen as new.
fn worker(s: &Shared, part: usize) {
    let mut seen = 0;
    loop {
        if !spin_until(|| s.epoch.load(Ordering::Acquire) != seen) {
            let mut g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.epoch.load(Ordering::SeqCst) == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        seen = s.epoch.load(Ordering::SeqCst);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(|| job(part))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_job() {
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads);
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|p| {
                    hits[p].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn split_rows_covers_every_row_once_aligned() {
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads);
            for len in [0usize, 1, 3, 4, 5, 17, 64, 103] {
                let mut y = vec![0f32; len];
                pool.split_rows(&mut y, 4, &|first, rows| {
                    assert!(first % 4 == 0);
                    for (i, v) in rows.iter_mut().enumerate() {
                        *v += (first + i) as f32 + 1.0;
                    }
                });
                let want: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
                assert_eq!(y, want, "{threads} threads, {len} rows");
            }
        }
    }

    #[test]
    fn workers_wake_after_parking() {
        let pool = ThreadPool::new(3);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_panicking_part_is_reported_and_the_pool_still_works() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|p| {
                if p == 1 {
                    panic!("part 1");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
