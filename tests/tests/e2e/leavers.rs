//! Leavers' open records (issue 9): found, moved by the pack's `on-leave`
//! to a checked owner, and only then the leaver deactivated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use provisor::engine::{Engine, Quiet};
use provisor::sim::Sim;
use provisor_e2e::{audit_details, copy_dir, engine_with, repo_root, start_sim};
use serde_json::{Map, Value, json};

/// The gallery-defaults pack with its `on_leave` replaced and `extra`
/// added to its `[access]`.
fn pack_with(dir: &Path, on_leave: &str, extra_access: &str) -> PathBuf {
    let pack = dir.join("pack");
    copy_dir(&repo_root().join("rules/gallery-defaults"), &pack);
    let main = std::fs::read_to_string(pack.join("main.rhai")).expect("read");
    let at = main.find("fn on_leave(").expect("on_leave in main.rhai");
    let end = at + main[at..].find("\n}\n").expect("end of on_leave") + 3;
    let main = format!("{}{on_leave}\n{}", &main[..at], &main[end..]);
    std::fs::write(pack.join("main.rhai"), main).expect("write");
    let m = std::fs::read_to_string(pack.join("pack.toml")).expect("read");
    std::fs::write(
        pack.join("pack.toml"),
        m.replace("[access]\n", &format!("[access]\n{extra_access}")),
    )
    .expect("write");
    pack
}

async fn synced(
    running: &provisor::sim::RunningSim,
    pack: &Path,
    db: &Path,
    bulk: usize,
) -> Engine {
    let engine = engine_with(running, pack, db, |c| {
        c.sync.reassign_bulk_threshold = bulk;
        c.sync.retries = 1;
        c.sync.retry_base_ms = 1;
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    provisor_e2e::approve_adoptions(&engine).await;
    engine
}

/// (Entra id, Salesforce id) of an enabled user with a manager whose own
/// account exists, and the manager's Salesforce id.
async fn leaver_with_manager(sim: &Sim, engine: &Engine) -> (String, String, String) {
    let links = engine.store.links().await.expect("links");
    let users: Vec<(String, Option<String>)> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| (u.id.clone(), u.manager_id.clone()))
        .collect();
    users
        .into_iter()
        .find_map(|(id, m)| {
            let m = m?;
            Some((id.clone(), links.get(&id)?.clone(), links.get(&m)?.clone()))
        })
        .expect("a linked user with a linked manager")
}

/// Up to `n` active tenant users other than `not`: (Id, Username).
fn colleagues(sim: &Sim, not: &[&str], n: usize) -> Vec<(String, String)> {
    sim.salesforce()
        .rows("User")
        .filter(|u| u["IsActive"] == json!(true))
        .filter_map(|u| Some((u["Id"].as_str()?, u["Username"].as_str()?)))
        .filter(|(id, name)| !not.contains(id) && name.contains("contoso-sim.com"))
        .take(n)
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect()
}

/// The gallery pack handing each object to the manager, else to `user`.
fn manager_then_user(dir: &Path, user: &str) -> PathBuf {
    pack_with(
        dir,
        &format!(
            "fn on_leave(user, records, settings) {{\n    records.map(|r| #{{ object: r.object, targets: [\"manager\", #{{ user: \"{user}\" }}], children: [] }})\n}}"
        ),
        "",
    )
}

fn seed(sim: &Sim, object: &str, owner: &str, fields: Value) -> String {
    let mut m: Map<String, Value> = fields.as_object().cloned().unwrap_or_default();
    m.insert("OwnerId".into(), json!(owner));
    sim.salesforce().seed_record(object, m).expect("seed")
}

fn owner_of(sim: &Sim, object: &str, id: &str) -> String {
    sim.salesforce()
        .get(object, id)
        .and_then(|r| r.get("OwnerId").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

fn disable(sim: &Sim, id: &str) {
    let mut m = Map::new();
    m.insert("accountEnabled".into(), json!(false));
    sim.graph().update_user(id, m).expect("disable");
}

fn is_active(sim: &Sim, sf: &str) -> bool {
    sim.salesforce()
        .get("User", sf)
        .and_then(|u| u.get("IsActive").cloned())
        == Some(json!(true))
}

/// The gallery pack hands open Opportunities, Leads and Cases to the
/// manager; closed and converted ones keep their owner; every move is
/// audited; then the leaver is deactivated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_records_go_to_the_manager_then_the_leaver_is_deactivated() {
    let running = start_sim(30, 301).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    let account = seed(&sim, "Account", &sf, json!({"Name": "Acme"}));
    let open_opp = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31", "AccountId": account}),
    );
    let won = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Won", "StageName": "Closed Won", "CloseDate": "2026-01-31"}),
    );
    let lead = seed(&sim, "Lead", &sf, json!({"LastName": "L", "Company": "C"}));
    let converted = seed(
        &sim,
        "Lead",
        &sf,
        json!({"LastName": "K", "Company": "C", "IsConverted": true}),
    );
    let case = seed(&sim, "Case", &sf, json!({"Subject": "Help"}));
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.records_reassigned, 3, "{r:?}");
    for (object, id) in [("Opportunity", &open_opp), ("Lead", &lead), ("Case", &case)] {
        assert_eq!(owner_of(&sim, object, id), manager, "{object}");
    }
    assert_eq!(
        owner_of(&sim, "Opportunity", &won),
        sf,
        "closed keeps its owner"
    );
    assert_eq!(
        owner_of(&sim, "Lead", &converted),
        sf,
        "converted is skipped"
    );
    assert!(!is_active(&sim, &sf), "deactivated after the move");
    let moved = audit_details(&engine, "record.reassigned").await;
    assert_eq!(moved.len(), 3);
    let opp = moved
        .iter()
        .find(|e| e["record"] == json!(open_opp))
        .expect("the opportunity's transfer is audited");
    assert_eq!(opp["from"], json!(sf));
    assert_eq!(opp["to"], json!(manager));
    assert_eq!(opp["object"], json!("Opportunity"));
    assert_eq!(opp["rule"], json!("on-leave"));
    assert!(
        opp["pack"]
            .as_str()
            .is_some_and(|p| p.starts_with("gallery-defaults@"))
    );
}

/// An inactive manager is refused before any write and the next target is
/// used; round-robin spreads records evenly (within one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_manager_falls_back_and_round_robin_spreads_evenly() {
    let running = start_sim(30, 302).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    // Three active colleagues for the round robin, chosen after the sync.
    let probe = synced(
        &running,
        &repo_root().join("rules/gallery-defaults"),
        &dir.path().join("probe.db"),
        2000,
    )
    .await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &probe).await;
    let team: Vec<String> = colleagues(&sim, &[&sf, &manager], 3)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert_eq!(team.len(), 3);
    let list: Vec<String> = team.iter().map(|t| format!("\"{t}\"")).collect();
    let pack = pack_with(
        dir.path(),
        &format!(
            "fn on_leave(user, records, settings) {{\n    records.map(|r| #{{ object: r.object, targets: [\"manager\", #{{ round_robin: [{}] }}], children: [] }})\n}}",
            list.join(", ")
        ),
        "",
    );
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let mut off = Map::new();
    off.insert("IsActive".into(), json!(false));
    sim.salesforce()
        .update("User", &manager, off)
        .expect("manager deactivated by hand");
    let opps: Vec<String> = (0..10)
        .map(|i| {
            seed(
                &sim,
                "Opportunity",
                &sf,
                json!({"Name": format!("D{i}"), "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
            )
        })
        .collect();
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.records_reassigned, 10, "{r:?}");
    let ids: HashMap<String, String> = sim
        .salesforce()
        .rows("User")
        .filter_map(|u| {
            Some((
                u["Id"].as_str()?.to_string(),
                u["Username"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut per: HashMap<String, usize> = HashMap::new();
    for o in &opps {
        *per.entry(ids[&owner_of(&sim, "Opportunity", o)].clone())
            .or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    let (lo, hi) = (per.values().min().copied(), per.values().max().copied());
    assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 1, "{per:?}");
    assert!(team.iter().all(|t| per.contains_key(t)));
    let refused = audit_details(&engine, "leaver.target_refused").await;
    assert!(
        refused.iter().any(|e| e["target"] == json!("Manager")
            && e["reason"].as_str().is_some_and(|r| r.contains("inactive"))),
        "{refused:?}"
    );
    assert!(!is_active(&sim, &sf));
}

/// Queues take only objects they support; Opportunities never go to a
/// queue. Records nobody valid can take stay, and so does the freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_take_only_what_they_support_and_unmoved_records_keep_the_leaver_frozen() {
    let running = start_sim(30, 303).await;
    let sim = running.sim.clone();
    let queue = sim.salesforce().seed_queue("Sales Leads", &["Lead"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = pack_with(
        dir.path(),
        "fn on_leave(user, records, settings) {\n    records.map(|r| #{ object: r.object, targets: [#{ queue: \"Sales_Leads\" }], children: [] })\n}",
        "queues = [\"Sales_Leads\"]\n",
    );
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, _) = leaver_with_manager(&sim, &engine).await;
    let lead = seed(&sim, "Lead", &sf, json!({"LastName": "L", "Company": "C"}));
    let opp = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
    );
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(
        owner_of(&sim, "Lead", &lead),
        queue,
        "the queue supports Leads"
    );
    assert_eq!(owner_of(&sim, "Opportunity", &opp), sf, "never to a queue");
    assert_eq!(r.records_reassigned, 1);
    assert!(is_active(&sim, &sf), "records remain: not deactivated");
    let login = sim
        .salesforce()
        .rows("UserLogin")
        .find(|l| l["UserId"] == json!(sf))
        .cloned()
        .expect("login");
    assert_eq!(login["IsFrozen"], json!(true), "but frozen");
    assert_eq!(r.waiting, 1, "{r:?}");
    let refused = audit_details(&engine, "leaver.target_refused").await;
    assert!(
        refused.iter().any(|e| e["object"] == json!("Opportunity")),
        "{refused:?}"
    );
    assert_eq!(
        audit_details(&engine, "leaver.records_remain").await.len(),
        1
    );
}

/// 5,000 open Opportunities move through Bulk API 2.0, every one of them
/// moved and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_opportunities_move_through_bulk_api() {
    let running = start_sim(20, 304).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    {
        let mut org = sim.salesforce();
        for i in 0..5000 {
            let mut m = Map::new();
            m.insert("Name".into(), json!(format!("Deal {i}")));
            m.insert("StageName".into(), json!("Prospecting"));
            m.insert("CloseDate".into(), json!("2027-01-31"));
            m.insert("OwnerId".into(), json!(sf));
            org.seed_record("Opportunity", m).expect("seed");
        }
    }
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.records_reassigned, 5000, "{r:?}");
    let owned: usize = sim
        .salesforce()
        .rows("Opportunity")
        .filter(|o| o["OwnerId"] == json!(manager))
        .count();
    assert_eq!(owned, 5000);
    assert!(
        !sim.salesforce().bulk_jobs().is_empty(),
        "a Bulk API job was used"
    );
    assert!(!is_active(&sim, &sf));
}

/// Two leavers with different managers in one cycle: each one's records go
/// to their own manager (targets are checked per leaver, not per object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leavers_of_one_cycle_each_hand_over_to_their_own_manager() {
    let running = start_sim(40, 305).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let links = engine.store.links().await.expect("links");
    let users: Vec<(String, Option<String>)> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| (u.id.clone(), u.manager_id.clone()))
        .collect();
    let managers: std::collections::HashSet<String> =
        users.iter().filter_map(|(_, m)| m.clone()).collect();
    let mut pairs: Vec<(String, String, String)> = Vec::new();
    for (id, m) in &users {
        let Some(m) = m else { continue };
        if managers.contains(id) || pairs.iter().any(|(_, _, x)| Some(x) == links.get(m)) {
            continue;
        }
        if let (Some(sf), Some(msf)) = (links.get(id), links.get(m)) {
            pairs.push((id.clone(), sf.clone(), msf.clone()));
        }
        if pairs.len() == 2 {
            break;
        }
    }
    assert_eq!(pairs.len(), 2, "two leavers with different managers");
    let opps: Vec<String> = pairs
        .iter()
        .map(|(_, sf, _)| {
            seed(
                &sim,
                "Opportunity",
                sf,
                json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
            )
        })
        .collect();
    for (id, _, _) in &pairs {
        disable(&sim, id);
    }
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.records_reassigned, 2, "{r:?}");
    for ((_, sf, manager), opp) in pairs.iter().zip(&opps) {
        assert_eq!(&owner_of(&sim, "Opportunity", opp), manager);
        assert!(!is_active(&sim, sf));
    }
}

/// A target that cannot read the record (UserRecordAccess says so) is
/// refused before any write, and the rule's fallback gets the record;
/// Salesforce itself would answer TRANSFER_REQUIRES_READ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_read_access_is_refused_and_the_fallback_used() {
    let running = start_sim(30, 306).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let probe = synced(
        &running,
        &repo_root().join("rules/gallery-defaults"),
        &dir.path().join("probe.db"),
        2000,
    )
    .await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &probe).await;
    let (fallback_id, fallback) = colleagues(&sim, &[&sf, &manager], 1)
        .pop()
        .expect("a colleague");
    let pack = manager_then_user(dir.path(), &fallback);
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    // The manager may read Leads but not Opportunities.
    sim.salesforce()
        .set_read_denied(&manager, "Opportunity", true);
    let opp = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
    );
    let lead = seed(&sim, "Lead", &sf, json!({"LastName": "L", "Company": "C"}));
    // Salesforce's own answer, had the engine not looked first.
    let mut m = Map::new();
    m.insert("OwnerId".into(), json!(manager));
    let e = sim
        .salesforce()
        .update("Opportunity", &opp, m)
        .expect_err("TRANSFER_REQUIRES_READ");
    assert_eq!(e[0].code, "TRANSFER_REQUIRES_READ");

    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.records_reassigned, 2, "{r:?}");
    assert_eq!(owner_of(&sim, "Opportunity", &opp), fallback_id, "fallback");
    assert_eq!(
        owner_of(&sim, "Lead", &lead),
        manager,
        "the manager reads Leads"
    );
    let refused = audit_details(&engine, "leaver.target_refused").await;
    assert!(
        refused.iter().any(|e| e["object"] == json!("Opportunity")
            && e["target"] == json!("Manager")
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("TRANSFER_REQUIRES_READ"))
            && e["record_ids"] == json!([opp])),
        "{refused:?}"
    );
    // Refused before the write: no transfer was attempted and failed.
    assert!(
        audit_details(&engine, "record.reassign_failed")
            .await
            .is_empty()
    );
    assert!(!is_active(&sim, &sf));
}

/// A leaver who is another user's value in a custom hierarchy field is
/// found by query before any deactivation attempt and reported with the
/// users that point at it; it stays frozen and active, is checked again
/// every cycle, and is deactivated once the field is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_named_in_a_hierarchy_field_is_reported_before_any_deactivation_attempt() {
    let running = start_sim(30, 307).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    // The manager names the leaver as its approver (a custom hierarchy field).
    let set_approver = |to: Value| {
        let mut m = Map::new();
        m.insert("Approver__c".into(), to);
        sim.salesforce()
            .update("User", &manager, m)
            .expect("approver set");
    };
    set_approver(json!(sf));
    let manager_name = sim.salesforce().get("User", &manager).expect("manager")["Username"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // What Salesforce would answer to the deactivation itself.
    {
        let mut off = Map::new();
        off.insert("IsActive".into(), json!(false));
        let e = sim
            .salesforce()
            .update("User", &sf, off)
            .expect_err("refused");
        assert_eq!(
            e[0].message,
            "Cannot inactivate user that is the value of a hierarchy field: Approver__c"
        );
    }

    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(
        (r.frozen, r.deactivated, r.failed, r.waiting),
        (1, 0, 0, 1),
        "{r:?}"
    );
    assert!(
        r.waiting_for[0].contains("Approver__c") && r.waiting_for[0].contains(&manager_name),
        "{:?}",
        r.waiting_for
    );
    assert!(
        is_active(&sim, &sf),
        "never deactivated with the reference in place"
    );
    let blocked = audit_details(&engine, "user.deactivation_blocked").await;
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    let b = &blocked[0];
    assert_eq!(b["checked_before_deactivation"], json!(true));
    assert_eq!(b["blocker"]["kind"], json!("custom_hierarchy_field"));
    assert_eq!(
        b["referenced_by"],
        json!([{"field": "Approver__c", "id": manager, "username": manager_name}])
    );
    // No deactivation was sent: Salesforce's own refusal would carry errors.
    assert!(b.get("errors").is_none(), "{b}");
    let open = engine.store.open_leavers().await.expect("leavers");
    let state = open[0].blocker.as_ref().expect("blocker");
    assert_eq!(
        (state.kind.as_str(), state.org_config),
        ("custom_hierarchy_field", false)
    );

    // Checked again next cycle (records change, not org configuration);
    // the same finding is not audited twice.
    let r = engine.sync_once(&Quiet).await.expect("again");
    assert_eq!((r.deactivated, r.waiting), (0, 1));
    assert_eq!(
        audit_details(&engine, "user.deactivation_blocked")
            .await
            .len(),
        1
    );
    set_approver(Value::Null);
    let r = engine.sync_once(&Quiet).await.expect("cleared");
    assert_eq!((r.deactivated, r.waiting), (1, 0), "{:?}", r.waiting_for);
    assert!(!is_active(&sim, &sf));
}

/// Freezing blocks new logins only: the leaver's open sessions are
/// deleted and its connected-app tokens revoked (by `DeleteToken`), other
/// users' stay, and the audit trail says what was ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leavers_sessions_and_oauth_tokens_are_ended() {
    let running = start_sim(30, 308).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    for app in ["Salesforce Mobile", "Outlook Integration"] {
        sim.salesforce().seed_session(&sf, app).expect("session");
    }
    sim.salesforce()
        .seed_session(&manager, "Salesforce Mobile")
        .expect("session");
    let of = |object: &str, field: &str, user: &str| {
        sim.salesforce()
            .rows(object)
            .filter(|r| r[field] == json!(user))
            .count()
    };
    assert_eq!(
        (
            of("AuthSession", "UsersId", &sf),
            of("OauthToken", "UserId", &sf)
        ),
        (2, 2)
    );

    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!((r.frozen, r.deactivated), (1, 1), "{r:?}");
    assert_eq!(
        (
            of("AuthSession", "UsersId", &sf),
            of("OauthToken", "UserId", &sf)
        ),
        (0, 0)
    );
    assert_eq!(
        (
            of("AuthSession", "UsersId", &manager),
            of("OauthToken", "UserId", &manager)
        ),
        (1, 1),
        "other users keep theirs"
    );
    let ended = audit_details(&engine, "user.sessions_ended").await;
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["sessions_ended"], json!(2));
    let mut apps: Vec<String> = ended[0]["tokens_revoked"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    apps.sort();
    assert_eq!(apps, ["Outlook Integration", "Salesforce Mobile"]);
}

/// `provisor plan` previews a leaver's records (how many per object and to
/// whom, and what would stay) with the same checks as a sync and without
/// any write; the sync then does what the preview said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_previews_where_a_leavers_records_go_without_moving_them() {
    let running = start_sim(30, 309).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    sim.salesforce().set_read_denied(&manager, "Case", true);
    let opps: Vec<String> = (0..2)
        .map(|i| {
            seed(
                &sim,
                "Opportunity",
                &sf,
                json!({"Name": format!("D{i}"), "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
            )
        })
        .collect();
    let case = seed(&sim, "Case", &sf, json!({"Subject": "Help"}));
    disable(&sim, &leaver);

    let plan = engine.dry_run(&Quiet).await.expect("dry run");
    let previews = engine.preview_leavers(&plan).await.expect("preview");
    let by_object: HashMap<&str, &provisor::engine::ReassignPreview> =
        previews.iter().map(|p| (p.object.as_str(), p)).collect();
    assert_eq!(
        by_object["Opportunity"].to,
        [("manager".to_string(), manager.clone(), 2)]
    );
    assert_eq!(by_object["Opportunity"].staying, 0);
    assert!(by_object["Case"].to.is_empty());
    assert_eq!(by_object["Case"].staying, 1);
    let text = provisor::engine::render_previews(&previews, &|id| id.to_string());
    assert!(
        text.contains(&format!("Opportunity: 2 to {manager} (manager)"))
            && text.contains("Case: 1 stay with the leaver, which then stays frozen and active"),
        "{text}"
    );
    // Nothing moved, nothing was audited.
    for o in &opps {
        assert_eq!(owner_of(&sim, "Opportunity", o), sf);
    }
    assert_eq!(owner_of(&sim, "Case", &case), sf);
    for event in ["record.reassigned", "leaver.target_refused"] {
        assert!(audit_details(&engine, event).await.is_empty(), "{event}");
    }

    // The sync does what the preview said.
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!((r.records_reassigned, r.deactivated, r.waiting), (2, 0, 1));
    for o in &opps {
        assert_eq!(owner_of(&sim, "Opportunity", o), manager);
    }
    assert_eq!(owner_of(&sim, "Case", &case), sf);
}

/// A user already inactive in Salesforce when provisor takes it over (a
/// leaver before provisor) still owning open records: they are handed over
/// the same way. Without "Update Records with Inactive Owners" Salesforce
/// refuses (INACTIVE_OWNER_OR_USER), `test-connection` says so, and the
/// handover is taken up again once the permission is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_users_inactive_before_provisor_are_handed_over() {
    use provisor::sim::SimOptions;
    let sim = Sim::new(SimOptions {
        users: 40,
        seed: 310,
        existing_share: 0.5,
        ..Default::default()
    });
    let running = sim
        .serve(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("sim");
    // An Entra leaver whose Salesforce account is already inactive, with a
    // manager still enabled, and a second one for the refused case.
    let candidates: Vec<(String, String)> = {
        let g = sim.graph();
        let enabled = |id: &str| {
            g.users()
                .any(|u| u.id == id && u.props.get("accountEnabled") == Some(&json!(true)))
        };
        g.users()
            .filter(|u| u.props.get("accountEnabled") == Some(&json!(true)))
            .filter(|u| u.manager_id.as_deref().is_some_and(enabled))
            .filter_map(|u| {
                let upn = u.props["userPrincipalName"].as_str()?;
                let sf = sim.salesforce().users_where("Username", upn).first()?["Id"]
                    .as_str()?
                    .to_string();
                Some((u.id.clone(), sf))
            })
            .take(2)
            .collect()
    };
    assert_eq!(candidates.len(), 2, "the tenant needs two such users");
    let mut opps = Vec::new();
    for (entra, sf) in &candidates {
        disable(&sim, entra);
        let mut off = Map::new();
        off.insert("IsActive".into(), json!(false));
        sim.salesforce().update("User", sf, off).expect("inactive");
        opps.push(seed(
            &sim,
            "Opportunity",
            sf,
            json!({"Name": "Old deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
        ));
    }
    // Without the permission, moving records off an inactive owner fails.
    sim.salesforce().set_update_inactive_owned(false);
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = engine_with(&running, &pack, &dir.path().join("s.db"), |c| {
        c.sync.retries = 1;
        c.sync.retry_base_ms = 1;
    })
    .await;
    let checks = provisor::connection::test_connection(&engine).await;
    let check = checks
        .iter()
        .find(|c| c.name.contains("Update Records with Inactive Owners"))
        .expect("the check runs");
    assert!(
        !check.ok && check.detail.contains("INACTIVE_OWNER_OR_USER"),
        "{check:?}"
    );
    let r = engine.sync_once(&Quiet).await.expect("first cycle");
    assert!(
        r.plan.render().contains("> handover"),
        "{}",
        r.plan.render()
    );
    assert_eq!(r.records_reassigned, 0);
    // Both are refused; with small plan chunks a manager may not have
    // its account yet when its report's chunk runs, so only one may have
    // reached Salesforce.
    let failed = audit_details(&engine, "record.reassign_failed").await;
    assert!((1..=2).contains(&failed.len()), "{failed:?}");
    assert!(
        failed.iter().all(|f| f["error"]
            .as_str()
            .is_some_and(|e| e.contains("INACTIVE_OWNER_OR_USER"))),
        "{failed:?}"
    );
    for ((_, sf), o) in candidates.iter().zip(&opps) {
        assert_eq!(&owner_of(&sim, "Opportunity", o), sf, "stays put");
    }
    let ids: Vec<String> = candidates.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        engine
            .store
            .handovers_pending(&ids)
            .await
            .expect("pending")
            .len(),
        2,
        "still pending"
    );

    // Granted: the next cycle hands the records over (still pending).
    sim.salesforce().set_update_inactive_owned(true);
    assert!(
        provisor::connection::test_connection(&engine)
            .await
            .iter()
            .any(|c| c.name.contains("Update Records with Inactive Owners") && c.ok)
    );
    let r = engine.sync_once(&Quiet).await.expect("second cycle");
    assert_eq!(r.records_reassigned, 2, "{r:?}");
    for ((entra, sf), o) in candidates.iter().zip(&opps) {
        let manager = sim
            .graph()
            .users()
            .find(|u| &u.id == entra)
            .and_then(|u| u.manager_id.clone())
            .expect("manager");
        let links = engine.store.links().await.expect("links");
        assert_eq!(owner_of(&sim, "Opportunity", o), links[&manager], "{sf}");
    }
    assert!(
        engine
            .store
            .handovers_pending(&ids)
            .await
            .expect("pending")
            .is_empty()
    );
    // Done: nothing is planned for them any more.
    let r = engine.sync_once(&Quiet).await.expect("third cycle");
    assert!(
        !r.plan.render().contains("> handover"),
        "{}",
        r.plan.render()
    );
}

/// Row contention while records move (UNABLE_TO_LOCK_ROW) is retried with
/// a pause, and every record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_refused_for_a_row_lock_are_sent_again() {
    let running = start_sim(30, 311).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    // First cycle: the manager cannot read them yet, so the leaver is
    // frozen and its records stay.
    sim.salesforce()
        .set_read_denied(&manager, "Opportunity", true);
    let account = seed(&sim, "Account", &sf, json!({"Name": "Acme"}));
    let opps: Vec<String> = (0..5)
        .map(|i| {
            seed(
                &sim,
                "Opportunity",
                &sf,
                json!({"Name": format!("D{i}"), "StageName": "Prospecting", "CloseDate": "2027-01-31", "AccountId": account}),
            )
        })
        .collect();
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("held");
    assert_eq!((r.frozen, r.records_reassigned, r.waiting), (1, 0, 1));
    // Second cycle: readable now, but the first three rows meet a lock.
    sim.salesforce()
        .set_read_denied(&manager, "Opportunity", false);
    sim.set_faults(provisor::sim::Faults {
        sf_lock_rows: 3,
        ..Default::default()
    });
    let calls = |sim: &Sim| {
        sim.stats()
            .sf_calls_by_kind
            .get("PATCH composite/sobjects Opportunity")
            .copied()
            .unwrap_or(0)
    };
    let before = calls(&sim);
    let r = engine.sync_once(&Quiet).await.expect("moved");
    assert_eq!((r.records_reassigned, r.deactivated), (5, 1), "{r:?}");
    // The locks were met by the moves (one account: one batch), and the
    // three locked rows went again in a second call.
    assert_eq!(sim.current_faults().sf_lock_rows, 0);
    assert_eq!(calls(&sim) - before, 2);
    for o in &opps {
        assert_eq!(owner_of(&sim, "Opportunity", o), manager);
    }
    assert!(
        audit_details(&engine, "record.reassign_failed")
            .await
            .is_empty()
    );
}

/// The gallery pack with `[access] objects` set to `objects`.
fn pack_with_objects(dir: &Path, objects: &str) -> PathBuf {
    let pack = pack_with(
        dir,
        "fn on_leave(user, records, settings) {\n    records.map(|r| #{ object: r.object, targets: [\"manager\"], children: [] })\n}",
        "",
    );
    let m = std::fs::read_to_string(pack.join("pack.toml")).expect("read");
    let old = "objects = [\"Case\", \"Lead\", \"Opportunity\"]";
    assert!(m.contains(old));
    std::fs::write(pack.join("pack.toml"), m.replace(old, objects)).expect("write");
    pack
}

/// A custom object the pack declares is read and moved like the standard
/// ones; a declared object the org does not have holds the cycle's
/// leavers frozen (their records there are unknown) with the reason, and
/// the cycle itself goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_objects_move_and_an_object_the_org_lacks_holds_the_leavers() {
    let running = start_sim(30, 312).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = pack_with_objects(
        &dir.path().join("good"),
        "objects = [\"Case\", \"Lead\", \"Opportunity\", \"Project__c\"]",
    );
    let engine = synced(&running, &good, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    let project = seed(
        &sim,
        "Project__c",
        &sf,
        json!({"Name": "Rollout", "Status__c": "Active"}),
    );
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!((r.records_reassigned, r.deactivated), (1, 1), "{r:?}");
    assert_eq!(owner_of(&sim, "Project__c", &project), manager);

    // Another org, a pack declaring an object it lacks.
    let running = start_sim(30, 313).await;
    let sim = running.sim.clone();
    let bad = pack_with_objects(
        &dir.path().join("bad"),
        "objects = [\"Case\", \"Lead\", \"Opportunity\", \"Missing__c\"]",
    );
    let engine = synced(&running, &bad, &dir.path().join("t.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    let opp = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
    );
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("the cycle goes on");
    assert_eq!((r.frozen, r.deactivated, r.waiting), (1, 0, 1), "{r:?}");
    assert!(
        r.waiting_for[0].contains("Missing__c") && r.waiting_for[0].contains("INVALID_TYPE"),
        "{:?}",
        r.waiting_for
    );
    assert!(is_active(&sim, &sf), "not deactivated with records unseen");
    assert_eq!(
        owner_of(&sim, "Opportunity", &opp),
        manager,
        "what can move, moves"
    );
    let unreadable = audit_details(&engine, "leaver.object_unreadable").await;
    assert_eq!(unreadable[0]["object"], json!("Missing__c"));
}

/// Lead and Case assignment rules run on API saves unless the request
/// says `Sforce-Auto-Assign: FALSE`: a moved Lead would be handed on by the
/// rule otherwise. provisor's transfer says so, and the Lead stays with
/// the target the pack chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_rules_do_not_undo_a_transfer() {
    let running = start_sim(30, 314).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    let integration = sim.salesforce().integration_user_id.clone();
    sim.salesforce()
        .set_assignment_rule("Lead", Some(&integration));
    let lead = seed(&sim, "Lead", &sf, json!({"LastName": "L", "Company": "C"}));
    let other = seed(&sim, "Lead", &sf, json!({"LastName": "M", "Company": "C"}));
    // What the rule does to a save that does not opt out.
    let mut m = Map::new();
    m.insert("id".into(), json!(other));
    m.insert("OwnerId".into(), json!(manager));
    let r = engine
        .salesforce
        .update_many("Lead", &[m])
        .await
        .expect("saved");
    assert!(r[0].success);
    assert_eq!(owner_of(&sim, "Lead", &other), integration, "the rule won");

    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.records_reassigned, 1, "{r:?}");
    assert_eq!(
        owner_of(&sim, "Lead", &lead),
        manager,
        "the transfer stands"
    );
}

/// A target who is leaving too (here the manager, disabled in the same
/// cycle) gets nothing: the records go to the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_leaving_in_the_same_cycle_is_not_a_target() {
    let running = start_sim(30, 315).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let probe = synced(
        &running,
        &repo_root().join("rules/gallery-defaults"),
        &dir.path().join("probe.db"),
        2000,
    )
    .await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &probe).await;
    let links = probe.store.links().await.expect("links");
    let manager_entra = links
        .iter()
        .find(|(_, s)| **s == manager)
        .map(|(e, _)| e.clone())
        .expect("the manager's Entra id");
    let (fallback_id, fallback) = colleagues(&sim, &[&sf, &manager], 1)
        .pop()
        .expect("a colleague");
    let pack = manager_then_user(dir.path(), &fallback);
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let opp = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
    );
    disable(&sim, &leaver);
    disable(&sim, &manager_entra);
    let r = engine.sync_once(&Quiet).await.expect("both leave");
    assert_eq!(r.deactivated, 2, "{r:?}");
    assert_eq!(owner_of(&sim, "Opportunity", &opp), fallback_id);
    let refused = audit_details(&engine, "leaver.target_refused").await;
    assert!(
        refused.iter().any(|e| e["target"] == json!("Manager")
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("leaving too"))),
        "{refused:?}"
    );
}

/// A leaver provisor froze and held (its records had nowhere to go) that
/// an admin then deactivates by hand is closed: no longer listed as
/// frozen but active, and its records are handed over when a target
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_leaver_deactivated_by_hand_is_closed_and_its_records_handed_over() {
    let running = start_sim(30, 316).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("rules/gallery-defaults");
    let engine = synced(&running, &pack, &dir.path().join("s.db"), 2000).await;
    let (leaver, sf, manager) = leaver_with_manager(&sim, &engine).await;
    sim.salesforce()
        .set_read_denied(&manager, "Opportunity", true);
    let opp = seed(
        &sim,
        "Opportunity",
        &sf,
        json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2027-01-31"}),
    );
    disable(&sim, &leaver);
    let r = engine.sync_once(&Quiet).await.expect("held");
    assert_eq!((r.frozen, r.deactivated, r.waiting), (1, 0, 1));
    assert_eq!(engine.store.open_leavers().await.expect("open").len(), 1);
    // An admin deactivates it by hand; the manager may read again.
    let mut off = Map::new();
    off.insert("IsActive".into(), json!(false));
    sim.salesforce().update("User", &sf, off).expect("by hand");
    sim.salesforce()
        .set_read_denied(&manager, "Opportunity", false);
    let r = engine.sync_once(&Quiet).await.expect("closed");
    assert!(
        r.plan.render().contains("> handover"),
        "{}",
        r.plan.render()
    );
    assert_eq!(r.records_reassigned, 1, "{r:?}");
    assert_eq!(owner_of(&sim, "Opportunity", &opp), manager);
    assert!(engine.store.open_leavers().await.expect("open").is_empty());
}
