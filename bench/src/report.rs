//! What a scenario measured: rows of numbers, printed as a table for people or as JSON
//! for scripts. Errors are a column of every row, never dropped.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in nanoseconds, 1 ns .. 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(ns);
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
    }
}

/// One measured thing.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Row {
    pub name: String,
    /// Completed operations (requests, images, transfers, walks).
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// HTTP requests per operation, where an operation is more than one request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_op: Option<f64>,
    /// Items (tags, repositories) per operation, for listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub url: String,
    pub params: serde_json::Value,
    pub rows: Vec<Row>,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

impl Report {
    pub fn total_errors(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum()
    }

    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string_pretty(self) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("cannot serialize the report: {e}"),
            }
            return;
        }
        println!("{} against {}  {}", self.scenario, self.url, self.params);
        let head = [
            "what", "ops", "errors", "seconds", "ops/s", "MiB/s", "p50 ms", "p90 ms", "p99 ms",
            "max ms", "req/op", "items/op",
        ];
        let mut lines: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
        let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |x| format!("{x:.prec$}"));
        for r in &self.rows {
            let l = r.latency.as_ref();
            lines.push(vec![
                r.name.clone(),
                r.ops.to_string(),
                r.errors.to_string(),
                format!("{:.3}", r.seconds),
                opt(r.ops_per_s, 1),
                opt(r.mib_per_s, 1),
                opt(l.map(|l| l.p50_ms), 3),
                opt(l.map(|l| l.p90_ms), 3),
                opt(l.map(|l| l.p99_ms), 3),
                opt(l.map(|l| l.max_ms), 3),
                opt(r.requests_per_op, 1),
                opt(r.items_per_op, 1),
            ]);
        }
        let widths: Vec<usize> = (0..head.len())
            .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
            .collect();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            println!("{}", cells.join("  "));
        }
        for r in &self.rows {
            if let Some(n) = &r.note {
                println!("note ({}): {n}", r.name);
            }
        }
        if !self.error_samples.is_empty() {
            println!("errors (first {}):", self.error_samples.len());
            for e in &self.error_samples {
                println!("  {e}");
            }
        }
    }
}

/// Keeps the first few distinct error messages.
#[derive(Debug, Default)]
pub struct ErrorLog {
    pub count: u64,
    pub samples: Vec<String>,
}

impl ErrorLog {
    const KEEP: usize = 8;

    pub fn add(&mut self, e: &anyhow::Error) {
        self.count += 1;
        if self.samples.len() < Self::KEEP {
            let msg = format!("{e:#}");
            if !self.samples.contains(&msg) {
                self.samples.push(msg);
            }
        }
    }

    pub fn merge(&mut self, other: ErrorLog) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < Self::KEEP && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}
