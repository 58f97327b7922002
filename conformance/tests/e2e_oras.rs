//! ORAS (oras-py from PyPI) pushes and pulls OCI artifacts through drydock: files as
//! layers, a chunked upload, annotations, tags, and a referrer attached with `subject`
//! that the referrers API then lists.

use std::process::Command;

use conformance::*;

const SCRIPT: &str = r#"
import hashlib, json, os, sys
import oras.client

host, work = sys.argv[1], sys.argv[2]
c = oras.client.OrasClient(hostname=host, insecure=True)
os.chdir(work)
with open("notes.txt", "w") as f:
    f.write("drydock artifact notes\n")
with open("payload.bin", "wb") as f:
    f.write(os.urandom(3 * 1024 * 1024 + 17))
with open("big.bin", "wb") as f:
    f.write(os.urandom(9 * 1024 * 1024 + 5))

r = c.push(target=f"{host}/oras/art:v1", files=["notes.txt", "payload.bin"],
           manifest_annotations={"org.example.build": "42"}, disable_path_validation=True)
assert r.status_code == 201, r.text
r = c.push(target=f"{host}/oras/art:chunked", files=["big.bin"], do_chunked=True,
           chunk_size=2 * 1024 * 1024, disable_path_validation=True)
assert r.status_code == 201, r.text
with open("sig.txt", "w") as f:
    f.write("signature of v1\n")
# The subject descriptor names the exact bytes the registry serves for v1.
import requests, oras.oci
raw = requests.get(f"http://{host}/v2/oras/art/manifests/v1",
                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
assert raw.status_code == 200, raw.text
subject = oras.oci.Subject(mediaType=raw.headers["Content-Type"],
                           digest="sha256:" + hashlib.sha256(raw.content).hexdigest(),
                           size=len(raw.content))
assert subject.digest == raw.headers["Docker-Content-Digest"]
r = c.push(target=f"{host}/oras/art:sig", files=["sig.txt"], subject=subject,
           disable_path_validation=True)
assert r.status_code == 201, r.text

out = {}
for tag in ["v1", "chunked", "sig"]:
    d = os.path.join(work, "out-" + tag)
    files = c.pull(target=f"{host}/oras/art:{tag}", outdir=d)
    out[tag] = {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
src = {n: hashlib.sha256(open(n, "rb").read()).hexdigest() for n in ["notes.txt", "payload.bin", "big.bin", "sig.txt"]}
out["src"] = src
out["tags"] = sorted(c.get_tags(f"{host}/oras/art"))
out["v1_manifest"] = c.get_manifest(f"{host}/oras/art:v1")
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_and_pulls_artifacts_and_referrers() {
    let s = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("oras_e2e.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let host = s.host();
    let wd = work.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        // scripts/test.sh installs oras-py into a virtual environment and names its
        // interpreter here; without it, the python3 on PATH must have oras.
        let python = std::env::var("DRYDOCK_PYTHON").unwrap_or_else(|_| "python3".into());
        Command::new(python)
            .arg(&script)
            .arg(&host)
            .arg(&wd)
            .output()
            .expect("python3 must be installed")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'oras'"),
        "oras-py is not installed: run scripts/test.sh (it makes a virtual environment with \
         oras and sets DRYDOCK_PYTHON), or set DRYDOCK_PYTHON to a python that has it"
    );
    assert!(out.status.success(), "oras script failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let src = &v["src"];
    assert_eq!(v["v1"]["notes.txt"], src["notes.txt"]);
    assert_eq!(v["v1"]["payload.bin"], src["payload.bin"]);
    assert_eq!(v["chunked"]["big.bin"], src["big.bin"]);
    assert_eq!(v["sig"]["sig.txt"], src["sig.txt"]);
    assert_eq!(v["tags"], serde_json::json!(["chunked", "sig", "v1"]));
    assert_eq!(v["v1_manifest"]["annotations"]["org.example.build"], "42");

    // The referrer pushed with `subject` is listed for v1.
    let c = client();
    let r = c
        .get(s.url("/v2/oras/art/manifests/v1"))
        .send()
        .await
        .unwrap();
    let v1 = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = c
        .get(s.url("/v2/oras/art/manifests/sig"))
        .send()
        .await
        .unwrap();
    let sig = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let refs: serde_json::Value = c
        .get(s.url(&format!("/v2/oras/art/referrers/{v1}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = refs["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![sig.as_str()]);
}
