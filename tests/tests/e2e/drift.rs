//! Drift: hand edits in Salesforce against what the pack enforces.

use provisor::engine::Quiet;
use provisor_e2e::{copy_dir, engine, repo_root, start_sim};
use serde_json::{Map, json};

/// An enforced field edited by hand is reported and corrected; a
/// create-only field edited by hand stands; a field the pack does not
/// manage is never reported or touched. Reconciling writes nothing unless
/// asked to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_and_fixes_only_enforced_fields() {
    let running = start_sim(20, 93).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    copy_dir(&repo_root().join("rules/gallery-defaults"), &pack);
    let m = std::fs::read_to_string(pack.join("pack.toml")).expect("read");
    std::fs::write(
        pack.join("pack.toml"),
        m.replace("[access]\n", "[access]\ncreate_only = [\"Alias\"]\n"),
    )
    .expect("write");
    let engine = engine(&running, &pack, &dir.path().join("s.db")).await;
    engine.sync_once(&Quiet).await.expect("sync");
    let links = engine.store.links().await.expect("links");
    let (entra_id, sf_id) = links
        .iter()
        .next()
        .map(|(e, s)| (e.clone(), s.clone()))
        .expect("a link");
    let before = sim
        .salesforce()
        .rows("User")
        .find(|u| u["Id"] == json!(sf_id))
        .cloned()
        .expect("user");
    {
        let mut edit = Map::new();
        edit.insert("FirstName".into(), json!("HandEdited"));
        edit.insert("Alias".into(), json!("handmade"));
        edit.insert("Title".into(), json!("Hand Title"));
        sim.salesforce()
            .update("User", &sf_id, edit)
            .expect("hand edit");
    }

    let writes = sim.stats().sf_write_calls;
    let report = engine.reconcile(false, &Quiet).await.expect("reconcile");
    assert_eq!(
        sim.stats().sf_write_calls,
        writes,
        "a report writes nothing"
    );
    assert_eq!(report.users, links.len());
    let mine: Vec<_> = report
        .drift
        .iter()
        .filter(|d| d.entra_id == entra_id)
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].field, "FirstName");
    assert_eq!(mine[0].found, "HandEdited");
    assert_eq!(json!(mine[0].expected), before["FirstName"]);
    assert!(mine[0].why.contains("Salesforce"), "{}", mine[0].why);
    assert_eq!(
        report.drift.len(),
        1,
        "no other user drifted: {:?}",
        report.drift
    );
    assert!(
        report
            .to_csv()
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("HandEdited"))
    );
    assert!(report.to_markdown().contains("| FirstName | "));

    let fixed = engine.reconcile(true, &Quiet).await.expect("fix");
    assert_eq!(fixed.drift.len(), 1);
    let after = sim
        .salesforce()
        .rows("User")
        .find(|u| u["Id"] == json!(sf_id))
        .cloned()
        .expect("user");
    assert_eq!(
        after["FirstName"], before["FirstName"],
        "enforced: corrected"
    );
    assert_eq!(
        after["Alias"],
        json!("handmade"),
        "create-only: the hand edit stands"
    );
    assert_eq!(
        after["Title"],
        json!("Hand Title"),
        "not managed: untouched"
    );
    let again = engine.reconcile(false, &Quiet).await.expect("reconcile");
    assert!(again.drift.is_empty(), "{:?}", again.drift);
}

/// Salesforce keeps the old Email until the new address's owner confirms
/// it, and every save that asks mails them again: the change is sent once,
/// not once per cycle, and is not drift while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_email_change_is_sent_once_not_once_per_cycle() {
    let running = start_sim(15, 94).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(
        &running,
        &repo_root().join("rules/gallery-defaults"),
        &dir.path().join("s.db"),
    )
    .await;
    engine.sync_once(&Quiet).await.expect("sync");
    let links = engine.store.links().await.expect("links");
    let (entra_id, sf_id) = {
        let g = sim.graph();
        let u = g
            .users()
            .find(|u| {
                u.removed.is_none()
                    && u.props.get("accountEnabled") == Some(&json!(true))
                    && links.contains_key(&u.id)
            })
            .expect("a managed active user");
        (u.id.clone(), links[&u.id].clone())
    };
    let old_email = sim
        .salesforce()
        .rows("User")
        .find(|u| u["Id"] == json!(sf_id))
        .expect("user")["Email"]
        .clone();
    let mut m = Map::new();
    m.insert("mail".into(), json!("new.address@contoso-sim.com"));
    sim.graph().update_user(&entra_id, m).expect("update");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.updated, 1, "{}", r.plan.render());
    let mails = |sim: &provisor::sim::Sim| {
        sim.salesforce()
            .verification_mails
            .get(&sf_id)
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(mails(&sim), 1);
    let email_now = || {
        sim.salesforce()
            .rows("User")
            .find(|u| u["Id"] == json!(sf_id))
            .expect("user")["Email"]
            .clone()
    };
    assert_eq!(email_now(), old_email, "Salesforce waits for the owner");

    // Other changes to the user keep coming; the Email is not sent again.
    for i in 0..3 {
        let mut m = Map::new();
        m.insert("givenName".into(), json!(format!("Name{i}")));
        sim.graph().update_user(&entra_id, m).expect("update");
        let r = engine.sync_once(&Quiet).await.expect("sync");
        assert!(
            r.plan.actions.iter().all(|a| !a.kind_changes_email()),
            "{}",
            r.plan.render()
        );
    }
    assert_eq!(mails(&sim), 1, "one verification mail, not one per cycle");
    let report = engine.reconcile(false, &Quiet).await.expect("reconcile");
    assert!(
        report.drift.iter().all(|d| d.field != "Email"),
        "{:?}",
        report.drift
    );

    // The owner confirms: Salesforce has it, nothing is left to do.
    assert!(sim.salesforce().confirm_email(&sf_id));
    assert_eq!(email_now(), json!("new.address@contoso-sim.com"));
    let report = engine.reconcile(false, &Quiet).await.expect("reconcile");
    assert!(report.drift.is_empty(), "{:?}", report.drift);
}

trait ChangesEmail {
    fn kind_changes_email(&self) -> bool;
}

impl ChangesEmail for provisor::engine::plan::Action {
    fn kind_changes_email(&self) -> bool {
        match &self.kind {
            provisor::engine::plan::ActionKind::Update { changes }
            | provisor::engine::plan::ActionKind::Reactivate { changes } => {
                changes.contains_key("Email")
            }
            _ => false,
        }
    }
}

/// One thing that happens between syncs.
#[derive(Debug, Clone)]
enum Event {
    /// An Entra attribute of the i-th user changes.
    Entra(usize, &'static str, String),
    /// The i-th user is disabled or enabled in Entra.
    Enabled(usize, bool),
    /// An admin edits a field the pack enforces, in Salesforce.
    HandEditEnforced(usize, String),
    /// An admin edits a field the pack does not manage, in Salesforce.
    HandEditUnmanaged(usize, String),
    Sync,
}

fn event() -> impl proptest::strategy::Strategy<Value = Event> {
    use proptest::prelude::*;
    let name = "[A-Z][a-z]{1,8}";
    prop_oneof![
        (
            0..12usize,
            prop::sample::select(vec!["givenName", "surname"]),
            name
        )
            .prop_map(|(i, f, v)| Event::Entra(i, f, v)),
        // Languages whose locale Salesforce's picklist accepts.
        (
            0..12usize,
            prop::sample::select(vec!["en-US", "fr-FR", "de-DE", "ja-JP"])
        )
            .prop_map(|(i, v)| Event::Entra(i, "preferredLanguage", v.to_string())),
        (0..12usize, any::<bool>()).prop_map(|(i, b)| Event::Enabled(i, b)),
        (0..12usize, name).prop_map(|(i, v)| Event::HandEditEnforced(i, v)),
        (0..12usize, name).prop_map(|(i, v)| Event::HandEditUnmanaged(i, v)),
        Just(Event::Sync),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, max_shrink_iters: 32, .. proptest::prelude::ProptestConfig::default() })]

    /// Random Entra histories and Salesforce hand edits: after a sync and a
    /// reconcile, every managed user in Salesforce equals what the rules
    /// want on the fields they return, and fields they do not return keep
    /// the admin's last edit.
    #[test]
    fn salesforce_follows_the_rules_whatever_happens(history in proptest::collection::vec(event(), 1..25)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let running = start_sim(12, 97).await;
            let sim = running.sim.clone();
            let dir = tempfile::tempdir().expect("temp dir");
            let pack_dir = repo_root().join("rules/gallery-defaults");
            let engine = engine(&running, &pack_dir, &dir.path().join("s.db")).await;
            engine.sync_once(&Quiet).await.expect("initial sync");
            let ids: Vec<String> = sim.graph().users().map(|u| u.id.clone()).collect();
            let mut titles: std::collections::HashMap<String, String> = Default::default();
            for e in history.iter().chain(std::iter::once(&Event::Sync)) {
                let links = engine.store.links().await.expect("links");
                match e {
                    Event::Entra(i, field, v) => {
                        let mut m = Map::new();
                        m.insert((*field).into(), json!(v));
                        sim.graph().update_user(&ids[i % ids.len()], m).expect("update");
                    }
                    Event::Enabled(i, b) => {
                        let mut m = Map::new();
                        m.insert("accountEnabled".into(), json!(b));
                        sim.graph().update_user(&ids[i % ids.len()], m).expect("update");
                    }
                    Event::HandEditEnforced(i, v) | Event::HandEditUnmanaged(i, v) => {
                        let Some(sf) = links.get(&ids[i % ids.len()]) else { continue };
                        let field = if matches!(e, Event::HandEditEnforced(..)) { "FirstName" } else { "Title" };
                        let mut m = Map::new();
                        m.insert(field.into(), json!(v));
                        if sim.salesforce().update("User", sf, m).is_ok() && field == "Title" {
                            titles.insert(sf.clone(), v.clone());
                        }
                    }
                    Event::Sync => {
                        engine.sync_once(&Quiet).await.expect("sync");
                    }
                }
            }
            engine.reconcile(true, &Quiet).await.expect("reconcile");

            let pack = provisor::rules::Pack::load(&pack_dir).expect("pack");
            let (users, _) = engine.store.mirror().await.expect("mirror");
            let links = engine.store.links().await.expect("links");
            let parked: std::collections::HashSet<String> = engine.store.dead_letters().await.expect("dead").into_iter().map(|d| d.entra_id).collect();
            assert!(parked.is_empty(), "nothing in these histories is refused: {parked:?}");
            for u in users {
                let Some(sf) = links.get(&u.id) else { continue };
                let row = sim.salesforce().rows("User").find(|r| r["Id"] == json!(sf)).cloned().expect("linked user exists");
                // Group names as the engine hands them to the rules.
                let dirty_groups = {
                    let g = sim.graph();
                    g.groups().filter(|gr| !gr.removed && gr.members.contains(&u.id)).map(|gr| gr.display_name.clone()).collect::<Vec<_>>()
                };
                let want = pack.map(&u, &dirty_groups).expect("maps");
                assert_eq!(row["IsActive"], json!(want.active), "IsActive of {} after {history:?}", u.id);
                // A deactivated user's record is history: its fields are
                // not enforced any more.
                if !want.active {
                    continue;
                }
                for (k, v) in &want.fields {
                    if k == "Alias" || k == "CommunityNickname" {
                        continue; // made collision-free by the host
                    }
                    let got = row.get(k).cloned().unwrap_or(serde_json::Value::Null);
                    let want_json = match v {
                        provisor::model::FieldValue::Null => serde_json::Value::Null,
                        provisor::model::FieldValue::Text(t) if t.is_empty() => serde_json::Value::Null,
                        provisor::model::FieldValue::Text(t) => json!(t),
                        provisor::model::FieldValue::Bool(b) => json!(b),
                        provisor::model::FieldValue::Number(n) => json!(n),
                    };
                    assert_eq!(got, want_json, "{k} of {} after {history:?}", u.id);
                }
                if let Some(t) = titles.get(sf) {
                    assert_eq!(row["Title"], json!(t), "unmanaged Title of {} after {history:?}", u.id);
                }
            }
        });
    }
}

/// The store keeps the last known Salesforce state of managed users: as
/// created, as updated, as deactivated; a hand edit in Salesforce shows
/// once a plan reads the account again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_the_last_known_salesforce_state() {
    let running = start_sim(20, 91).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(
        &running,
        &provisor_e2e::rhai_pack(),
        &dir.path().join("s.db"),
    )
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    let created = r
        .plan
        .actions
        .iter()
        .find(|a| a.kind.name() == "create")
        .expect("a joiner")
        .clone();
    let id = created.entra_id.clone();
    let (sf, known, _) = engine
        .store
        .sf_user_of(&id)
        .await
        .expect("read")
        .expect("known after creation");
    let actual = sim
        .salesforce()
        .rows("User")
        .find(|u| u["Id"] == json!(sf))
        .cloned()
        .expect("in the org");
    for f in [
        "Username",
        "FirstName",
        "LastName",
        "Email",
        "ProfileId",
        "IsActive",
    ] {
        assert_eq!(known[f], actual[f], "{f}");
    }

    // A mover: the new name is what provisor last set.
    let mut m = Map::new();
    m.insert("surname".into(), json!("Lastknown"));
    sim.graph().update_user(&id, m).expect("rename");
    engine.sync_once(&Quiet).await.expect("sync");
    let (_, known, _) = engine
        .store
        .sf_user_of(&id)
        .await
        .expect("read")
        .expect("known");
    assert_eq!(known["LastName"], json!("Lastknown"));

    // A leaver: deactivated.
    let mut m = Map::new();
    m.insert("accountEnabled".into(), json!(false));
    sim.graph().update_user(&id, m).expect("disable");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, 1, "{}", r.plan.render());
    let (_, known, _) = engine
        .store
        .sf_user_of(&id)
        .await
        .expect("read")
        .expect("known");
    assert_eq!(known["IsActive"], json!(false));
    assert_eq!(known["LastName"], json!("Lastknown"));
}
