//! Fuzz targets for every parser of client and configuration input (issue 16), on
//! `proptest` (stable toolchain). Each target draws its input three ways: a seed from its
//! corpus (`registry/fuzz/corpus/<target>.txt`, one input a line, or
//! `registry/fuzz/corpus/<target>/`, one a file; seeded from the tests' inputs) with up to
//! eight mutations (byte flips, inserted bytes and tokens that parsers trip on, deleted or
//! repeated runs, splices of two seeds), or arbitrary bytes. Every target checks that the
//! parser does not panic, and what its answer promises: what a name parser accepts matches
//! the spec's grammar (and the reverse), a digest prints back as it was given, a range lies
//! inside the blob, a duration round-trips, a token that verifies names our issuer and
//! audience, a manifest's type comes from its bytes alone.
//!
//! `cargo test` runs each with a fixed seed and `DRYDOCK_FUZZ_CASES` (256) cases, so the
//! gate is deterministic. `scripts/fuzz.sh` runs them for a set time with fresh seeds
//! (`DRYDOCK_FUZZ_SEED`); a failure prints the seed and proptest's smallest input.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// The gate's seed when `DRYDOCK_FUZZ_SEED` is unset.
const GATE_SEED: u64 = 16;

fn config() -> Config {
    let seed = std::env::var("DRYDOCK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(GATE_SEED);
    let cases = std::env::var("DRYDOCK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    eprintln!("DRYDOCK_FUZZ_SEED={seed} DRYDOCK_FUZZ_CASES={cases}");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A target's seeds: `<target>.txt` (one a line) and the files of `<target>/`.
fn corpus(target: &str) -> Arc<Vec<Vec<u8>>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seeds = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join(format!("{target}.txt"))) {
        seeds.extend(text.lines().map(|l| l.as_bytes().to_vec()));
    }
    if let Ok(files) = std::fs::read_dir(dir.join(target)) {
        let mut paths: Vec<_> = files.filter_map(|f| f.ok().map(|f| f.path())).collect();
        paths.sort();
        for p in paths {
            seeds.push(std::fs::read(&p).unwrap_or_default());
        }
    }
    assert!(!seeds.is_empty(), "no corpus for fuzz target {target}");
    Arc::new(seeds)
}

/// Pieces that parsers of names, numbers, paths, JSON and headers trip on.
const TOKENS: &[&str] = &[
    "/",
    "//",
    "..",
    ".",
    "%2e",
    "%2F",
    "%00",
    ":",
    "@",
    "-",
    "_",
    "__",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "é",
    "\u{202e}",
    "\u{ffff}",
    "0",
    "-1",
    "99999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    ",",
    "=",
    ";",
    "bytes=",
    "sha256:",
    "sha512:",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    "\\u0000",
    "null",
    "true",
    "-9223372036854775808",
];

#[derive(Debug, Clone)]
enum Op {
    Flip(usize, u8),
    Insert(usize, u8),
    Token(usize, usize),
    Delete(usize, usize),
    Repeat(usize, usize),
    Splice(usize, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    (0u8..6, any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(k, a, b, byte)| match k {
        0 => Op::Flip(a, byte),
        1 => Op::Insert(a, byte),
        2 => Op::Token(a, b),
        3 => Op::Delete(a, b % 16 + 1),
        4 => Op::Repeat(a, b % 64 + 1),
        _ => Op::Splice(a, b, byte as usize),
    })
}

fn mutate(seed: &[u8], ops: &[Op], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for op in ops {
        let at = |i: usize, len: usize| i % (len + 1);
        match *op {
            Op::Flip(i, b) if !v.is_empty() => {
                let i = i % v.len();
                v[i] ^= b | 1;
            }
            Op::Flip(..) => {}
            Op::Insert(i, b) => v.insert(at(i, v.len()), b),
            Op::Token(i, t) => {
                let i = at(i, v.len());
                let t = TOKENS[t % TOKENS.len()].as_bytes();
                v.splice(i..i, t.iter().copied());
            }
            Op::Delete(i, n) => {
                let i = at(i, v.len());
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Op::Repeat(i, n) => {
                let i = at(i, v.len());
                let end = (i + 8).min(v.len());
                let run = v[i..end].to_vec();
                for _ in 0..n {
                    v.splice(i..i, run.iter().copied());
                }
            }
            Op::Splice(i, other, from) => {
                let o = &seeds[other % seeds.len()];
                let from = from % (o.len() + 1);
                let i = at(i, v.len());
                v.truncate(i);
                v.extend_from_slice(&o[from..]);
            }
        }
    }
    v
}

/// A target's input: a mutated seed (three in four) or arbitrary bytes.
fn input(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let n = seeds.len();
    prop_oneof![
        3 => (0..n, prop::collection::vec(op(), 0..8))
            .prop_map(move |(i, ops)| mutate(&seeds[i], &ops, &seeds)),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The distribution spec's path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`,
/// written out independently of `names.rs`.
fn spec_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let run = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && alnum(b[*i]) {
            *i += 1;
        }
        *i > start
    };
    if !run(&mut i) {
        return false;
    }
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !run(&mut i) {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn spec_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

fn headers(pairs: &[(&'static str, &[u8])]) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = axum::http::HeaderValue::from_bytes(v) {
            h.insert(*k, v);
        }
    }
    h
}

proptest! {
    #![proptest_config(config())]

    /// Repository names: accepted exactly when they match the spec's grammar and fit
    /// in 255 bytes; an accepted name prints back as given.
    #[test]
    fn repo_name(b in input("repo_name")) {
        let s = text(&b);
        let spec = s.len() <= crate::names::MAX_NAME_LEN && s.split('/').all(spec_component);
        match crate::names::RepoName::parse(&s) {
            Ok(n) => {
                prop_assert!(spec, "accepted {s:?}");
                prop_assert_eq!(n.as_str(), s.as_str());
            }
            Err(_) => prop_assert!(!spec, "refused {s:?}"),
        }
    }

    /// Tags: accepted exactly when they match the spec's grammar.
    #[test]
    fn tag(b in input("tag")) {
        let s = text(&b);
        let ok = crate::names::Tag::parse(&s).is_ok();
        prop_assert_eq!(ok, spec_tag(&s), "{:?}", s);
    }

    /// Digests: an accepted digest prints back as given, and every well-formed
    /// `sha256:<64 lowercase hex>` is accepted.
    #[test]
    fn digest(b in input("digest")) {
        let s = text(&b);
        match s.parse::<crate::Digest>() {
            Ok(d) => prop_assert_eq!(d.to_string(), s),
            Err(_) => {
                let well_formed = s.strip_prefix("sha256:").is_some_and(|h| {
                    h.len() == 64 && h.bytes().all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x))
                });
                prop_assert!(!well_formed, "refused {s:?}");
            }
        }
    }

    /// `Range` on a blob GET: a range it serves lies inside the blob.
    #[test]
    fn range(b in input("range"), size in prop_oneof![Just(0u64), Just(1), 0..5000u64, any::<u64>()]) {
        let s = text(&b);
        if let Ok(Some((a, z))) = crate::api::blobs::parse_range(&s, size) {
            prop_assert!(a <= z && z < size, "{s:?} on {size} bytes gave {a}-{z}");
        }
    }

    /// `Content-Range` on a PATCH: an accepted range is ordered, below 2^64 - 1, and
    /// as long as a `Content-Length` sent with it.
    #[test]
    fn content_range(b in input("content_range"), len in prop::option::of(prop_oneof![0..5000u64, any::<u64>()])) {
        let len_text = len.map(|l| l.to_string());
        let mut pairs: Vec<(&'static str, &[u8])> = vec![("content-range", &b)];
        if let Some(l) = &len_text {
            pairs.push(("content-length", l.as_bytes()));
        }
        if let Ok(Some((a, z))) = crate::api::uploads::content_range(&headers(&pairs)) {
            prop_assert!(a <= z && z < u64::MAX);
            if let Some(l) = len {
                prop_assert_eq!(l, z - a + 1);
            }
        }
    }

    /// The API's routing of `/v2/…`: whatever it routes names a valid repository.
    #[test]
    fn endpoint(b in input("endpoint")) {
        let s = text(&b);
        if let Ok(e) = crate::api::Endpoint::parse(&s) {
            prop_assert!(crate::names::RepoName::parse(e.repo().as_str()).is_ok());
        }
    }

    /// Manifests and indexes: the type comes from the bytes alone, so a body accepted
    /// with a `Content-Type` parses the same without one; every reference is a digest.
    #[test]
    fn manifest(b in input("manifest"), ct in prop::option::of(prop_oneof![
        Just("application/vnd.oci.image.manifest.v1+json"),
        Just("application/vnd.oci.image.index.v1+json"),
        Just("application/vnd.docker.distribution.manifest.v2+json"),
        Just("application/vnd.docker.distribution.manifest.list.v2+json"),
        Just("application/json"),
        Just("text/plain; charset=utf-8"),
    ])) {
        if let Ok(m) = crate::manifest::parse(&b, ct) {
            let again = crate::manifest::parse(&b, None);
            prop_assert!(again.is_ok(), "accepted with {ct:?} only");
            let again = again.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&m.media_type, &again.media_type);
            prop_assert_eq!(&m.blobs, &again.blobs);
            prop_assert_eq!(&m.children, &again.children);
            prop_assert_eq!(&m.subject, &again.subject);
        }
    }

    /// The artifacts tree's paths: no accepted file path climbs out or names a hidden
    /// or empty component; routing never panics.
    #[test]
    fn artifact_path(b in input("artifact_path")) {
        let s = text(&b);
        if let Ok(p) = crate::artifacts::names::FilePath::parse(&s) {
            for c in p.as_str().split('/') {
                prop_assert!(!c.is_empty() && c != "." && c != ".." && !c.starts_with('.'), "{s:?}");
                prop_assert!(!c.contains('\0') && !c.contains('\\'), "{s:?}");
            }
        }
        let _ = crate::api::artifacts::Target::parse(&s);
        let _ = crate::api::artifacts::branch_action(&s, &axum::http::Method::DELETE);
        let _ = crate::artifacts::parse_rfc3339(&s);
    }

    /// Durations (configuration and the admin API's `grace`): no panic, and what is
    /// accepted prints as something that parses back to the same value.
    #[test]
    fn duration(b in input("duration")) {
        let s = text(&b);
        if let Ok(d) = crate::config::parse_duration(&s) {
            let printed = crate::config::format_duration(d);
            prop_assert_eq!(crate::config::parse_duration(&printed), Ok(d), "{:?} → {:?}", s, printed);
        }
    }

    /// `Authorization: Basic …`: a user name never contains the separator.
    #[test]
    fn basic(b in input("basic")) {
        if let Some((user, _)) = crate::auth::parse_basic(&text(&b)) {
            prop_assert!(!user.contains(':'));
        }
    }

    /// The token service's `scope=` and the access policy's action lists.
    #[test]
    fn scope(b in input("scope")) {
        let s = text(&b);
        if let Some((kind, name, _)) = crate::auth::service::parse_scope(&s) {
            prop_assert!(!kind.is_empty() && !name.is_empty(), "{s:?}");
        }
        let _ = crate::access::Action::parse_many(&s);
    }

    /// Upload ids from a session URL and the tag list's `n` and `last`.
    #[test]
    fn query(b in input("query")) {
        let s = text(&b);
        let _ = crate::upload::parse_id(&s);
        if let Ok(uri) = format!("/v2/r/tags/list?{s}").parse::<axum::http::Uri>()
            && let Ok(page) = crate::api::discovery::Page::from_uri(&uri)
        {
            let items: Vec<String> = ["a", "b", "b0", "c"].iter().map(|x| x.to_string()).collect();
            let (out, _) = page.apply(&items, "/v2/r/tags/list");
            prop_assert!(out.iter().all(|x| items.contains(x)));
        }
    }
}

/// Bearer tokens: a verifier with our own ES256 key; the corpus holds tokens it signed
/// (made here: they expire) beside the fixed seeds. A token that verifies names our
/// issuer and audience; nothing panics.
#[test]
fn bearer() {
    use crate::auth::token::{Claims, SigningKey, Verifier};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let key_path = dir.path().join("key.pem");
    let pair = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
    std::fs::write(&key_path, pair.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let key = Arc::new(SigningKey::load(&key_path, None).unwrap_or_else(|e| panic!("{e}")));
    let tc = crate::config::TokenConfig {
        realm: "/token".into(),
        service: "fuzz".into(),
        issuer: "drydock".into(),
        rootcertbundle: None,
        jwks: None,
        signingalgorithms: Vec::new(),
    };
    let verifier = Verifier::new(&tc, Some(key.clone())).unwrap_or_else(|e| panic!("{e}"));
    let now = jsonwebtoken::get_current_timestamp();
    let claims: Claims = serde_json::from_value(serde_json::json!({
        "iss": "drydock", "sub": "alice", "aud": "fuzz", "exp": now + 3600,
        "access": [{"type": "repository", "name": "a/b", "actions": ["pull", "push"]}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let good = key.sign(&claims).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        verifier.verify(&good).is_ok(),
        "the unmutated token verifies"
    );
    let mut seeds = (*corpus("bearer")).clone();
    seeds.push(good.into_bytes());
    let seeds = Arc::new(seeds);
    let n = seeds.len();
    let s2 = seeds.clone();
    let strategy = prop_oneof![
        3 => (0..n, prop::collection::vec(op(), 0..8))
            .prop_map(move |(i, ops)| mutate(&s2[i], &ops, &s2)),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&strategy, |b| {
            if let Ok(c) = verifier.verify(&text(&b)) {
                prop_assert_eq!(c.iss.as_str(), "drydock");
                let aud = serde_json::to_value(&c.aud).unwrap_or_default();
                prop_assert!(
                    aud == "fuzz"
                        || aud
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == "fuzz"))
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
