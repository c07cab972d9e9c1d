//! Bad input gets a clear error naming the thing at fault, and nothing
//! partial is recorded as done.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use provisor::config::Secret;
use provisor::engine::Quiet;
use provisor::sim::creds;
use provisor_e2e::{engine_with, rhai_pack, start_sim};
use serde_json::json;

fn fast(cfg: &mut provisor::config::Config) {
    cfg.sync.retries = 2;
    cfg.sync.retry_base_ms = 5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_entra_credentials_name_the_endpoint_and_code_but_not_the_secret() {
    let running = start_sim(5, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.entra.client_secret = Some(Secret::Value("wrong-secret-value".into()));
    })
    .await;
    let msg = engine
        .sync_once(&Quiet)
        .await
        .expect_err("bad secret")
        .to_string();
    assert!(
        msg.contains("AADSTS7000215") && msg.contains("invalid_client"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("/{}/oauth2/v2.0/token", creds::TENANT)),
        "{msg}"
    );
    assert!(!msg.contains("wrong-secret-value"), "secret leaked: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_salesforce_credentials_are_named() {
    let running = start_sim(5, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.salesforce.client_secret = Some(Secret::Value("nope".into()));
    })
    .await;
    let msg = engine
        .sync_once(&Quiet)
        .await
        .expect_err("bad secret")
        .to_string();
    assert!(
        msg.contains("/services/oauth2/token")
            && msg.contains("invalid_client")
            && msg.contains("invalid client credentials"),
        "{msg}"
    );
    // Entra was read and journaled; nothing was marked done.
    assert_eq!(engine.store.dirty_count().await.expect("count"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_named() {
    let running = start_sim(5, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.entra.authority = "http://127.0.0.1:9".into();
    })
    .await;
    let msg = engine
        .sync_once(&Quiet)
        .await
        .expect_err("unreachable")
        .to_string();
    assert!(msg.contains("cannot reach http://127.0.0.1:9/"), "{msg}");
}

/// A Graph that issues tokens but serves a delta page with an item lacking its id.
async fn broken_graph() -> SocketAddr {
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(|| async { axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "t"})) }))
        .route(
            "/v1.0/users/delta",
            get(|| async { axum::Json(json!({"@odata.deltaLink": "http://x/v1.0/users/delta?$deltatoken=abc", "value": [{"id": "ok-1", "userPrincipalName": "a@b.c"}, {"userPrincipalName": "no-id@b.c"}]})) }),
        );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_delta_page_is_named_and_nothing_is_journaled() {
    let running = start_sim(5, 1).await;
    let graph = broken_graph().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), |c| {
        fast(c);
        c.entra.authority = format!("http://{graph}");
        c.entra.graph_url = format!("http://{graph}");
    })
    .await;
    let msg = engine
        .sync_once(&Quiet)
        .await
        .expect_err("malformed")
        .to_string();
    assert!(
        msg.contains("malformed response from")
            && msg.contains("/v1.0/users/delta")
            && msg.contains("value[1]: item has no id"),
        "{msg}"
    );
    let state = engine.store.sync_state("users").await.expect("state");
    assert_eq!(
        state.delta_link, None,
        "the deltaLink of a bad page is not stored"
    );
    assert_eq!(
        engine.store.dirty_count().await.expect("count"),
        0,
        "not even the good item of the bad page is journaled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_error_body_is_parsed_into_code_message_and_fields() {
    let running = start_sim(6, 4).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(&running, &rhai_pack(), &dir.path().join("s.db"), fast).await;
    // A locale Salesforce's restricted picklist refuses, per record.
    let id = sim
        .graph()
        .users()
        .find(|u| u.props.get("accountEnabled") == Some(&serde_json::Value::Bool(true)))
        .map(|u| u.id.clone())
        .expect("an enabled user");
    let mut m = serde_json::Map::new();
    m.insert("preferredLanguage".into(), json!("xx-YY"));
    sim.graph().update_user(&id, m).expect("update");
    let r = engine.sync_once(&Quiet).await.expect("cycle completes");
    let f = r
        .failures
        .iter()
        .find(|f| f.contains("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"))
        .unwrap_or_else(|| panic!("{:?}", r.failures));
    assert!(
        f.contains("bad value for restricted picklist field: xx_YY")
            && f.contains("[LocaleSidKey]"),
        "{f}"
    );
}

#[test]
fn a_pack_reading_an_attribute_delta_cannot_track_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    provisor_e2e::copy_dir(&rhai_pack(), dir.path());
    let manifest = std::fs::read_to_string(dir.path().join("pack.toml")).expect("manifest");
    std::fs::write(
        dir.path().join("pack.toml"),
        format!("{manifest}\n[source]\nattributes = [\"department\", \"signInActivity\"]\n"),
    )
    .expect("write");
    let err = provisor::rules::Pack::load(dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("gallery-defaults@0.1.0")
            && err.contains("`signInActivity`")
            && err.contains("cannot track"),
        "{err}"
    );
    // A name that is no Graph property name at all.
    std::fs::write(
        dir.path().join("pack.toml"),
        format!("{manifest}\n[source]\nattributes = [\"office location\"]\n"),
    )
    .expect("write");
    let err = provisor::rules::Pack::load(dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("\"office location\" is not a Graph property name"),
        "{err}"
    );
}
