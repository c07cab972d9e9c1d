//! Failures in the middle of a sync: the deltaLink stays where it was and
//! the next run completes without duplicates.

use std::collections::HashMap;

use provisor::engine::Quiet;
use provisor::sim::{Faults, Sim};
use provisor_e2e::{engine_with, rhai_pack, start_sim};
use serde_json::{Map, Value, json};

fn fast_retries(cfg: &mut provisor::config::Config) {
    cfg.sync.retries = 2;
    cfg.sync.retry_base_ms = 5;
}

/// Salesforce users per lower-cased Username.
fn usernames(sim: &Sim) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for u in sim.salesforce().rows("User") {
        *out.entry(u["Username"].as_str().unwrap_or_default().to_lowercase())
            .or_default() += 1;
    }
    out
}

fn enabled_upns(sim: &Sim) -> Vec<String> {
    sim.graph()
        .users()
        .filter(|u| {
            u.removed.is_none() && u.props.get("accountEnabled") == Some(&Value::Bool(true))
        })
        .filter_map(|u| u.props["userPrincipalName"].as_str().map(str::to_lowercase))
        .collect()
}

fn assert_one_user_each(sim: &Sim) {
    let counts = usernames(sim);
    assert!(
        counts.values().all(|n| *n == 1),
        "duplicates: {:?}",
        counts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    for upn in enabled_upns(sim) {
        assert_eq!(
            counts.get(&upn),
            Some(&1),
            "{upn} has exactly one Salesforce user"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_failure_mid_round_keeps_the_delta_link_and_the_next_run_completes() {
    let running = start_sim(200, 5).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("state.db"), |c| {
        fast_retries(c);
        c.entra.page_size = 40;
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let link_before = engine
        .store
        .sync_state("users")
        .await
        .expect("state")
        .delta_link;
    assert!(link_before.is_some());

    // 120 surname changes: three pages of 40 in the next round.
    let ids: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .take(120)
        .map(|u| u.id.clone())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let mut m = Map::new();
        m.insert("surname".into(), json!(format!("Renamed{i}")));
        sim.graph().update_user(id, m).expect("update");
    }
    sim.set_faults(Faults {
        graph_delta_fail_after_pages: Some(1),
        graph_fault_resource: Some("users".into()),
        ..Default::default()
    });
    let writes = sim.stats().sf_write_calls;
    let err = engine
        .sync_once(&Quiet)
        .await
        .expect_err("Graph fails on the second page");
    let msg = err.to_string();
    assert!(
        msg.contains("serviceNotAvailable") && msg.contains("/v1.0/users/delta"),
        "{msg}"
    );
    assert_eq!(
        engine
            .store
            .sync_state("users")
            .await
            .expect("state")
            .delta_link,
        link_before,
        "deltaLink not advanced"
    );
    assert_eq!(
        sim.stats().sf_write_calls,
        writes,
        "nothing applied from a partial read"
    );

    sim.set_faults(Faults::default());
    let r = engine.sync_once(&Quiet).await.expect("next run completes");
    assert_eq!(r.updated, 120, "{:?}", r.failures);
    assert_ne!(
        engine
            .store
            .sync_state("users")
            .await
            .expect("state")
            .delta_link,
        link_before,
        "deltaLink advanced after the complete round"
    );
    for (i, id) in ids.iter().enumerate() {
        let upn = sim
            .graph()
            .user(id)
            .and_then(|u| u.props["userPrincipalName"].as_str().map(str::to_string))
            .unwrap_or_default();
        let org = sim.salesforce();
        let rows = org.users_where("Username", &upn);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["LastName"], json!(format!("Renamed{i}")));
    }
    assert_one_user_each(&sim);
    let again = engine.sync_once(&Quiet).await.expect("quiet sync");
    assert!(again.plan.actions.is_empty(), "{}", again.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_salesforce_response_is_recovered_by_matching_not_by_creating_again() {
    let running = start_sim(450, 9).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("state.db"), |c| {
        fast_retries(c);
        // One call at a time, so that exactly the second batch is lost.
        c.sync.concurrency = 1;
    })
    .await;

    // The first create batch succeeds; the second is carried out by
    // Salesforce but its response is lost (HTTP 500).
    sim.set_faults(Faults {
        sf_write_fail_after: Some(1),
        sf_write_fail_after_commit: true,
        ..Default::default()
    });
    let err = engine
        .sync_once(&Quiet)
        .await
        .expect_err("the lost response stops the cycle");
    assert!(err.to_string().contains("UNKNOWN_EXCEPTION"), "{err}");
    let outbox = engine.store.outbox_counts().await.expect("outbox");
    assert_eq!(
        outbox.get("unknown"),
        Some(&200),
        "the lost batch is journaled with an unknown outcome: {outbox:?}"
    );
    let dirty = engine.store.dirty_users().await.expect("dirty users");
    let charged = dirty.iter().filter(|d| d.attempts == 1).count();
    assert_eq!(
        charged, 200,
        "the lost batch counts one attempt each; users never sent count none"
    );
    assert!(dirty.iter().all(|d| d.attempts <= 1));
    let created_so_far = sim.salesforce().rows("User").count();

    sim.set_faults(Faults::default());
    let r = engine
        .sync_once(&Quiet)
        .await
        .expect("the next run completes");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(
        r.linked >= 200,
        "the 200 users created behind the lost response are found and linked, not created again (linked {})",
        r.linked
    );
    assert_one_user_each(&sim);
    assert_eq!(
        sim.salesforce().rows("User").count(),
        created_so_far + r.created
    );
    let quiet = engine.sync_once(&Quiet).await.expect("quiet sync");
    assert!(quiet.plan.actions.is_empty(), "{}", quiet.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_salesforce_write_is_retried_then_parked_without_blocking_others() {
    let running = start_sim(30, 2).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("state.db"), |c| {
        fast_retries(c);
        c.sync.max_attempts = 2;
    })
    .await;
    // One user whose mail Salesforce refuses as an Email.
    // (An enabled user with no pre-existing Salesforce user, so it is a create.)
    let existing = usernames(&sim);
    let bad = sim
        .graph()
        .users()
        .find(|u| {
            u.props.get("accountEnabled") == Some(&Value::Bool(true))
                && !existing.contains_key(
                    &u.props["userPrincipalName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase(),
                )
        })
        .map(|u| u.id.clone())
        .expect("an enabled user");
    let mut m = Map::new();
    m.insert("mail".into(), json!("not-an-email"));
    sim.graph().update_user(&bad, m).expect("update");

    let r1 = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r1.failed, 1);
    assert!(
        r1.failures[0].contains("INVALID_EMAIL_ADDRESS"),
        "{:?}",
        r1.failures
    );
    assert!(r1.created > 20, "the others are created");
    let r2 = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!((r2.failed, r2.parked), (1, 1));
    let dead = engine.store.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].entra_id, bad);
    assert!(
        dead[0]
            .reason
            .contains("INVALID_EMAIL_ADDRESS: Email: invalid email address: not-an-email"),
        "{}",
        dead[0].reason
    );
    // Parked users are not retried every cycle...
    let r3 = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r3.users_considered, 0);
    // ...unless an operator asks (unknown users are named)...
    let e = engine
        .store
        .release_dead_letter("nobody", true)
        .await
        .expect_err("unknown")
        .to_string();
    assert!(e.contains("nobody"), "{e}");
    engine
        .store
        .release_dead_letter(&bad, true)
        .await
        .expect("retry");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(
        (r.users_considered, r.failed),
        (1, 1),
        "tried again, fails again"
    );
    assert!(
        engine.store.dead_letters().await.expect("dead").is_empty(),
        "one fresh attempt spent"
    );
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.parked, 1, "parked again after max_attempts");
    engine
        .store
        .release_dead_letter(&bad, false)
        .await
        .expect("drop");
    assert!(engine.store.dead_letters().await.expect("dead").is_empty());
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.users_considered, 0, "dropped: not planned");
    // ...or Entra changes them again.
    let mut m = Map::new();
    m.insert("mail".into(), json!("fixed@contoso-sim.com"));
    sim.graph().update_user(&bad, m).expect("update");
    let r4 = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!((r4.created, r4.failed), (1, 0), "{:?}", r4.failures);
    assert!(
        engine
            .store
            .dead_letters()
            .await
            .expect("dead letters")
            .is_empty()
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|r| r.event == "user.parked" && r.entra_id.as_deref() == Some(bad.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_bounded_and_lose_nothing() {
    let running = start_sim(1100, 13).await;
    let sim = running.sim.clone();
    sim.set_faults(Faults {
        latency_ms: 20,
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("state.db"), |c| {
        fast_retries(c);
        c.sync.concurrency = 3;
    })
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert!(r.created > 1000, "six create batches: {}", r.created);
    let max = sim.stats().sf_max_in_flight;
    assert!(
        (2..=3).contains(&max),
        "at most 3 Salesforce calls in flight, and more than one: {max}"
    );
    assert_one_user_each(&sim);

    // A lost response inside a concurrent wave: still no duplicates.
    let running = start_sim(700, 14).await;
    let sim = running.sim.clone();
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("b.db"), |c| {
        fast_retries(c);
        c.sync.concurrency = 4;
    })
    .await;
    sim.set_faults(Faults {
        sf_write_fail_after: Some(1),
        sf_write_fail_after_commit: true,
        ..Default::default()
    });
    assert!(engine.sync_once(&Quiet).await.is_err());
    sim.set_faults(Faults::default());
    let r = engine.sync_once(&Quiet).await.expect("recovers");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_one_user_each(&sim);
}

/// Org automation refusing a save (an Apex trigger, a validation rule) is
/// permanent for that user: parked at once with the trigger or rule named
/// and a suggested fix, never retried in a storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_automation_failures_are_parked_at_once_and_named() {
    use provisor::sim::salesforce::Automation;
    let running = start_sim(30, 95).await;
    let sim = running.sim.clone();
    sim.salesforce().automation = vec![
        Automation::Trigger {
            name: "UserRegionTrigger".into(),
            field: "LastName".into(),
            equals: "Blocked".into(),
        },
        Automation::ValidationRule {
            field: "FirstName".into(),
            equals: "Invalid".into(),
            message: "First names must be real names".into(),
        },
    ];
    let ids: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.removed.is_none() && u.props.get("accountEnabled") == Some(&json!(true)))
        .map(|u| u.id.clone())
        .take(2)
        .collect();
    let mut m = Map::new();
    m.insert("surname".into(), json!("Blocked"));
    sim.graph().update_user(&ids[0], m).expect("update");
    let mut m = Map::new();
    m.insert("givenName".into(), json!("Invalid"));
    sim.graph().update_user(&ids[1], m).expect("update");
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("a.db"),
        fast_retries,
    )
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!((r.failed, r.parked), (2, 2), "{:?}", r.failures);
    let dead = engine.store.dead_letters().await.expect("dead");
    let of = |id: &str| {
        dead.iter()
            .find(|d| d.entra_id == id)
            .map(|d| d.reason.clone())
            .unwrap_or_default()
    };
    assert!(
        of(&ids[0]).contains("Apex trigger UserRegionTrigger") && of(&ids[0]).contains("fix:"),
        "{}",
        of(&ids[0])
    );
    assert!(
        of(&ids[1]).contains("validation rule \"First names must be real names\""),
        "{}",
        of(&ids[1])
    );
    // Not retried on the next cycle.
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.users_considered, 0);
}

/// When most of a batch fails for one cause, writing pauses (quarantine)
/// with an alert instead of sending batch after batch; nobody is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_for_one_cause_pauses_writes() {
    use provisor::sim::salesforce::Automation;
    let running = start_sim(60, 96).await;
    let sim = running.sim.clone();
    sim.salesforce().automation = vec![Automation::ValidationRule {
        field: "TimeZoneSidKey".into(),
        equals: "America/Los_Angeles".into(),
        message: "Time zone must be set per office".into(),
    }];
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast_retries(c);
        c.sync.batch_size = 10;
        c.sync.concurrency = 1;
    })
    .await;
    let writes = sim.stats().sf_write_calls;
    let e = engine
        .sync_once(&Quiet)
        .await
        .expect_err("paused")
        .to_string();
    assert!(
        e.contains("quarantine") && e.contains("FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        "{e}"
    );
    assert_eq!(
        sim.stats().sf_write_calls - writes,
        1,
        "one batch, then stop"
    );
    assert!(engine.store.dead_letters().await.expect("dead").is_empty());
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(audit.iter().any(|a| a.event == "connection.quarantined"));
    // The cause removed, the next cycle creates everyone.
    sim.salesforce().automation.clear();
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert!(r.created > 30, "{r:?}");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
}
