//! The Salesforce sink against the emulator: every authentication flow.

use provisor::config::{Config, Secret, SfAuthFlow};
use provisor::engine::Quiet;
use provisor::sim::{creds, graph::TEST_PRIVATE_KEY_PEM};
use provisor_e2e::{config_for, engine_with, repo_root, rhai_pack, start_sim};

/// Short retries, so refusals settle within a test.
pub(crate) fn fast(c: &mut Config) {
    c.sync.retries = 2;
    c.sync.retry_base_ms = 2;
}

fn jwt(key: &str, username: &str) -> impl FnOnce(&mut Config) {
    let (key, username) = (key.to_string(), username.to_string());
    move |c| {
        fast(c);
        c.salesforce.auth = Some(SfAuthFlow::JwtBearer);
        c.salesforce.client_secret = None;
        c.salesforce.username = Some(username);
        c.salesforce.private_key = Some(Secret::Value(key));
    }
}

fn with_password(flow: SfAuthFlow) -> impl FnOnce(&mut Config) {
    move |c| {
        fast(c);
        c.salesforce.auth = Some(flow);
        c.salesforce.username = Some(creds::SF_INTEGRATION_USERNAME.into());
        c.salesforce.password = Some(Secret::Value(creds::SF_PASSWORD.into()));
        c.salesforce.security_token = Some(Secret::Value(creds::SF_SECURITY_TOKEN.into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_is_the_default_when_a_key_is_configured() {
    let running = start_sim(10, 41).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        jwt(TEST_PRIVATE_KEY_PEM, creds::SF_INTEGRATION_USERNAME)(c);
        c.salesforce.auth = None;
    })
    .await;
    let r = engine
        .sync_once(&Quiet)
        .await
        .expect("JWT bearer login works");
    assert!(r.created > 0);

    // A user that is not pre-authorized (here: unknown) is refused by name.
    let e = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("b.db"),
        jwt(TEST_PRIVATE_KEY_PEM, "nobody@provisor-sim.example"),
    )
    .await;
    let msg = e.sync_once(&Quiet).await.expect_err("refused").to_string();
    assert!(
        msg.contains("invalid_grant") && msg.contains("user hasn't approved this consumer"),
        "{msg}"
    );

    // A key whose certificate is not on the connected app.
    let other = std::fs::read_to_string(repo_root().join("tests/fixtures/untrusted-cert/key.pem"))
        .expect("key");
    let e = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("c.db"),
        jwt(&other, creds::SF_INTEGRATION_USERNAME),
    )
    .await;
    let msg = e.sync_once(&Quiet).await.expect_err("refused").to_string();
    assert!(
        msg.contains("invalid assertion") && !msg.contains("PRIVATE KEY"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_flow_works_only_where_the_org_allows_it() {
    let running = start_sim(6, 42).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let e = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("a.db"),
        with_password(SfAuthFlow::Password),
    )
    .await;
    let msg = e
        .sync_once(&Quiet)
        .await
        .expect_err("blocked by default")
        .to_string();
    assert!(
        msg.contains("invalid_grant: authentication failure"),
        "{msg}"
    );
    running.sim.salesforce().password_flow_allowed = true;
    let e = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("b.db"),
        with_password(SfAuthFlow::Password),
    )
    .await;
    e.sync_once(&Quiet)
        .await
        .expect("password + security token accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soap_login_is_a_last_resort_and_refused_from_v65() {
    let running = start_sim(6, 43).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let e = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("a.db"),
        with_password(SfAuthFlow::Soap),
    )
    .await;
    let msg = e
        .sync_once(&Quiet)
        .await
        .expect_err("disabled by default")
        .to_string();
    assert!(
        msg.contains("INVALID_LOGIN") && msg.contains("/services/Soap/u/62.0"),
        "{msg}"
    );
    running.sim.salesforce().soap_login_allowed = true;
    let e = engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("b.db"),
        with_password(SfAuthFlow::Soap),
    )
    .await;
    let r = e
        .sync_once(&Quiet)
        .await
        .expect("SOAP session works as a REST token");
    assert!(r.created > 0);

    // The configuration refuses SOAP with an API version that lacks it.
    let cfg = config_for(&running, &rhai_pack(), &dir.path().join("c.db"), |c| {
        with_password(SfAuthFlow::Soap)(c);
        c.salesforce.api_version = "65.0".into();
    });
    let err = cfg
        .validate()
        .expect_err("v65 has no SOAP login")
        .to_string();
    assert!(
        err.contains("salesforce.api_version") && err.contains("jwt_bearer"),
        "{err}"
    );
    // And a flow without its credential names the missing key.
    let cfg = config_for(&running, &rhai_pack(), &dir.path().join("d.db"), |c| {
        c.salesforce.auth = Some(SfAuthFlow::JwtBearer);
    });
    let err = cfg.validate().expect_err("no key").to_string();
    assert!(err.contains("salesforce.username"), "{err}");
}

fn login_frozen(sim: &provisor::sim::Sim, user_id: &str) -> Option<bool> {
    let org = sim.salesforce();
    org.rows("UserLogin")
        .find(|l| l.get("UserId").and_then(serde_json::Value::as_str) == Some(user_id))
        .and_then(|l| l.get("IsFrozen").and_then(serde_json::Value::as_bool))
}

/// An enabled Entra user with a Salesforce account: (Entra id, Salesforce id).
fn enabled_user(sim: &provisor::sim::Sim) -> (String, String) {
    let (id, upn) = sim
        .graph()
        .users()
        .find(|u| u.props.get("accountEnabled") == Some(&serde_json::Value::Bool(true)))
        .and_then(|u| {
            Some((
                u.id.clone(),
                u.props["userPrincipalName"].as_str()?.to_string(),
            ))
        })
        .expect("a user");
    let sf = sim.salesforce().users_where("Username", &upn)[0]["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (id, sf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leavers_are_frozen_at_once_and_stay_frozen_while_deactivation_is_blocked() {
    use serde_json::Value;
    let running = start_sim(20, 44).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast(c);
        c.sync.max_attempts = 10;
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let (entra_id, sf_id) = enabled_user(&sim);
    assert_eq!(login_frozen(&sim, &sf_id), Some(false));

    // The leaver is the default case owner: Salesforce refuses deactivation.
    let blocker = "You cannot deactivate this user. You cannot deactivate a user who is the default owner of cases";
    sim.salesforce()
        .set_deactivation_blocker(&sf_id, Some(blocker));
    sim.graph().soft_delete_user(&entra_id).expect("leaver");
    let r = engine.sync_once(&Quiet).await.expect("cycle completes");
    // Held, not failed: no attempt is spent and the user is never parked.
    assert_eq!(
        (r.frozen, r.deactivated, r.failed, r.waiting),
        (1, 0, 0, 1),
        "{}",
        r.plan.render()
    );
    assert!(
        r.waiting_for[0].contains("deactivation blocked")
            && r.waiting_for[0].contains("default owner of cases")
            && r.waiting_for[0].contains("next try after"),
        "{:?}",
        r.waiting_for
    );
    assert_eq!(
        login_frozen(&sim, &sf_id),
        Some(true),
        "frozen at once although deactivation failed"
    );
    assert_eq!(
        sim.salesforce()
            .get("User", &sf_id)
            .and_then(|u| u.get("IsActive").cloned()),
        Some(Value::Bool(true))
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    let blocked = audit
        .iter()
        .find(|a| a.event == "user.deactivation_blocked")
        .expect("blocker audited");
    assert!(
        blocked
            .detail
            .to_string()
            .contains("default owner of cases")
    );
    // Named, with where to fix it.
    assert_eq!(blocked.detail["blocker"]["kind"], "default_case_owner");
    assert!(
        blocked.detail["blocker"]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("Support Settings")),
        "{}",
        blocked.detail
    );
    assert!(
        r.waiting_for[0].contains("(default_case_owner)"),
        "{:?}",
        r.waiting_for
    );
    // Listed as frozen but active, with its blocker.
    let open = engine.store.open_leavers().await.expect("leavers");
    assert_eq!(open.len(), 1, "{open:?}");
    let b = open[0].blocker.as_ref().expect("blocker kept");
    assert_eq!(
        (b.kind.as_str(), b.tries, b.org_config),
        ("default_case_owner", 1, true)
    );
    assert!(b.next_try.is_some());

    // Org configuration: not tried again every cycle, still frozen.
    let r = engine.sync_once(&Quiet).await.expect("next cycle");
    assert_eq!((r.frozen, r.deactivated, r.failed, r.waiting), (0, 0, 0, 1));
    let refusals = |rows: &[provisor::audit::AuditRow]| {
        rows.iter()
            .filter(|a| a.event == "user.deactivation_blocked")
            .count()
    };
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert_eq!(refusals(&audit), 1, "no second attempt inside the back-off");
    // The admin fixes the org, but the back-off still holds ...
    sim.salesforce().set_deactivation_blocker(&sf_id, None);
    let r = engine.sync_once(&Quiet).await.expect("held");
    assert_eq!((r.deactivated, r.waiting), (0, 1));
    // ... until `provisor leavers retry`: then the deactivation goes through.
    assert_eq!(
        engine
            .store
            .retry_blocked(Some(&entra_id))
            .await
            .expect("retry"),
        1
    );
    let r = engine.sync_once(&Quiet).await.expect("retry");
    assert_eq!(
        (r.frozen, r.deactivated, r.failed, r.waiting),
        (0, 1, 0, 0),
        "{:?}",
        r.waiting_for
    );
    assert!(
        engine
            .store
            .open_leavers()
            .await
            .expect("leavers")
            .is_empty()
    );

    // Restore: reactivated, then unfrozen.
    sim.graph().restore_user(&entra_id).expect("restore");
    let r = engine.sync_once(&Quiet).await.expect("restore");
    assert_eq!((r.reactivated, r.unfrozen), (1, 1), "{}", r.plan.render());
    assert_eq!(login_frozen(&sim, &sf_id), Some(false));
    assert_eq!(
        sim.salesforce()
            .get("User", &sf_id)
            .and_then(|u| u.get("IsActive").cloned()),
        Some(Value::Bool(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licence_exhaustion_parks_users_and_resumes_them_when_seats_appear() {
    use serde_json::Value;
    let running = start_sim(60, 45).await;
    let sim = running.sim.clone();
    // Few "Salesforce" seats: the Standard User joiners cannot all get one.
    let used = sim
        .salesforce()
        .rows("UserLicense")
        .find(|l| l["Name"] == "Salesforce")
        .and_then(|l| l["UsedLicenses"].as_i64())
        .expect("licence");
    assert!(sim.salesforce().set_licence_total("Salesforce", used + 3));
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast(c);
        c.sync.max_attempts = 2;
    })
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert!(r.waiting > 0, "{:?}", r.failures);
    assert_eq!(r.failed, 0, "waiting is not failing: {:?}", r.failures);
    assert!(
        r.waiting_for
            .iter()
            .all(|w| w.contains("waiting for a Salesforce licence")),
        "{:?}",
        r.waiting_for
    );
    let seats = |sim: &provisor::sim::Sim| {
        sim.salesforce()
            .rows("UserLicense")
            .find(|l| l["Name"] == "Salesforce")
            .map(|l| (l["TotalLicenses"].as_i64(), l["UsedLicenses"].as_i64()))
    };
    let (total, used_now) = seats(&sim).expect("licence");
    assert!(used_now <= total, "never over-allocated");
    // Seats freed in a cycle (a profile moved off the licence) are counted
    // on the next one.
    let r = engine.sync_once(&Quiet).await.expect("sync");
    let waiting = r.waiting;
    assert!(waiting > 0);
    assert_eq!(
        seats(&sim).map(|(t, u)| t == u),
        Some(true),
        "every seat in use now"
    );

    // Cycles later they still wait, never parked as dead letters...
    for _ in 0..3 {
        let r = engine.sync_once(&Quiet).await.expect("sync");
        assert_eq!((r.waiting, r.failed, r.parked), (waiting, 0, 0));
    }
    assert!(
        engine
            .store
            .dead_letters()
            .await
            .expect("dead letters")
            .is_empty()
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    let alerts = audit
        .iter()
        .filter(|a| a.event == "user.waiting_for_licence")
        .count();
    assert!(
        (waiting..=waiting + 1).contains(&alerts),
        "alerted once per user, not every cycle: {alerts} alerts for {waiting} waiting"
    );

    // ...and are created once seats appear.
    assert!(
        sim.salesforce()
            .set_licence_total("Salesforce", used + 3 + waiting as i64)
    );
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(
        (r.created, r.waiting, r.failed),
        (waiting, 0, 0),
        "{:?}",
        r.failures
    );
    let enabled: Vec<String> = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .filter_map(|u| u.props["userPrincipalName"].as_str().map(str::to_string))
        .collect();
    for upn in enabled {
        assert_eq!(
            sim.salesforce().users_where("Username", &upn).len(),
            1,
            "{upn}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stop_at_the_configured_share_of_the_daily_api_limit() {
    let running = start_sim(30, 46).await;
    let sim = running.sim.clone();
    {
        let mut org = sim.salesforce();
        org.daily_api_limit = 1000;
        org.api_usage = 960;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast(c);
        c.salesforce.stop_share = 0.95;
        c.salesforce.pace_max_ms = 1;
    })
    .await;
    let writes = sim.stats().sf_write_calls;
    let err = engine.sync_once(&Quiet).await.expect_err("writes paused");
    assert!(
        err.to_string().contains("/1000 (96.") && err.to_string().contains("writes paused"),
        "{err}"
    );
    assert_eq!(sim.stats().sf_write_calls, writes, "no write was sent");
    let dirty = engine.store.dirty_users().await.expect("dirty");
    assert!(
        !dirty.is_empty() && dirty.iter().all(|d| d.attempts == 0),
        "nobody is charged an attempt"
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(audit.iter().any(|a| a.event == "salesforce.limit_reached"));

    // The day rolls over: usage drops, the next cycle completes.
    sim.salesforce().api_usage = 0;
    let r = engine.sync_once(&Quiet).await.expect("completes");
    assert!(r.created > 0 && r.failed == 0, "{:?}", r.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limit_exceeded_stops_the_cycle_without_charging_users() {
    let running = start_sim(30, 47).await;
    let sim = running.sim.clone();
    {
        let mut org = sim.salesforce();
        org.daily_api_limit = org.api_usage;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), fast).await;
    let err = engine
        .sync_once(&Quiet)
        .await
        .expect_err("limit exceeded")
        .to_string();
    assert!(
        err.contains("HTTP 403")
            && err.contains("REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded."),
        "{err}"
    );
    assert!(
        engine
            .store
            .dirty_users()
            .await
            .expect("dirty")
            .iter()
            .all(|d| d.attempts == 0)
    );
    sim.salesforce().daily_api_limit = 1_000_000;
    let r = engine.sync_once(&Quiet).await.expect("completes");
    assert!(r.created > 0 && r.failed == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nickname_clash_is_retried_with_a_deterministic_suffix() {
    use serde_json::{Value, json};
    let running = start_sim(10, 48).await;
    let sim = running.sim.clone();
    // A hand-made user already holds the nickname a joiner would get.
    let upn = sim
        .graph()
        .users()
        .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
        .filter_map(|u| u.props["userPrincipalName"].as_str().map(str::to_string))
        .find(|upn| sim.salesforce().users_where("Username", upn).is_empty())
        .expect("a joiner");
    let taken = upn.split('@').next().unwrap_or_default().to_string();
    {
        let mut org = sim.salesforce();
        let profile = org.profile_id("Chatter Free User").expect("profile");
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("Username", "squatter@elsewhere.example"),
            ("LastName", "Squatter"),
            ("Email", "squatter@elsewhere.example"),
            ("Alias", "squat"),
            ("TimeZoneSidKey", "GMT"),
            ("LocaleSidKey", "en_US"),
            ("EmailEncodingKey", "UTF-8"),
            ("LanguageLocaleKey", "en_US"),
        ] {
            m.insert(k.into(), json!(v));
        }
        m.insert("ProfileId".into(), json!(profile));
        m.insert("CommunityNickname".into(), json!(taken));
        org.insert_raw("User", m);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), fast).await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let rows = sim
        .salesforce()
        .users_where("Username", &upn)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(rows.len(), 1);
    let nick = rows[0]["CommunityNickname"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        nick.starts_with(&format!("{taken}.")) && nick.len() == taken.len() + 5,
        "{nick}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_set_diff_keeps_hand_made_assignments() {
    use serde_json::{Value, json};
    let running = start_sim(40, 49).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = repo_root().join("tests/fixtures/packs/access");
    let engine = engine_with(&running, &pack, &dir.path().join("a.db"), fast).await;
    let r = engine.sync_once(&Quiet).await.expect("initial sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(r.permission_sets_assigned > 0);
    if provisor_e2e::approve_adoptions(&engine).await > 0 {
        engine.sync_once(&Quiet).await.expect("approved adoptions");
    }

    let ps_id = |name: &str| {
        sim.salesforce()
            .rows("PermissionSet")
            .find(|p| p["Name"] == name)
            .and_then(|p| p["Id"].as_str().map(str::to_string))
            .expect("permission set")
    };
    let held = |user: &str| -> Vec<String> {
        let org = sim.salesforce();
        let names: std::collections::HashMap<String, String> = org
            .rows("PermissionSet")
            .filter(|p| p["IsOwnedByProfile"] == json!(false))
            .map(|p| {
                (
                    p["Id"].as_str().unwrap_or_default().to_string(),
                    p["Name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut v: Vec<String> = org
            .rows("PermissionSetAssignment")
            .filter(|a| a["AssigneeId"].as_str() == Some(user))
            .filter_map(|a| names.get(a["PermissionSetId"].as_str()?).cloned())
            .collect();
        v.sort();
        v
    };
    // A Sales user got the role and the permission set from the pack.
    let sales = sim
        .graph()
        .group_by_name("SF-Sales")
        .map(|g| g.id.clone())
        .expect("group");
    let (member, upn) = {
        let t = sim.graph();
        let g = t.group_by_name("SF-Sales").expect("group");
        g.members
            .iter()
            .filter_map(|m| t.user(m))
            .find(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
            .map(|u| {
                (
                    u.id.clone(),
                    u.props["userPrincipalName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .expect("an enabled sales user")
    };
    let sf_user = sim.salesforce().users_where("Username", &upn)[0].clone();
    let sf_id = sf_user["Id"].as_str().unwrap_or_default().to_string();
    let role_name = {
        let org = sim.salesforce();
        org.get(
            "UserRole",
            sf_user["UserRoleId"].as_str().unwrap_or_default(),
        )
        .map(|r| r["Name"].clone())
    };
    assert_eq!(role_name, Some(json!("Sales Rep")));
    assert_eq!(held(&sf_id), vec!["Sales_Cloud_User"]);

    // An admin grants two more by hand: one the pack owns, one it does not.
    for name in ["Reports_Builder", "Marketing_Tools"] {
        let mut m = serde_json::Map::new();
        m.insert("AssigneeId".into(), json!(sf_id));
        m.insert("PermissionSetId".into(), json!(ps_id(name)));
        sim.salesforce()
            .create("PermissionSetAssignment", m)
            .expect("hand-made assignment");
    }
    // The user leaves Sales.
    sim.graph()
        .set_membership(&sales, &member, false)
        .expect("leave group");
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(r.permission_sets_removed, 2, "{}", r.plan.render());
    assert_eq!(
        held(&sf_id),
        vec!["Reports_Builder"],
        "the hand-made, unowned assignment stays"
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.event == "user.permission_set_removed"
                && a.detail["permission_set"] == "Marketing_Tools")
    );

    // Nothing more to do next time.
    let quiet = engine.sync_once(&Quiet).await.expect("sync");
    assert!(quiet.plan.actions.is_empty(), "{}", quiet.plan.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_reports_one_line_per_check() {
    let running = start_sim(5, 50).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(
        &running,
        &repo_root().join("tests/fixtures/packs/access"),
        &dir.path().join("a.db"),
        fast,
    )
    .await;
    let checks = provisor::connection::test_connection(&engine).await;
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    for want in [
        "Entra: token and users/delta",
        "Entra: token and groups/delta",
        "Salesforce: authentication",
        "Salesforce: API v62.0",
        "Salesforce: integration user has Manage Users",
        "Salesforce: PermissionSets the pack references (3)",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }

    // A pack naming a permission set the org lacks, and an integration user
    // who lost its rights: both named.
    let pack_dir = dir.path().join("pack");
    std::fs::create_dir_all(&pack_dir).expect("pack dir");
    let fixture = repo_root().join("tests/fixtures/packs/access");
    std::fs::copy(fixture.join("main.rhai"), pack_dir.join("main.rhai")).expect("copy");
    let manifest = std::fs::read_to_string(fixture.join("pack.toml"))
        .expect("manifest")
        .replace(
            "\"Marketing_Tools\"]\n",
            "\"Marketing_Tools\", \"Nope_Set\"]\n",
        );
    std::fs::write(pack_dir.join("pack.toml"), manifest).expect("write");
    {
        let mut org = running.sim.salesforce();
        let me = org.integration_user_id.clone();
        let mine: Vec<String> = org
            .rows("PermissionSetAssignment")
            .filter(|x| x["AssigneeId"].as_str() == Some(me.as_str()))
            .filter_map(|x| x["Id"].as_str().map(str::to_string))
            .collect();
        for x in mine {
            org.delete(&x).expect("delete");
        }
    }
    let engine = engine_with(&running, &pack_dir, &dir.path().join("b.db"), fast).await;
    let checks = provisor::connection::test_connection(&engine).await;
    assert!(
        checks.iter().any(|c| !c.ok
            && c.name.starts_with("Salesforce: PermissionSets")
            && c.detail == "missing: Nope_Set"),
        "{checks:#?}"
    );
    assert!(
        checks
            .iter()
            .any(|c| !c.ok && c.name == "Salesforce: integration user has Manage Users"),
        "{checks:#?}"
    );

    // Wrong Entra secret: named, and the Salesforce checks still run.
    let cfg = config_for(&running, &rhai_pack(), &dir.path().join("c.db"), |c| {
        fast(c);
        c.entra.client_secret = Some(Secret::Value("wrong".into()));
    });
    let engine = provisor::cli::engine_from_config(&cfg)
        .await
        .expect("engine");
    let checks = provisor::connection::test_connection(&engine).await;
    assert!(
        checks
            .iter()
            .any(|c| !c.ok && c.detail.contains("AADSTS7000215")),
        "{checks:#?}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c.name == "Salesforce: authentication" && c.ok)
    );
}

/// Each Salesforce refusal ends where it should: the user is retried, then
/// parked in the dead-letter list with Salesforce's code, while the rest of
/// the batch goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_errors_end_in_the_dead_letter_list_with_their_code() {
    use serde_json::{Map, Value, json};
    let running = start_sim(30, 51).await;
    let sim = running.sim.clone();
    let joiners: Vec<(String, String)> = {
        let t = sim.graph();
        let org = sim.salesforce();
        t.users()
            .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(true)))
            .filter_map(|u| {
                Some((
                    u.id.clone(),
                    u.props["userPrincipalName"].as_str()?.to_string(),
                ))
            })
            .filter(|(_, upn)| org.users_where("Username", upn).is_empty())
            .take(4)
            .collect()
    };
    // 1. The Username is taken in another org of the environment.
    sim.salesforce()
        .foreign_usernames
        .insert(joiners[0].1.to_lowercase());
    // 2. A first name longer than Salesforce's 40 characters.
    let mut m = Map::new();
    m.insert("givenName".into(), json!("A".repeat(41)));
    sim.graph().update_user(&joiners[1].0, m).expect("update");
    // 3. No mail: Email is required.
    let mut m = Map::new();
    m.insert("mail".into(), Value::Null);
    sim.graph().update_user(&joiners[2].0, m).expect("update");
    // 4. A language Salesforce's restricted LocaleSidKey picklist lacks.
    let mut m = Map::new();
    m.insert("preferredLanguage".into(), json!("xx-YY"));
    sim.graph().update_user(&joiners[3].0, m).expect("update");

    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast(c);
        c.sync.max_attempts = 2;
    })
    .await;
    let r1 = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r1.failed, 4, "{:?}", r1.failures);
    assert!(r1.created > 15, "the rest of the batch is created");
    let r2 = engine.sync_once(&Quiet).await.expect("retry");
    assert_eq!((r2.failed, r2.parked), (4, 4));
    let dead = engine.store.dead_letters().await.expect("dead letters");
    let reason = |id: &str| {
        dead.iter()
            .find(|d| d.entra_id == id)
            .map(|d| d.reason.clone())
            .unwrap_or_default()
    };
    assert!(
        reason(&joiners[0].0).contains("DUPLICATE_USERNAME"),
        "{}",
        reason(&joiners[0].0)
    );
    assert!(
        reason(&joiners[1].0).contains("STRING_TOO_LONG")
            && reason(&joiners[1].0).contains("[FirstName]"),
        "{}",
        reason(&joiners[1].0)
    );
    assert!(
        reason(&joiners[2].0).contains("REQUIRED_FIELD_MISSING")
            && reason(&joiners[2].0).contains("[Email]"),
        "{}",
        reason(&joiners[2].0)
    );
    assert!(
        reason(&joiners[3].0).contains("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
            && reason(&joiners[3].0).contains("[LocaleSidKey]"),
        "{}",
        reason(&joiners[3].0)
    );
    // Parked users cost nothing on later cycles.
    let r3 = engine.sync_once(&Quiet).await.expect("quiet");
    assert_eq!((r3.users_considered, r3.failed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_locks_and_late_seat_shortages_are_retried_without_spending_attempts() {
    use provisor::sim::Faults;
    let running = start_sim(30, 52).await;
    let sim = running.sim.clone();
    // Three records meet row contention (UNABLE_TO_LOCK_ROW).
    sim.set_faults(Faults {
        sf_lock_rows: 3,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast(c);
        c.sync.max_attempts = 1;
    })
    .await;
    let r1 = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!((r1.failed, r1.parked), (0, 0), "{:?}", r1.failures);
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.event == "user.create_deferred")
            .count(),
        3
    );
    // With max_attempts = 1 a counted failure would have parked them; the
    // next cycle creates them instead.
    let r2 = engine.sync_once(&Quiet).await.expect("retry");
    assert_eq!(
        (r2.created, r2.failed, r2.parked),
        (3, 0, 0),
        "{:?}",
        r2.failures
    );
    assert!(engine.store.dead_letters().await.expect("dead").is_empty());
}

/// Alias is not unique in Salesforce, but people tell users apart by it: a
/// joiner whose alias is taken (by an existing user or another joiner) gets
/// the first free numbered variant, the same one on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_are_deterministic_and_collision_free() {
    use serde_json::{Map, json};
    let running = start_sim(10, 53).await;
    let sim = running.sim.clone();
    for (n, upn) in [
        "alexandra.one@contoso-sim.com",
        "alexandra.two@contoso-sim.com",
    ]
    .iter()
    .enumerate()
    {
        let mut m = Map::new();
        m.insert("userPrincipalName".into(), json!(upn));
        m.insert("mail".into(), json!(upn));
        m.insert("surname".into(), json!("Alexandra"));
        m.insert("accountEnabled".into(), json!(true));
        sim.graph()
            .create_user(&format!("50000000-0000-4000-8000-00000000000{n}"), m)
            .expect("create");
    }
    // An existing Salesforce user already has the alias both would get.
    {
        let mut org = sim.salesforce();
        let profile = org.profile_id("Standard User").expect("profile");
        let mut m = Map::new();
        for (k, v) in [
            ("Username", "alex.admin@elsewhere.example"),
            ("LastName", "Admin"),
            ("Email", "alex.admin@elsewhere.example"),
            ("Alias", "alexandr"),
            ("TimeZoneSidKey", "GMT"),
            ("LocaleSidKey", "en_US"),
            ("EmailEncodingKey", "UTF-8"),
            ("LanguageLocaleKey", "en_US"),
        ] {
            m.insert(k.into(), json!(v));
        }
        m.insert("ProfileId".into(), json!(profile));
        org.insert_raw("User", m);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), fast).await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    let alias = |upn: &str| {
        sim.salesforce().users_where("Username", upn)[0]["Alias"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut got = vec![
        alias("alexandra.one@contoso-sim.com"),
        alias("alexandra.two@contoso-sim.com"),
    ];
    got.sort();
    assert_eq!(got, vec!["alexand2", "alexand3"]);
    // No churn: the next cycle leaves the numbered aliases alone.
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.updated, 0, "{}", r.plan.render());
}

/// The org's concurrent-request limit is a pause, not a daily stop: the
/// client backs off and retries, and the cycle completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_request_limit_backs_off_and_completes() {
    use provisor::sim::Faults;
    let running = start_sim(20, 54).await;
    let sim = running.sim.clone();
    sim.set_faults(Faults {
        // Two refusals in a row: within `sync.retries = 2` of `fast`.
        sf_concurrent_limit_next: 2,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), fast).await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!((r.failed, r.parked), (0, 0), "{:?}", r.failures);
    assert!(r.created > 5);
    assert_eq!(
        sim.current_faults().sf_concurrent_limit_next,
        0,
        "the fault was hit"
    );
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert!(!audit.iter().any(|a| a.event == "salesforce.limit_reached"));
}

/// An org-configuration blocker's back-off runs out on its own: once the
/// wait is over the deactivation is tried again without an operator, and it
/// completes when the org is fixed. (Here the wait is zero minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_deactivation_is_tried_again_when_its_back_off_runs_out() {
    let running = start_sim(20, 46).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("a.db"), |c| {
        fast(c);
        c.sync.blocker_retry_minutes = 0;
    })
    .await;
    engine.sync_once(&Quiet).await.expect("initial sync");
    let (entra_id, sf_id) = enabled_user(&sim);
    sim.salesforce().set_deactivation_blocker(
        &sf_id,
        Some("You cannot deactivate the Default Workflow User"),
    );
    sim.graph().soft_delete_user(&entra_id).expect("leaver");
    let refusals = |rows: &[provisor::audit::AuditRow]| {
        rows.iter()
            .filter(|a| a.event == "user.deactivation_blocked")
            .count()
    };
    let r = engine.sync_once(&Quiet).await.expect("blocked");
    assert_eq!((r.deactivated, r.waiting), (0, 1));
    let r = engine.sync_once(&Quiet).await.expect("tried again");
    assert_eq!((r.deactivated, r.waiting), (0, 1));
    let audit = engine.store.audit_rows(None).await.expect("audit");
    assert_eq!(refusals(&audit), 2, "the wait ran out: a second attempt");
    let open = engine.store.open_leavers().await.expect("leavers");
    assert_eq!(open[0].blocker.as_ref().map(|b| b.tries), Some(2));
    sim.salesforce().set_deactivation_blocker(&sf_id, None);
    let r = engine.sync_once(&Quiet).await.expect("fixed");
    assert_eq!((r.deactivated, r.waiting), (1, 0), "{:?}", r.waiting_for);
}
