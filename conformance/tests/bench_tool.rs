//! The load tool (`drydock-bench`) against the real server: its pushes send the test
//! file with sendfile(2) on a connection of their own and parse the answer by hand, so
//! these check that what it pushes arrives whole, and that a registry's refusal is
//! reported as an error rather than counted as a push.

use std::path::Path;
use std::process::Command;

use conformance::*;

/// Runs `drydock-bench ARGS` (off the runtime: the server answers it in this process).
async fn run_bench(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(workspace_binary("drydock-bench"))
            .args(&args)
            .output()
            .expect("run drydock-bench")
    })
    .await
    .unwrap()
}

/// `drydock-bench push-blob ... --json`: the report.
async fn push_blob(
    url: &str,
    file: &Path,
    size_mib: u32,
    repo: &str,
    chunk_mib: Option<u32>,
) -> serde_json::Value {
    let mut args: Vec<String> = [
        "push-blob",
        "--json",
        "--url",
        url,
        "--repo",
        repo,
        "--file",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(file.display().to_string());
    args.extend(["--size-mib".to_owned(), size_mib.to_string()]);
    if let Some(c) = chunk_mib {
        args.extend(["--chunk-mib".to_owned(), c.to_string()]);
    }
    let out = run_bench(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "push-blob {repo}: no JSON report ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The test file's digest, from the sidecar `gen-file` writes.
fn sidecar_digest(file: &Path) -> String {
    let text = std::fs::read_to_string(format!("{}.sha256", file.display())).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

async fn pulled_digest(s: &TestServer, repo: &str, digest: &str) -> String {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {repo}@{digest}");
    digest_of(&r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_and_chunked_pushes_arrive_whole() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    for (repo, chunk) in [("bench/mono", None), ("bench/chunked", Some(1))] {
        let report = push_blob(&s.base, &file, 3, repo, chunk).await;
        let row = &report["rows"][0];
        assert_eq!(row["errors"], 0, "{repo}: {report}");
        assert_eq!(row["ops"], 1, "{repo}: {report}");
        assert!(row["mib_per_s"].as_f64().unwrap() > 0.0, "{report}");
        let digest = sidecar_digest(&file);
        assert_eq!(
            digest_of(&std::fs::read(&file).unwrap()),
            digest,
            "the sidecar names the file"
        );
        assert_eq!(pulled_digest(&s, repo, &digest).await, digest, "{repo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_is_an_error_with_the_registrys_answer() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    // A file and a sidecar that names another digest: the registry reads the whole body
    // and refuses the PUT.
    let file_arg = file.display().to_string();
    let made = run_bench(
        ["gen-file", "--size-mib", "2", "--file", &file_arg]
            .iter()
            .map(|a| a.to_string())
            .collect(),
    )
    .await;
    assert!(made.status.success(), "{made:?}");
    let real = sidecar_digest(&file);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let side = format!("{}.sha256", file.display());
    let text = std::fs::read_to_string(&side).unwrap();
    std::fs::write(&side, text.replace(&real, &wrong)).unwrap();
    for chunk in [None, Some(1)] {
        let report = push_blob(&s.base, &file, 2, "bench/refused", chunk).await;
        let row = &report["rows"][0];
        assert_eq!(row["errors"], 1, "{report}");
        assert_eq!(row["ops"], 0, "{report}");
        let sample = report["error_samples"][0].as_str().unwrap_or_default();
        assert!(
            sample.contains("400") && sample.contains("DIGEST_INVALID"),
            "the error quotes the registry's answer: {report}"
        );
    }
    let r = client()
        .head(s.url(&format!("/v2/bench/refused/blobs/{real}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing was stored under the real digest");
}
