//! The liveness suite on the in-process implementation (one server): every party is
//! the same object.

#[path = "liveness/suite.rs"]
mod suite;

use std::sync::Arc;
use std::time::Duration;

use registry::liveness::{InProcess, Liveness};

fn parties(n: usize, ttl: Duration) -> suite::Parties {
    let one: Arc<dyn Liveness> = Arc::new(InProcess::new(ttl));
    Box::pin(async move { vec![one; n] })
}

all_liveness_tests!(parties);
