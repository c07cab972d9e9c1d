//! The `provisor` binary itself: config check errors, the printed sim
//! config, and `sim` + `sync --once` as two processes over loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn provisor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_provisor"))
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn config_check_names_the_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = provisor()
        .args(["sim", "--print-config", "--listen", "127.0.0.1:1"])
        .args([
            "--pack",
            &repo().join("rules/gallery-defaults").display().to_string(),
        ])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let good = String::from_utf8(out.stdout).expect("utf-8");
    let path = dir.path().join("good.toml");
    std::fs::write(&path, &good).expect("write");
    let ok = provisor()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = good.replace(
        "api_version = \"62.0\"",
        "api_version = \"62.0\"\napi_versoin = \"63.0\"",
    );
    let line = bad
        .lines()
        .position(|l| l.starts_with("api_versoin"))
        .expect("inserted")
        + 1;
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).expect("write");
    let out = provisor()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api_versoin")
            && err.contains(&format!("line {line}"))
            && err.contains("bad.toml"),
        "{err}"
    );

    let missing_env = good.replace(
        "client_secret = { value = \"sim-entra-secret\" }",
        "client_secret = { env = \"PROVISOR_TEST_SURELY_UNSET\" }",
    );
    let path = dir.path().join("env.toml");
    std::fs::write(&path, missing_env).expect("write");
    let out = provisor()
        .args(["config", "check"])
        .arg(&path)
        .env_remove("PROVISOR_TEST_SURELY_UNSET")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("entra.client_secret")
            && err.contains("PROVISOR_TEST_SURELY_UNSET"),
        "{err}"
    );
}

#[test]
fn sim_and_sync_once_as_separate_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Pick a free port, then let the sim bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut sim = provisor()
        .args(["sim", "--listen", &listen, "--users", "25"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim starts");
    let stdout = sim.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("sim prints its address");
    assert!(first.contains(&listen), "{first}");

    let store = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let cfg = provisor()
        .args([
            "sim",
            "--print-config",
            "--listen",
            &listen,
            "--store",
            &store,
            "--pack",
            &repo().join("rules/gallery-defaults").display().to_string(),
        ])
        .output()
        .expect("runs");
    let path = dir.path().join("provisor.toml");
    std::fs::write(&path, cfg.stdout).expect("write");

    let run = |extra: &[&str]| {
        provisor()
            .args(["sync", "--once", "--config"])
            .arg(&path)
            .args(extra)
            .output()
            .expect("sync runs")
    };
    let first = run(&["--json"]);
    let _ = sim.kill();
    let report: serde_json::Value = serde_json::from_slice(&first.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&first.stderr)));
    assert!(first.status.success());
    assert!(report["created"].as_u64().unwrap_or(0) > 15, "{report}");
    assert_eq!(report["failed"], 0);
    let _ = sim.wait();

    // The sim is gone: the next sync names the endpoint it cannot reach.
    let out = provisor()
        .args(["sync", "--once", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach http://{listen}/")),
        "{err}"
    );
}
