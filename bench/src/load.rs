//! The load engine: `threads` OS threads, each with its own single-threaded tokio
//! runtime, share `workers` tasks (one keep-alive connection each). Workers meet at a
//! barrier once connected, so connecting is never measured; then each repeats its
//! operation until the deadline, recording latencies into its own histogram. The
//! histograms and error logs are merged at the end.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::client::{self as h, Conn, Target, location_path};
use crate::report::{ErrorLog, Latency, Row, histogram, record};

/// Runs `workers` futures made by `make(i)` on `threads` threads; returns their outputs
/// in worker order.
pub fn run_workers<T, F, Fut>(threads: usize, workers: usize, make: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let threads = threads.clamp(1, workers.max(1));
    let make = &make;
    let per_thread: Vec<anyhow::Result<Vec<(usize, T)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<Vec<(usize, T)>> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a runtime")?;
                    rt.block_on(async move {
                        let mine: Vec<usize> = (t..workers).step_by(threads).collect();
                        let handles: Vec<_> =
                            mine.iter().map(|&i| (i, tokio::spawn(make(i)))).collect();
                        let mut out = Vec::with_capacity(handles.len());
                        for (i, hnd) in handles {
                            out.push((i, hnd.await.map_err(|e| anyhow!("worker {i}: {e}"))?));
                        }
                        Ok(out)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a thread panicked")))
            })
            .collect()
    });
    let mut all: Vec<(usize, T)> = Vec::with_capacity(workers);
    for r in per_thread {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// A start line for workers: everyone connects, then the clock starts for all at once.
pub struct StartLine {
    barrier: tokio::sync::Barrier,
    start: OnceLock<Instant>,
}

impl StartLine {
    pub fn new(parties: usize) -> Arc<StartLine> {
        Arc::new(StartLine {
            barrier: tokio::sync::Barrier::new(parties),
            start: OnceLock::new(),
        })
    }

    /// Waits for every worker; returns the common start instant.
    pub async fn wait(&self) -> Instant {
        if self.barrier.wait().await.is_leader() {
            let _ = self.start.set(Instant::now());
        }
        self.barrier.wait().await;
        *self.start.get_or_init(Instant::now)
    }
}

/// One repeated operation.
#[derive(Clone, Debug)]
pub enum Op {
    /// A request whose body is read and discarded; 2xx is success.
    Request {
        method: Method,
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A listing (`tags/list`, `_catalog`): GET, count the items under `key`, follow
    /// `Link: <...>; rel="next"` for at most `max_pages` pages.
    Walk {
        path: String,
        key: &'static str,
        max_pages: u32,
    },
}

#[derive(Default)]
struct OpOut {
    requests: u64,
    items: u64,
    bytes: u64,
}

fn next_link(h: &http::HeaderMap) -> Option<String> {
    let v = h.get("link")?.to_str().ok()?;
    let start = v.find('<')? + 1;
    let end = v[start..].find('>')? + start;
    v[end..]
        .contains("next")
        .then(|| location_path(&v[start..end]))
}

async fn run_op(c: &mut Conn, op: &Op) -> anyhow::Result<OpOut> {
    match op {
        Op::Request {
            method,
            path,
            headers,
        } => {
            let resp = c.send(method.clone(), path, headers, h::empty()).await?;
            let status = resp.status();
            let bytes = h::drain(resp).await?;
            if !status.is_success() {
                bail!("{method} {path}: {status}");
            }
            Ok(OpOut {
                requests: 1,
                items: 0,
                bytes,
            })
        }
        Op::Walk {
            path,
            key,
            max_pages,
        } => {
            let mut out = OpOut::default();
            let mut next = Some(path.clone());
            while let Some(p) = next.take() {
                if out.requests >= u64::from(*max_pages) {
                    break;
                }
                let resp = c.send(Method::GET, &p, &[], h::empty()).await?;
                let status = resp.status();
                let link = next_link(resp.headers());
                let body = h::collect(resp).await?;
                out.requests += 1;
                out.bytes += body.len() as u64;
                if status != StatusCode::OK {
                    bail!("GET {p}: {status}");
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&body).with_context(|| format!("GET {p}: not JSON"))?;
                // Distribution answers an empty tag list with "tags": null.
                out.items += v
                    .get(*key)
                    .and_then(|a| a.as_array())
                    .map_or(0, |a| a.len() as u64);
                next = link;
            }
            Ok(out)
        }
    }
}

pub struct LoadOpts {
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

struct WorkerOut {
    hist: Histogram<u64>,
    ops: u64,
    out: OpOut,
    errors: ErrorLog,
    last_end: Option<Instant>,
    measure_start: Instant,
}

/// Repeats `op` on `connections` connections for the duration; one row of results.
pub fn run_load(
    target: &Arc<Target>,
    name: &str,
    op: Op,
    opts: &LoadOpts,
) -> anyhow::Result<(Row, ErrorLog)> {
    let op = Arc::new(op);
    let line = StartLine::new(opts.connections);
    let (warmup, duration) = (opts.warmup, opts.duration);
    let outs = run_workers(opts.threads, opts.connections, |_| {
        let (target, op, line) = (target.clone(), op.clone(), line.clone());
        async move {
            let conn = Conn::connect(target).await;
            let start = line.wait().await;
            let measure_start = start + warmup;
            let end = measure_start + duration;
            let mut w = WorkerOut {
                hist: histogram(),
                ops: 0,
                out: OpOut::default(),
                errors: ErrorLog::default(),
                last_end: None,
                measure_start,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    w.errors.add(&e);
                    return w;
                }
            };
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = run_op(&mut conn, &op).await;
                let t1 = Instant::now();
                if t0 < measure_start {
                    continue;
                }
                match r {
                    Ok(o) => {
                        record(&mut w.hist, t1 - t0);
                        w.ops += 1;
                        w.out.requests += o.requests;
                        w.out.items += o.items;
                        w.out.bytes += o.bytes;
                    }
                    Err(e) => w.errors.add(&e),
                }
                w.last_end = Some(t1);
            }
            w
        }
    })?;
    let mut hist = histogram();
    let mut errors = ErrorLog::default();
    let (mut ops, mut out) = (0u64, OpOut::default());
    let mut last_end: Option<Instant> = None;
    let mut measure_start: Option<Instant> = None;
    for w in outs {
        hist.add(&w.hist)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        ops += w.ops;
        out.requests += w.out.requests;
        out.items += w.out.items;
        out.bytes += w.out.bytes;
        errors.merge(w.errors);
        last_end = last_end.max(w.last_end);
        measure_start = Some(measure_start.map_or(w.measure_start, |m| m.min(w.measure_start)));
    }
    let seconds = match (measure_start, last_end) {
        (Some(s), Some(e)) if e > s => (e - s).as_secs_f64(),
        _ => duration.as_secs_f64(),
    };
    let per_op = |x: u64| (ops > 0).then(|| x as f64 / ops as f64);
    let row = Row {
        name: name.to_owned(),
        ops,
        errors: errors.count,
        seconds,
        ops_per_s: Some(ops as f64 / seconds),
        mib_per_s: Some(out.bytes as f64 / seconds / (1 << 20) as f64),
        latency: Latency::of(&hist),
        requests_per_op: per_op(out.requests),
        items_per_op: match &*op {
            Op::Walk { .. } => per_op(out.items),
            Op::Request { .. } => None,
        },
        bytes: Some(out.bytes),
        note: None,
    };
    Ok((row, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static("</v2/_catalog?last=b&n=100>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=100"));
        h.insert(
            "link",
            HeaderValue::from_static("<http://h:1/v2/x/tags/list?n=2&last=a>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/x/tags/list?n=2&last=a"));
    }

    #[test]
    fn workers_keep_order() {
        let out = run_workers(2, 5, |i| async move { i * 10 }).unwrap();
        assert_eq!(out, vec![0, 10, 20, 30, 40]);
    }
}
