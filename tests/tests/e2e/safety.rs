//! The guard between plan and apply: the accidental-deletion threshold
//! (per cycle and sliding window) and protected users.

use provisor::config::{ScopeConfig, ScopeMode};
use provisor::engine::Quiet;
use provisor::sim::Sim;
use provisor_e2e::{engine_with, rhai_pack, start_sim};
use serde_json::{Map, Value, json};

use crate::salesforce::fast;

fn is_active(sim: &Sim, upn: &str) -> bool {
    sim.salesforce()
        .users_where("Username", upn)
        .first()
        .is_some_and(|u| u.get("IsActive") == Some(&json!(true)))
}

fn upn_of(sim: &Sim, id: &str) -> String {
    sim.graph()
        .users()
        .find(|u| u.id == id)
        .and_then(|u| {
            u.props
                .get("userPrincipalName")?
                .as_str()
                .map(str::to_string)
        })
        .expect("upn")
}

/// Emptying the assigned group would deactivate everyone in it: the
/// deactivations (and freezes) are staged, none is applied, and they run
/// only after `approve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_the_assigned_group_stages_deactivations_until_approved() {
    let running = start_sim(40, 81).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.entra.scope = ScopeConfig {
            mode: ScopeMode::Groups,
            groups: vec!["SF-Sales".into()],
            filters: vec![],
        };
        c.safety.max_deactivations = 3;
    })
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert!(r.created > 3, "{}", r.plan.render());
    let (group, members): (String, Vec<String>) = {
        let g = sim.graph();
        let grp = g.group_by_name("SF-Sales").expect("group");
        (grp.id.clone(), grp.members.iter().cloned().collect())
    };
    let upns: Vec<String> = members.iter().map(|m| upn_of(&sim, m)).collect();
    let active_before = upns.iter().filter(|u| is_active(&sim, u)).count();
    assert!(active_before > 3);
    for m in &members {
        sim.graph()
            .set_membership(&group, m, false)
            .expect("remove");
    }

    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, 0, "{}", r.plan.render());
    assert!(
        r.plan.actions.iter().all(|a| !matches!(
            a.kind,
            provisor::engine::plan::ActionKind::Deactivate
                | provisor::engine::plan::ActionKind::Freeze { .. }
        )),
        "{}",
        r.plan.render()
    );
    let still = upns.iter().filter(|u| is_active(&sim, u)).count();
    assert_eq!(still, active_before, "nothing was deactivated");
    let staged = engine.store.staged_deactivations().await.expect("staged");
    assert_eq!(staged.len(), active_before);
    assert!(
        staged
            .iter()
            .all(|s| s.status == "pending" && s.reason.contains("max_deactivations"))
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.event == "deactivations.staged")
            .count(),
        1
    );

    // Another cycle: still staged, not staged twice, nothing applied.
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, 0);
    assert_eq!(
        engine
            .store
            .staged_deactivations()
            .await
            .expect("staged")
            .len(),
        active_before
    );

    // An unknown batch is named; approving the real one lets them go.
    let e = engine
        .store
        .decide_staged(Some("no-such-batch"), true)
        .await
        .expect_err("unknown")
        .to_string();
    assert!(e.contains("no-such-batch"), "{e}");
    let batch = staged[0].batch.clone();
    let n = engine
        .store
        .decide_staged(Some(&batch), true)
        .await
        .expect("approve");
    assert_eq!(n, active_before);
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, active_before, "{}", r.plan.render());
    assert_eq!(upns.iter().filter(|u| is_active(&sim, u)).count(), 0);
    assert!(
        engine
            .store
            .staged_deactivations()
            .await
            .expect("staged")
            .is_empty()
    );
}

/// Small cycles cannot slip a mass removal under the per-cycle limit: the
/// hourly window counts what was applied before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sliding_window_trips_on_a_removal_spread_over_small_cycles() {
    let running = start_sim(30, 82).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.safety.max_deactivations = 10;
        c.safety.max_deactivations_per_hour = Some(5);
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let candidates: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.removed.is_none() && u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| u.id.clone())
        .collect();
    let enabled: Vec<String> = candidates
        .into_iter()
        .filter(|id| is_active(&sim, &upn_of(&sim, id)))
        .take(6)
        .collect();
    assert_eq!(enabled.len(), 6);
    let disable = |ids: &[String]| {
        for id in ids {
            let mut m = Map::new();
            m.insert("accountEnabled".into(), Value::Bool(false));
            sim.graph().update_user(id, m).expect("disable");
        }
    };
    disable(&enabled[0..2]);
    assert_eq!(engine.sync_once(&Quiet).await.expect("sync").deactivated, 2);
    disable(&enabled[2..4]);
    assert_eq!(engine.sync_once(&Quiet).await.expect("sync").deactivated, 2);
    // 4 in the last hour; 2 more would make 6 > 5.
    disable(&enabled[4..6]);
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, 0, "{}", r.plan.render());
    let staged = engine.store.staged_deactivations().await.expect("staged");
    assert_eq!(staged.len(), 2);
    assert!(
        staged[0].reason.contains("per_hour"),
        "{}",
        staged[0].reason
    );
    for id in &enabled[4..6] {
        assert!(is_active(&sim, &upn_of(&sim, id)));
    }
    // Rejected: they stay active, cycle after cycle.
    engine
        .store
        .decide_staged(None, false)
        .await
        .expect("reject");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.deactivated, 0);
    for id in &enabled[4..6] {
        assert!(is_active(&sim, &upn_of(&sim, id)));
    }
}

/// A break-glass account is never frozen or deactivated, even when the
/// rules make it a leaver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_users_survive_a_scope_change_that_removes_them() {
    let running = start_sim(20, 83).await;
    let sim = running.sim.clone();
    let id = sim
        .graph()
        .users()
        .find(|u| u.removed.is_none() && u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| u.id.clone())
        .expect("a user");
    let upn = upn_of(&sim, &id);
    let dir = tempfile::tempdir().expect("temp dir");
    let glass = upn.to_uppercase();
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), move |c| {
        fast(c);
        c.safety.break_glass = vec![glass];
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    assert!(is_active(&sim, &upn));
    let mut m = Map::new();
    m.insert("accountEnabled".into(), Value::Bool(false));
    sim.graph().update_user(&id, m).expect("disable");
    for _ in 0..2 {
        let r = engine.sync_once(&Quiet).await.expect("sync");
        assert_eq!(r.deactivated, 0, "{}", r.plan.render());
    }
    assert!(is_active(&sim, &upn));
    let frozen = {
        let org = sim.salesforce();
        let sf_id = org.users_where("Username", &upn)[0]["Id"].clone();
        org.rows("UserLogin")
            .any(|l| l["UserId"] == sf_id && l["IsFrozen"] == json!(true))
    };
    assert!(!frozen, "never frozen");
    let audit = engine.store.audit_rows(None).await.expect("audit");
    let protected: Vec<_> = audit
        .iter()
        .filter(|a| a.event == "user.protected")
        .collect();
    assert_eq!(protected.len(), 1, "alerted once, not every cycle");
    assert!(protected[0].detail.to_string().contains("break-glass"));
}

/// `provisor plan` is a true dry run: zero Salesforce writes, counted at the
/// emulator. The approved plan applies as made; one whose basis moved (Entra
/// read further, or Salesforce changed) is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_are_dry_runs_and_apply_only_on_an_unchanged_basis() {
    let running = start_sim(30, 84).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;

    let writes = sim.stats().sf_write_calls;
    let plan = engine.dry_run(&Quiet).await.expect("plan");
    assert!(plan.actions.len() > 10, "{}", plan.render());
    assert_eq!(sim.stats().sf_write_calls, writes, "a plan writes nothing");
    let users_before = sim.salesforce().rows("User").count();

    // Approved as made: applies exactly that.
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_file()).expect("write");
    let text = std::fs::read_to_string(&file).expect("read");
    let approved = provisor::engine::plan::Plan::from_file("plan.json", &text).expect("valid");
    let r = engine
        .apply_approved(&approved, &Quiet)
        .await
        .expect("applies");
    assert_eq!(r.plan.actions, plan.actions);
    assert!(sim.salesforce().rows("User").count() > users_before);

    // A plan made before Entra was read further is refused.
    let id = sim
        .graph()
        .users()
        .find(|u| u.removed.is_none() && u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| u.id.clone())
        .expect("user");
    let mut m = Map::new();
    m.insert("jobTitle".into(), json!("Chief Dry Runner"));
    sim.graph().update_user(&id, m).expect("update");
    let old = engine.dry_run(&Quiet).await.expect("plan");
    let mut m = Map::new();
    m.insert("department".into(), json!("Elsewhere"));
    sim.graph().update_user(&id, m).expect("update");
    engine.sync_once(&Quiet).await.expect("sync");
    let e = engine
        .apply_approved(&old, &Quiet)
        .await
        .expect_err("stale")
        .to_string();
    assert!(e.contains("refused") && e.contains("delta links"), "{e}");

    // A plan whose actions no longer match Salesforce is refused too.
    let upn = upn_of(&sim, &id);
    let mut m = Map::new();
    m.insert("surname".into(), json!("Renamed"));
    sim.graph().update_user(&id, m).expect("update");
    let planned = engine.dry_run(&Quiet).await.expect("plan");
    assert!(!planned.actions.is_empty());
    {
        let mut org = sim.salesforce();
        let sf_id = org.users_where("Username", &upn)[0]["Id"]
            .as_str()
            .expect("id")
            .to_string();
        let mut edit = serde_json::Map::new();
        edit.insert("LastName".into(), json!("Renamed"));
        org.update("User", &sf_id, edit).expect("hand edit");
    }
    let e = engine
        .apply_approved(&planned, &Quiet)
        .await
        .expect_err("changed")
        .to_string();
    assert!(e.contains("other actions"), "{e}");
}

/// Active Salesforce users that no Entra user is linked to are listed with
/// their licence; linked users and the integration user are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_listed_with_their_licence() {
    let running = start_sim(15, 85).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;
    engine.sync_once(&Quiet).await.expect("sync");
    let hand_made = {
        let mut org = sim.salesforce();
        let profile = org.profile_id("Standard User").expect("profile");
        let mut m = Map::new();
        for (k, v) in [
            ("Username", "left.behind@contoso-sim.com"),
            ("Email", "left.behind@contoso-sim.com"),
            ("LastName", "Behind"),
            ("Alias", "lbehind"),
            ("TimeZoneSidKey", "GMT"),
            ("LocaleSidKey", "en_US"),
            ("EmailEncodingKey", "UTF-8"),
            ("LanguageLocaleKey", "en_US"),
        ] {
            m.insert(k.into(), json!(v));
        }
        m.insert("ProfileId".into(), json!(profile));
        org.insert_raw("User", m)
    };
    let orphans = engine.orphans().await.expect("orphans");
    let mine = orphans
        .iter()
        .find(|o| o.id == hand_made)
        .expect("the hand-made user is an orphan");
    assert_eq!(mine.username, "left.behind@contoso-sim.com");
    assert_eq!(mine.profile.as_deref(), Some("Standard User"));
    assert!(mine.licence.is_some());
    let links = engine.store.links().await.expect("links");
    assert!(orphans.iter().all(|o| !links.values().any(|s| *s == o.id)));
    let me = engine.salesforce.user_id().await.expect("integration user");
    assert!(orphans.iter().all(|o| o.id != me));
}

/// A profile move onto another user licence is flagged in the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_across_licence_types_is_flagged() {
    let running = start_sim(40, 86).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;
    engine.sync_once(&Quiet).await.expect("sync");
    let links = engine.store.links().await.expect("links");
    // A managed, enabled member of SF-Sales and of no other SF- group.
    let (group, user) = {
        let g = sim.graph();
        let sales = g.group_by_name("SF-Sales").expect("group");
        let others: Vec<_> = g
            .groups()
            .filter(|x| x.display_name.starts_with("SF-") && x.id != sales.id)
            .collect();
        let user = sales
            .members
            .iter()
            .find(|m| {
                links.contains_key(*m)
                    && !others.iter().any(|o| o.members.contains(*m))
                    && g.user(m)
                        .is_some_and(|u| u.props.get("accountEnabled") == Some(&json!(true)))
            })
            .cloned()
            .expect("a sales-only user");
        (sales.id.clone(), user)
    };
    sim.graph()
        .set_membership(&group, &user, false)
        .expect("remove");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    let a = r
        .plan
        .actions
        .iter()
        .find(|a| a.entra_id == user)
        .expect("an update");
    assert!(
        a.reason
            .contains("crosses licence types (Salesforce -> Chatter Free)"),
        "{}",
        r.plan.render()
    );
}
