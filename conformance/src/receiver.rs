//! A receiver of notification envelopes for the tests: a small axum server on an
//! ephemeral loopback port that records every envelope it accepts.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;

/// A receiver of event envelopes that answers `status` (200 by default).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    /// What it answers; anything but 200 records nothing.
    pub status: Arc<AtomicU16>,
    /// Every envelope received: (headers, body).
    pub got: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let status = Arc::new(AtomicU16::new(200));
        let got: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
        let (st, g) = (status.clone(), got.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (st, g) = (st.clone(), g.clone());
                async move {
                    let code = st.load(Ordering::SeqCst);
                    if code == 200 {
                        let v: Value = serde_json::from_slice(&body).expect("an envelope is JSON");
                        g.lock().unwrap().push((headers, v));
                    }
                    axum::http::StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Receiver { url, status, got }
    }

    pub fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, v)| v["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (bounded) until `pred` holds for the events received so far.
    pub async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never happened; got {ev:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
