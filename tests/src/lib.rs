//! Helpers for the end-to-end tests: start the emulators on loopback and
//! build a real engine pointed at them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use provisor::cli::engine_from_config;
use provisor::config::Config;
use provisor::engine::Engine;
use provisor::sim::{RunningSim, Sim, SimOptions};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The Rhai gallery pack.
pub fn rhai_pack() -> PathBuf {
    repo_root().join("rules/gallery-defaults")
}

/// The WASM gallery pack; fails loudly when the component was not built.
pub fn wasm_pack() -> PathBuf {
    let dir = repo_root().join("rules/gallery-defaults-wasm");
    assert!(
        dir.join("gallery_defaults.wasm").is_file(),
        "{} is missing: run `cargo xtask plugins` (or `cargo xtask test`)",
        dir.join("gallery_defaults.wasm").display()
    );
    dir
}

/// Emulators with a generated tenant, listening on a free loopback port.
pub async fn start_sim(users: usize, seed: u64) -> RunningSim {
    let sim = Sim::new(SimOptions {
        users,
        seed,
        ..Default::default()
    });
    sim.serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the emulators bind a loopback port")
}

/// The config a sim prints, for a pack and a store file; `edit` may change it.
pub fn config_for(
    running: &RunningSim,
    pack: &Path,
    store: &Path,
    edit: impl FnOnce(&mut Config),
) -> Config {
    let url = format!("sqlite://{}?mode=rwc", store.display());
    let mut cfg = Config::parse(&running.config_toml(&pack.display().to_string(), &url))
        .expect("the sim prints a valid config");
    // The whole suite can run with large-cycle chunking forced on small
    // tenants (`PROVISOR_TEST_PLAN_CHUNK=7 cargo test`); a test's own edit
    // still wins.
    if let Some(n) = std::env::var("PROVISOR_TEST_PLAN_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.sync.plan_chunk_users = n;
    }
    edit(&mut cfg);
    cfg
}

/// A real engine against the sim.
pub async fn engine(running: &RunningSim, pack: &Path, store: &Path) -> Engine {
    engine_with(running, pack, store, |_| {}).await
}

/// A real engine against the sim, with config changes.
pub async fn engine_with(
    running: &RunningSim,
    pack: &Path,
    store: &Path,
    edit: impl FnOnce(&mut Config),
) -> Engine {
    let cfg = config_for(running, pack, store, edit);
    engine_from_config(&cfg)
        .await
        .expect("engine builds from the sim's config")
}

/// Approves every held adoption (downgrades of existing Salesforce users
/// matched for the first time), as an operator would with `provisor review
/// link`, and returns how many there were.
pub async fn approve_adoptions(engine: &Engine) -> usize {
    let reviews = engine.store.reviews().await.expect("reviews");
    let mut n = 0;
    for r in reviews
        .into_iter()
        .filter(|r| r.status == "open" && r.reason.starts_with("adoption:"))
    {
        let sf = r.candidates.first().cloned().expect("the adopted account");
        engine
            .store
            .decide_review(&r.entra_id, Some(&sf))
            .await
            .expect("approve");
        n += 1;
    }
    n
}

/// Copies a directory tree (a rule pack to edit in a test).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let p = e.expect("entry").path();
        let dest = to.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy");
        }
    }
}

/// The details of every audit row of `event`, oldest first.
pub async fn audit_details(engine: &Engine, event: &str) -> Vec<serde_json::Value> {
    engine
        .store
        .audit_rows(None)
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.event == event)
        .map(|r| r.detail)
        .collect()
}
