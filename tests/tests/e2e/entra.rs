//! The Entra source against the Graph emulator: resyncs that deprovision
//! nobody present, throttling and 5xx storms, nested-group scope,
//! extension attributes, and a property test of the mirror.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use provisor::config::{ScopeConfig, ScopeMode};
use provisor::engine::Quiet;
use provisor::sim::{Faults, Sim};
use provisor_e2e::{audit_details, engine_with, rhai_pack, start_sim};
use serde_json::{Map, Value, json};

fn fast(cfg: &mut provisor::config::Config) {
    cfg.sync.retries = 3;
    cfg.sync.retry_base_ms = 2;
    cfg.entra.page_size = 40;
}

fn active_usernames(sim: &Sim) -> BTreeSet<String> {
    sim.salesforce()
        .rows("User")
        .filter(|u| u["IsActive"] == json!(true))
        .filter_map(|u| u["Username"].as_str().map(str::to_lowercase))
        .collect()
}

fn live_enabled_upns(sim: &Sim) -> BTreeSet<String> {
    sim.graph()
        .users()
        .filter(|u| {
            u.removed.is_none() && u.props.get("accountEnabled") == Some(&Value::Bool(true))
        })
        .filter_map(|u| u.props["userPrincipalName"].as_str().map(str::to_lowercase))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_in_mid_round_resyncs_and_deactivates_only_those_gone() {
    let running = start_sim(200, 21).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;
    engine.sync_once(&Quiet).await.expect("initial sync");

    // 120 changes (3 pages), and 3 users deleted for good.
    let ids: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .map(|u| u.id.clone())
        .collect();
    for id in &ids[10..130] {
        let mut m = Map::new();
        m.insert("surname".into(), json!("Resynced"));
        sim.graph().update_user(id, m).expect("update");
    }
    let gone: Vec<String> = ids[0..3].to_vec();
    let gone_upns: BTreeSet<String> = gone
        .iter()
        .filter_map(|id| {
            sim.graph()
                .user(id)
                .and_then(|u| u.props["userPrincipalName"].as_str().map(str::to_lowercase))
        })
        .collect();
    for id in &gone {
        sim.graph().hard_delete_user(id).expect("delete");
    }
    // The reset happens after the first page of the incremental round.
    sim.set_faults(Faults {
        graph_gone_after_pages: Some(1),
        graph_fault_resource: Some("users".into()),
        ..Default::default()
    });
    let r = engine
        .sync_once(&Quiet)
        .await
        .expect("the cycle recovers by resyncing");
    assert_eq!(r.deactivated, 3, "{}", r.plan.render());
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(
        active_usernames(&sim).intersection(&gone_upns).count(),
        0,
        "the deleted users are deactivated"
    );
    let present = live_enabled_upns(&sim);
    assert!(
        present.is_subset(&active_usernames(&sim)),
        "nobody still present is deactivated"
    );
    assert_eq!(r.updated, 120, "the changes are applied too");
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.event == "entra.users.resync_started"),
        "{:?}",
        audit
            .iter()
            .map(|a| a.event.as_str())
            .collect::<BTreeSet<_>>()
    );

    // A reset before the deletions were ever reported: only the sweep
    // after the complete enumeration can find them.
    for id in &ids[140..142] {
        sim.graph().hard_delete_user(id).expect("delete");
    }
    sim.set_faults(Faults {
        graph_gone_next: 1,
        graph_fault_resource: Some("users".into()),
        ..Default::default()
    });
    let r = engine.sync_once(&Quiet).await.expect("resync");
    assert_eq!((r.swept, r.deactivated), (2, 2), "{}", r.plan.render());
    assert!(
        live_enabled_upns(&sim).is_subset(&active_usernames(&sim)),
        "nobody still present is deactivated"
    );
    let quiet = engine.sync_once(&Quiet).await.expect("quiet");
    assert!(quiet.plan.actions.is_empty(), "{}", quiet.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_delta_token_resyncs_without_deprovisioning() {
    let running = start_sim(80, 22).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let before = active_usernames(&sim);
    sim.graph().delta_token_ttl = std::time::Duration::ZERO;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = engine.sync_once(&Quiet).await.expect("resync");
    assert!(r.plan.actions.is_empty(), "{}", r.plan.render());
    assert_eq!(r.swept, 0);
    assert_eq!(active_usernames(&sim), before);
    let audit = engine.store.audit_rows(None).await.expect("audit");
    let started = audit
        .iter()
        .find(|a| a.event == "entra.users.resync_started")
        .expect("resync audited");
    assert!(
        started.detail["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP 400 syncStateNotFound"),
        "{}",
        started.detail
    );

    // Some tenants answer an expired token with 410 instead: same outcome.
    sim.graph().expired_token_gone = true;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = engine.sync_once(&Quiet).await.expect("resync after 410");
    assert!(r.plan.actions.is_empty(), "{}", r.plan.render());
    assert_eq!(active_usernames(&sim), before);
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(audit.iter().any(|a| {
        a.event == "entra.users.resync_started"
            && a.detail["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("HTTP 410")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_storms_slow_the_sync_but_lose_nothing() {
    let running = start_sim(150, 23).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.sync.retries = 6;
    })
    .await;
    sim.set_faults(Faults {
        throttle_rate: 0.3,
        throttle_retry_after_secs: 0.01,
        fail_rate: 0.1,
        ..Default::default()
    });
    let mut cycles = 0;
    loop {
        cycles += 1;
        assert!(cycles <= 30, "the storm never let a cycle finish");
        if engine.sync_once(&Quiet).await.is_ok()
            && engine.store.dirty_count().await.expect("count") == 0
        {
            break;
        }
    }
    let stats = sim.stats();
    sim.set_faults(Faults::default());
    assert!(
        stats.graph_calls > stats.graph_delta_pages,
        "throttled requests were retried"
    );
    assert_eq!(
        active_usernames(&sim)
            .intersection(&live_enabled_upns(&sim))
            .count(),
        live_enabled_upns(&sim).len(),
        "every enabled user provisioned"
    );
    let mut per_name: BTreeMap<String, usize> = BTreeMap::new();
    for u in sim.salesforce().rows("User") {
        *per_name
            .entry(u["Username"].as_str().unwrap_or_default().to_lowercase())
            .or_default() += 1;
    }
    assert!(per_name.values().all(|n| *n == 1), "no duplicates");
    let quiet = engine.sync_once(&Quiet).await.expect("calm");
    assert!(quiet.plan.actions.is_empty(), "{}", quiet.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_scope_follows_nested_membership_changes() {
    let running = start_sim(60, 24).await;
    let sim = running.sim.clone();
    // SF-Users (scoped) contains the nested group Contractors-Nested.
    let (scoped, nested, outsider) = {
        let mut t = sim.graph();
        let scoped = t.create_group("10000000-0000-4000-8000-000000000001", "SF-Users");
        let nested = t.create_group("10000000-0000-4000-8000-000000000002", "Contractors-Nested");
        let users: Vec<String> = t
            .users()
            .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
            .map(|u| u.id.clone())
            .take(6)
            .collect();
        for u in &users[0..3] {
            t.set_membership(&scoped, u, true).expect("member");
        }
        for u in &users[3..5] {
            t.set_membership(&nested, u, true).expect("member");
        }
        t.set_membership(&scoped, &nested, true).expect("nested");
        (scoped, nested, users[5].clone())
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.entra.scope = ScopeConfig {
            mode: ScopeMode::Groups,
            groups: vec!["SF-Users".into()],
            filters: vec![],
        };
    })
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(
        r.created + r.linked,
        5,
        "3 direct + 2 nested members in scope: {}",
        r.plan.render()
    );
    // Adding a user to the nested group brings it into scope...
    sim.graph()
        .set_membership(&nested, &outsider, true)
        .expect("add");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.created, 1, "{}", r.plan.render());
    // ...and unhooking the nested group takes its 3 members out (leavers).
    sim.graph()
        .set_membership(&scoped, &nested, false)
        .expect("unnest");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, 3, "{}", r.plan.render());
    assert!(
        r.plan
            .actions
            .iter()
            .all(|a| a.reason.contains("out of scope")),
        "{}",
        r.plan.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_attributes_reach_the_rules_and_scope() {
    let running = start_sim(20, 25).await;
    let sim = running.sim.clone();
    let ext = "extension_5f0c7a526a394e5b9d4b2b7f6b1f0a11_costCenter";
    let ids: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .map(|u| u.id.clone())
        .take(2)
        .collect();
    for id in &ids {
        let mut m = Map::new();
        m.insert(ext.into(), json!("CC-42"));
        sim.graph().update_user(id, m).expect("set extension");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.entra.extension_attributes = vec![ext.into()];
        c.entra.scope = ScopeConfig {
            mode: ScopeMode::All,
            groups: vec![],
            filters: vec![provisor::config::ScopeFilter {
                clauses: vec![provisor::config::ScopeClause {
                    attribute: ext.into(),
                    operator: provisor::config::ScopeOperator::Equals,
                    value: Some("CC-42".into()),
                }],
            }],
        };
    })
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(
        r.created + r.linked,
        2,
        "only the two CC-42 users are in scope: {}",
        r.plan.render()
    );
    let (mirror, _) = engine.store.mirror().await.expect("mirror");
    let with_ext = mirror
        .iter()
        .filter(|u| u.extensions.get(ext) == Some(&json!("CC-42")))
        .count();
    assert_eq!(with_ext, 2);
}

/// One step of a random tenant history.
#[derive(Debug, Clone)]
enum Step {
    Create(u8),
    Rename(u8),
    Toggle(u8),
    SoftDelete(u8),
    Restore(u8),
    HardDelete(u8),
    Join(u8, u8),
    Leave(u8, u8),
    Manager(u8, u8),
    NewGroup(u8),
    RenameGroup(u8),
    DeleteGroup(u8),
    Sync,
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Create),
        any::<u8>().prop_map(Step::Rename),
        any::<u8>().prop_map(Step::Toggle),
        any::<u8>().prop_map(Step::SoftDelete),
        any::<u8>().prop_map(Step::Restore),
        any::<u8>().prop_map(Step::HardDelete),
        (any::<u8>(), any::<u8>()).prop_map(|(g, u)| Step::Join(g, u)),
        (any::<u8>(), any::<u8>()).prop_map(|(g, u)| Step::Leave(g, u)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Manager(a, b)),
        any::<u8>().prop_map(Step::NewGroup),
        any::<u8>().prop_map(Step::RenameGroup),
        any::<u8>().prop_map(Step::DeleteGroup),
        Just(Step::Sync),
        Just(Step::Sync),
        Just(Step::Reset),
    ]
}

fn pick(v: &[String], i: u8) -> Option<&String> {
    (!v.is_empty()).then(|| &v[usize::from(i) % v.len()])
}

/// Applies one mutation; mutations the tenant refuses are skipped.
fn mutate(sim: &Sim, s: &Step, n: &mut usize) {
    let mut t = sim.graph();
    let live: Vec<String> = t
        .users()
        .filter(|u| u.removed.is_none())
        .map(|u| u.id.clone())
        .collect();
    let soft: Vec<String> = t
        .users()
        .filter(|u| u.removed == Some(provisor::model::Removal::SoftDeleted))
        .map(|u| u.id.clone())
        .collect();
    let groups: Vec<String> = t
        .groups()
        .filter(|g| !g.removed)
        .map(|g| g.id.clone())
        .collect();
    match s {
        Step::Create(x) => {
            *n += 1;
            let mut m = Map::new();
            m.insert(
                "userPrincipalName".into(),
                json!(format!("prop{n}.{x}@contoso-sim.com")),
            );
            m.insert("accountEnabled".into(), json!(x % 5 != 0));
            m.insert("surname".into(), json!(format!("S{x}")));
            let _ = t.create_user(&format!("20000000-0000-4000-8000-{n:012}"), m);
        }
        Step::Rename(i) => {
            if let Some(id) = pick(&live, *i) {
                let mut m = Map::new();
                m.insert(
                    "department".into(),
                    if i % 3 == 0 {
                        Value::Null
                    } else {
                        json!(format!("D{i}"))
                    },
                );
                let _ = t.update_user(id, m);
            }
        }
        Step::Toggle(i) => {
            if let Some(id) = pick(&live, *i).cloned() {
                let on = t
                    .user(&id)
                    .and_then(|u| u.props.get("accountEnabled").and_then(Value::as_bool))
                    .unwrap_or(true);
                let mut m = Map::new();
                m.insert("accountEnabled".into(), json!(!on));
                let _ = t.update_user(&id, m);
            }
        }
        Step::SoftDelete(i) => {
            if let Some(id) = pick(&live, *i) {
                let _ = t.soft_delete_user(id);
            }
        }
        Step::Restore(i) => {
            if let Some(id) = pick(&soft, *i) {
                let _ = t.restore_user(id);
            }
        }
        Step::HardDelete(i) => {
            if let Some(id) = pick(&live, *i).or_else(|| pick(&soft, *i)) {
                let _ = t.hard_delete_user(id);
            }
        }
        Step::Join(g, u) | Step::Leave(g, u) => {
            let join = matches!(s, Step::Join(..));
            // Every seventh join nests one group in another instead.
            let member = if join && u % 7 == 0 {
                pick(&groups, u / 7).cloned()
            } else {
                pick(&live, *u).cloned()
            };
            if let (Some(gid), Some(m)) = (pick(&groups, *g).cloned(), member) {
                let _ = t.set_membership(&gid, &m, join);
            }
        }
        Step::Manager(a, b) => {
            if let (Some(x), Some(y)) = (pick(&live, *a).cloned(), pick(&live, *b).cloned()) {
                let _ = t.set_manager(&x, if a % 4 == 0 { None } else { Some(&y) });
            }
        }
        Step::NewGroup(x) => {
            *n += 1;
            t.create_group(
                &format!("50000000-0000-4000-8000-{n:012}"),
                &format!("G{x}"),
            );
        }
        Step::RenameGroup(i) => {
            if let Some(g) = pick(&groups, *i) {
                let _ = t.rename_group(g, &format!("Renamed{i}"));
            }
        }
        Step::DeleteGroup(i) => {
            if let Some(g) = pick(&groups, *i) {
                let _ = t.delete_group(g);
            }
        }
        Step::Sync | Step::Reset => {}
    }
}

/// Live tenant users (id -> key properties) and direct memberships.
type View = (
    BTreeMap<String, (Option<String>, Option<bool>, Option<String>, Option<String>)>,
    BTreeSet<(String, String)>,
);

fn tenant_view(sim: &Sim) -> View {
    let t = sim.graph();
    let s = |u: &provisor::sim::graph::SimUser, k: &str| {
        u.props.get(k).and_then(Value::as_str).map(str::to_string)
    };
    let users = t
        .users()
        .filter(|u| u.removed.is_none())
        .map(|u| {
            (
                u.id.clone(),
                (
                    s(u, "userPrincipalName"),
                    u.props.get("accountEnabled").and_then(Value::as_bool),
                    s(u, "department"),
                    u.manager_id.clone(),
                ),
            )
        })
        .collect();
    // Graph lists live users and groups as members; deleted users are not.
    let live_or_group =
        |m: &str| t.groups().any(|g| g.id == m) || t.user(m).is_some_and(|u| u.removed.is_none());
    let members = t
        .groups()
        .flat_map(|g| {
            g.members
                .iter()
                .filter(|m| live_or_group(m))
                .map(|m| (g.id.clone(), m.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    (users, members)
}

async fn mirror_view(engine: &provisor::engine::Engine) -> View {
    let (users, members) = engine.store.mirror().await.expect("mirror");
    let users = users
        .into_iter()
        .map(|u| {
            (
                u.id.clone(),
                (
                    u.user_principal_name,
                    u.account_enabled,
                    u.department,
                    u.manager_id,
                ),
            )
        })
        .collect();
    let members = members.into_iter().map(|(g, m, _)| (g, m)).collect();
    (users, members)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, .. ProptestConfig::default() })]

    /// After every sync, the host's mirror equals the tenant.
    #[test]
    fn the_mirror_follows_any_history(history in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let running = start_sim(12, 31).await;
            let sim = running.sim.clone();
            let dir = tempfile::tempdir().expect("temp dir");
            let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| { fast(c); c.entra.page_size = 5; }).await;
            engine.read_entra(&Quiet).await.expect("initial read");
            let mut n = 0;
            for s in history.iter().chain(std::iter::once(&Step::Sync)) {
                match s {
                    Step::Sync => {
                        engine.read_entra(&Quiet).await.expect("read");
                        let (want, got) = (tenant_view(&sim), mirror_view(&engine).await);
                        assert_eq!(got.0, want.0, "users after {history:?}");
                        assert_eq!(got.1, want.1, "memberships after {history:?}");
                        let want_groups: Vec<(String, Option<String>)> = sim.graph().groups().filter(|g| !g.removed).map(|g| (g.id.clone(), Some(g.display_name.clone()))).collect();
                        assert_eq!(engine.store.mirror_groups().await.expect("groups"), want_groups, "groups after {history:?}");
                    }
                    Step::Reset => sim.set_faults(Faults { graph_gone_next: 1, graph_fault_resource: Some("users".into()), ..Default::default() }),
                    other => mutate(&sim, other, &mut n),
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_notifications_trigger_an_immediate_poll() {
    use provisor::entra::notify::FastTrigger;
    use std::sync::atomic::Ordering;
    let running = start_sim(30, 26).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;

    // An endpoint that does not echo the validation token is refused.
    let err = engine
        .entra
        .subscribe(
            "users",
            &format!("{}/_sim/stats", running.base_url()),
            &format!("{}/_sim/stats", running.base_url()),
            &provisor::config::SecretString::new("x"),
        )
        .await
        .expect_err("validation fails");
    assert!(err.to_string().contains("ValidationError"), "{err}");

    let state = provisor::config::SecretString::new("a-client-state-only-graph-knows");
    let mut trigger = FastTrigger::start(&engine.entra, "127.0.0.1:0", None, state)
        .await
        .expect("receiver validated and subscribed");
    assert_eq!(trigger.subscriptions.len(), 2);
    assert!(trigger.receiver.stats.validations.load(Ordering::Relaxed) >= 2);
    let receiver = format!("http://{}/graph/notify", trigger.receiver.addr);
    let stats = trigger.receiver.stats.clone();

    let engine = std::sync::Arc::new(engine);
    let e2 = engine.clone();
    let service = tokio::spawn(async move {
        e2.run_forever(
            std::time::Duration::from_secs(3600),
            Some(&mut trigger),
            |_| {},
        )
        .await
    });
    let wait_for = |upn: String| {
        let sim = sim.clone();
        async move {
            for _ in 0..100 {
                if !sim.salesforce().users_where("Username", &upn).is_empty() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            false
        }
    };
    let first = sim
        .graph()
        .users()
        .find(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .and_then(|u| u.props["userPrincipalName"].as_str().map(str::to_string))
        .expect("a user");
    assert!(wait_for(first).await, "the first cycle runs at once");

    // A joiner: the notification wakes the loop long before the 1 h interval.
    let mut m = Map::new();
    m.insert(
        "userPrincipalName".into(),
        json!("notified.joiner@contoso-sim.com"),
    );
    m.insert("mail".into(), json!("notified.joiner@contoso-sim.com"));
    m.insert("surname".into(), json!("Joiner"));
    m.insert("accountEnabled".into(), json!(true));
    sim.graph()
        .create_user("40000000-0000-4000-8000-000000000001", m)
        .expect("create");
    assert!(
        wait_for("notified.joiner@contoso-sim.com".into()).await,
        "provisioned within seconds of the notification"
    );
    assert!(stats.accepted.load(Ordering::Relaxed) >= 1);

    // Anyone can POST to the receiver; a wrong clientState is ignored.
    let before = stats.rejected.load(Ordering::Relaxed);
    let resp = reqwest_post(
        &receiver,
        json!({"value": [{"clientState": "guess", "resource": "Users/x"}]}),
    )
    .await;
    assert_eq!(resp, 202);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), before + 1);
    service.abort();
}

async fn reqwest_post(url: &str, body: Value) -> u16 {
    let client = provisor::http::client().expect("client");
    client
        .post(url)
        .json(&body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Writes the gallery pack into `dir` reading `attributes` from Entra
/// (`[source]`) and copying the first into Salesforce's CompanyName.
fn gallery_reading(dir: &std::path::Path, attributes: &[&str]) {
    let gallery = provisor_e2e::repo_root().join("rules/gallery-defaults");
    std::fs::create_dir_all(dir).expect("mkdir");
    let manifest = std::fs::read_to_string(gallery.join("pack.toml")).expect("manifest");
    let script = std::fs::read_to_string(gallery.join("main.rhai")).expect("script");
    let list: Vec<String> = attributes.iter().map(|a| format!("{a:?}")).collect();
    let manifest = manifest
        .replace("version = \"0.1.0\"", "version = \"0.2.0\"")
        .replace(
            "fields = [\"Alias\",",
            "fields = [\"Alias\", \"CompanyName\",",
        );
    std::fs::write(
        dir.join("pack.toml"),
        format!("{manifest}\n[source]\nattributes = [{}]\n", list.join(", ")),
    )
    .expect("write manifest");
    std::fs::write(
        dir.join("main.rhai"),
        format!(
            "{}\nfn map(user, settings) {{\n    let d = gallery_map(user, settings);\n    d.fields.CompanyName = user.extensions.{} ?? ();\n    d\n}}\n",
            script.replace("fn map(", "fn gallery_map("),
            attributes[0]
        ),
    )
    .expect("write script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_reading_a_new_attribute_gets_it_through_a_new_baseline_round() {
    let running = start_sim(30, 26).await;
    let sim = running.sim.clone();
    let ids: Vec<String> = sim.graph().users().map(|u| u.id.clone()).collect();
    for id in &ids {
        let mut m = Map::new();
        m.insert("officeLocation".into(), json!("Building 7"));
        sim.graph().update_user(id, m).expect("set officeLocation");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    provisor_e2e::copy_dir(
        &provisor_e2e::repo_root().join("rules/gallery-defaults"),
        &pack,
    );
    let engine = engine_with(&running, &pack, &dir.path().join("s.db"), fast).await;
    let r = engine.sync_once(&Quiet).await.expect("initial sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(
        audit_details(&engine, "entra.users.baseline_started")
            .await
            .is_empty()
    );

    // The next version reads officeLocation: the next cycle reads every
    // user again with the wider $select, and the rules see it.
    std::fs::remove_dir_all(&pack).expect("clear pack");
    gallery_reading(&pack, &["officeLocation"]);
    assert!(
        matches!(
            engine.reload_rules(false).await,
            provisor::rules::Reload::Replaced { .. }
        ),
        "the new version loads"
    );
    let calls = sim.stats().graph_delta_pages;
    let r = engine.sync_once(&Quiet).await.expect("baseline cycle");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let started = audit_details(&engine, "entra.users.baseline_started").await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["added_attributes"], json!(["officeLocation"]));
    assert_eq!(
        audit_details(&engine, "entra.users.baseline_completed")
            .await
            .len(),
        1
    );
    // 30 users at 40 a page: a full round is one page, plus the groups link.
    assert!(sim.stats().graph_delta_pages - calls >= 2);
    let upns = live_enabled_upns(&sim);
    let companies: BTreeSet<String> = sim
        .salesforce()
        .rows("User")
        .filter(|u| {
            u.get("Username")
                .and_then(Value::as_str)
                .is_some_and(|n| upns.contains(&n.to_lowercase()))
        })
        .map(|u| {
            u.get("CompanyName")
                .and_then(Value::as_str)
                .unwrap_or("(none)")
                .to_string()
        })
        .collect();
    assert_eq!(companies, BTreeSet::from(["Building 7".to_string()]));

    // After it, the new deltaLink is incremental: one call per link, no
    // second baseline.
    let calls = sim.stats().graph_calls;
    engine.sync_once(&Quiet).await.expect("idle cycle");
    assert_eq!(sim.stats().graph_calls - calls, 2);
    assert_eq!(
        audit_details(&engine, "entra.users.baseline_started")
            .await
            .len(),
        1
    );

    // A change to the new attribute now arrives incrementally.
    let mut m = Map::new();
    m.insert("officeLocation".into(), json!("Building 9"));
    sim.graph().update_user(&ids[0], m).expect("move office");
    let r = engine.sync_once(&Quiet).await.expect("incremental cycle");
    assert_eq!(r.updated, 1, "{}", r.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wider_select_graph_refuses_keeps_the_old_delta_link() {
    let running = start_sim(20, 27).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    provisor_e2e::copy_dir(
        &provisor_e2e::repo_root().join("rules/gallery-defaults"),
        &pack,
    );
    let engine = engine_with(&running, &pack, &dir.path().join("s.db"), fast).await;
    engine.sync_once(&Quiet).await.expect("initial sync");

    // `costCenter` is no property Graph has (extension attributes are
    // named extension_<appId>_<name>): Graph answers 400.
    std::fs::remove_dir_all(&pack).expect("clear pack");
    gallery_reading(&pack, &["costCenter"]);
    assert!(matches!(
        engine.reload_rules(false).await,
        provisor::rules::Reload::Replaced { .. }
    ));
    let id = sim
        .graph()
        .users()
        .next()
        .map(|u| u.id.clone())
        .expect("a user");
    let mut m = Map::new();
    m.insert("surname".into(), json!("Stillsynced"));
    sim.graph().update_user(&id, m).expect("rename");
    let r = engine
        .sync_once(&Quiet)
        .await
        .expect("the cycle carries on with the old deltaLink");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let refused = audit_details(&engine, "entra.users.baseline_refused").await;
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("costCenter")),
        "{refused:?}"
    );
    assert_eq!(r.entra_changes, 1, "the change came through the old link");
    // Not tried again: the next cycle is incremental.
    let calls = sim.stats().graph_calls;
    engine.sync_once(&Quiet).await.expect("idle cycle");
    assert_eq!(sim.stats().graph_calls - calls, 2);
    assert_eq!(
        audit_details(&engine, "entra.users.baseline_started")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_paging_that_stops_progressing_alerts_and_resyncs() {
    let running = start_sim(200, 28).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;
    // The second page of the first round comes back empty, pointing at
    // itself: the engine notices on the repeat, resyncs, and completes.
    sim.set_faults(Faults {
        graph_stall_next: 1,
        ..Default::default()
    });
    let r = engine.sync_once(&Quiet).await.expect("the cycle recovers");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let stalled = audit_details(&engine, "entra.users.stalled").await;
    assert_eq!(stalled.len(), 1, "{stalled:?}");
    assert!(
        stalled[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("repeated"))
    );
    assert_eq!(
        active_usernames(&sim)
            .intersection(&live_enabled_upns(&sim))
            .count(),
        live_enabled_upns(&sim).len()
    );

    // A service stuck for good: two resyncs, then the cycle fails, naming
    // the stall, and nobody is deprovisioned.
    let before = active_usernames(&sim);
    let ids: Vec<String> = sim.graph().users().map(|u| u.id.clone()).take(3).collect();
    for id in &ids {
        sim.graph().hard_delete_user(id).expect("delete");
    }
    sim.set_faults(Faults {
        graph_gone_next: 1,
        graph_fault_resource: Some("users".into()),
        graph_stall_next: 1000,
        ..Default::default()
    });
    let err = engine.sync_once(&Quiet).await.expect_err("stuck for good");
    assert!(err.to_string().contains("repeated"), "{err}");
    assert_eq!(active_usernames(&sim), before);
    sim.set_faults(Faults::default());
}
