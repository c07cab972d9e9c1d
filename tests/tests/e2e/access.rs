//! Access beyond the profile: permission sets, permission set groups,
//! permission set licences (with seats) and queue membership.

use std::collections::BTreeSet;

use crate::salesforce::fast;
use provisor::engine::Quiet;
use provisor::sim::Sim;
use provisor_e2e::{engine_with, repo_root, start_sim};
use serde_json::{Map, Value, json};

/// Enabled members of an Entra group: (entra id, upn).
fn members(sim: &Sim, group: &str) -> Vec<(String, String)> {
    let t = sim.graph();
    let Some(g) = t.group_by_name(group) else {
        return Vec::new();
    };
    g.members
        .iter()
        .filter_map(|m| t.user(m))
        .filter(|u| u.removed.is_none() && u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| {
            (
                u.id.clone(),
                u.props["userPrincipalName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn sf_id(sim: &Sim, upn: &str) -> String {
    sim.salesforce()
        .users_where("Username", upn)
        .first()
        .and_then(|u| u["Id"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn id_by(sim: &Sim, object: &str, field: &str, value: &str) -> String {
    sim.salesforce()
        .rows(object)
        .find(|r| r[field] == value)
        .and_then(|r| r["Id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{object} {value}"))
}

/// Everything a user holds, as "Kind:Name".
fn held(sim: &Sim, user: &str) -> BTreeSet<String> {
    let org = sim.salesforce();
    let name = |object: &str, id: &str, field: &str| {
        org.get(object, id)
            .and_then(|r| r[field].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for a in org
        .rows("PermissionSetAssignment")
        .filter(|a| a["AssigneeId"] == user)
    {
        match a.get("PermissionSetGroupId").and_then(Value::as_str) {
            Some(g) => out.insert(format!(
                "Group:{}",
                name("PermissionSetGroup", g, "DeveloperName")
            )),
            None => {
                let ps = a["PermissionSetId"].as_str().unwrap_or_default();
                if org.get("PermissionSet", ps).map(|p| &p["IsOwnedByProfile"])
                    == Some(&json!(true))
                {
                    continue;
                }
                out.insert(format!("PS:{}", name("PermissionSet", ps, "Name")))
            }
        };
    }
    for a in org
        .rows("PermissionSetLicenseAssign")
        .filter(|a| a["AssigneeId"] == user)
    {
        let l = a["PermissionSetLicenseId"].as_str().unwrap_or_default();
        out.insert(format!(
            "PSL:{}",
            name("PermissionSetLicense", l, "DeveloperName")
        ));
    }
    for m in org
        .rows("GroupMember")
        .filter(|m| m["UserOrGroupId"] == user)
    {
        let g = m["GroupId"].as_str().unwrap_or_default();
        out.insert(format!("Queue:{}", name("Group", g, "DeveloperName")));
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn psl_used(sim: &Sim) -> i64 {
    sim.salesforce()
        .rows("PermissionSetLicense")
        .find(|l| l["DeveloperName"] == "EinsteinAnalyticsPlusPsl")
        .and_then(|l| l["UsedLicenses"].as_i64())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_licences_and_queues_are_granted_in_order_and_diffed() {
    let running = start_sim(80, 57).await;
    let sim = running.sim.clone();
    let sales = members(&sim, "SF-Sales");
    let support: Vec<_> = members(&sim, "SF-Support")
        .into_iter()
        .filter(|m| !sales.contains(m))
        .collect();
    assert!(!sales.is_empty());
    assert!(
        support.len() > 3,
        "the test needs more support users than the 3 licence seats"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("tests/fixtures/packs/access-full");
    let engine = engine_with(&running, &pack, &dir.path().join("a.db"), fast).await;

    // Initial sync: everyone is created; only 3 support users get the
    // licensed permission set (3 seats), the others wait for a seat.
    let r = engine.sync_once(&Quiet).await.expect("initial sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(r.waiting, support.len() - 3, "{:?}", r.waiting_for);
    assert!(
        r.waiting_for
            .iter()
            .all(|w| w.contains("EinsteinAnalyticsPlusPsl") && w.contains("all 3 seats")),
        "{:?}",
        r.waiting_for
    );
    assert_eq!(psl_used(&sim), 3);
    let (_, sales_upn) = &sales[0];
    let sales_user = sf_id(&sim, sales_upn);
    assert_eq!(
        held(&sim, &sales_user),
        set(&[
            "Group:Sales_Bundle",
            "PS:Sales_Cloud_User",
            "Queue:Sales_Queue"
        ])
    );
    let full = set(&[
        "PS:CRM_Analytics_Plus_User",
        "PSL:EinsteinAnalyticsPlusPsl",
        "Queue:Support_Queue",
    ]);
    let mut with_licence = 0;
    for (_, upn) in &support {
        let h = held(&sim, &sf_id(&sim, upn));
        if h == full {
            with_licence += 1;
        } else {
            assert_eq!(h, set(&["Queue:Support_Queue"]), "{upn}");
        }
    }
    assert_eq!(with_licence, 3);

    // Nothing changes while no seat frees: the waiting users stay waiting,
    // with no failing writes.
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(r.waiting, support.len() - 3);
    assert_eq!(r.granted, 0, "{}", r.plan.render());

    // Seats appear: the waiting users get licence, then permission set.
    sim.salesforce()
        .set_permission_set_licence_total("EinsteinAnalyticsPlusPsl", 100);
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(r.waiting, 0);
    for (_, upn) in &support {
        assert_eq!(held(&sim, &sf_id(&sim, upn)), full, "{upn}");
    }

    // An admin adds the sales user to the support queue by hand.
    let mut m = Map::new();
    m.insert(
        "GroupId".into(),
        json!(id_by(&sim, "Group", "DeveloperName", "Support_Queue")),
    );
    m.insert("UserOrGroupId".into(), json!(sales_user));
    sim.salesforce()
        .create("GroupMember", m)
        .expect("hand-made membership");
    // The sales user leaves Sales; a support user leaves Support.
    let sales_group = sim.graph().group_by_name("SF-Sales").map(|g| g.id.clone());
    let support_group = sim
        .graph()
        .group_by_name("SF-Support")
        .map(|g| g.id.clone());
    let (sales_entra, _) = &sales[0];
    let (support_entra, support_upn) = &support[0];
    sim.graph()
        .set_membership(&sales_group.expect("group"), sales_entra, false)
        .expect("leave");
    sim.graph()
        .set_membership(&support_group.expect("group"), support_entra, false)
        .expect("leave");
    let used_before = psl_used(&sim);
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(
        held(&sim, &sales_user),
        set(&["Queue:Support_Queue"]),
        "provisor's grants revoked, the hand-made membership kept"
    );
    // The permission set went before its licence (the emulator refuses
    // the other order), and the seat is free again.
    assert_eq!(held(&sim, &sf_id(&sim, support_upn)), BTreeSet::new());
    assert_eq!(psl_used(&sim), used_before - 1);
    let audit = engine.store.audit_rows(None).await.expect("audit");
    for event in [
        "user.permission_set_group_removed",
        "user.permission_set_license_removed",
        "user.queue_removed",
        "user.permission_set_license_assigned",
    ] {
        assert!(audit.iter().any(|a| a.event == event), "{event}");
    }

    // Converged: the next cycle has nothing to do.
    let r = engine.sync_once(&Quiet).await.expect("no-op sync");
    assert_eq!(r.plan.actions.len(), 0, "{}", r.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_checks_every_kind_of_access_the_pack_names() {
    let running = start_sim(5, 58).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = repo_root().join("tests/fixtures/packs/access-full");
    let engine = engine_with(&running, &fixture, &dir.path().join("a.db"), fast).await;
    let checks = provisor::connection::test_connection(&engine).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "Salesforce: PermissionSetGroups the pack references (1)",
        "Salesforce: PermissionSetLicenses the pack references (1)",
        "Salesforce: Queues the pack references (2)",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }

    // Names the org lacks are each reported on their own line.
    let pack = dir.path().join("pack");
    std::fs::create_dir_all(&pack).expect("pack dir");
    std::fs::copy(fixture.join("main.rhai"), pack.join("main.rhai")).expect("copy");
    let manifest = std::fs::read_to_string(fixture.join("pack.toml"))
        .expect("manifest")
        .replace("[\"Sales_Bundle\"]", "[\"Sales_Bundle\", \"No_Group\"]")
        .replace(
            "queues = [\"Sales_Queue\", \"Support_Queue\"]",
            "queues = [\"Sales_Queue\", \"Support_Queue\", \"No_Queue\"]",
        );
    std::fs::write(pack.join("pack.toml"), manifest).expect("write");
    let engine = engine_with(&running, &pack, &dir.path().join("b.db"), fast).await;
    let checks = provisor::connection::test_connection(&engine).await;
    for (prefix, detail) in [
        ("Salesforce: PermissionSetGroups", "missing: No_Group"),
        ("Salesforce: Queues", "missing: No_Queue"),
    ] {
        assert!(
            checks
                .iter()
                .any(|c| !c.ok && c.name.starts_with(prefix) && c.detail == detail),
            "{checks:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_user_is_reactivated_first_then_its_access_is_granted_again() {
    let running = start_sim(40, 58).await;
    let sim = running.sim.clone();
    let (entra_id, upn) = members(&sim, "SF-Sales").remove(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("tests/fixtures/packs/access-full");
    let engine = engine_with(&running, &pack, &dir.path().join("a.db"), fast).await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let user = sf_id(&sim, &upn);
    let access = set(&[
        "Group:Sales_Bundle",
        "PS:Sales_Cloud_User",
        "Queue:Sales_Queue",
    ]);
    assert_eq!(held(&sim, &user), access);

    // Deleted in Entra: deactivated. Its access is then taken away in
    // Salesforce (as licence reclaiming does).
    sim.graph().soft_delete_user(&entra_id).expect("delete");
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!(r.deactivated, 1, "{}", r.plan.render());
    let assignments: Vec<String> = {
        let org = sim.salesforce();
        org.rows("PermissionSetAssignment")
            .chain(org.rows("GroupMember"))
            .filter(|a| {
                a.get("AssigneeId").or_else(|| a.get("UserOrGroupId")) == Some(&json!(user))
            })
            .filter(|a| {
                a.get("PermissionSetId")
                    .and_then(Value::as_str)
                    .and_then(|p| org.get("PermissionSet", p))
                    .is_none_or(|p| p["IsOwnedByProfile"] != json!(true))
            })
            .filter_map(|a| a["Id"].as_str().map(str::to_string))
            .collect()
    };
    for id in &assignments {
        sim.salesforce().delete(id).expect("remove assignment");
    }
    assert!(held(&sim, &user).is_empty());

    // Restored: one cycle reactivates the same Salesforce user and, after
    // that succeeded, grants its access again.
    sim.graph().restore_user(&entra_id).expect("restore");
    let r = engine.sync_once(&Quiet).await.expect("returner cycle");
    assert_eq!(r.reactivated, 1, "{}", r.plan.render());
    assert_eq!(r.created, 0);
    assert_eq!(held(&sim, &user), access);
    let rows = engine.store.audit_rows(None).await.expect("audit");
    let seq = |event: &str| {
        rows.iter()
            .filter(|r| {
                r.entra_id.as_deref() == Some(entra_id.as_str()) && r.event.as_str() == event
            })
            .map(|r| r.seq)
            .max()
            .unwrap_or_else(|| panic!("no {event}"))
    };
    let reactivated = seq("user.reactivated");
    for granted in [
        "user.permission_set_assigned",
        "user.permission_set_group_assigned",
        "user.queue_assigned",
    ] {
        assert!(
            seq(granted) > reactivated,
            "{granted} before the reactivation"
        );
    }
}

/// After a leaver's deactivation, what provisor granted is removed
/// (Salesforce keeps it on inactive users, and the permission set licence
/// seat stays taken); a hand-made membership stays; the seats freed are
/// counted per licence for `provisor status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_leaver_gives_back_what_provisor_granted_and_the_seats_are_counted() {
    let running = start_sim(80, 59).await;
    let sim = running.sim.clone();
    sim.salesforce()
        .set_permission_set_licence_total("EinsteinAnalyticsPlusPsl", 100);
    let support = members(&sim, "SF-Support");
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("tests/fixtures/packs/access-full");
    let engine = engine_with(&running, &pack, &dir.path().join("a.db"), fast).await;
    let r = engine.sync_once(&Quiet).await.expect("initial sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let full = set(&[
        "PS:CRM_Analytics_Plus_User",
        "PSL:EinsteinAnalyticsPlusPsl",
        "Queue:Support_Queue",
    ]);
    let (leaver, upn) = support
        .iter()
        .find(|(_, upn)| held(&sim, &sf_id(&sim, upn)) == full)
        .cloned()
        .expect("a support user with the licence");
    let sf = sf_id(&sim, &upn);
    // An admin's own grant on the same user is not provisor's to remove.
    let mut m = Map::new();
    m.insert(
        "GroupId".into(),
        json!(id_by(&sim, "Group", "DeveloperName", "Sales_Queue")),
    );
    m.insert("UserOrGroupId".into(), json!(sf));
    sim.salesforce()
        .create("GroupMember", m)
        .expect("hand-made membership");
    let used_before = psl_used(&sim);

    let mut off = Map::new();
    off.insert("accountEnabled".into(), json!(false));
    sim.graph().update_user(&leaver, off).expect("disable");
    let r = engine.sync_once(&Quiet).await.expect("leaver cycle");
    assert_eq!((r.deactivated, r.failed), (1, 0), "{:?}", r.failures);
    assert_eq!(held(&sim, &sf), set(&["Queue:Sales_Queue"]));
    assert_eq!(psl_used(&sim), used_before - 1, "the seat is free again");
    assert_eq!(
        r.seats_released, 2,
        "user licence and permission set licence"
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    let released: Vec<&str> = audit
        .iter()
        .filter(|a| a.detail["reason"] == json!("released after deactivation"))
        .map(|a| a.event.as_str())
        .collect();
    assert_eq!(
        released,
        [
            "user.queue_removed",
            "user.permission_set_removed",
            "user.permission_set_license_removed"
        ],
        "sets before the licence they need"
    );
    let status = provisor::status::Status::read(&engine.store, 30)
        .await
        .expect("status");
    let freed: Vec<(String, String, i64)> = status
        .seats_freed
        .iter()
        .map(|s| (s.kind.clone(), s.licence.clone(), s.seats))
        .collect();
    assert_eq!(
        freed,
        [
            ("user_licence".to_string(), "Salesforce".to_string(), 1),
            (
                "permission_set_license".to_string(),
                "EinsteinAnalyticsPlusPsl".to_string(),
                1
            )
        ]
    );
    // Nothing is released twice.
    let released = |rows: &[provisor::audit::AuditRow]| {
        rows.iter()
            .filter(|a| a.event == "leaver.seat_released")
            .count()
    };
    assert_eq!(released(&audit), 2);
    let r = engine.sync_once(&Quiet).await.expect("next cycle");
    assert_eq!(r.seats_released, 0);
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert_eq!(released(&audit), 2);
}
