//! Record ownership and Bulk API 2.0: the real client against the emulated
//! org over loopback (queues, converted leads, inactive owners, job
//! failures, API call counting).

use std::time::Duration;

use provisor::config::SecretString;
use provisor::http::RetryPolicy;
use provisor::salesforce::{
    BulkError, BulkOperation, BulkOptions, RowOutcome, SalesforceClient, soql_quote,
};
use provisor::sim::{RunningSim, creds};
use provisor_e2e::{config_for, rhai_pack, start_sim};
use serde_json::{Map, Value, json};

fn client(running: &RunningSim) -> SalesforceClient {
    let cfg = config_for(
        running,
        &rhai_pack(),
        &std::env::temp_dir().join("unused.db"),
        |_| {},
    );
    SalesforceClient::new(
        provisor::http::client().expect("client"),
        cfg.salesforce.clone(),
        SecretString::new(creds::SF_CLIENT_SECRET),
        RetryPolicy::default(),
    )
}

fn fast() -> BulkOptions {
    BulkOptions {
        max_rows_per_job: 400,
        poll_initial: Duration::from_millis(1),
        poll_max: Duration::from_millis(5),
        timeout: Duration::from_secs(30),
        ..BulkOptions::default()
    }
}

fn row(id: &str, owner: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("Id".into(), json!(id));
    m.insert("OwnerId".into(), json!(owner));
    m
}

fn seed(running: &RunningSim, object: &str, fields: Value) -> String {
    let Value::Object(m) = fields else {
        panic!("fields are an object")
    };
    running
        .sim
        .salesforce()
        .seed_record(object, m)
        .expect("seeded")
}

/// What each row should end as: `Ok(owner)` or `Err(status code)`.
type Expect = Result<String, &'static str>;

/// One ingest: the object, its rows and what each should end as.
type Case = (&'static str, Vec<Map<String, Value>>, Vec<Expect>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_owner_updates_map_every_row_to_its_outcome() {
    let running = start_sim(5, 91).await;
    let base = running.base_url();
    let http = provisor::http::client().expect("client");
    // Owners and a queue, through the admin API.
    let (active, inactive) = {
        let mut org = running.sim.salesforce();
        let active = org.insert_raw(
            "User",
            serde_json::from_value(json!({"Username": "new.owner@contoso-sim.com", "LastName": "Owner", "IsActive": true}))
                .expect("map"),
        );
        let inactive = org.insert_raw(
            "User",
            serde_json::from_value(
                json!({"Username": "gone@contoso-sim.com", "LastName": "Gone", "IsActive": false}),
            )
            .expect("map"),
        );
        (active, inactive)
    };
    let queue: Value = http
        .post(format!("{base}/_sim/salesforce/queues"))
        .json(&json!({"name": "Support Queue", "sobjectTypes": ["Case", "Lead"]}))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let queue = queue["id"].as_str().expect("queue id").to_string();
    assert!(queue.starts_with("00G"));
    let seeded: Value = http
        .post(format!("{base}/_sim/salesforce/records/Lead"))
        .json(&json!({"LastName": "Via Admin", "Company": "C", "IsConverted": true}))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert!(seeded["id"].as_str().expect("id").starts_with("00Q"));

    let mut jobs: Vec<Case> = Vec::new();
    let (mut rows, mut want) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        let converted = i % 20 == 0;
        let id = seed(
            &running,
            "Lead",
            json!({"LastName": format!("Lead {i}"), "Company": "Contoso", "IsConverted": converted}),
        );
        let (owner, expect) = match i {
            _ if converted => (active.clone(), Err("CANNOT_UPDATE_CONVERTED_LEAD")),
            _ if i % 33 == 1 => (inactive.clone(), Err("INACTIVE_OWNER_OR_USER")),
            _ if i % 2 == 0 => (queue.clone(), Ok(queue.clone())),
            _ => (active.clone(), Ok(active.clone())),
        };
        rows.push(row(&id, &owner));
        want.push(expect);
    }
    jobs.push(("Lead", rows, want));
    let (mut rows, mut want) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        let id = seed(&running, "Case", json!({"Subject": format!("Case {i}")}));
        let (owner, expect) = if i % 50 == 7 {
            (inactive.clone(), Err("INACTIVE_OWNER_OR_USER"))
        } else {
            (queue.clone(), Ok(queue.clone()))
        };
        rows.push(row(&id, &owner));
        want.push(expect);
    }
    jobs.push(("Case", rows, want));
    let (mut rows, mut want) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        let id = seed(
            &running,
            "Opportunity",
            json!({"Name": format!("Deal {i}"), "StageName": "Prospecting", "CloseDate": "2026-12-31"}),
        );
        let (owner, expect) = if i % 40 == 3 {
            (queue.clone(), Err("INVALID_CROSS_REFERENCE_KEY"))
        } else {
            (active.clone(), Ok(active.clone()))
        };
        rows.push(row(&id, &owner));
        want.push(expect);
    }
    jobs.push(("Opportunity", rows, want));

    let sf = client(&running);
    // Log in first so the token call is not part of the count below.
    sf.user_id().await.expect("login");
    let before = running.sim.stats();
    let mut job_count = 0;
    for (object, rows, want) in &jobs {
        let out = sf
            .ingest_with(object, BulkOperation::Update, rows, &fast())
            .await
            .expect("ingest");
        assert_eq!(out.jobs.len(), 3, "1,000 rows at 400 per job");
        job_count += out.jobs.len() as u64;
        assert_eq!(out.rows.len(), rows.len());
        for (i, (got, want)) in out.rows.iter().zip(want).enumerate() {
            let id = rows[i]["Id"].as_str().expect("id");
            match (got, want) {
                (
                    RowOutcome::Success {
                        id: got_id,
                        created,
                    },
                    Ok(_),
                ) => {
                    assert_eq!(got_id, id, "{object} row {i}");
                    assert!(!created);
                }
                (RowOutcome::Failed { id: got_id, error }, Err(code)) => {
                    assert_eq!(got_id.as_deref(), Some(id), "{object} row {i}");
                    assert_eq!(error.code, *code, "{object} row {i}: {error}");
                }
                other => panic!("{object} row {i}: {other:?}"),
            }
            let stored = running
                .sim
                .salesforce()
                .get(object, id)
                .and_then(|r| r.get("OwnerId").and_then(Value::as_str).map(str::to_string))
                .expect("record");
            if let Ok(owner) = want {
                assert_eq!(&stored, owner, "{object} row {i} owner");
            } else {
                assert_ne!(&stored, &rows[i]["OwnerId"], "{object} row {i} unchanged");
            }
        }
        if *object == "Lead" {
            let e = out
                .rows
                .iter()
                .find_map(|r| match r {
                    RowOutcome::Failed { error, .. } if error.code == "INACTIVE_OWNER_OR_USER" => {
                        Some(error.clone())
                    }
                    _ => None,
                })
                .expect("an inactive-owner row");
            assert_eq!(
                e.message,
                format!("operation performed with inactive user [{inactive}] as owner of lead")
            );
        }
    }
    // Per job: create, upload, close, two polls (default progression),
    // successful and failed results.
    let after = running.sim.stats();
    assert_eq!(after.sf_api_calls - before.sf_api_calls, job_count * 7);
    assert_eq!(after.sf_write_calls - before.sf_write_calls, job_count);
    assert_eq!(after.sf_records_written - before.sf_records_written, 3000);

    // The queue owner reads back through the polymorphic Owner relationship.
    let cases = sf
        .query(&format!(
            "SELECT Id, Owner.Name FROM Case WHERE OwnerId = {}",
            soql_quote(&queue)
        ))
        .await
        .expect("query");
    assert_eq!(cases.len(), 980);
    assert_eq!(cases[0]["Owner"]["Name"], "Support Queue");
    let leads = sf
        .query(&format!(
            "SELECT Id, Owner.Name FROM Lead WHERE OwnerId = {}",
            soql_quote(&active)
        ))
        .await
        .expect("query");
    assert_eq!(leads[0]["Owner"]["Name"], "Owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_the_emulator_fails_are_typed_errors_naming_the_job() {
    let running = start_sim(3, 92).await;
    let base = running.base_url();
    let lead = seed(&running, "Lead", json!({"LastName": "L", "Company": "C"}));
    let sf = client(&running);
    let owner = sf.user_id().await.expect("login");

    // An unknown column fails the whole job when it is processed.
    let mut bad = row(&lead, &owner);
    bad.insert("Bogus__c".into(), json!("x"));
    let e = sf
        .ingest_with("Lead", BulkOperation::Update, &[bad], &fast())
        .await
        .expect_err("job fails");
    let BulkError::Job {
        job_id,
        state,
        message,
    } = &e
    else {
        panic!("{e}")
    };
    assert!(job_id.starts_with("750"));
    assert_eq!(state, "Failed");
    assert_eq!(message, "InvalidBatch : Field name not found : Bogus__c");
    assert!(e.to_string().contains(job_id.as_str()), "{e}");

    // An internal failure injected through the admin API.
    let http = provisor::http::client().expect("client");
    http.put(format!("{base}/_sim/salesforce/bulk"))
        .json(&json!({"fail_next_job": "InternalServerError : retries exhausted"}))
        .send()
        .await
        .expect("admin")
        .error_for_status()
        .expect("accepted");
    let e = sf
        .ingest_with(
            "Lead",
            BulkOperation::Update,
            &[row(&lead, &owner)],
            &fast(),
        )
        .await
        .expect_err("job fails");
    assert!(
        matches!(&e, BulkError::Job { message, .. } if message == "InternalServerError : retries exhausted"),
        "{e}"
    );

    // A job that never finishes is aborted when the client gives up.
    http.put(format!("{base}/_sim/salesforce/bulk"))
        .json(&json!({"polls_in_progress": 100000}))
        .send()
        .await
        .expect("admin")
        .error_for_status()
        .expect("accepted");
    let opts = BulkOptions {
        timeout: Duration::from_millis(100),
        ..fast()
    };
    let e = sf
        .ingest_with("Lead", BulkOperation::Update, &[row(&lead, &owner)], &opts)
        .await
        .expect_err("times out");
    let BulkError::Timeout { job_id, .. } = &e else {
        panic!("{e}")
    };
    let jobs: Value = http
        .get(format!("{base}/_sim/salesforce/bulk/jobs"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let states: Vec<(&str, &str)> = jobs
        .as_array()
        .expect("list")
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap_or(""),
                j["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(states.len(), 3);
    assert!(states.contains(&(job_id.as_str(), "Aborted")), "{states:?}");
    assert_eq!(
        states.iter().filter(|(_, s)| *s == "Failed").count(),
        2,
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_refuse_mixed_dml_and_count_answers_without_records() {
    let running = start_sim(3, 93).await;
    let base = running.base_url();
    for i in 0..5 {
        seed(
            &running,
            "Lead",
            json!({"LastName": format!("L{i}"), "Company": "C", "IsConverted": i < 2}),
        );
    }
    let http = provisor::http::client().expect("client");
    let token: Value = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", creds::SF_CLIENT_ID),
            ("client_secret", creds::SF_CLIENT_SECRET),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = token["access_token"].as_str().expect("token").to_string();
    let resp = http
        .post(format!("{base}/services/data/v62.0/composite/sobjects"))
        .bearer_auth(&token)
        .header("Sforce-Auto-Assign", "FALSE")
        .json(&json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Lead"}, "LastName": "X", "Company": "C"},
            {"attributes": {"type": "Group"}, "Name": "G"}
        ]}))
        .send()
        .await
        .expect("collection");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "MIXED_DML_OPERATION");

    let q = "SELECT COUNT() FROM Lead WHERE IsConverted = true";
    let body: Value = http
        .get(format!("{base}/services/data/v62.0/query"))
        .query(&[("q", q)])
        .bearer_auth(&token)
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(body, json!({"totalSize": 2, "done": true, "records": []}));

    // Single-record writes take the same rules, with the header accepted.
    let converted = running
        .sim
        .salesforce()
        .rows("Lead")
        .find(|l| l["IsConverted"] == json!(true))
        .and_then(|l| l["Id"].as_str().map(str::to_string))
        .expect("converted lead");
    let resp = http
        .patch(format!(
            "{base}/services/data/v62.0/sobjects/Lead/{converted}"
        ))
        .bearer_auth(&token)
        .header("Sforce-Auto-Assign", "FALSE")
        .json(&json!({"Status": "Working"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "CANNOT_UPDATE_CONVERTED_LEAD");
    assert_eq!(body[0]["message"], "cannot reference converted lead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_none_rolls_back_and_the_last_admin_stays_active() {
    let running = start_sim(3, 94).await;
    let base = running.base_url();
    let http = provisor::http::client().expect("client");
    let token: Value = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", creds::SF_CLIENT_ID),
            ("client_secret", creds::SF_CLIENT_SECRET),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = token["access_token"].as_str().expect("token").to_string();
    let leads = || running.sim.salesforce().rows("Lead").count();
    let before = leads();
    let results: Value = http
        .post(format!("{base}/services/data/v62.0/composite/sobjects"))
        .bearer_auth(&token)
        .json(&json!({"allOrNone": true, "records": [
            {"attributes": {"type": "Lead"}, "LastName": "Kept?", "Company": "C"},
            {"attributes": {"type": "Lead"}, "LastName": "No company"}
        ]}))
        .send()
        .await
        .expect("collection")
        .json()
        .await
        .expect("json");
    assert_eq!(
        results[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(
        results[1]["errors"][0]["statusCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert_eq!(leads(), before, "nothing of the request stays");

    // The seeded org has two active admins: the integration user and an IT
    // admin. The first deactivation goes through, the second is refused.
    let admins: Vec<String> = {
        let org = running.sim.salesforce();
        let admin = org.profile_id("System Administrator").expect("profile");
        org.rows("User")
            .filter(|u| u["ProfileId"] == json!(admin) && u["IsActive"] == json!(true))
            .filter_map(|u| u["Id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(admins.len(), 2);
    let deactivate = |id: String| {
        let (http, token, base) = (http.clone(), token.clone(), base.clone());
        async move {
            http.patch(format!("{base}/services/data/v62.0/sobjects/User/{id}"))
                .bearer_auth(&token)
                .json(&json!({"IsActive": false}))
                .send()
                .await
                .expect("patch")
        }
    };
    assert_eq!(deactivate(admins[1].clone()).await.status().as_u16(), 204);
    let resp = deactivate(admins[0].clone()).await;
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "CANNOT_DISABLE_LAST_ADMIN");
}
