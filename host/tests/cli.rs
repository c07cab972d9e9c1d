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

    // `show` reads the store alone (the sim is gone): mirror, link and the
    // account as provisor last saw or set it.
    let created = report["plan"]["actions"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x.to_string().contains("\"kind\":\"create\""))
        })
        .and_then(|a| a["upn"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("a created user in {report}"));
    let show = provisor()
        .args(["show", "--config"])
        .arg(&path)
        .arg(&created)
        .output()
        .expect("show runs");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(text.contains(&created), "{text}");
    assert!(text.contains("linked to:  Salesforce user 005"), "{text}");
    assert!(text.contains("\"IsActive\": true"), "{text}");
    assert!(
        text.contains(&format!("\"Username\": \"{created}\"")),
        "{text}"
    );
    let missing = provisor()
        .args(["show", "--config"])
        .arg(&path)
        .arg("nobody@nowhere.example")
        .output()
        .expect("show runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody@nowhere.example"));

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

fn copy_pack(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("tests")).expect("mkdir");
    for f in ["pack.toml", "main.rhai", "tests/cases.json"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

#[test]
fn rules_check_test_and_eval() {
    let pack = repo().join("rules/gallery-defaults");
    let out = provisor()
        .args(["rules", "check"])
        .arg(&pack)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ok (Rhai pack gallery-defaults@0.1.0, contract 0.4)")
    );

    let out = provisor()
        .args(["rules", "test"])
        .arg(&pack)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("5 cases, 5 passed, 0 failed"), "{stdout}");

    // A wrong expectation fails, naming the case and the field.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("pack");
    copy_pack(&pack, &copy);
    let cases = std::fs::read_to_string(copy.join("tests/cases.json")).expect("read");
    let cases = cases.replacen("\"Vance\"", "\"Vanse\"", 1);
    std::fs::write(copy.join("tests/cases.json"), cases).expect("write");
    let out = provisor()
        .args(["rules", "test"])
        .arg(&copy)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL    member of SF-Sales gets Standard User")
            && stdout.contains("fields.LastName: expected \"Vanse\", got \"Vance\""),
        "{stdout}"
    );

    // A script that does not compile is refused at check, named.
    std::fs::write(copy.join("main.rhai"), "fn map(user, settings) { let = ; }").expect("write");
    let out = provisor()
        .args(["rules", "check"])
        .arg(&copy)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rule pack gallery-defaults@0.1.0: does not load"),
        "{stderr}"
    );

    let out = provisor()
        .args(["rules", "eval"])
        .arg(&pack)
        .args([
            "--user",
            r#"{"id":"u1","userPrincipalName":"pat@contoso.com","mail":"pat@contoso.com","surname":"Pat","accountEnabled":true}"#,
            "--group",
            "SF-Sales",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["profile"], "Standard User");
    assert_eq!(v["fields"]["Username"], "pat@contoso.com");
    assert_eq!(v["active"], true);
}

#[test]
fn compiled_components_are_cached_on_disk_by_content() {
    let pack = repo().join("rules/gallery-defaults-wasm");
    let cache = tempfile::tempdir().expect("temp dir");
    let files = |dir: &std::path::Path| -> usize {
        fn walk(d: &std::path::Path) -> usize {
            std::fs::read_dir(d)
                .map(|r| {
                    r.filter_map(Result::ok)
                        .map(|e| {
                            let p = e.path();
                            if p.is_dir() { walk(&p) } else { 1 }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(dir)
    };
    let out = provisor()
        .env("PROVISOR_CACHE_DIR", cache.path())
        .args(["rules", "check"])
        .arg(&pack)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files(cache.path()) > 0, "the compiled component is on disk");
}

#[test]
fn every_rhai_pack_shipped_in_rules_passes_its_own_cases() {
    for pack in ["rules/gallery-defaults", "rules/group-mapping"] {
        let out = provisor()
            .args(["rules", "test"])
            .arg(repo().join(pack))
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{pack}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `provisor status` lists a leaver whose deactivation Salesforce refused,
/// frozen but active, with the blocker and where to fix it; `provisor
/// leavers retry` re-arms it by UPN and says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_blocked_leavers_and_leavers_retry_rearms_them() {
    use provisor::sim::{Sim, SimOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Sim::new(SimOptions {
        users: 20,
        seed: 45,
        ..Default::default()
    });
    let running = sim
        .serve(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("sim");
    let store = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let path = dir.path().join("provisor.toml");
    std::fs::write(
        &path,
        running.config_toml(
            &repo().join("rules/gallery-defaults").display().to_string(),
            &store,
        ),
    )
    .expect("write");
    let run = |args: &[&str]| {
        let out = provisor()
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    tokio::task::block_in_place(|| run(&["sync", "--once"]));
    let (entra_id, upn) = sim
        .graph()
        .users()
        .find(|u| u.props.get("accountEnabled") == Some(&serde_json::json!(true)))
        .map(|u| {
            (
                u.id.clone(),
                u.props["userPrincipalName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .expect("a user");
    let sf = sim.salesforce().users_where("Username", &upn)[0]["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    sim.salesforce().set_deactivation_blocker(
        &sf,
        Some("You cannot deactivate this user. You cannot deactivate a user who is the default owner of cases"),
    );
    sim.graph().soft_delete_user(&entra_id).expect("leaver");
    tokio::task::block_in_place(|| run(&["sync", "--once"]));

    let status = tokio::task::block_in_place(|| run(&["status"]));
    for want in [
        "frozen but still active (each holds a licence seat): 1",
        upn.as_str(),
        "blocked: default_case_owner",
        "Support Settings",
        "(or now: provisor leavers retry)",
        "(completed)",
    ] {
        assert!(status.contains(want), "{want:?} in\n{status}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&tokio::task::block_in_place(|| run(&["status", "--json"])))
            .expect("JSON");
    assert_eq!(json["frozen_but_active"][0]["sf_id"], serde_json::json!(sf));
    assert!(json["frozen_but_active"][0]["blocker"]["next_try"].is_string());

    let retry = tokio::task::block_in_place(|| run(&["leavers", "retry", &upn]));
    assert!(retry.contains("1 blocked deactivation"), "{retry}");
    let json: serde_json::Value =
        serde_json::from_str(&tokio::task::block_in_place(|| run(&["status", "--json"])))
            .expect("JSON");
    assert!(json["frozen_but_active"][0]["blocker"]["next_try"].is_null());
    // Fixed in the org: the next cycle deactivates, and the seat shows as freed.
    sim.salesforce().set_deactivation_blocker(&sf, None);
    tokio::task::block_in_place(|| run(&["sync", "--once"]));
    let status = tokio::task::block_in_place(|| run(&["status"]));
    assert!(
        status.contains("frozen but still active (each holds a licence seat): 0"),
        "{status}"
    );
    let freed = status
        .split("seats freed by deactivations")
        .nth(1)
        .unwrap_or_default();
    assert!(freed.contains("1  Salesforce  (user licence)"), "{status}");
    let audit = tokio::task::block_in_place(|| run(&["audit", "tail", "-n", "200"]));
    assert!(audit.contains("leaver.retry_requested"), "{audit}");
}
