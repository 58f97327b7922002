//! A few worker threads over a list of independent items (repositories, pool shards).
//! A collection is system calls on metadata. Where those calls wait on the disk (a
//! synchronous discard per freed block, a cold directory), more threads than cores keep
//! the device busy: on the bench store, 32 threads sweep the root disk four times faster
//! than one. Where they never wait (tmpfs, a warm cache), threads past the cores only
//! take turns: on tmpfs, 4 sweep the bench store about 7% faster than 32. So the pool
//! starts at two threads per core and grows, up to the configured most, only while the
//! ones running leave cores idle.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::GcError;

/// How often the pool looks at whether its threads wait.
const TICK: Duration = Duration::from_millis(10);

/// Below this share of the cores its threads could use, the pool is waiting, not
/// computing, and grows. Only the pool's own threads count: other work in the process
/// (the server's requests) neither hides a wait nor fakes one.
const BUSY: f64 = 0.5;

/// The CPU clock of the calling thread, which other threads can read.
fn this_thread_clock() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `id` is a valid out-pointer; `pthread_self` is always a live thread.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (rc == 0).then_some(id)
}

/// CPU time a clock has counted; `None` once its thread has exited.
fn cpu_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| {
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    })
}

/// Whether `threads` threads that used `cpu` over `wall` left cores idle: they used
/// less than [`BUSY`] of the `cores` they could have kept busy.
fn waiting(cpu: Duration, wall: Duration, threads: usize, cores: usize) -> bool {
    let could = wall.as_secs_f64() * threads.min(cores) as f64;
    could > 0.0 && cpu.as_secs_f64() < BUSY * could
}

/// Runs `f` on every item with up to `workers` threads (fewer while they keep the cores
/// busy, see the module's notes); the results come back in the items' order. Stops at
/// the first error, or when `cancel` is set (then the error is [`GcError::Cancelled`]).
pub(crate) fn map<T, R, F>(
    items: &[T],
    workers: usize,
    cancel: &AtomicBool,
    f: F,
) -> Result<Vec<R>, GcError>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> Result<R, GcError> + Sync,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = workers.clamp(1, items.len().max(1));
    map_growing(items, (2 * cores).min(most), most, cores, cancel, f)
}

fn map_growing<T, R, F>(
    items: &[T],
    start: usize,
    most: usize,
    cores: usize,
    cancel: &AtomicBool,
    f: F,
) -> Result<Vec<R>, GcError>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> Result<R, GcError> + Sync,
{
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<GcError>> = Mutex::new(None);
    let pool = std::thread::current();
    let clocks: Mutex<Vec<libc::clockid_t>> = Mutex::new(Vec::new());
    // The CPU time the pool's threads have used (those that have not exited).
    let pool_cpu = || -> Duration {
        let clocks = clocks.lock().unwrap_or_else(|p| p.into_inner());
        clocks.iter().filter_map(|c| cpu_time(*c)).sum()
    };
    let work = || {
        if let Some(c) = this_thread_clock() {
            clocks.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
        let mut out = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                break;
            };
            match f(item) {
                Ok(r) => out.push((i, r)),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    break;
                }
            }
        }
        // The pool need not wait out its tick to see that the work is done.
        pool.unpark();
        out
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let mut handles: Vec<_> = (0..start.max(1)).map(|_| s.spawn(work)).collect();
        // The first tick only sets the baseline: the threads are still starting.
        let mut last: Option<(Instant, Duration)> = None;
        while handles.len() < most {
            std::thread::park_timeout(TICK);
            if stop.load(Ordering::Relaxed) || next.load(Ordering::Relaxed) >= items.len() {
                break;
            }
            let now = (Instant::now(), pool_cpu());
            if let Some((t, cpu)) = last
                && waiting(now.1.saturating_sub(cpu), now.0 - t, handles.len(), cores)
            {
                let more = handles.len().min(most - handles.len());
                handles.extend((0..more).map(|_| s.spawn(work)));
                // The new threads start in the next interval.
                last = None;
                continue;
            }
            last = Some(now);
        }
        tracing::debug!(
            items = items.len(),
            threads = handles.len(),
            "collector pool"
        );
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part),
                // A lost part would leave items unmarked: fail the cycle instead.
                Err(_) => {
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(GcError::Other("a collector thread panicked".into()));
                }
            }
        }
        all
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(GcError::Cancelled);
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_stops_at_an_error() {
        let items: Vec<u32> = (0..1000).collect();
        let never = AtomicBool::new(false);
        let doubled = map(&items, 4, &never, |x| Ok(x * 2)).unwrap();
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let err = map(&items, 4, &never, |x| {
            if *x == 500 {
                Err(GcError::Other("boom".into()))
            } else {
                Ok(*x)
            }
        })
        .unwrap_err();
        assert!(matches!(err, GcError::Other(m) if m == "boom"));
        let cancelled = AtomicBool::new(true);
        assert!(matches!(
            map(&items, 4, &cancelled, |x| Ok(*x)),
            Err(GcError::Cancelled)
        ));
    }

    /// Threads that sleep leave the cores idle: the pool grows to its most. Threads
    /// that spin keep them busy: it stays where it started.
    #[test]
    fn grows_while_its_threads_wait_and_only_then() {
        let items: Vec<u32> = (0..64).collect();
        let never = AtomicBool::new(false);
        let threads = |spin: bool| {
            let seen = Mutex::new(std::collections::HashSet::new());
            map_growing(&items, 1, 16, 1, &never, |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                let until = Instant::now() + Duration::from_millis(10);
                if spin {
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })
            .unwrap();
            seen.into_inner().unwrap().len()
        };
        let sleeping = threads(false);
        assert!(sleeping >= 8, "{sleeping} threads for sleeping work");
        // One step of growth is allowed for a moment when another process took the core.
        let spinning = threads(true);
        assert!(
            spinning <= 2,
            "{spinning} threads for busy work on one core"
        );
    }

    #[test]
    fn waiting_compares_cpu_with_the_cores_the_threads_could_use() {
        let ms = Duration::from_millis;
        // Four threads on two cores, both cores busy: not waiting.
        assert!(!waiting(ms(19), ms(10), 4, 2));
        // Four threads on two cores, one core's worth busy: not yet waiting.
        assert!(!waiting(ms(10), ms(10), 4, 2));
        // More than a core's worth idle: waiting.
        assert!(waiting(ms(9), ms(10), 4, 2));
        // One thread on two cores can only use one.
        assert!(!waiting(ms(9), ms(10), 1, 2));
        assert!(!waiting(ms(0), ms(0), 4, 2));
    }
}
