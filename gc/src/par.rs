//! A fixed pool of worker threads over a list of independent items (repositories, pool
//! shards). A collection is system calls on metadata; where they wait on the disk (a
//! synchronous discard per freed block, a cold directory) more threads than cores keep
//! the device busy, and where they never wait (tmpfs, a warm cache) threads past the
//! cores only take turns. The size is `gc.workers` (default: two per core, at most 32),
//! fixed for the whole run: a pool that sized itself from its threads' CPU clocks read
//! "my threads got no CPU" on a busy machine as "waiting on the disk", and grew to its
//! most exactly when the machine had the least to spare.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::GcError;

/// Runs `f` on every item with `workers` threads (never more threads than items); the
/// results come back in the items' order. Stops at the first error, or when `cancel` is
/// set (then the error is [`GcError::Cancelled`]).
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
    let threads = workers.clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<GcError>> = Mutex::new(None);
    let work = || {
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
        out
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
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

    /// Exactly the configured number of threads work, whatever the CPU is doing: every
    /// item waits at a barrier that opens only once `workers` threads stand at it.
    #[test]
    fn runs_exactly_the_configured_threads() {
        for workers in [1usize, 3, 8] {
            let items: Vec<u32> = (0..workers as u32 * 4).collect();
            let never = AtomicBool::new(false);
            let barrier = std::sync::Barrier::new(workers);
            let seen = Mutex::new(std::collections::HashSet::new());
            map(&items, workers, &never, |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                barrier.wait();
                Ok(())
            })
            .unwrap();
            assert_eq!(seen.into_inner().unwrap().len(), workers);
        }
        // Never more threads than items.
        let seen = Mutex::new(std::collections::HashSet::new());
        map(&[1, 2], 16, &AtomicBool::new(false), |_| {
            seen.lock().unwrap().insert(std::thread::current().id());
            Ok(())
        })
        .unwrap();
        assert!(seen.into_inner().unwrap().len() <= 2);
    }
}
