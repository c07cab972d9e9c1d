//! `/_sim/`: change the tenant while the host runs, inject faults, read
//! counters and the org's users. Not part of either cloud's API.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};

use super::{Faults, SfOrg, Sim};

pub(super) fn routes() -> Router<Sim> {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", put(set_faults))
        .route("/_sim/graph/users", post(create_user))
        .route(
            "/_sim/graph/users/{id}",
            axum::routing::patch(update_user).delete(delete_user),
        )
        .route("/_sim/graph/users/{id}/restore", post(restore_user))
        .route(
            "/_sim/graph/groups/{group}/members/{user}",
            post(add_member).delete(remove_member),
        )
        .route(
            "/_sim/graph/users/{id}/manager",
            put(set_manager).delete(clear_manager),
        )
        .route("/_sim/graph/groups", get(list_groups).post(create_group))
        .route(
            "/_sim/graph/groups/{group}",
            axum::routing::patch(rename_group).delete(delete_group),
        )
        .route("/_sim/salesforce/users", get(sf_users))
        .route("/_sim/salesforce/licences/{name}", put(set_licence))
        .route(
            "/_sim/salesforce/permission-set-licences/{name}",
            put(set_psl),
        )
        .route(
            "/_sim/salesforce/users/{id}/deactivation-blocker",
            put(set_blocker).delete(clear_blocker),
        )
        .route(
            "/_sim/salesforce/records/{object}",
            get(sf_records).post(seed_record),
        )
        .route("/_sim/salesforce/users/{id}/sessions", post(seed_session))
        .route(
            "/_sim/salesforce/assignment-rules/{object}",
            put(set_assignment_rule).delete(clear_assignment_rule),
        )
        .route(
            "/_sim/salesforce/users/{id}/read-denied/{object}",
            put(deny_read).delete(allow_read),
        )
        .route(
            "/_sim/salesforce/integration/update-inactive-owned",
            put(set_update_inactive_owned),
        )
        .route("/_sim/salesforce/queues", post(seed_queue))
        .route("/_sim/salesforce/bulk", put(set_bulk))
        .route("/_sim/salesforce/bulk/jobs", get(bulk_jobs))
}

/// Rows of a record or queue object (`Lead`, `Case`, `Group`...).
async fn sf_records(State(sim): State<Sim>, Path(object): Path<String>) -> Response {
    let org = sim.salesforce();
    let rows: Vec<Value> = org
        .rows(&object)
        .map(|r| Value::Object(r.clone()))
        .collect();
    done::<String>(Ok(Value::Array(rows)))
}

/// Seeds a record without the API's rules (`{"LastName": .., "IsConverted": true}`).
async fn seed_record(
    State(sim): State<Sim>,
    Path(object): Path<String>,
    axum::Json(fields): axum::Json<Map<String, Value>>,
) -> Response {
    done(
        sim.salesforce()
            .seed_record(&object, fields)
            .map(|id| json!({"id": id})),
    )
}

/// Seeds a queue: `{"name": "Support Queue", "sobjectTypes": ["Case"]}`.
async fn seed_queue(State(sim): State<Sim>, axum::Json(body): axum::Json<Value>) -> Response {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"name\": \"...\", \"sobjectTypes\": [...]}"}),
        );
    };
    let types: Vec<&str> = body
        .get("sobjectTypes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let id = sim.salesforce().seed_queue(name, &types);
    done::<String>(Ok(json!({"id": id})))
}

/// How Bulk API jobs progress (`BulkSettings` as JSON).
async fn set_bulk(
    State(sim): State<Sim>,
    axum::Json(settings): axum::Json<super::salesforce::BulkSettings>,
) -> Response {
    sim.salesforce().set_bulk_settings(settings);
    done::<String>(Ok(json!({"ok": true})))
}

/// Every Bulk API ingest job with its state and counters.
async fn bulk_jobs(State(sim): State<Sim>) -> Response {
    let jobs = sim.salesforce().bulk_jobs();
    done::<String>(Ok(Value::Array(jobs)))
}

fn done<E: std::fmt::Display>(r: Result<Value, E>) -> Response {
    match r {
        Ok(v) => super::json(StatusCode::OK, v),
        Err(e) => super::json(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    }
}

async fn stats(State(sim): State<Sim>) -> Response {
    done::<String>(serde_json::to_value(sim.stats()).map_err(|e| e.to_string()))
}

async fn set_faults(State(sim): State<Sim>, axum::Json(f): axum::Json<Faults>) -> Response {
    sim.set_faults(f);
    done::<String>(Ok(json!({"ok": true})))
}

async fn create_user(
    State(sim): State<Sim>,
    axum::Json(mut props): axum::Json<Map<String, Value>>,
) -> Response {
    let id = props
        .remove("id")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    done(
        sim.graph()
            .create_user(&id, props)
            .map(|id| json!({"id": id})),
    )
}

async fn update_user(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    axum::Json(changes): axum::Json<Map<String, Value>>,
) -> Response {
    done(
        sim.graph()
            .update_user(&id, changes)
            .map(|()| json!({"id": id})),
    )
}

async fn delete_user(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let permanent = q.get("permanent").is_some_and(|v| v == "true");
    let mut t = sim.graph();
    done(
        if permanent {
            t.hard_delete_user(&id)
        } else {
            t.soft_delete_user(&id)
        }
        .map(|()| json!({"id": id})),
    )
}

async fn restore_user(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    done(sim.graph().restore_user(&id).map(|()| json!({"id": id})))
}

async fn add_member(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    done(
        sim.graph()
            .set_membership(&group, &user, true)
            .map(|()| json!({"ok": true})),
    )
}

async fn remove_member(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    done(
        sim.graph()
            .set_membership(&group, &user, false)
            .map(|()| json!({"ok": true})),
    )
}

async fn sf_users(State(sim): State<Sim>) -> Response {
    let org = sim.salesforce();
    let users: Vec<Value> = org.rows("User").map(|u| Value::Object(u.clone())).collect();
    done::<String>(Ok(Value::Array(users)))
}

async fn set_manager(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(manager) = body.get("id").and_then(Value::as_str) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"id\": \"<manager id>\"}"}),
        );
    };
    done(
        sim.graph()
            .set_manager(&id, Some(manager))
            .map(|()| json!({"id": id})),
    )
}

async fn clear_manager(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    done(
        sim.graph()
            .set_manager(&id, None)
            .map(|()| json!({"id": id})),
    )
}

async fn list_groups(State(sim): State<Sim>) -> Response {
    let t = sim.graph();
    let groups: Vec<Value> = t
        .groups()
        .filter(|g| !g.removed)
        .map(|g| json!({"id": g.id, "displayName": g.display_name, "members": g.members}))
        .collect();
    done::<String>(Ok(Value::Array(groups)))
}

async fn create_group(State(sim): State<Sim>, axum::Json(body): axum::Json<Value>) -> Response {
    let Some(name) = body.get("displayName").and_then(Value::as_str) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"displayName\": \"...\"}"}),
        );
    };
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let id = sim.graph().create_group(&id, name);
    done::<String>(Ok(json!({"id": id})))
}

/// Makes deactivating the user fail with `{"message": "..."}`, like an org
/// configuration reference (default case owner, workflow user...).
async fn set_blocker(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(message) = body.get("message").and_then(Value::as_str) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"message\": \"...\"}"}),
        );
    };
    sim.salesforce()
        .set_deactivation_blocker(&id, Some(message));
    done::<String>(Ok(json!({"id": id})))
}

/// Opens a login session and a connected-app token for the user
/// (`{"app": "..."}`, optional), as if it had logged in.
async fn seed_session(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    body: Option<axum::Json<Value>>,
) -> Response {
    let app = body
        .as_ref()
        .and_then(|b| b.get("app"))
        .and_then(Value::as_str)
        .unwrap_or("Salesforce Mobile")
        .to_string();
    match sim.salesforce().seed_session(&id, &app) {
        Some((session, token)) => {
            done::<String>(Ok(json!({"session": session, "deleteToken": token})))
        }
        None => super::json(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no user {id}")}),
        ),
    }
}

/// An active Lead or Case assignment rule giving records to
/// `{"owner": "005..."}`; API saves without `Sforce-Auto-Assign: FALSE`
/// run it.
async fn set_assignment_rule(
    State(sim): State<Sim>,
    Path(object): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(owner) = body.get("owner").and_then(Value::as_str) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"owner\": \"005...\"}"}),
        );
    };
    sim.salesforce().set_assignment_rule(&object, Some(owner));
    done::<String>(Ok(json!({"object": object, "owner": owner})))
}

async fn clear_assignment_rule(State(sim): State<Sim>, Path(object): Path<String>) -> Response {
    sim.salesforce().set_assignment_rule(&object, None);
    done::<String>(Ok(json!({"object": object})))
}

/// The user may not read the object's records it does not own
/// (TRANSFER_REQUIRES_READ when it is made their owner).
async fn deny_read(State(sim): State<Sim>, Path((id, object)): Path<(String, String)>) -> Response {
    sim.salesforce().set_read_denied(&id, &object, true);
    done::<String>(Ok(json!({"id": id, "object": object})))
}

async fn allow_read(
    State(sim): State<Sim>,
    Path((id, object)): Path<(String, String)>,
) -> Response {
    sim.salesforce().set_read_denied(&id, &object, false);
    done::<String>(Ok(json!({"id": id, "object": object})))
}

/// `{"allowed": false}` takes "Update Records with Inactive Owners" from
/// the integration user's profile.
async fn set_update_inactive_owned(
    State(sim): State<Sim>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(allowed) = body.get("allowed").and_then(Value::as_bool) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"allowed\": true|false}"}),
        );
    };
    sim.salesforce().set_update_inactive_owned(allowed);
    done::<String>(Ok(json!({"allowed": allowed})))
}

async fn clear_blocker(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    sim.salesforce().set_deactivation_blocker(&id, None);
    done::<String>(Ok(json!({"id": id})))
}

async fn rename_group(
    State(sim): State<Sim>,
    Path(group): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(name) = body.get("displayName").and_then(Value::as_str) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"displayName\": \"...\"}"}),
        );
    };
    done(
        sim.graph()
            .rename_group(&group, name)
            .map(|()| json!({"id": group})),
    )
}

async fn delete_group(State(sim): State<Sim>, Path(group): Path<String>) -> Response {
    done(
        sim.graph()
            .delete_group(&group)
            .map(|()| json!({"id": group})),
    )
}

/// Sets a user licence's seats: `{"total": N}`.
async fn set_licence(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    set_seats(
        &sim,
        &name,
        &body,
        "licence",
        "user licence",
        SfOrg::set_licence_total,
    )
}

/// Sets a permission set licence's seats: `{"total": N}`.
async fn set_psl(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    set_seats(
        &sim,
        &name,
        &body,
        "permission_set_licence",
        "permission set licence",
        SfOrg::set_permission_set_licence_total,
    )
}

/// The body `{"total": N}` applied by `set` to the licence `name`.
fn set_seats(
    sim: &Sim,
    name: &str,
    body: &Value,
    key: &str,
    what: &str,
    set: fn(&mut SfOrg, &str, i64) -> bool,
) -> Response {
    let Some(total) = body.get("total").and_then(Value::as_i64) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"total\": N}"}),
        );
    };
    if set(&mut sim.salesforce(), name, total) {
        done::<String>(Ok(json!({key: name, "total": total})))
    } else {
        super::json(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no {what} named {name:?}")}),
        )
    }
}
