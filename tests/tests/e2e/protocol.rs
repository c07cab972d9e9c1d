//! The clients against the emulators at the protocol level: paging, delta
//! rounds, `@removed`, `members@delta`, token refresh, SOQL paging and
//! escaping, limit headers, Collections limits.

use provisor::config::SecretString;
use provisor::entra::{EntraClient, GroupChange, UserChange};
use provisor::http::RetryPolicy;
use provisor::model::Removal;
use provisor::salesforce::{SalesforceClient, SfError, soql_quote};
use provisor::sim::RunningSim;
use provisor_e2e::{config_for, rhai_pack, start_sim};
use serde_json::{Map, Value, json};

fn clients(running: &RunningSim, page_size: u32) -> (EntraClient, SalesforceClient) {
    let dir = std::env::temp_dir();
    let cfg = config_for(running, &rhai_pack(), &dir.join("unused.db"), |c| {
        c.entra.page_size = page_size
    });
    let http = provisor::http::client().expect("client");
    let e = EntraClient::new(
        http.clone(),
        cfg.entra.clone(),
        SecretString::new(provisor::sim::creds::ENTRA_CLIENT_SECRET),
        RetryPolicy::default(),
    );
    let s = SalesforceClient::new(
        http,
        cfg.salesforce.clone(),
        SecretString::new(provisor::sim::creds::SF_CLIENT_SECRET),
        RetryPolicy::default(),
    );
    (e, s)
}

async fn users_round(e: &EntraClient, start: &str) -> (Vec<UserChange>, usize, String) {
    let (mut url, mut all, mut pages) = (start.to_string(), Vec::new(), 0);
    loop {
        let p = e.users_page(&url).await.expect("page");
        pages += 1;
        assert!(!p.request_id.is_empty(), "request-id kept");
        all.extend(p.changes);
        match (p.next_link, p.delta_link) {
            (Some(n), None) => url = n,
            (None, Some(d)) => return (all, pages, d),
            other => panic!("bad links {other:?}"),
        }
    }
}

async fn groups_round(e: &EntraClient, start: &str) -> (Vec<GroupChange>, String) {
    let (mut url, mut all) = (start.to_string(), Vec::new());
    loop {
        let p = e.groups_page(&url).await.expect("page");
        all.extend(p.changes);
        match (p.next_link, p.delta_link) {
            (Some(n), None) => url = n,
            (None, Some(d)) => return (all, d),
            other => panic!("bad links {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_delta_rounds_report_changes_removals_and_restores() {
    let running = start_sim(20, 8).await;
    let sim = running.sim.clone();
    let (e, _) = clients(&running, 7);
    let (initial, pages, link) = users_round(&e, &e.users_start(&[])).await;
    assert_eq!((initial.len(), pages), (20, 3), "20 users in pages of 7");
    assert!(initial.iter().all(|c| matches!(c, UserChange::Upsert(u) if u.account_enabled.is_some() && u.user_principal_name.is_some())));

    let ids: Vec<String> = sim.graph().users().map(|u| u.id.clone()).collect();
    sim.graph().soft_delete_user(&ids[0]).expect("soft delete");
    sim.graph().hard_delete_user(&ids[1]).expect("hard delete");
    let mut m = Map::new();
    m.insert("jobTitle".into(), json!("CTO"));
    sim.graph().update_user(&ids[2], m).expect("update");
    // Tokens revoked mid-way: the client refreshes once and carries on.
    sim.graph().expire_tokens();
    let (changes, _, link2) = users_round(&e, &link).await;
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.contains(&UserChange::Removed {
        id: ids[0].clone(),
        removal: Removal::SoftDeleted
    }));
    assert!(changes.contains(&UserChange::Removed {
        id: ids[1].clone(),
        removal: Removal::HardDeleted
    }));
    assert!(changes.iter().any(|c| matches!(c, UserChange::Upsert(u) if u.id == ids[2] && u.job_title.as_deref() == Some("CTO"))));
    assert!(sim.stats().graph_token_calls >= 2);

    sim.graph().restore_user(&ids[0]).expect("restore");
    let (changes, _, link3) = users_round(&e, &link2).await;
    assert!(
        matches!(changes.as_slice(), [UserChange::Upsert(u)] if u.id == ids[0]),
        "{changes:?}"
    );
    let (nothing, pages, _) = users_round(&e, &link3).await;
    assert_eq!(
        (nothing.len(), pages),
        (0, 1),
        "an empty round is one page with a new deltaLink"
    );

    // Groups: the initial round lists members; later rounds only changes.
    let (groups, glink) = groups_round(&e, &e.groups_start()).await;
    let sales = groups
        .iter()
        .find(|g| g.display_name.as_deref() == Some("SF-Sales"))
        .expect("SF-Sales")
        .clone();
    assert!(!sales.members_added.is_empty());
    let member = sales.members_added[0].clone();
    let newcomer = ids[5].clone();
    sim.graph()
        .set_membership(&sales.id, &member, false)
        .expect("remove member");
    sim.graph()
        .set_membership(&sales.id, &newcomer, true)
        .expect("add member");
    let (changes, _) = groups_round(&e, &glink).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].members_removed, vec![member]);
    assert_eq!(changes[0].members_added, vec![newcomer]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_errors_keep_code_and_request_id() {
    let running = start_sim(3, 8).await;
    let (e, _) = clients(&running, 10);
    let err = e
        .users_page(&format!(
            "{}/v1.0/users/delta?$select=id,shoeSize",
            running.base_url()
        ))
        .await
        .expect_err("unknown property");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 400")
            && msg.contains("Request_BadRequest")
            && msg.contains("shoeSize")
            && msg.contains("request-id "),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soql_pages_escapes_and_reauthenticates() {
    let running = start_sim(3, 8).await;
    let sim = running.sim.clone();
    {
        let mut org = sim.salesforce();
        let profile = org.profile_id("Chatter Free User").expect("profile");
        for i in 0..2300 {
            let name = if i == 7 {
                "o'brien@contoso-sim.com".to_string()
            } else {
                format!("bulk{i}@contoso-sim.com")
            };
            let mut m = Map::new();
            for (k, v) in [
                ("Username", name.clone()),
                ("LastName", format!("Bulk{i}")),
                ("Email", name),
                ("Alias", "bulk".into()),
                ("TimeZoneSidKey", "GMT".into()),
                ("LocaleSidKey", "en_US".into()),
                ("EmailEncodingKey", "UTF-8".into()),
                ("LanguageLocaleKey", "en_US".into()),
                ("ProfileId", profile.clone()),
            ] {
                m.insert(k.into(), Value::String(v));
            }
            org.insert_raw("User", m);
        }
    }
    let (_, sf) = clients(&running, 10);
    let calls = sim.stats().sf_api_calls;
    let all = sf
        .query("SELECT Id, Username, Profile.Name FROM User")
        .await
        .expect("query");
    assert_eq!(all.len(), sim.salesforce().rows("User").count());
    assert_eq!(
        sim.stats().sf_api_calls - calls,
        2,
        "2 pages of at most 2000 records: nextRecordsUrl followed"
    );
    // The client drops each record's own `attributes` (a whole User table
    // keeps one per row); nested relationship records keep theirs, as sent.
    assert!(all.iter().all(|r| r.get("attributes").is_none()));
    assert!(
        all.iter()
            .any(|r| r["Profile"]["attributes"]["type"] == json!("Profile")),
        "the emulator sends attributes with every record"
    );
    assert!(
        all.iter()
            .any(|r| r["Profile"]["Name"] == json!("Chatter Free User")),
        "relationship fields are nested"
    );
    assert!(
        sf.limit_info().max > 0 && sf.limit_info().used > 0,
        "Sforce-Limit-Info read"
    );

    let one = sf
        .query(&format!(
            "SELECT Id FROM User WHERE Username = {}",
            soql_quote("O'Brien@contoso-sim.com")
        ))
        .await
        .expect("escaped query");
    assert_eq!(one.len(), 1, "quote escaped, comparison case-insensitive");

    sim.salesforce().expire_sessions();
    let tokens = sim.stats().sf_token_calls;
    sf.query("SELECT Id FROM Profile")
        .await
        .expect("re-authenticates once on INVALID_SESSION_ID");
    assert_eq!(sim.stats().sf_token_calls, tokens + 1);

    let err = sf
        .query("SELECT Id, Shoe__c FROM User")
        .await
        .expect_err("bad field");
    match err {
        SfError::Api { status, errors, .. } => {
            assert_eq!(status, 400);
            assert_eq!(errors[0].code, "INVALID_FIELD");
            assert!(errors[0].message.contains("Shoe__c"));
        }
        other => panic!("{other}"),
    }
    let too_many: Vec<Map<String, Value>> = (0..201).map(|_| Map::new()).collect();
    let err = sf
        .create_many("User", &too_many)
        .await
        .expect_err("over 200")
        .to_string();
    assert!(err.contains("EXCEEDED_ID_LIMIT"), "{err}");
}

fn cert_credential(cert: &str, key: &str) -> impl FnOnce(&mut provisor::config::Config) {
    let (cert, key) = (cert.to_string(), key.to_string());
    move |c| {
        c.entra.client_secret = None;
        c.entra.client_certificate = Some(provisor::config::ClientCertificate {
            certificate: provisor::config::Secret::Value(cert),
            private_key: provisor::config::Secret::Value(key),
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credentials_sign_a_client_assertion() {
    let running = start_sim(10, 8).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let good = provisor_e2e::engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("a.db"),
        cert_credential(
            provisor::sim::graph::TRUSTED_CERT_PEM,
            provisor::sim::graph::TEST_PRIVATE_KEY_PEM,
        ),
    )
    .await;
    let r = good
        .sync_once(&provisor::engine::Quiet)
        .await
        .expect("a signed assertion gets a token");
    assert!(r.created > 0);

    // A certificate the app registration does not know.
    let fixtures = provisor_e2e::repo_root().join("tests/fixtures/untrusted-cert");
    let cert = std::fs::read_to_string(fixtures.join("cert.pem")).expect("cert");
    let key = std::fs::read_to_string(fixtures.join("key.pem")).expect("key");
    let bad = provisor_e2e::engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("b.db"),
        cert_credential(&cert, &key),
    )
    .await;
    let msg = bad
        .sync_once(&provisor::engine::Quiet)
        .await
        .expect_err("unknown certificate")
        .to_string();
    assert!(
        msg.contains("AADSTS700027") && msg.contains("key was not found"),
        "{msg}"
    );
    assert!(
        !msg.contains("PRIVATE KEY"),
        "no key material in errors: {msg}"
    );

    // The trusted certificate, signed with the wrong key: bad signature.
    let forged = provisor_e2e::engine_with(
        &running,
        &rhai_pack(),
        &dir.path().join("c.db"),
        cert_credential(provisor::sim::graph::TRUSTED_CERT_PEM, &key),
    )
    .await;
    let msg = forged
        .sync_once(&provisor::engine::Quiet)
        .await
        .expect_err("forged")
        .to_string();
    assert!(
        msg.contains("AADSTS700027") && msg.contains("signature"),
        "{msg}"
    );

    // Garbage PEM is refused before any request, naming the part at fault.
    let cfg = provisor_e2e::config_for(
        &running,
        &rhai_pack(),
        &dir.path().join("d.db"),
        cert_credential("not pem", provisor::sim::graph::TEST_PRIVATE_KEY_PEM),
    );
    let err = provisor::cli::engine_from_config(&cfg)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("certificate is not PEM"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_groups_arrive_in_slices_and_are_merged() {
    let running = start_sim(1300, 8).await;
    let sim = running.sim.clone();
    let big = {
        let mut t = sim.graph();
        let g = t.create_group("30000000-0000-4000-8000-000000000001", "Everyone-Big");
        let ids: Vec<String> = t.users().map(|u| u.id.clone()).take(1200).collect();
        for id in &ids {
            t.set_membership(&g, id, true).expect("member");
        }
        g
    };
    let (e, _) = clients(&running, 999);
    let (changes, _) = groups_round(&e, &e.groups_start()).await;
    let slices: Vec<&GroupChange> = changes.iter().filter(|g| g.id == big).collect();
    assert!(
        slices.len() >= 3,
        "1200 members in slices of at most 500: {} slices",
        slices.len()
    );
    assert!(slices.iter().all(|g| g.members_added.len() <= 500));
    let dir = tempfile::tempdir().expect("temp dir");
    let engine =
        provisor_e2e::engine_with(&running, &rhai_pack(), &dir.path().join("g.db"), |_| {}).await;
    engine
        .read_entra(&provisor::engine::Quiet)
        .await
        .expect("read");
    let (_, members) = engine.store.mirror().await.expect("mirror");
    assert_eq!(
        members.iter().filter(|(g, _, _)| *g == big).count(),
        1200,
        "slices merged per group id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_serve_https_with_a_generated_certificate() {
    use provisor::sim::{Sim, SimCertificate, SimOptions};
    let sim = Sim::new(SimOptions {
        users: 20,
        seed: 61,
        ..Default::default()
    });
    let cert = SimCertificate::generate().expect("certificate");
    let running = sim
        .serve_tls(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), &cert)
        .await
        .expect("serve https");
    assert!(running.base_url().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sim-cert.pem");
    std::fs::write(&ca, &cert.cert_pem).expect("write cert");

    // Without trusting the certificate, the failure names the endpoint.
    let cfg = provisor_e2e::config_for(
        &running,
        &provisor_e2e::rhai_pack(),
        &dir.path().join("a.db"),
        |_| {},
    );
    let untrusted = provisor::cli::engine_from_config(&cfg)
        .await
        .expect("engine");
    let err = untrusted
        .sync_once(&provisor::engine::Quiet)
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(err.to_string().contains(&running.base_url()), "{err}");

    // Trusted through [tls] ca_files: a whole cycle over HTTPS, with links
    // (nextLink, instance_url, nextRecordsUrl) in https.
    let engine = provisor_e2e::engine_with(
        &running,
        &provisor_e2e::rhai_pack(),
        &dir.path().join("b.db"),
        |c| c.tls.ca_files = vec![ca.clone()],
    )
    .await;
    let r = engine
        .sync_once(&provisor::engine::Quiet)
        .await
        .expect("sync over https");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(r.created > 5);
    let stats = sim.stats();
    assert!(stats.graph_delta_pages > 0 && stats.sf_write_calls > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_sets_licence_seats() {
    let running = provisor_e2e::start_sim(3, 62).await;
    let base = running.base_url();
    let http = provisor::http::client().expect("client");
    let put = |path: String, body: serde_json::Value| {
        let http = http.clone();
        async move { http.put(path).json(&body).send().await.expect("admin call") }
    };
    let total = |object: &str, key: &str, name: &str| {
        running
            .sim
            .salesforce()
            .rows(object)
            .find(|r| r[key] == name)
            .and_then(|r| r["TotalLicenses"].as_i64())
    };
    let r = put(
        format!("{base}/_sim/salesforce/licences/Salesforce"),
        serde_json::json!({"total": 5}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(total("UserLicense", "Name", "Salesforce"), Some(5));
    let r = put(
        format!("{base}/_sim/salesforce/permission-set-licences/EinsteinAnalyticsPlusPsl"),
        serde_json::json!({"total": 7}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        total(
            "PermissionSetLicense",
            "DeveloperName",
            "EinsteinAnalyticsPlusPsl"
        ),
        Some(7)
    );
    let r = put(
        format!("{base}/_sim/salesforce/permission-set-licences/Nope"),
        serde_json::json!({"total": 7}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"Nope\"")
    );
    let r = put(
        format!("{base}/_sim/salesforce/licences/Salesforce"),
        serde_json::json!({"seats": 5}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_are_listed_in_pages_of_999_with_the_expanded_manager() {
    let running = start_sim(2100, 9).await;
    let sim = running.sim.clone();
    let (e, _) = clients(&running, 999);
    let calls = sim.stats().graph_calls;
    let managers = e.managers().await.expect("list managers");
    assert_eq!(sim.stats().graph_calls - calls, 3, "ceil(2100/999) pages");
    let want: std::collections::BTreeMap<String, Option<String>> = sim
        .graph()
        .users()
        .filter(|u| u.removed.is_none())
        .map(|u| (u.id.clone(), u.manager_id.clone()))
        .collect();
    let got: std::collections::BTreeMap<String, Option<String>> = managers.into_iter().collect();
    assert_eq!(got, want);
    assert!(got.values().filter(|m| m.is_none()).count() > 100);
    assert!(got.values().filter(|m| m.is_some()).count() > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_url_over_16_kb_is_refused_with_414() {
    let running = start_sim(5, 10).await;
    let (_, sf) = clients(&running, 999);
    let ids: Vec<String> = (0..700).map(|i| format!("'005{i:015}'")).collect();
    let err = sf
        .query(&format!(
            "SELECT Id FROM User WHERE Id IN ({})",
            ids.join(", ")
        ))
        .await
        .expect_err("too long");
    assert!(err.to_string().contains("414"), "{err}");
    // 500 ids, as the engine sends them, pass.
    let rows = sf
        .query(&format!(
            "SELECT Id FROM User WHERE Id IN ({})",
            ids[..500].join(", ")
        ))
        .await
        .expect("under the limit");
    assert!(rows.is_empty());
}
