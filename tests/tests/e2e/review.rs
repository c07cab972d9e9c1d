//! Rehires: a new Entra user whose keys find an inactive Salesforce user
//! is held for review (or reactivated, if the pack says auto), never a
//! duplicate and never a DUPLICATE_USERNAME retry loop.

use provisor::engine::Quiet;
use provisor::engine::plan::ActionKind;
use provisor_e2e::{copy_dir, engine, repo_root, start_sim};
use serde_json::{Map, json};

/// An inactive account with the rehire's Username, made by hand.
fn old_account(sim: &provisor::sim::Sim, upn: &str) -> String {
    let mut org = sim.salesforce();
    let profile = org.profile_id("Standard User").expect("profile");
    let mut m = Map::new();
    for (k, v) in [
        ("Username", upn),
        ("Email", upn),
        ("LastName", "Former"),
        ("Alias", "former"),
        ("TimeZoneSidKey", "GMT"),
        ("LocaleSidKey", "en_US"),
        ("EmailEncodingKey", "UTF-8"),
        ("LanguageLocaleKey", "en_US"),
    ] {
        m.insert(k.into(), json!(v));
    }
    m.insert("ProfileId".into(), json!(profile));
    m.insert("IsActive".into(), json!(false));
    org.insert_raw("User", m)
}

async fn rehire_case(auto: bool) {
    let running = start_sim(10, 91).await;
    let sim = running.sim.clone();
    // A new joiner in Entra whose UPN an old, inactive account still has.
    let upn = "returning.colleague@contoso-sim.com";
    let mut p = Map::new();
    p.insert("userPrincipalName".into(), json!(upn));
    p.insert("mail".into(), json!(upn));
    p.insert("surname".into(), json!("Colleague"));
    p.insert("accountEnabled".into(), json!(true));
    p.insert("userType".into(), json!("Member"));
    let id = "00000000-0000-4000-8000-0000000000aa";
    sim.graph().create_user(id, p).expect("create");
    let old = old_account(&sim, upn);

    let dir = tempfile::tempdir().expect("temp dir");
    let pack = dir.path().join("pack");
    copy_dir(&repo_root().join("rules/gallery-defaults"), &pack);
    if auto {
        let m = std::fs::read_to_string(pack.join("pack.toml")).expect("read");
        std::fs::write(
            pack.join("pack.toml"),
            m.replace(
                "contract = \"0.4\"",
                "contract = \"0.4\"\nrehires = \"auto\"",
            ),
        )
        .expect("write");
    }
    let engine = engine(&running, &pack, &dir.path().join("s.db")).await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    let mine: Vec<_> = r.plan.actions.iter().filter(|a| a.entra_id == id).collect();
    let accounts = || sim.salesforce().users_where("Username", upn).len();
    if auto {
        assert!(
            mine.iter()
                .any(|a| matches!(a.kind, ActionKind::Link { .. })),
            "{}",
            r.plan.render()
        );
        assert!(
            mine.iter()
                .any(|a| matches!(a.kind, ActionKind::Reactivate { .. }))
        );
        assert_eq!(engine.store.links().await.expect("links")[id], old);
        let org = sim.salesforce();
        assert_eq!(org.users_where("Username", upn)[0]["IsActive"], json!(true));
    } else {
        assert!(mine.is_empty(), "nothing written: {}", r.plan.render());
        let review = engine.store.review(id).await.expect("queued");
        assert!(review.reason.contains("rehire"), "{}", review.reason);
        assert_eq!(review.candidates, vec![old.clone()]);
        // Cycle after cycle: no attempts spent, no DUPLICATE_USERNAME loop.
        for _ in 0..3 {
            let r = engine.sync_once(&Quiet).await.expect("sync");
            assert_eq!(r.failed, 0, "{:?}", r.failures);
        }
        assert!(engine.store.dead_letters().await.expect("dead").is_empty());
        // Rejected: a new account is tried (and Salesforce refuses the
        // taken Username, which is reported, not looped on silently).
        engine.store.decide_review(id, None).await.expect("reject");
        let r = engine.sync_once(&Quiet).await.expect("sync");
        assert!(
            r.plan
                .actions
                .iter()
                .any(|a| a.entra_id == id && matches!(a.kind, ActionKind::Create { .. })),
            "{}",
            r.plan.render()
        );
    }
    assert_eq!(accounts(), 1, "never a duplicate account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehire_is_reviewed_by_default() {
    rehire_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehire_is_reactivated_when_the_pack_says_auto() {
    rehire_case(true).await;
}

/// `provisor provision USER` runs one user through the whole pipeline now,
/// by object id or UPN, and leaves every other change for the next cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_on_demand_runs_one_user_now() {
    let running = start_sim(20, 92).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(
        &running,
        &repo_root().join("rules/gallery-defaults"),
        &dir.path().join("s.db"),
    )
    .await;
    engine.sync_once(&Quiet).await.expect("sync");
    let ids: Vec<(String, String)> = sim
        .graph()
        .users()
        .filter(|u| u.removed.is_none() && u.props.get("accountEnabled") == Some(&json!(true)))
        .filter_map(|u| {
            Some((
                u.id.clone(),
                u.props.get("userPrincipalName")?.as_str()?.to_string(),
            ))
        })
        .take(2)
        .collect();
    for (id, _) in &ids {
        let mut m = Map::new();
        m.insert("givenName".into(), json!("Ondemand"));
        sim.graph().update_user(id, m).expect("update");
    }
    let p = engine
        .provision(&ids[0].1.to_uppercase(), &Quiet)
        .await
        .expect("provision");
    assert_eq!(
        p.user.as_ref().map(|u| u.id.as_str()),
        Some(ids[0].0.as_str())
    );
    assert!(matches!(&p.evaluation, Some(Ok(e)) if e.desired.fields.contains_key("FirstName")));
    assert_eq!(p.report.users_considered, 1);
    assert_eq!(p.report.updated, 1, "{}", p.report.plan.render());
    let first_name =
        |upn: &str| sim.salesforce().users_where("Username", upn)[0]["FirstName"].clone();
    assert_eq!(first_name(&ids[0].1), json!("Ondemand"));
    assert_ne!(first_name(&ids[1].1), json!("Ondemand"), "not yet");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.users_considered, 1, "the other one, at the next cycle");
    assert_eq!(first_name(&ids[1].1), json!("Ondemand"));
    let e = engine
        .provision("nobody@contoso-sim.com", &Quiet)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("nobody@contoso-sim.com"), "{e}");
}

/// With `sync.manager`, ManagerId follows Entra's manager: managers created
/// in the same cycle as their reports are set in a second pass, the next
/// cycle has nothing to do, and a new manager is a mover's update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_are_set_in_a_second_pass_and_follow_entra() {
    let running = start_sim(30, 98).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = provisor_e2e::engine_with(
        &running,
        &repo_root().join("rules/gallery-defaults"),
        &dir.path().join("s.db"),
        |c| c.sync.manager = true,
    )
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let links = engine.store.links().await.expect("links");
    let pairs: Vec<(String, String)> = sim
        .graph()
        .users()
        .filter_map(|u| Some((u.id.clone(), u.manager_id.clone()?)))
        .collect();
    let manager_of = |sf: &str| {
        sim.salesforce()
            .rows("User")
            .find(|r| r["Id"] == json!(sf))
            .map(|r| r["ManagerId"].clone())
            .unwrap_or_default()
    };
    let mut checked = 0;
    for (u, m) in &pairs {
        let (Some(sf), Some(boss)) = (links.get(u), links.get(m)) else {
            continue;
        };
        let active = sim
            .salesforce()
            .rows("User")
            .any(|r| r["Id"] == json!(sf) && r["IsActive"] == json!(true));
        if active {
            assert_eq!(manager_of(sf), json!(boss), "{u}");
            checked += 1;
        }
    }
    assert!(checked > 5, "{checked}");
    let writes = sim.stats().sf_write_calls;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.users_considered, 0);
    assert_eq!(
        sim.stats().sf_write_calls,
        writes,
        "nothing left for a next pass"
    );

    // A mover gets a new manager.
    let (u, old) = pairs
        .iter()
        .find(|(u, m)| links.contains_key(u) && links.contains_key(m))
        .cloned()
        .expect("a managed pair");
    let new_boss = pairs
        .iter()
        .map(|(_, m)| m.clone())
        .find(|m| *m != old && links.contains_key(m) && *m != u)
        .expect("another manager");
    sim.graph()
        .set_manager(&u, Some(&new_boss))
        .expect("set manager");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.updated, 1, "{}", r.plan.render());
    assert_eq!(manager_of(&links[&u]), json!(links[&new_boss]));

    // A manager change delta never reports: invisible until managers are
    // read again (every sync.manager_reread_hours, 24 by default).
    sim.graph()
        .set_manager_unseen(&u, Some(&old))
        .expect("set manager");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.updated, 0, "delta did not say: {}", r.plan.render());
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(25)).to_rfc3339();
    engine
        .store
        .set_setting("entra.managers.read_at", &earlier)
        .await
        .expect("backdate");
    let calls = sim.stats().graph_calls;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.updated, 1, "{}", r.plan.render());
    assert_eq!(manager_of(&links[&u]), json!(links[&old]));
    // Two delta links and one page of 30 users with their managers.
    assert_eq!(sim.stats().graph_calls - calls, 3);
    let reread: Vec<_> = engine
        .store
        .audit_rows(None)
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.event == "entra.managers.reread")
        .collect();
    assert_eq!(reread.len(), 1);
    assert_eq!(reread[0].detail["changed"], json!(1));
    // Not due again for another day.
    let calls = sim.stats().graph_calls;
    engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(sim.stats().graph_calls - calls, 2);
}

/// Adopting an existing Salesforce user on its first match: changes that may
/// take access away (a profile change, revoking a permission set) are held
/// for approval instead of silently overwriting hand-made access; other
/// changes go ahead. Approved, they apply; rejected, the access stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_holds_downgrades_for_approval() {
    for approve in [true, false] {
        let running = start_sim(10, 99).await;
        let sim = running.sim.clone();
        // An Entra member of no Salesforce group: the pack wants Chatter Free.
        let upn = "adopted.person@contoso-sim.com";
        let id = "00000000-0000-4000-8000-0000000000bb";
        let mut p = Map::new();
        p.insert("userPrincipalName".into(), json!(upn));
        p.insert("mail".into(), json!(upn));
        p.insert("surname".into(), json!("Person"));
        p.insert("accountEnabled".into(), json!(true));
        p.insert("userType".into(), json!("Member"));
        sim.graph().create_user(id, p).expect("create");
        // Hand-made: Standard User, with Marketing_Tools (which the pack owns).
        let sf = {
            let mut org = sim.salesforce();
            let profile = org.profile_id("Standard User").expect("profile");
            let mut m = Map::new();
            for (k, v) in [
                ("Username", upn),
                ("Email", upn),
                ("LastName", "Person"),
                ("Alias", "adopted"),
                ("TimeZoneSidKey", "GMT"),
                ("LocaleSidKey", "en_US"),
                ("EmailEncodingKey", "UTF-8"),
                ("LanguageLocaleKey", "en_US"),
            ] {
                m.insert(k.into(), json!(v));
            }
            m.insert("ProfileId".into(), json!(profile));
            let sf = org.insert_raw("User", m);
            let ps = org
                .rows("PermissionSet")
                .find(|r| r["Name"] == json!("Marketing_Tools"))
                .map(|r| r["Id"].clone())
                .expect("permission set");
            let mut a = Map::new();
            a.insert("AssigneeId".into(), json!(sf));
            a.insert("PermissionSetId".into(), ps);
            org.insert_raw("PermissionSetAssignment", a);
            sf
        };
        let profile_of = |sim: &provisor::sim::Sim| {
            let org = sim.salesforce();
            let pid = org.users_where("Username", upn)[0]["ProfileId"].clone();
            org.rows("Profile")
                .find(|p| p["Id"] == pid)
                .map(|p| p["Name"].clone())
                .unwrap_or_default()
        };
        let has_ps = |sim: &provisor::sim::Sim| {
            let org = sim.salesforce();
            let ps = org
                .rows("PermissionSet")
                .find(|r| r["Name"] == json!("Marketing_Tools"))
                .map(|r| r["Id"].clone())
                .expect("permission set");
            org.rows("PermissionSetAssignment")
                .any(|a| a["AssigneeId"] == json!(sf) && a["PermissionSetId"] == ps)
        };

        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine(
            &running,
            &repo_root().join("tests/fixtures/packs/access"),
            &dir.path().join("s.db"),
        )
        .await;
        let r = engine.sync_once(&Quiet).await.expect("sync");
        assert_eq!(r.failed, 0, "{:?}", r.failures);
        assert_eq!(profile_of(&sim), json!("Standard User"), "held");
        assert!(has_ps(&sim), "held");
        let review = engine.store.review(id).await.expect("held for review");
        assert!(
            review.reason.starts_with("adoption:")
                && review
                    .reason
                    .contains("Profile Standard User -> Chatter Free User")
                && review
                    .reason
                    .contains("revoke permission set Marketing_Tools"),
            "{}",
            review.reason
        );
        // Still held on later cycles (the account is linked by now).
        let mut m = Map::new();
        m.insert("givenName".into(), json!("Adopted"));
        sim.graph().update_user(id, m).expect("update");
        engine.sync_once(&Quiet).await.expect("sync");
        assert_eq!(profile_of(&sim), json!("Standard User"));

        if approve {
            engine
                .store
                .decide_review(id, Some(&sf))
                .await
                .expect("approve");
            engine.sync_once(&Quiet).await.expect("sync");
            assert_eq!(
                profile_of(&sim),
                json!("Chatter Free User"),
                "approved: applied"
            );
            assert!(!has_ps(&sim));
        } else {
            engine.store.decide_review(id, None).await.expect("reject");
            let mut m = Map::new();
            m.insert("givenName".into(), json!("Still"));
            sim.graph().update_user(id, m).expect("update");
            engine.sync_once(&Quiet).await.expect("sync");
            assert_eq!(
                profile_of(&sim),
                json!("Standard User"),
                "rejected: access stays"
            );
            assert!(has_ps(&sim));
        }
    }
}
