//! The demo's story, asserted field by field in the emulated org.

use std::collections::HashMap;

use provisor::demo::joiner_mover_leaver;
use provisor::engine::Quiet;
use provisor::sim::{Sim, graph::SimUser};
use provisor_e2e::{engine, rhai_pack, start_sim};
use serde_json::{Map, Value, json};

/// The gallery defaults, written independently of both packs.
fn expected(u: &SimUser, groups: &[String]) -> (Map<String, Value>, &'static str) {
    let s = |k: &str| {
        u.props
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let upn = s("userPrincipalName").expect("generated users have a UPN");
    let mut m = Map::new();
    m.insert("Username".into(), json!(upn));
    m.insert("FederationIdentifier".into(), json!(upn));
    m.insert(
        "Alias".into(),
        json!(upn.chars().take(8).collect::<String>()),
    );
    m.insert("Email".into(), json!(s("mail")));
    m.insert("FirstName".into(), json!(s("givenName")));
    m.insert(
        "LastName".into(),
        json!(s("surname").unwrap_or_else(|| ".".into())),
    );
    m.insert(
        "LocaleSidKey".into(),
        json!(s("preferredLanguage").map_or("en_US".to_string(), |l| l.replace('-', "_"))),
    );
    m.insert("LanguageLocaleKey".into(), json!("en_US"));
    m.insert("EmailEncodingKey".into(), json!("ISO-8859-1"));
    m.insert("TimeZoneSidKey".into(), json!("America/Los_Angeles"));
    let profile = ["SF-Admins", "SF-Sales", "SF-Support", "SF-Marketing"]
        .iter()
        .find(|g| groups.iter().any(|x| x == *g))
        .map(|g| {
            if *g == "SF-Admins" {
                "System Administrator"
            } else {
                "Standard User"
            }
        })
        .unwrap_or("Chatter Free User");
    (m, profile)
}

fn groups_of(sim: &Sim, id: &str) -> Vec<String> {
    sim.graph()
        .groups()
        .filter(|g| g.members.contains(id))
        .map(|g| g.display_name.clone())
        .collect()
}

fn sf_users_by_username(sim: &Sim) -> HashMap<String, Vec<Map<String, Value>>> {
    let org = sim.salesforce();
    let mut out: HashMap<String, Vec<Map<String, Value>>> = HashMap::new();
    for u in org.rows("User") {
        let name = u
            .get("Username")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_lowercase();
        out.entry(name).or_default().push(u.clone());
    }
    out
}

fn profile_name(sim: &Sim, profile_id: &Value) -> String {
    let org = sim.salesforce();
    profile_id
        .as_str()
        .and_then(|p| org.get("Profile", p))
        .and_then(|p| p.get("Name")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Asserts the org holds exactly the expected user for `id`.
fn assert_user(sim: &Sim, id: &str, active: bool) -> Map<String, Value> {
    let u = sim
        .graph()
        .user(id)
        .cloned()
        .expect("user exists in the tenant");
    let (want, profile) = expected(&u, &groups_of(sim, id));
    let upn = want["Username"].as_str().unwrap_or_default().to_lowercase();
    let all = sf_users_by_username(sim);
    let rows = all.get(&upn).cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "exactly one Salesforce user for {upn}");
    let row = rows[0].clone();
    for (k, v) in &want {
        let got = row.get(k).unwrap_or(&Value::Null);
        if k == "Alias" && got != v {
            // Taken aliases get a numbered variant: `adele.ro` -> `adele.r2`.
            let (got, v) = (
                got.as_str().unwrap_or_default(),
                v.as_str().unwrap_or_default(),
            );
            let stem = got.trim_end_matches(|c: char| c.is_ascii_digit());
            assert!(
                got.len() <= 8 && stem.len() < got.len() && v.starts_with(stem),
                "{upn}: Alias {got:?} is neither {v:?} nor a numbered variant of it"
            );
            continue;
        }
        assert_eq!(got, v, "{upn}: field {k}");
    }
    assert_eq!(
        row.get("IsActive"),
        Some(&Value::Bool(active)),
        "{upn}: IsActive"
    );
    assert_eq!(
        profile_name(sim, &row["ProfileId"]),
        profile,
        "{upn}: profile"
    );
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_flow_leaves_the_expected_salesforce_state() {
    let running = start_sim(300, 11).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(&running, &rhai_pack(), &dir.path().join("state.db")).await;

    // Pre-existing users and their ids, to prove they are matched, not duplicated.
    let before: HashMap<String, String> = sim
        .salesforce()
        .rows("User")
        .map(|u| {
            (
                u["Username"].as_str().unwrap_or_default().to_lowercase(),
                u["Id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        before.len(),
        8,
        "seeded org: integration user, an admin, an orphan and five people to match"
    );

    let report = engine.sync_once(&Quiet).await.expect("initial sync");
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.linked, 5);
    // Adopted accounts keep their profile until an operator approves the
    // change (the gallery connector would overwrite it); approve them all.
    let held = provisor_e2e::approve_adoptions(&engine).await;
    assert!(held > 0, "some matched accounts had another profile");
    let approved = engine.sync_once(&Quiet).await.expect("approved adoptions");
    assert_eq!(approved.failed, 0, "{:?}", approved.failures);
    assert_eq!(approved.users_considered, held);

    let tenant: Vec<SimUser> = sim.graph().users().cloned().collect();
    let enabled: Vec<&SimUser> = tenant
        .iter()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .collect();
    assert!(
        enabled.len() < tenant.len(),
        "the tenant has disabled users"
    );
    for u in &enabled {
        let row = assert_user(&sim, &u.id, true);
        let upn = u.props["userPrincipalName"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        if let Some(old_id) = before.get(&upn) {
            assert_eq!(
                row["Id"].as_str(),
                Some(old_id.as_str()),
                "{upn} kept its pre-existing Salesforce user"
            );
        }
    }
    for u in tenant
        .iter()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(false)))
    {
        let upn = u.props["userPrincipalName"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            !sf_users_by_username(&sim).contains_key(&upn),
            "disabled user {upn} must not be created"
        );
    }
    // Users provisor does not manage are untouched.
    let all = sf_users_by_username(&sim);
    for untouched in [
        "integration@provisor-sim.example",
        "it.admin@contoso-sim.com.prod",
        "former.contractor@contoso-sim.com",
    ] {
        assert_eq!(all[untouched][0]["IsActive"], json!(true), "{untouched}");
    }
    assert_eq!(
        sim.salesforce().rows("User").count(),
        3 + enabled.len(),
        "one Salesforce user per enabled Entra user, plus the three unmanaged ones"
    );

    // Joiner, mover, leaver.
    let story = joiner_mover_leaver(&sim).expect("story applies to the tenant");
    let r1 = engine.sync_once(&Quiet).await.expect("incremental sync");
    assert_eq!(
        (r1.created, r1.updated, r1.deactivated, r1.failed),
        (1, 1, 1, 0),
        "{}",
        r1.plan.render()
    );
    let joiner = assert_user(&sim, &story.joiner, true);
    assert_eq!(joiner["LocaleSidKey"], json!("de_DE"));
    assert_eq!(joiner["Alias"], json!("new.join"));
    assert_eq!(profile_name(&sim, &joiner["ProfileId"]), "Standard User");
    let mover = assert_user(&sim, &story.mover, true);
    assert_eq!(
        profile_name(&sim, &mover["ProfileId"]),
        "Standard User",
        "the mover joined SF-Sales"
    );

    // The leaver is deactivated, not deleted.
    let leaver_upn = sim
        .graph()
        .user(&story.leaver)
        .and_then(|u| u.props["userPrincipalName"].as_str().map(str::to_lowercase))
        .unwrap_or_default();
    let rows = sf_users_by_username(&sim)
        .remove(&leaver_upn)
        .unwrap_or_default();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["IsActive"], json!(false), "leaver deactivated");
    let leaver_sf = rows[0]["Id"].as_str().unwrap_or_default().to_string();
    let frozen = |sim: &Sim| {
        sim.salesforce()
            .rows("UserLogin")
            .find(|l| l["UserId"].as_str() == Some(leaver_sf.as_str()))
            .map(|l| l["IsFrozen"].clone())
    };
    assert_eq!(
        frozen(&sim),
        Some(json!(true)),
        "leaver frozen before deactivation"
    );

    // Restore.
    sim.graph().restore_user(&story.leaver).expect("restore");
    let r2 = engine.sync_once(&Quiet).await.expect("sync after restore");
    assert_eq!(r2.reactivated, 1, "{}", r2.plan.render());
    assert_user(&sim, &story.leaver, true);
    assert_eq!(frozen(&sim), Some(json!(false)), "restored user unfrozen");

    // The audit trail holds every change and its chain verifies.
    let audit = engine.store.audit_rows(None).await.expect("audit rows");
    provisor::audit::verify(&audit).expect("audit chain intact");
    let count = |e: &str| audit.iter().filter(|r| r.event == e).count();
    assert_eq!(count("user.created"), report.created + 1);
    assert_eq!(count("user.deactivated"), 1);
    assert_eq!(count("user.frozen"), 1);
    assert_eq!(count("user.unfrozen"), 1);
    assert_eq!(count("user.reactivated"), 1);
    assert_eq!(count("user.linked"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_without_tenant_changes_makes_zero_salesforce_writes() {
    let running = start_sim(120, 3).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(&running, &rhai_pack(), &dir.path().join("state.db")).await;
    let first = engine.sync_once(&Quiet).await.expect("initial sync");
    assert!(first.created > 0);
    let before = sim.stats();
    assert!(before.sf_write_calls > 0);
    for _ in 0..2 {
        let again = engine.sync_once(&Quiet).await.expect("no-op sync");
        assert_eq!(again.plan.actions.len(), 0, "{}", again.plan.render());
    }
    let after = sim.stats();
    assert_eq!(
        after.sf_write_calls, before.sf_write_calls,
        "no Salesforce write calls"
    );
    assert_eq!(after.sf_records_written, before.sf_records_written);
    assert_eq!(
        after.sf_api_calls, before.sf_api_calls,
        "not even reads: nothing was dirty"
    );
    assert!(
        after.graph_delta_pages > before.graph_delta_pages,
        "the delta links were polled"
    );

    // A change that maps to nothing Salesforce holds (jobTitle is not in the
    // gallery mapping) reads the user but writes nothing either.
    let id = sim
        .graph()
        .users()
        .find(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .map(|u| u.id.clone())
        .expect("an enabled user");
    let mut change = Map::new();
    change.insert("jobTitle".into(), json!("Chief Tester"));
    sim.graph().update_user(&id, change).expect("update");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!((r.users_considered, r.unchanged), (1, 1));
    assert_eq!(sim.stats().sf_write_calls, before.sf_write_calls);
}

/// A user in two groups that map to different profiles: the pack's order
/// decides, and the plan says which groups disagreed and which one won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_explains_which_group_decided_a_disputed_profile() {
    let running = start_sim(120, 31).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(&running, &rhai_pack(), &dir.path().join("s.db")).await;
    let (admins, sales_group) = {
        let t = sim.graph();
        let admins = t
            .group_by_name("SF-Admins")
            .map(|g| g.members.clone())
            .unwrap_or_default();
        let sales = t
            .group_by_name("SF-Sales")
            .map(|g| g.id.clone())
            .expect("SF-Sales");
        (admins, sales)
    };
    let both: Vec<&String> = admins.iter().collect();
    assert!(!both.is_empty(), "the seeded tenant has admins");
    for a in &both {
        sim.graph()
            .set_membership(&sales_group, a, true)
            .expect("join Sales");
    }
    let plan = engine.dry_run(&Quiet).await.expect("plan");
    for id in both {
        let a = plan
            .actions
            .iter()
            .find(|a| &a.entra_id == id && a.kind.name() == "create")
            .expect("a create for the admin");
        assert!(
            a.reason.contains("groups disagree on the profile (SF-Admins -> System Administrator, SF-Sales -> Standard User): the pack's precedence (group_profiles order) picks System Administrator from SF-Admins"),
            "{}",
            a.reason
        );
    }
    // Users in one group only get no such note.
    assert!(
        plan.actions
            .iter()
            .filter(|a| a.reason.contains("disagree"))
            .count()
            < 10
    );
}

/// What the org holds per username: active, profile, role, manager's
/// username, first name, and permission sets.
/// Sets one Graph property of each of `ids`.
fn set_each(sim: &Sim, ids: &[String], field: &str, value: Value) {
    for id in ids {
        let mut m = Map::new();
        m.insert(field.into(), value.clone());
        sim.graph()
            .update_user(id, m)
            .expect("update an Entra user");
    }
}

/// The Salesforce user whose Username is the Entra user's UPN.
fn sf_user(sim: &Sim, entra_id: &str) -> Option<Map<String, Value>> {
    let upn = sim
        .graph()
        .user(entra_id)
        .and_then(|u| u.props["userPrincipalName"].as_str().map(str::to_string))?;
    sim.salesforce()
        .users_where("Username", &upn)
        .first()
        .map(|u| (*u).clone())
}

fn org_state(sim: &Sim) -> std::collections::BTreeMap<String, String> {
    let org = sim.salesforce();
    let username = |id: &Value| {
        org.rows("User")
            .find(|u| &u["Id"] == id)
            .and_then(|u| u["Username"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    org.rows("User")
        .map(|u| {
            let mut ps: Vec<String> = org
                .rows("PermissionSetAssignment")
                .filter(|a| a["AssigneeId"] == u["Id"])
                .filter_map(|a| a["PermissionSetId"].as_str().map(str::to_string))
                .collect();
            ps.sort();
            (
                u["Username"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{} {} {} {} {} {:?}",
                    u["IsActive"],
                    u.get("ProfileId").cloned().unwrap_or_default(),
                    u.get("UserRoleId").cloned().unwrap_or_default(),
                    u.get("ManagerId").map(username).unwrap_or_default(),
                    u.get("FirstName").cloned().unwrap_or_default(),
                    ps.len()
                ),
            )
        })
        .collect()
}

/// A cycle with more users than `sync.plan_chunk_users` is planned and
/// applied a chunk at a time; it must end exactly where one planned at once
/// does: joiners, pre-existing users matched, managers set (some across
/// chunks), leavers deactivated after every chunk was planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_planned_in_chunks_ends_where_one_planned_at_once_does() {
    let mut states = Vec::new();
    for chunk in [100_000, 13] {
        let running = start_sim(150, 32).await;
        let sim = running.sim.clone();
        let dir = tempfile::tempdir().expect("temp dir");
        let pack = provisor_e2e::repo_root().join("tests/fixtures/packs/access-full");
        let engine = provisor_e2e::engine_with(&running, &pack, &dir.path().join("s.db"), |c| {
            c.sync.plan_chunk_users = chunk;
            c.sync.manager = true;
        })
        .await;
        let r = engine.sync_once(&Quiet).await.expect("initial sync");
        assert_eq!(r.failed, 0, "{:?}", r.failures);
        provisor_e2e::approve_adoptions(&engine).await;
        // Leavers and movers in one cycle.
        let ids: Vec<String> = sim
            .graph()
            .users()
            .filter(|u| u.props.get("accountEnabled") == Some(&json!(true)))
            .map(|u| u.id.clone())
            .collect();
        set_each(&sim, &ids[..6], "accountEnabled", json!(false));
        set_each(&sim, &ids[6..40], "givenName", json!("Moved"));
        let r = engine.sync_once(&Quiet).await.expect("second sync");
        assert_eq!(r.failed, 0, "{:?}", r.failures);
        assert_eq!(r.deactivated, 6, "{}", r.plan.render());
        let idle = engine.sync_once(&Quiet).await.expect("idle");
        assert!(idle.plan.actions.is_empty(), "{}", idle.plan.render());
        states.push(org_state(&sim));
    }
    assert_eq!(states[0], states[1]);
}

/// A chunked cycle that Salesforce stops before the leavers' turn (they
/// wait for the end of the cycle): the leavers stay to be done, and the
/// next cycle deactivates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leavers_held_to_the_end_of_a_stopped_chunked_cycle_are_not_lost() {
    let running = start_sim(60, 33).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = provisor_e2e::engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        c.sync.plan_chunk_users = 10;
        c.sync.retries = 1;
        c.sync.retry_base_ms = 1;
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    provisor_e2e::approve_adoptions(&engine).await;
    let ids: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| u.id.clone())
        .collect();
    set_each(&sim, &ids[..3], "accountEnabled", json!(false));
    set_each(&sim, &ids[3..40], "givenName", json!("Later"));
    // One write goes through, then Salesforce fails every write.
    sim.set_faults(provisor::sim::Faults {
        sf_write_fail_after: Some(1),
        ..Default::default()
    });
    engine
        .sync_once(&Quiet)
        .await
        .expect_err("Salesforce stops the cycle");
    let active = |id: &str| sf_user(&sim, id).is_some_and(|u| u["IsActive"] == json!(true));
    assert!(
        ids[..3].iter().all(|id| active(id)),
        "no leaver was reached"
    );
    sim.set_faults(provisor::sim::Faults::default());
    let r = engine.sync_once(&Quiet).await.expect("next cycle");
    assert_eq!(r.deactivated, 3, "{}", r.plan.render());
    assert!(ids[..3].iter().all(|id| !active(id)));
    // The chunk planned while the stopped one was applied sent nothing:
    // its users stayed dirty and are renamed now, like every other.
    let renamed = |id: &str| sf_user(&sim, id).is_some_and(|u| u["FirstName"] == json!("Later"));
    let missed: Vec<&String> = ids[3..40].iter().filter(|id| !renamed(id)).collect();
    assert!(missed.is_empty(), "not renamed: {missed:?}");
}

/// Match keys are asked only for users not linked yet. A linked user whose
/// account is gone (as after an org refresh) is asked for its keys then,
/// and matched again to its account instead of created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_user_whose_account_is_gone_is_matched_again_by_its_keys() {
    let running = start_sim(30, 17).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(&running, &rhai_pack(), &dir.path().join("state.db")).await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let id = sim
        .graph()
        .users()
        .find(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .map(|u| u.id.clone())
        .expect("an enabled user");
    let real = engine.store.links().await.expect("links")[&id].clone();
    // The link now points at an account the org does not have.
    engine
        .store
        .set_link(&id, "005000000000999AAA", "test")
        .await
        .expect("link");
    engine.store.mark_dirty(&id).await.expect("dirty");
    let users_before = sim.salesforce().rows("User").count();
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(
        (r.created, r.failed, r.linked),
        (0, 0, 1),
        "{}",
        r.plan.render()
    );
    assert_eq!(sim.salesforce().rows("User").count(), users_before);
    assert_eq!(engine.store.links().await.expect("links")[&id], real);
}
