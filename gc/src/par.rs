//! A few worker threads over a list of independent items (repositories, pool shards).
//! A collection is system calls on metadata: with more than one thread in the kernel at
//! a time, the walk and the removals go faster even on two cores, and folders of
//! different shards take different locks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::GcError;

/// Runs `f` on every item with up to `workers` threads; the results come back in the
/// items' order. Stops at the first error, or when `cancel` is set (then the error is
/// [`GcError::Cancelled`]).
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
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<GcError>> = Mutex::new(None);
    let threads = workers.clamp(1, items.len().max(1));
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
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
                                let mut slot =
                                    first_error.lock().unwrap_or_else(|p| p.into_inner());
                                slot.get_or_insert(e);
                                break;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
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
}
