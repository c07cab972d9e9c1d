//! Rule packs at run time: hot reload, gated by the pack's own test cases.

use provisor::engine::Quiet;
use provisor::rules::Reload;
use provisor_e2e::{engine, repo_root, start_sim};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pack_is_reloaded_only_when_it_loads_and_passes_its_tests() {
    let running = start_sim(10, 71).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    copy_dir(&repo_root().join("rules/gallery-defaults"), &pack);
    let engine = engine(&running, &pack, &dir.path().join("a.db")).await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(matches!(
        engine.reload_rules(false).await,
        Reload::Unchanged
    ));

    // A new version: replaces the running one.
    let manifest = std::fs::read_to_string(pack.join("pack.toml")).expect("manifest");
    std::fs::write(
        pack.join("pack.toml"),
        manifest.replace("version = \"0.1.0\"", "version = \"0.1.1\""),
    )
    .expect("write");
    match engine.reload_rules(false).await {
        Reload::Replaced { from, to, cases } => {
            assert_eq!(
                (from.as_str(), to.as_str(), cases),
                ("gallery-defaults@0.1.0", "gallery-defaults@0.1.1", 5)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.pack.get().id(), "gallery-defaults@0.1.1");

    // A version whose script does not compile: refused, 0.1.1 keeps running,
    // and it is not tried again until its files change.
    let script = std::fs::read_to_string(pack.join("main.rhai")).expect("script");
    std::fs::write(pack.join("main.rhai"), format!("{script}\nfn broken( {{")).expect("write");
    let refused = engine.reload_rules(false).await;
    assert!(
        matches!(&refused, Reload::Refused { running, error } if running == "gallery-defaults@0.1.1" && error.to_string().contains("does not load")),
        "{refused:?}"
    );
    assert!(matches!(
        engine.reload_rules(false).await,
        Reload::Unchanged
    ));
    assert_eq!(engine.pack.get().id(), "gallery-defaults@0.1.1");
    let r = engine
        .sync_once(&Quiet)
        .await
        .expect("the last good pack still syncs");
    assert_eq!(r.failed, 0);

    // A version that compiles but fails its own test cases: refused too.
    std::fs::write(
        pack.join("main.rhai"),
        script.replace("\"ISO-8859-1\"", "\"UTF-8\""),
    )
    .expect("write");
    let refused = engine.reload_rules(false).await;
    assert!(
        matches!(&refused, Reload::Refused { error, .. } if error.to_string().contains("fields.EmailEncodingKey")),
        "{refused:?}"
    );
    assert_eq!(engine.pack.get().id(), "gallery-defaults@0.1.1");

    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert_eq!(
        audit.iter().filter(|a| a.event == "rules.reloaded").count(),
        1
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.event == "rules.reload_failed")
            .count(),
        2
    );
}

#[test]
fn a_truncated_component_is_refused_at_load_naming_the_pack() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    copy_dir(&provisor_e2e::wasm_pack(), &pack);
    let wasm = pack.join("gallery_defaults.wasm");
    let bytes = std::fs::read(&wasm).expect("component");
    std::fs::write(&wasm, &bytes[..bytes.len() / 2]).expect("truncate");
    let e = provisor::rules::Pack::load(&pack)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("gallery-defaults-wasm@") && e.contains("not a valid component"),
        "{e}"
    );
}

/// The misbehaving component under one `mode`, as a pack in a temp dir.
fn misbehaving(mode: &str) -> (tempfile::TempDir, provisor::rules::Pack) {
    let fixture = repo_root().join("tests/fixtures/packs/misbehaving");
    assert!(
        fixture.join("misbehaving.wasm").is_file(),
        "run `cargo xtask plugins` (or `cargo xtask test`) first"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&fixture, dir.path());
    let manifest = std::fs::read_to_string(dir.path().join("pack.toml")).expect("manifest");
    std::fs::write(
        dir.path().join("pack.toml"),
        manifest.replace("\"mode\" = \"none\"", &format!("\"mode\" = \"{mode}\"")),
    )
    .expect("write");
    let pack = provisor::rules::Pack::load(dir.path()).expect("the component loads");
    (dir, pack)
}

#[test]
fn misbehaving_components_are_stopped_inside_their_limits() {
    let user = provisor::model::EntraUser {
        id: "u-1".into(),
        ..Default::default()
    };
    for (mode, expect) in [
        ("loop", "fuel"),
        ("recursion", "trapped"),
        ("memory", "trapped"),
        ("panic", "trapped"),
        ("huge-output", "invalid desired user"),
    ] {
        let (_dir, pack) = misbehaving(mode);
        let started = std::time::Instant::now();
        let e = pack.map(&user, &[]).expect_err(mode).to_string();
        assert!(
            e.contains("misbehaving@0.1.0") && e.contains("u-1") && e.contains(expect),
            "{mode}: {e}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{mode} took {:?}",
            started.elapsed()
        );
        // The host keeps serving: the same pack maps the next user.
        let (_dir, fine) = misbehaving("none");
        assert!(fine.map(&user, &[]).is_ok());
    }
}
