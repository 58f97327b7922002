//! The operational surface of a running server, driven as an operator would: the binary
//! refusing a configuration it cannot honour.

use std::process::Command;

use conformance::*;

/// A Distribution config that asks for a pull-through cache stops `registry serve`
/// with exit status 1 and one line naming the key, from the file and the environment
/// alike; listed under `ignore`, it starts.
#[test]
fn serve_refuses_a_section_it_cannot_honour_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    let root = dir.path().join("root");
    let base = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    );
    let run = |yaml: &str, env: &[(&str, &str)]| {
        std::fs::write(&cfg, yaml).unwrap();
        let mut cmd = Command::new(registry_binary());
        cmd.arg("serve")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for (yaml, env) in [
        (
            format!("{base}proxy:\n  remoteurl: https://registry-1.docker.io\n"),
            vec![],
        ),
        (
            base.clone(),
            vec![("REGISTRY_PROXY_REMOTEURL", "https://registry-1.docker.io")],
        ),
    ] {
        let out = run(&yaml, &env);
        assert_eq!(out.status.code(), Some(1), "it started: {yaml} {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("Error: configuration key proxy: "),
            "{stderr}"
        );
        assert!(!root.exists(), "a refused configuration created the root");
    }
    // Listed under ignore, it starts (and says so); ServerProcess waits for it to listen.
    std::fs::write(
        &cfg,
        format!("{base}proxy:\n  remoteurl: https://registry-1.docker.io\nignore: [proxy]\n"),
    )
    .unwrap();
    let server = ServerProcess::spawn(&cfg);
    drop(server);
}
