//! kill -9 during apply: the `provisor` binary aborts (no cleanup, like
//! SIGKILL) at each step of apply, is run again, and must end in the same
//! Salesforce state as a run that was never interrupted: no duplicate
//! users, nothing lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

use provisor::sim::{RunningSim, Sim, SimOptions};

const USERS: usize = 80;
const SEED: u64 = 17;

fn provisor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_provisor"))
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start(rt: &tokio::runtime::Runtime) -> RunningSim {
    rt.block_on(async {
        Sim::new(SimOptions {
            users: USERS,
            seed: SEED,
            ..Default::default()
        })
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("sim binds")
    })
}

/// A config for the sim: small batches, one call in flight, so a crash
/// lands between batches and inside one.
fn config(running: &RunningSim, dir: &std::path::Path) -> std::path::PathBuf {
    let store = format!("sqlite://{}?mode=rwc", dir.join("p.db").display());
    let text = running.config_toml(
        &repo().join("rules/gallery-defaults").display().to_string(),
        &store,
    );
    let mut cfg = provisor::config::Config::parse(&text).expect("sim config parses");
    cfg.sync.batch_size = 10;
    cfg.sync.concurrency = 1;
    let path = dir.join("provisor.toml");
    std::fs::write(&path, toml::to_string(&cfg).expect("serialises")).expect("write");
    path
}

fn sync(config: &std::path::Path, crash_at: Option<&str>) -> std::process::Output {
    let mut c = provisor();
    c.args(["sync", "--once", "--config"]).arg(config);
    if let Some(p) = crash_at {
        c.env("PROVISOR_FAULT_CRASH_AT", p);
    }
    c.output().expect("provisor runs")
}

/// Salesforce's users as (Username -> (IsActive, ProfileId, FirstName)),
/// and how many rows each Username has.
fn state(running: &RunningSim) -> (BTreeMap<String, String>, usize) {
    let org = running.sim.salesforce();
    let mut out = BTreeMap::new();
    let mut rows = 0;
    for u in org.rows("User") {
        rows += 1;
        let name = u["Username"].as_str().unwrap_or_default().to_lowercase();
        out.insert(
            name,
            format!("{} {} {}", u["IsActive"], u["ProfileId"], u["FirstName"]),
        );
    }
    (out, rows)
}

#[test]
fn a_crash_at_any_step_of_apply_resumes_without_duplicates() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // The reference: one uninterrupted sync.
    let reference = start(&rt);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = sync(&config(&reference, dir.path()), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (want, want_rows) = state(&reference);
    assert_eq!(want.len(), want_rows);
    assert!(want.len() > USERS / 2);

    for point in ["before_send", "after_send", "mid_batch"] {
        let running = start(&rt);
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(&running, dir.path());
        let crashed = sync(&cfg, Some(point));
        assert!(
            !crashed.status.success(),
            "{point}: the run must have crashed"
        );
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(point),
            "{point}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let (partial, _) = state(&running);
        assert!(partial.len() < want.len(), "{point}: stopped part way");

        let resumed = sync(&cfg, None);
        assert!(
            resumed.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let (got, rows) = state(&running);
        assert_eq!(rows, got.len(), "{point}: a Username exists twice");
        assert_eq!(got, want, "{point}: not the uninterrupted run's state");

        // And a further run has nothing left to do.
        let again = sync(&cfg, None);
        assert!(again.status.success());
        assert_eq!(state(&running).0, want, "{point}");
    }
}
