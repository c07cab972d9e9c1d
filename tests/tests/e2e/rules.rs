//! Rule packs at run time: hot reload, gated by the pack's own test cases.

use provisor::engine::Quiet;
use provisor::rules::Reload;
use provisor_e2e::{copy_dir, engine, repo_root, start_sim};

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
    // And counted for monitoring.
    let metrics = engine.metrics.render();
    assert!(
        metrics.contains("provisor_rule_reloads_total{outcome=\"refused\"} 2")
            && metrics.contains("provisor_rule_reloads_total{outcome=\"replaced\"} 1"),
        "{metrics}"
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
    let e = load_error(&pack);
    assert!(
        e.contains("gallery-defaults-wasm@") && e.contains("not a valid component"),
        "{e}"
    );
}

/// A copy of the pack in `src` (under the repository) with `from` in its
/// `pack.toml` replaced by `to`.
fn edited_pack(src: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&repo_root().join(src), dir.path());
    let manifest = std::fs::read_to_string(dir.path().join("pack.toml")).expect("manifest");
    assert!(manifest.contains(from), "{src}: no {from:?} in {manifest}");
    std::fs::write(dir.path().join("pack.toml"), manifest.replace(from, to)).expect("write");
    dir
}

/// Why the pack in `dir` does not load; empty if it does.
fn load_error(dir: &std::path::Path) -> String {
    provisor::rules::Pack::load(dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

const MISBEHAVING: &str = "tests/fixtures/packs/misbehaving";

/// The misbehaving component's pack with `mode` set, in a temp dir.
fn misbehaving_dir(mode: &str) -> tempfile::TempDir {
    assert!(
        repo_root()
            .join(MISBEHAVING)
            .join("misbehaving.wasm")
            .is_file(),
        "run `cargo xtask plugins` (or `cargo xtask test`) first"
    );
    edited_pack(
        MISBEHAVING,
        "\"mode\" = \"none\"",
        &format!("\"mode\" = \"{mode}\""),
    )
}

/// The misbehaving component under one `mode`, loaded.
fn misbehaving(mode: &str) -> (tempfile::TempDir, provisor::rules::Pack) {
    let dir = misbehaving_dir(mode);
    let pack = provisor::rules::Pack::load(dir.path()).expect("the component loads");
    (dir, pack)
}

/// `configure` runs at load: a component that refuses its settings refuses
/// the pack then, with its reason, naming the pack and the export.
#[test]
fn a_component_refusing_its_settings_is_refused_at_load() {
    let e = load_error(misbehaving_dir("bad-settings").path());
    assert!(
        e.contains("misbehaving@0.1.0")
            && e.contains("configure")
            && e.contains("refused its settings")
            && e.contains("bad-settings"),
        "{e}"
    );

    // The round-robin example checks its own settings the same way: an
    // object with both a team and a queue is ambiguous.
    let rr = edited_pack(
        "rules/round-robin",
        "[settings.queues]\n",
        "[settings.queues]\n\"Opportunity\" = \"Sales_Leads\"\n",
    );
    let e = load_error(rr.path());
    assert!(
        e.contains("round-robin@") && e.contains("Opportunity has both a team"),
        "{e}"
    );
    // Unchanged, it loads.
    assert!(provisor::rules::Pack::load(&repo_root().join("rules/round-robin")).is_ok());

    // The host API answers only `log` in configure: what an instance keeps
    // must not depend on when or for whom it was made.
    let e = load_error(misbehaving_dir("configure-host").path());
    assert!(
        e.contains("misbehaving@0.1.0") && e.contains("clock is not available in configure"),
        "{e}"
    );
}

/// Both gallery packs refuse a group mapped to an empty profile at load, in
/// their `configure`: they must agree on what they accept, as on what they
/// map.
#[test]
fn both_gallery_packs_refuse_an_empty_profile_at_load() {
    for pack in ["rules/gallery-defaults", "rules/gallery-defaults-wasm"] {
        let dir = edited_pack(
            pack,
            "\"SF-Sales\" = \"Standard User\"",
            "\"SF-Sales\" = \" \"",
        );
        let e = load_error(dir.path());
        assert!(
            e.contains("gallery-defaults")
                && e.contains("refused its settings")
                && e.contains("SF-Sales")
                && e.contains("empty profile"),
            "{pack}: {e}"
        );
    }
}

/// Instances are reused from user to user only while that cannot change a
/// result: a component that remembers earlier users is caught the first
/// time a reused instance answers differently from a fresh one, and from
/// then on every user gets a fresh instance.
#[test]
fn a_component_that_remembers_earlier_users_gets_fresh_instances() {
    let (_dir, pack) = misbehaving("stateful");
    for i in 0..40 {
        let user = provisor::model::EntraUser {
            id: format!("u-{i}"),
            ..Default::default()
        };
        let d = pack.map(&user, &[]).expect("maps");
        assert_eq!(
            d.fields["LastName"],
            provisor::model::FieldValue::Text("seen 1".into()),
            "user {i} must get what a fresh instance gives"
        );
    }
}

/// What a component prints goes to the host's log, tagged with the pack
/// and the user, never to the host's own stdout.
#[test]
fn guest_output_goes_to_the_log() {
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Captured(sink.clone()))
        .with_ansi(false)
        .finish();
    let (_dir, pack) = misbehaving("print");
    tracing::subscriber::with_default(subscriber, || {
        for id in ["u-1", "u-2"] {
            let user = provisor::model::EntraUser {
                id: id.into(),
                ..Default::default()
            };
            pack.map(&user, &[]).expect("maps");
        }
    });
    let log = String::from_utf8(buf.lock().expect("log").clone()).expect("utf-8");
    for id in ["u-1", "u-2"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("hello from the guest for {id}"))
                    && l.contains("misbehaving@0.1.0")
                    && l.contains("stdout")),
            "{log}"
        );
    }
    assert!(
        log.contains("a warning from the guest") && log.contains("stderr"),
        "{log}"
    );
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
        ("huge-output", "5001 fields"),
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

fn sf_user(sim: &provisor::sim::Sim, fields: &[(&str, &str)]) -> String {
    let mut org = sim.salesforce();
    let profile = org.profile_id("Standard User").expect("profile");
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("LastName", "Existing"),
        ("Alias", "exist"),
        ("TimeZoneSidKey", "GMT"),
        ("LocaleSidKey", "en_US"),
        ("EmailEncodingKey", "UTF-8"),
        ("LanguageLocaleKey", "en_US"),
    ]
    .into_iter()
    .chain(fields.iter().copied())
    {
        m.insert(k.into(), serde_json::json!(v));
    }
    m.insert("ProfileId".into(), serde_json::json!(profile));
    org.insert_raw("User", m)
}

/// The pack decides scope and how to match: an employee number finds an
/// account whose Username differs; guests are not managed; keys that point
/// at different accounts stop the user for review, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pack_decides_scope_and_match_keys() {
    use serde_json::{Map, Value, json};
    let running = start_sim(30, 72).await;
    let sim = running.sim.clone();
    let members: Vec<(String, String)> = sim
        .graph()
        .users()
        .filter(|u| {
            u.removed.is_none()
                && u.props.get("accountEnabled") == Some(&json!(true))
                && u.props.get("userType") == Some(&json!("Member"))
        })
        .filter_map(|u| {
            Some((
                u.id.clone(),
                u.props.get("userPrincipalName")?.as_str()?.to_string(),
            ))
        })
        .filter(|(_, upn)| sim.salesforce().users_where("Username", upn).is_empty())
        .take(2)
        .collect();
    let guests = sim
        .graph()
        .users()
        .filter(|u| u.props.get("userType") == Some(&json!("Guest")) && u.removed.is_none())
        .count();
    assert!(guests > 0 && members.len() == 2);
    // Member 0: an account with their employee number but another Username.
    let mut m = Map::new();
    m.insert("employeeId".into(), json!("E-777"));
    sim.graph().update_user(&members[0].0, m).expect("update");
    let by_number = sf_user(
        &sim,
        &[
            ("Username", "old.account@contoso-sim.com"),
            ("Email", "old.account@contoso-sim.com"),
            ("EmployeeNumber", "E-777"),
        ],
    );
    // Member 1: the employee number points at one account, the Username at
    // another.
    let mut m = Map::new();
    m.insert("employeeId".into(), json!("E-888"));
    sim.graph().update_user(&members[1].0, m).expect("update");
    let a = sf_user(
        &sim,
        &[
            ("Username", "someone.else@contoso-sim.com"),
            ("Email", "someone.else@contoso-sim.com"),
            ("EmployeeNumber", "E-888"),
        ],
    );
    let b = sf_user(
        &sim,
        &[("Username", &members[1].1), ("Email", "b@contoso-sim.com")],
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(
        &running,
        &repo_root().join("tests/fixtures/packs/keys-and-scope"),
        &dir.path().join("a.db"),
    )
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    let first_created = r.created;

    let link = r.plan.actions.iter().find(|x| x.entra_id == members[0].0);
    assert!(
        matches!(link.map(|x| &x.kind), Some(provisor::engine::plan::ActionKind::Link { matched_by }) if matched_by == "EmployeeNumber"),
        "{}",
        r.plan.render()
    );
    assert_eq!(link.and_then(|x| x.sf_id.clone()), Some(by_number.clone()));
    // Matched, not created again: the old account now carries the UPN.
    let rows: Vec<String> = sim
        .salesforce()
        .users_where("Username", &members[0].1)
        .iter()
        .filter_map(|u| u["Id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(rows, vec![by_number]);
    let review = r
        .waiting_for
        .iter()
        .find(|f| f.contains(&members[1].1))
        .cloned()
        .unwrap_or_default();
    assert!(
        review.contains(&format!(
            "EmployeeNumber matches {a} but Username matches {b}"
        )),
        "{:?}",
        r.waiting_for
    );
    assert!(
        !r.plan.actions.iter().any(|x| x.entra_id == members[1].0),
        "nothing planned for a user under review"
    );
    // The review queue holds it with the evidence; the next cycle still
    // writes nothing for it, and does not count attempts.
    let queued = engine.store.review(&members[1].0).await.expect("queued");
    assert_eq!(queued.status, "open");
    assert_eq!(queued.candidates, vec![a.clone(), b.clone()]);
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert!(!r.plan.actions.iter().any(|x| x.entra_id == members[1].0));
    assert!(engine.store.dead_letters().await.expect("dead").is_empty());
    let e = engine
        .store
        .review("no-such-user")
        .await
        .expect_err("unknown")
        .to_string();
    assert!(e.contains("no-such-user"), "{e}");
    // An operator links it to the Username's account: managed from then on.
    engine
        .store
        .decide_review(&members[1].0, Some(&b))
        .await
        .expect("link");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(engine.store.links().await.expect("links")[&members[1].0], b);
    assert_eq!(
        engine.store.review(&members[1].0).await.expect("r").status,
        "linked"
    );
    // No guest was created.
    let created_guests = sim
        .salesforce()
        .rows("User")
        .filter(|u| {
            u.get("Username")
                .and_then(Value::as_str)
                .is_some_and(|n| n.contains("#EXT#"))
        })
        .count();
    assert_eq!(created_guests, 0);
    assert!(first_created > 5);
}

/// A new version of the rules plans every user again (as Entra does a full
/// sync after a mapping change); unchanged rules plan only what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rules_replan_every_user() {
    let running = start_sim(25, 74).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    copy_dir(&repo_root().join("rules/gallery-defaults"), &pack);
    let engine = engine(&running, &pack, &dir.path().join("a.db")).await;
    let first = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(first.failed, 0);
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.users_considered, 0, "nothing changed");

    let manifest = std::fs::read_to_string(pack.join("pack.toml")).expect("manifest");
    std::fs::write(
        pack.join("pack.toml"),
        manifest.replace("version = \"0.1.0\"", "version = \"0.2.0\""),
    )
    .expect("write");
    assert!(matches!(
        engine.reload_rules(false).await,
        Reload::Replaced { .. }
    ));
    let writes = running.sim.stats().sf_write_calls;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(
        r.users_considered, first.users_considered,
        "everyone re-planned"
    );
    assert_eq!(
        running.sim.stats().sf_write_calls,
        writes,
        "same mapping: nothing to write"
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(audit.iter().any(|a| a.event == "rules.replan_all"));
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.users_considered, 0, "and once only");
}
