//! Microsoft identity platform token endpoint and Graph `users/delta` and
//! `groups/delta`, as documented (see docs/graph notes): opaque skip and
//! delta tokens, `@odata.nextLink` / `@odata.deltaLink`, `@removed`,
//! `members@delta`, error bodies with `request-id`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Sim, creds, set_header};
use crate::model::Removal;

/// Token lifetime the emulator grants, as Entra does.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3599);
/// Member entries (`members@delta`) per groups page; Graph is reported to
/// cap link entries at about 500 per page.
const MEMBER_LINKS_PER_PAGE: usize = 500;
/// Page size when the client does not ask (Graph is commonly seen at ~200
/// for directory delta).
const DEFAULT_PAGE: usize = 200;

/// User properties the emulator stores (Graph names).
pub const USER_PROPERTIES: &[&str] = &[
    "userPrincipalName",
    "mail",
    "givenName",
    "surname",
    "displayName",
    "department",
    "jobTitle",
    "employeeId",
    "mobilePhone",
    "businessPhones",
    "preferredLanguage",
    "userType",
    "accountEnabled",
    "officeLocation",
    "externalUserState",
    "onPremisesImmutableId",
    "employeeType",
    "companyName",
    "city",
    "country",
    "state",
    "usageLocation",
];

/// Returned when `users/delta` has no `$select` (note: no accountEnabled).
const DEFAULT_SELECT: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
];

/// One directory user.
#[derive(Debug, Clone)]
pub struct SimUser {
    pub id: String,
    /// Set properties by Graph name; a property set to null stays as Null
    /// (so delta can report it cleared), one never set is absent.
    pub props: Map<String, Value>,
    pub manager_id: Option<String>,
    pub removed: Option<Removal>,
    /// Change sequence number of the last change.
    seq: u64,
}

/// One group and the history of its direct memberships.
#[derive(Debug, Clone)]
pub struct SimGroup {
    pub id: String,
    pub display_name: String,
    pub members: BTreeSet<String>,
    /// (seq, member id, added?) for `members@delta` in change rounds.
    log: Vec<(u64, String, bool)>,
    seq: u64,
    /// Deleted groups stay as tombstones so change rounds can report them.
    pub removed: bool,
}

/// The simulated Entra tenant.
#[derive(Debug)]
pub struct GraphTenant {
    seq: u64,
    users: BTreeMap<String, SimUser>,
    groups: BTreeMap<String, SimGroup>,
    tokens: HashMap<String, Instant>,
    /// Lower-cased UPN -> id of live or soft-deleted users (uniqueness in
    /// O(1), so generating 100k users takes seconds).
    upns: HashMap<String, String>,
    /// How long a deltaLink stays valid (Graph: 7 days for directory objects).
    pub delta_token_ttl: Duration,
    /// Answer an expired deltaLink with 410 Gone instead of the documented
    /// 400 `syncStateNotFound` (both are seen in the field).
    pub expired_token_gone: bool,
    subscriptions: BTreeMap<String, Subscription>,
    notifications: Vec<(String, String, String)>,
}

/// A change-notification subscription (`/v1.0/subscriptions`).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    /// `users` or `groups`.
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub client_state: Option<String>,
    pub expires: chrono::DateTime<chrono::Utc>,
}

impl Subscription {
    fn json(&self) -> Value {
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id, "resource": self.resource, "changeType": self.change_type,
            "notificationUrl": self.notification_url, "clientState": self.client_state,
            "expirationDateTime": self.expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "applicationId": creds::ENTRA_CLIENT_ID, "creatorId": creds::ENTRA_CLIENT_ID,
            "latestSupportedTlsVersion": "v1_2",
        })
    }
}

/// Whether the emulator stores this user property: the known ones and
/// directory extension attributes (`extension_<appId>_<name>`).
pub fn is_user_property(k: &str) -> bool {
    USER_PROPERTIES.contains(&k) || (k.starts_with("extension_") && k.len() > "extension_".len())
}

impl Default for GraphTenant {
    fn default() -> Self {
        Self {
            seq: 0,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            tokens: HashMap::new(),
            upns: HashMap::new(),
            delta_token_ttl: Duration::from_secs(7 * 24 * 3600),
            expired_token_gone: false,
            subscriptions: BTreeMap::new(),
            notifications: Vec::new(),
        }
    }
}

/// Errors from admin operations on the tenant.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("no user {0} in the tenant")]
    NoUser(String),
    #[error("no group {0} in the tenant")]
    NoGroup(String),
    #[error("user property {0:?} is not one the emulator stores")]
    UnknownProperty(String),
    #[error(
        "another object with the same value for property userPrincipalName already exists: {0}"
    )]
    DuplicateUpn(String),
}

impl GraphTenant {
    fn bump(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Queues a change notification for subscribers of `resource`.
    fn note(&mut self, resource: &str, id: &str, change: &str) {
        if !self.subscriptions.is_empty() {
            self.notifications
                .push((resource.to_string(), id.to_string(), change.to_string()));
        }
    }

    /// Takes the queued notifications with the subscriptions they go to.
    pub(crate) fn take_notifications(&mut self) -> Vec<(Subscription, Vec<(String, String)>)> {
        let queued = std::mem::take(&mut self.notifications);
        let now = chrono::Utc::now();
        self.subscriptions
            .values()
            .filter(|s| s.expires > now)
            .map(|s| {
                let items = queued
                    .iter()
                    .filter(|(r, _, c)| {
                        *r == s.resource && s.change_type.split(',').any(|t| t.trim() == c)
                    })
                    .map(|(_, id, c)| (id.clone(), c.clone()))
                    .collect();
                (s.clone(), items)
            })
            .filter(|(_, items): &(Subscription, Vec<(String, String)>)| !items.is_empty())
            .collect()
    }

    /// Adds a user with the given properties; returns its id.
    pub fn create_user(
        &mut self,
        id: &str,
        props: Map<String, Value>,
    ) -> Result<String, TenantError> {
        for k in props.keys() {
            if !is_user_property(k) {
                return Err(TenantError::UnknownProperty(k.clone()));
            }
        }
        if let Some(upn) = props.get("userPrincipalName").and_then(Value::as_str) {
            if self.upns.contains_key(&upn.to_lowercase()) {
                return Err(TenantError::DuplicateUpn(upn.to_string()));
            }
            self.upns.insert(upn.to_lowercase(), id.to_string());
        }
        let seq = self.bump();
        self.users.insert(
            id.to_string(),
            SimUser {
                id: id.to_string(),
                props,
                manager_id: None,
                removed: None,
                seq,
            },
        );
        self.note("users", id, "updated");
        Ok(id.to_string())
    }

    /// Changes properties of a live user (null clears a property).
    pub fn update_user(
        &mut self,
        id: &str,
        changes: Map<String, Value>,
    ) -> Result<(), TenantError> {
        for k in changes.keys() {
            if !is_user_property(k) {
                return Err(TenantError::UnknownProperty(k.clone()));
            }
        }
        if let Some(new) = changes.get("userPrincipalName").and_then(Value::as_str) {
            let key = new.to_lowercase();
            if self.upns.get(&key).is_some_and(|owner| owner != id) {
                return Err(TenantError::DuplicateUpn(new.to_string()));
            }
            let old = self
                .live_user(id)?
                .props
                .get("userPrincipalName")
                .and_then(Value::as_str)
                .map(str::to_lowercase);
            if let Some(old) = old {
                self.upns.remove(&old);
            }
            self.upns.insert(key, id.to_string());
        }
        let seq = self.bump();
        let user = self.live_user(id)?;
        for (k, v) in changes {
            user.props.insert(k, v);
        }
        user.seq = seq;
        self.note("users", id, "updated");
        Ok(())
    }

    /// Sets or clears a user's manager.
    pub fn set_manager(&mut self, id: &str, manager: Option<&str>) -> Result<(), TenantError> {
        let seq = self.bump();
        let user = self.live_user(id)?;
        user.manager_id = manager.map(str::to_string);
        user.seq = seq;
        self.note("users", id, "updated");
        Ok(())
    }

    /// Changes a user's manager without it showing in delta: Graph is
    /// known to miss manager changes (graph.md §4.5), which only a
    /// periodic re-read of managers catches.
    pub fn set_manager_unseen(
        &mut self,
        id: &str,
        manager: Option<&str>,
    ) -> Result<(), TenantError> {
        let user = self.live_user(id)?;
        user.manager_id = manager.map(str::to_string);
        Ok(())
    }

    /// Soft-deletes (restorable) a user.
    pub fn soft_delete_user(&mut self, id: &str) -> Result<(), TenantError> {
        let seq = self.bump();
        let user = self.live_user(id)?;
        user.removed = Some(Removal::SoftDeleted);
        user.seq = seq;
        self.note("users", id, "updated");
        Ok(())
    }

    /// Restores a soft-deleted user.
    pub fn restore_user(&mut self, id: &str) -> Result<(), TenantError> {
        let seq = self.bump();
        let user = self
            .users
            .get_mut(id)
            .filter(|u| u.removed == Some(Removal::SoftDeleted))
            .ok_or_else(|| TenantError::NoUser(id.to_string()))?;
        user.removed = None;
        user.seq = seq;
        self.note("users", id, "updated");
        Ok(())
    }

    /// Permanently deletes a user. Like Graph (a reported gap), the groups
    /// it belonged to do not emit a `members@delta` removal.
    pub fn hard_delete_user(&mut self, id: &str) -> Result<(), TenantError> {
        let seq = self.bump();
        let user = self
            .users
            .get_mut(id)
            .ok_or_else(|| TenantError::NoUser(id.to_string()))?;
        user.removed = Some(Removal::HardDeleted);
        user.seq = seq;
        if let Some(upn) = user.props.get("userPrincipalName").and_then(Value::as_str) {
            self.upns.remove(&upn.to_lowercase());
        }
        for g in self.groups.values_mut() {
            g.members.remove(id);
        }
        self.note("users", id, "deleted");
        Ok(())
    }

    fn live_user(&mut self, id: &str) -> Result<&mut SimUser, TenantError> {
        self.users
            .get_mut(id)
            .filter(|u| u.removed.is_none())
            .ok_or_else(|| TenantError::NoUser(id.to_string()))
    }

    /// Adds a group; returns its id.
    pub fn create_group(&mut self, id: &str, display_name: &str) -> String {
        let seq = self.bump();
        self.groups.insert(
            id.to_string(),
            SimGroup {
                id: id.to_string(),
                display_name: display_name.to_string(),
                members: BTreeSet::new(),
                log: Vec::new(),
                seq,
                removed: false,
            },
        );
        self.note("groups", id, "updated");
        id.to_string()
    }

    /// Renames a group.
    pub fn rename_group(&mut self, id: &str, display_name: &str) -> Result<(), TenantError> {
        let seq = self.bump();
        let g = self
            .groups
            .get_mut(id)
            .filter(|g| !g.removed)
            .ok_or_else(|| TenantError::NoGroup(id.to_string()))?;
        g.display_name = display_name.to_string();
        g.seq = seq;
        self.note("groups", id, "updated");
        Ok(())
    }

    /// Deletes a group: its memberships, and its membership in other groups, go.
    pub fn delete_group(&mut self, id: &str) -> Result<(), TenantError> {
        let seq = self.bump();
        let g = self
            .groups
            .get_mut(id)
            .filter(|g| !g.removed)
            .ok_or_else(|| TenantError::NoGroup(id.to_string()))?;
        g.removed = true;
        g.members.clear();
        g.seq = seq;
        for other in self.groups.values_mut() {
            if other.members.remove(id) {
                other.log.push((seq, id.to_string(), false));
                other.seq = seq;
            }
        }
        self.note("groups", id, "deleted");
        Ok(())
    }

    /// Adds (`true`) or removes (`false`) a direct member.
    pub fn set_membership(
        &mut self,
        group: &str,
        member: &str,
        add: bool,
    ) -> Result<(), TenantError> {
        // Members are users or (nested) groups.
        let is_group = self.groups.get(member).is_some_and(|g| !g.removed);
        if add && !is_group && self.users.get(member).is_none_or(|u| u.removed.is_some()) {
            return Err(TenantError::NoUser(member.to_string()));
        }
        if add && member == group {
            return Err(TenantError::NoGroup(format!(
                "{group} cannot be a member of itself"
            )));
        }
        let seq = self.bump();
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| TenantError::NoGroup(group.to_string()))?;
        let changed = if add {
            g.members.insert(member.to_string())
        } else {
            g.members.remove(member)
        };
        if changed {
            g.log.push((seq, member.to_string(), add));
            g.seq = seq;
        }
        self.note("groups", group, "updated");
        Ok(())
    }

    /// A user by id (live or removed).
    pub fn user(&self, id: &str) -> Option<&SimUser> {
        self.users.get(id)
    }

    /// All users, removed ones included.
    pub fn users(&self) -> impl Iterator<Item = &SimUser> {
        self.users.values()
    }

    /// A group id by display name.
    pub fn group_by_name(&self, name: &str) -> Option<&SimGroup> {
        self.groups
            .values()
            .find(|g| !g.removed && g.display_name == name)
    }

    /// All groups.
    pub fn groups(&self) -> impl Iterator<Item = &SimGroup> {
        self.groups.values()
    }

    /// Revokes every access token (tests the client's refresh on 401).
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    fn issue_token(&mut self) -> String {
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.sim.{}",
            uuid::Uuid::new_v4().simple()
        );
        self.tokens
            .insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
        token
    }

    fn token_valid(&self, token: &str) -> bool {
        self.tokens
            .get(token)
            .is_some_and(|exp| *exp > Instant::now())
    }
}

/// What an opaque skip or delta token carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cursor {
    /// Changes after this sequence number...
    s: u64,
    /// ...up to and including this one.
    u: u64,
    /// Last id served in this round (ids are served in order).
    a: Option<String>,
    /// Selected properties.
    sel: Vec<String>,
    /// When a deltaLink was issued (Unix seconds), to expire it.
    #[serde(default)]
    t: i64,
    /// Member offset inside the first group served: large groups are split
    /// across pages, as Graph does.
    #[serde(default)]
    m: usize,
}

impl Cursor {
    fn encode(&self) -> String {
        let raw = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }
    fn decode(s: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

pub(super) fn routes() -> Router<Sim> {
    let mut r = Router::new().route("/{tenant}/oauth2/v2.0/token", post(token));
    for path in [
        "delta",
        "microsoft.graph.delta",
        "delta()",
        "microsoft.graph.delta()",
    ] {
        r = r
            .route(&format!("/v1.0/users/{path}"), get(users_delta))
            .route(&format!("/v1.0/groups/{path}"), get(groups_delta));
    }
    r.route("/v1.0/users", get(list_users))
        .route(
            "/v1.0/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route(
            "/v1.0/subscriptions/{id}",
            axum::routing::patch(renew_subscription).delete(delete_subscription),
        )
}

/// `GET /v1.0/users?$select=id&$expand=manager($select=id)&$top=999`:
/// live users in id order, `$top` a page (default 100, at most 999), the
/// expanded manager as an object (absent without one), paged by an opaque
/// `$skiptoken`.
async fn list_users(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let client_req = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let top = match q.get("$top").map(|t| t.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=999).contains(&n) => n,
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "Invalid page size specified: '$top'. Must be between 1 and 999 inclusive.",
                client_req.as_deref(),
            );
        }
    };
    let select: Vec<String> = q
        .get("$select")
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_else(|| DEFAULT_SELECT.iter().map(|s| s.to_string()).collect());
    for p in &select {
        if p != "id" && !is_user_property(p) {
            return error_response(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!("Could not find a property named '{p}' on type 'microsoft.graph.user'."),
                client_req.as_deref(),
            );
        }
    }
    let expand_manager = match q.get("$expand").map(String::as_str) {
        None => false,
        Some(e) if e == "manager" || e.starts_with("manager(") => true,
        Some(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!("Expand of '{e}' is not supported by this emulator."),
                client_req.as_deref(),
            );
        }
    };
    let after = q.get("$skiptoken").cloned();
    let tenant = sim.graph();
    let mut page: Vec<Value> = Vec::with_capacity(top);
    let mut last: Option<String> = None;
    let mut more = false;
    for u in tenant
        .users
        .values()
        .filter(|u| u.removed.is_none())
        .filter(|u| after.as_deref().is_none_or(|a| u.id.as_str() > a))
    {
        if page.len() == top {
            more = true;
            break;
        }
        let mut o = Map::new();
        o.insert("id".into(), json!(u.id));
        for p in select.iter().filter(|p| *p != "id") {
            o.insert(p.clone(), u.props.get(p).cloned().unwrap_or(Value::Null));
        }
        if expand_manager && let Some(m) = &u.manager_id {
            o.insert(
                "manager".into(),
                json!({"@odata.type": "#microsoft.graph.user", "id": m}),
            );
        }
        last = Some(u.id.clone());
        page.push(Value::Object(o));
    }
    drop(tenant);
    let base = super::base_url(&headers);
    let mut body = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#users"),
        "value": page,
    });
    if more && let Some(l) = last {
        let Ok(mut next) = url::Url::parse(&format!("{base}/v1.0/users")) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "The Host header does not make a URL.",
                None,
            );
        };
        {
            let mut qp = next.query_pairs_mut();
            for (k, v) in q.iter().filter(|(k, _)| *k != "$skiptoken") {
                qp.append_pair(k, v);
            }
            qp.append_pair("$skiptoken", &l);
        }
        body["@odata.nextLink"] = json!(next.to_string());
    }
    let mut resp = super::json(StatusCode::OK, body);
    set_header(&mut resp, "request-id", &uuid::Uuid::new_v4().to_string());
    if let Some(c) = client_req {
        set_header(&mut resp, "client-request-id", &c);
    }
    resp
}

/// Only the bearer token check (subscriptions are not delta reads).
fn authorized(sim: &Sim, headers: &HeaderMap) -> Result<(), Response> {
    sim.stats_mut().graph_calls += 1;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if sim.graph().token_valid(token) {
        Ok(())
    } else {
        Err(error_response(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
            None,
        ))
    }
}

/// Directory subscriptions live at most 41,760 minutes; less than 45 minutes
/// is raised to 45.
fn subscription_expiry(requested: Option<&str>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let now = chrono::Utc::now();
    let at = requested
        .ok_or("expirationDateTime is required")?
        .parse::<chrono::DateTime<chrono::Utc>>()
        .map_err(|e| format!("expirationDateTime is not a date: {e}"))?;
    if at > now + chrono::Duration::minutes(41_760) {
        return Err("Subscription expiration can only be 41760 minutes in the future.".into());
    }
    Ok(at.max(now + chrono::Duration::minutes(45)))
}

async fn create_subscription(
    State(sim): State<Sim>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let bad = |msg: &str| error_response(StatusCode::BAD_REQUEST, "InvalidRequest", msg, None);
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let resource = s("resource")
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_lowercase();
    if resource != "users" && resource != "groups" {
        return bad("resource must be users or groups for this emulator.");
    }
    let change_type = s("changeType").unwrap_or_default();
    if change_type.is_empty()
        || !change_type
            .split(',')
            .all(|t| matches!(t.trim(), "created" | "updated" | "deleted"))
    {
        return bad("changeType must be a comma-separated list of created, updated, deleted.");
    }
    let Some(url) = s("notificationUrl") else {
        return bad("notificationUrl is required.");
    };
    let client_state = s("clientState");
    if client_state.as_ref().is_some_and(|c| c.len() > 128) {
        return bad("clientState must be at most 128 characters.");
    }
    let expires = match subscription_expiry(s("expirationDateTime").as_deref()) {
        Ok(e) => e,
        Err(m) => return bad(&m),
    };
    // The validation handshake: the endpoint must echo the token, as
    // text/plain, within 10 seconds, or the subscription is refused.
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let validated = async {
        let resp = reqwest::Client::new()
            .post(&url)
            .query(&[("validationToken", &token)])
            .header("content-type", "text/plain; charset=utf-8")
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let ok = resp.status() == reqwest::StatusCode::OK
            && resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("text/plain"));
        let text = resp.text().await.ok()?;
        (ok && text == token).then_some(())
    }
    .await;
    if validated.is_none() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            None,
        );
    }
    let sub = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        resource,
        change_type,
        notification_url: url,
        client_state,
        expires,
    };
    let out = sub.json();
    sim.graph().subscriptions.insert(sub.id.clone(), sub);
    super::json(StatusCode::CREATED, out)
}

async fn list_subscriptions(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let subs: Vec<Value> = sim
        .graph()
        .subscriptions
        .values()
        .map(Subscription::json)
        .collect();
    super::json(StatusCode::OK, json!({"value": subs}))
}

async fn renew_subscription(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let expires = match subscription_expiry(body.get("expirationDateTime").and_then(Value::as_str))
    {
        Ok(e) => e,
        Err(m) => return error_response(StatusCode::BAD_REQUEST, "InvalidRequest", &m, None),
    };
    let mut t = sim.graph();
    match t.subscriptions.get_mut(&id) {
        Some(sub) => {
            sub.expires = expires;
            super::json(StatusCode::OK, sub.json())
        }
        None => error_response(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The object was not found: subscription {id}"),
            None,
        ),
    }
}

async fn delete_subscription(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    match sim.graph().subscriptions.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The object was not found: subscription {id}"),
            None,
        ),
    }
}

/// Sends queued change notifications to their subscribers; runs beside the
/// server. Notifications only say that something changed: delta says what.
pub(crate) async fn dispatch_notifications(sim: Sim) {
    let client = reqwest::Client::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let batches = sim.graph().take_notifications();
        for (sub, items) in batches {
            for chunk in items.chunks(100) {
                let value: Vec<Value> = chunk
                    .iter()
                    .map(|(id, change)| {
                        let kind = if sub.resource == "users" { ("Users", "#Microsoft.Graph.User") } else { ("Groups", "#Microsoft.Graph.Group") };
                        json!({
                            "subscriptionId": sub.id,
                            "subscriptionExpirationDateTime": sub.expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            "changeType": change,
                            "resource": format!("{}/{id}", kind.0),
                            "resourceData": {"@odata.type": kind.1, "@odata.id": format!("{}/{id}", kind.0), "id": id, "organizationId": creds::TENANT},
                            "clientState": sub.client_state,
                            "tenantId": creds::TENANT,
                        })
                    })
                    .collect();
                // Delivery failures are the receiver's problem, as with Graph.
                let _ = client
                    .post(&sub.notification_url)
                    .json(&json!({"value": value}))
                    .timeout(std::time::Duration::from_secs(3))
                    .send()
                    .await;
            }
        }
    }
}

/// A Graph error body (`{"error":{code,message,innerError}}`).
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    client_request_id: Option<&str>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut inner = json!({
        "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
        "request-id": request_id,
    });
    if let Some(c) = client_request_id {
        inner["client-request-id"] = json!(c);
    }
    let mut resp = super::json(
        status,
        json!({"error": {"code": code, "message": message, "innerError": inner}}),
    );
    set_header(&mut resp, "request-id", &request_id);
    if let Some(c) = client_request_id {
        set_header(&mut resp, "client-request-id", c);
    }
    resp
}

fn identity_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    super::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

async fn token(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    sim.stats_mut().graph_token_calls += 1;
    if matches!(tenant.as_str(), "common" | "consumers") {
        return identity_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            9001023,
            "The grant type isn't supported over the /common or /consumers endpoints.",
        );
    }
    if tenant != creds::TENANT {
        return identity_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return identity_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    if scope.split(' ').count() != 1 || !scope.ends_with("/.default") {
        return identity_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            &format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        );
    }
    if form.get("client_id").map(String::as_str) != Some(creds::ENTRA_CLIENT_ID) {
        return identity_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application was not found in the directory. This can happen if the application has not been installed by the administrator of the tenant.",
        );
    }
    let issue = |sim: &Sim| {
        let token = sim.graph().issue_token();
        super::json(
            StatusCode::OK,
            json!({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME.as_secs(), "ext_expires_in": TOKEN_LIFETIME.as_secs(), "access_token": token}),
        )
    };
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return identity_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client_assertion_type: expected urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            );
        }
        let expected_aud = format!("{}/{tenant}/oauth2/v2.0/token", super::base_url(&headers));
        return match check_assertion(assertion, &expected_aud) {
            Ok(()) => issue(&sim),
            Err((code, msg)) => {
                identity_error(StatusCode::UNAUTHORIZED, "invalid_client", code, &msg)
            }
        };
    }
    match form.get("client_secret") {
        None => identity_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
        ),
        Some(s) if s != creds::ENTRA_CLIENT_SECRET => identity_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
        ),
        Some(_) => issue(&sim),
    }
}

/// The certificate the emulated app registration trusts (test-only pair in
/// `sim/testcert/`), and its `x5t#S256` thumbprint.
pub const TRUSTED_CERT_PEM: &str = include_str!("testcert/cert.pem");
pub(crate) const TRUSTED_PUBLIC_KEY_PEM: &str = include_str!("testcert/pub.pem");
/// The private key of [`TRUSTED_CERT_PEM`], for tests and the demo only.
pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("testcert/key.pem");

fn trusted_thumbprint() -> Option<String> {
    use sha2::Digest as _;
    let cert = pem::parse(TRUSTED_CERT_PEM).ok()?;
    Some(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(cert.contents())),
    )
}

/// Verifies a `client_assertion` as Entra does: known certificate by
/// `x5t#S256` (or legacy `x5t`), RS256/PS256 signature, `aud` = this token
/// endpoint, `iss` = `sub` = client id, `nbf`/`exp` with 5 minutes' skew.
fn check_assertion(jwt: &str, expected_aud: &str) -> Result<(), (u32, String)> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| (700027, format!("Client assertion failed signature validation. [Reason - The provided assertion is malformed: {e}]")))?;
    let known = trusted_thumbprint();
    if header.x5t_s256.is_none() && header.x5t.is_none() {
        return Err((700027, "Client assertion failed signature validation. [Reason - The key used to sign the assertion is not identified: no x5t or x5t#S256 header.]".into()));
    }
    if header.x5t_s256.is_some() && header.x5t_s256 != known {
        return Err((
            700027,
            "Client assertion failed signature validation. [Reason - The key was not found.]"
                .into(),
        ));
    }
    if !matches!(
        header.alg,
        jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::PS256
    ) {
        return Err((
            700027,
            format!(
                "Client assertion failed signature validation. [Reason - Unsupported algorithm {:?}.]",
                header.alg
            ),
        ));
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(TRUSTED_PUBLIC_KEY_PEM.as_bytes())
        .map_err(|e| (500011, format!("emulator key unusable: {e}")))?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[expected_aud]);
    v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    v.validate_nbf = true;
    v.leeway = 300;
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &v).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature | jsonwebtoken::errors::ErrorKind::ImmatureSignature => (700024, "Client assertion is not within its valid time range.".to_string()),
        jsonwebtoken::errors::ErrorKind::InvalidAudience => (700021, format!("Client assertion audience claim does not match Realm issuer. Expected {expected_aud}.")),
        _ => (700027, format!("Client assertion failed signature validation. [Reason - {e}]")),
    })?;
    let claim = |k: &str| {
        data.claims
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if claim("iss") != creds::ENTRA_CLIENT_ID || claim("sub") != creds::ENTRA_CLIENT_ID {
        return Err((
            700023,
            "Client assertion contains an invalid issuer or subject: both must be the client id."
                .into(),
        ));
    }
    Ok(())
}

/// Checks the bearer token and the injected faults; `Err` is the response.
fn gate(
    sim: &Sim,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    kind: &str,
) -> Result<Option<String>, Response> {
    let client_req = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    sim.stats_mut().graph_calls += 1;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.is_empty() {
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
            client_req.as_deref(),
        ));
    }
    if !sim.graph().token_valid(token) {
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
            client_req.as_deref(),
        ));
    }
    let (throttle, retry_after) = {
        let f = sim.faults();
        (
            f.throttle_rate,
            if f.throttle_retry_after_secs > 0.0 {
                f.throttle_retry_after_secs
            } else {
                1.0
            },
        )
    };
    if throttle > 0.0 && sim.chance(throttle) {
        let mut resp = super::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"code": "TooManyRequests", "message": "Please retry again later.", "innerError": {"code": "429", "status": "429", "message": "Please retry after", "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(), "request-id": uuid::Uuid::new_v4().to_string()}}}),
        );
        set_header(&mut resp, "retry-after", &retry_after.to_string());
        set_header(
            &mut resp,
            "x-ms-throttle-information",
            "ResourceUnitLimitExceeded",
        );
        return Err(resp);
    }
    let mut faults = sim.faults();
    if faults
        .graph_fault_resource
        .as_deref()
        .is_some_and(|r| r != kind)
    {
        return Ok(client_req);
    }
    let has_token = q.contains_key("$deltatoken") || q.contains_key("$skiptoken");
    let gone_now = match faults.graph_gone_after_pages {
        Some(0) if has_token => {
            faults.graph_gone_after_pages = None;
            true
        }
        Some(n) if n > 0 => {
            faults.graph_gone_after_pages = Some(n - 1);
            false
        }
        _ => false,
    };
    if gone_now || (faults.graph_gone_next > 0 && has_token) {
        if !gone_now {
            faults.graph_gone_next -= 1;
        }
        drop(faults);
        // Service-side reset: 410 with a fresh initial round in Location.
        let sel = q
            .get("$deltatoken")
            .or_else(|| q.get("$skiptoken"))
            .and_then(|t| Cursor::decode(t))
            .map(|c| c.sel.join(","))
            .unwrap_or_default();
        let mut resp = error_response(
            StatusCode::GONE,
            "resyncRequired",
            "Resync required. Replace any local cached copies of the collection with the full resource collection.",
            client_req.as_deref(),
        );
        set_header(
            &mut resp,
            "location",
            &format!(
                "{}/v1.0/{kind}/delta?$select={sel}",
                super::base_url(headers)
            ),
        );
        return Err(resp);
    }
    if let Some(n) = faults.graph_delta_fail_after_pages.as_mut() {
        if *n == 0 {
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable (injected fault).",
                client_req.as_deref(),
            ));
        }
        *n -= 1;
    }
    Ok(client_req)
}

fn page_size(headers: &HeaderMap) -> usize {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .next()
        .map(|n| n.clamp(1, 999))
        .unwrap_or(DEFAULT_PAGE)
}

enum Round {
    Page(Cursor),
    Latest(Vec<String>),
}

/// Works out where a delta request starts from its query string.
fn start(
    q: &HashMap<String, String>,
    allowed: &dyn Fn(&str) -> bool,
    default_sel: &[&str],
    ttl: Duration,
    expired_gone: bool,
) -> Result<Round, (StatusCode, &'static str, String)> {
    if let Some(t) = q.get("$skiptoken") {
        return Cursor::decode(t).map(Round::Page).ok_or((
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Invalid skip token.".to_string(),
        ));
    }
    if q.contains_key("$filter") {
        return Err((StatusCode::BAD_REQUEST, "Request_UnsupportedQuery", "Unsupported query: only filtering by id is supported on delta, and this emulator does not implement it.".into()));
    }
    let sel: Vec<String> = match q.get("$select") {
        Some(s) => {
            let mut v = Vec::new();
            let untracked: Vec<&str> = s
                .split(',')
                .map(str::trim)
                .filter(|p| crate::entra::untrackable(p).is_some())
                .collect();
            if !untracked.is_empty() {
                // Message as reported by Graph users (field-failures.md §8);
                // the error code is not in the report: unverified.
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    format!(
                        "Invalid request for delta query: for this entity set, $expand/$select is not supported for the following properties: {}",
                        untracked.join(",")
                    ),
                ));
            }
            for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if p != "id" && !allowed(p) {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        format!(
                            "Could not find a property named '{p}' on type 'microsoft.graph.directoryObject'."
                        ),
                    ));
                }
                v.push(p.to_string());
            }
            v
        }
        None => default_sel.iter().map(|s| s.to_string()).collect(),
    };
    match q.get("$deltatoken").map(String::as_str) {
        Some("latest") => Ok(Round::Latest(sel)),
        Some(t) => {
            let expired = (StatusCode::BAD_REQUEST, "syncStateNotFound", "The sync state generation is not found. The delta token is expired and data must be synchronized again.".to_string());
            let c = Cursor::decode(t).ok_or(expired.clone())?;
            if chrono::Utc::now().timestamp() - c.t > ttl.as_secs() as i64 {
                return Err(if expired_gone {
                    (StatusCode::GONE, "syncStateNotFound", expired.2)
                } else {
                    expired
                });
            }
            Ok(Round::Page(Cursor {
                s: c.u,
                u: 0,
                a: None,
                sel: c.sel,
                t: 0,
                m: 0,
            }))
        }
        None => Ok(Round::Page(Cursor {
            s: 0,
            u: 0,
            a: None,
            sel,
            t: 0,
            m: 0,
        })),
    }
}

fn finish(
    headers: &HeaderMap,
    client_req: Option<String>,
    kind: &str,
    context: &str,
    value: Vec<Value>,
    next: Result<Cursor, Cursor>,
) -> Response {
    let mut items = Vec::new();
    for (i, v) in value.iter().enumerate() {
        if i > 0 {
            items.push(b',');
        }
        let _ = serde_json::to_writer(&mut items, v);
    }
    finish_raw(headers, client_req, kind, context, &items, next)
}

/// Writes the page body directly: a 999-user page is about half a
/// megabyte, and building a JSON tree first would double the work.
fn finish_raw(
    headers: &HeaderMap,
    client_req: Option<String>,
    kind: &str,
    context: &str,
    items: &[u8],
    next: Result<Cursor, Cursor>,
) -> Response {
    let base = super::base_url(headers);
    let (link_name, link) = match next {
        Ok(c) => (
            "@odata.nextLink",
            format!("{base}/v1.0/{kind}/delta?$skiptoken={}", c.encode()),
        ),
        Err(c) => (
            "@odata.deltaLink",
            format!("{base}/v1.0/{kind}/delta?$deltatoken={}", c.encode()),
        ),
    };
    let mut body = Vec::with_capacity(items.len() + 512);
    body.extend_from_slice(b"{\"@odata.context\":");
    let _ = serde_json::to_writer(&mut body, &format!("{base}/v1.0/$metadata#{context}"));
    body.extend_from_slice(b",\"");
    body.extend_from_slice(link_name.as_bytes());
    body.extend_from_slice(b"\":");
    let _ = serde_json::to_writer(&mut body, &link);
    body.extend_from_slice(b",\"value\":[");
    body.extend_from_slice(items);
    body.extend_from_slice(b"]}");
    let mut resp = (
        StatusCode::OK,
        [("content-type", "application/json; odata.metadata=minimal")],
        body,
    )
        .into_response();
    set_header(&mut resp, "request-id", &uuid::Uuid::new_v4().to_string());
    if let Some(c) = client_req {
        set_header(&mut resp, "client-request-id", &c);
    }
    resp
}

async fn users_delta(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let client_req = match gate(&sim, &headers, &q, "users") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (ttl, gone) = {
        let t = sim.graph();
        (t.delta_token_ttl, t.expired_token_gone)
    };
    let allowed = |p: &str| p == "manager" || is_user_property(p);
    let round = match start(&q, &allowed, DEFAULT_SELECT, ttl, gone) {
        Ok(r) => r,
        Err((st, code, msg)) => return error_response(st, code, &msg, client_req.as_deref()),
    };
    // A stuck service: an empty page whose nextLink is the request itself.
    if let (Round::Page(c), true) = (&round, q.contains_key("$skiptoken")) {
        let stall = {
            let mut f = sim.faults();
            let hit = f.graph_stall_next > 0;
            f.graph_stall_next = f.graph_stall_next.saturating_sub(1);
            hit
        };
        if stall {
            return finish_raw(&headers, client_req, "users", "users", b"", Ok(c.clone()));
        }
    }
    let size = page_size(&headers);
    let tenant = sim.graph();
    let mut cur = match round {
        Round::Latest(sel) => {
            let c = Cursor {
                s: tenant.seq,
                u: tenant.seq,
                a: None,
                sel,
                t: chrono::Utc::now().timestamp(),
                m: 0,
            };
            drop(tenant);
            return finish(&headers, client_req, "users", "users", vec![], Err(c));
        }
        Round::Page(c) => c,
    };
    if cur.u == 0 {
        cur.u = tenant.seq;
    }
    let initial = cur.s == 0;
    let mut items: Vec<u8> = Vec::with_capacity(size * 480);
    let mut count = 0;
    let mut last = None;
    let mut more = false;
    let after = cur.a.clone();
    for u in tenant.users.range::<String, _>((
        after
            .as_ref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        std::ops::Bound::Unbounded,
    )) {
        let u = u.1;
        // The initial round is the current state (later changes are
        // replayed by the next round, which is harmless: apply is idempotent).
        let skip = if initial {
            u.removed.is_some()
        } else {
            u.seq <= cur.s || u.seq > cur.u
        };
        if skip {
            continue;
        }
        if count == size {
            more = true;
            break;
        }
        if count > 0 {
            items.push(b',');
        }
        render_user(&mut items, u, &cur.sel);
        count += 1;
        last = Some(u.id.clone());
    }
    drop(tenant);
    sim.stats_mut().graph_delta_pages += 1;
    let next = if more {
        Ok(Cursor { a: last, ..cur })
    } else {
        Err(Cursor {
            s: cur.u,
            u: cur.u,
            a: None,
            sel: cur.sel,
            t: chrono::Utc::now().timestamp(),
            m: 0,
        })
    };
    finish_raw(&headers, client_req, "users", "users", &items, next)
}

/// Appends one user as Graph renders it: `id`, then the selected
/// properties that were ever set (set to null stays null), `manager@delta`
/// for `manager`, or just `@removed` for a deleted user.
fn render_user(out: &mut Vec<u8>, u: &SimUser, sel: &[String]) {
    out.extend_from_slice(b"{\"id\":");
    let _ = serde_json::to_writer(&mut *out, &u.id);
    if let Some(r) = u.removed {
        let reason = if r == Removal::SoftDeleted {
            "changed"
        } else {
            "deleted"
        };
        out.extend_from_slice(b",\"@removed\":{\"reason\":\"");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\"}}");
        return;
    }
    for p in sel {
        if p == "manager" {
            if let Some(m) = &u.manager_id {
                out.extend_from_slice(
                    b",\"manager@delta\":[{\"@odata.type\":\"#microsoft.graph.user\",\"id\":",
                );
                let _ = serde_json::to_writer(&mut *out, m);
                out.extend_from_slice(b"}]");
            }
            continue;
        }
        let v = match u.props.get(p) {
            Some(v) => v,
            None if p == "businessPhones" => &Value::Array(Vec::new()),
            None => continue,
        };
        out.push(b',');
        let _ = serde_json::to_writer(&mut *out, p);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, v);
    }
    out.push(b'}');
}

async fn groups_delta(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let client_req = match gate(&sim, &headers, &q, "groups") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (ttl, gone) = {
        let t = sim.graph();
        (t.delta_token_ttl, t.expired_token_gone)
    };
    let allowed = |p: &str| matches!(p, "displayName" | "members" | "description");
    let round = match start(&q, &allowed, &["displayName", "members"], ttl, gone) {
        Ok(r) => r,
        Err((st, code, msg)) => return error_response(st, code, &msg, client_req.as_deref()),
    };
    let size = page_size(&headers);
    let tenant = sim.graph();
    let mut cur = match round {
        Round::Latest(sel) => {
            let c = Cursor {
                s: tenant.seq,
                u: tenant.seq,
                a: None,
                sel,
                t: chrono::Utc::now().timestamp(),
                m: 0,
            };
            drop(tenant);
            return finish(&headers, client_req, "groups", "groups", vec![], Err(c));
        }
        Round::Page(c) => c,
    };
    if cur.u == 0 {
        cur.u = tenant.seq;
    }
    let initial = cur.s == 0;
    let with_members = cur.sel.iter().any(|s| s == "members");
    let mut value = Vec::new();
    let mut last = cur.a.clone();
    let mut resume: Option<Cursor> = None;
    let mut budget = MEMBER_LINKS_PER_PAGE;
    let mut offset = cur.m;
    let odata_type = |m: &str| {
        if tenant.groups.contains_key(m) {
            "#microsoft.graph.group"
        } else {
            "#microsoft.graph.user"
        }
    };
    for (_, g) in tenant.groups.range::<String, _>((
        cur.a
            .as_ref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        std::ops::Bound::Unbounded,
    )) {
        if (initial && g.removed) || (!initial && (g.seq <= cur.s || g.seq > cur.u)) {
            continue;
        }
        if value.len() == size || budget == 0 {
            resume = Some(Cursor {
                a: last.clone(),
                m: 0,
                ..cur.clone()
            });
            break;
        }
        let mut o = Map::new();
        o.insert("id".into(), json!(g.id));
        if g.removed {
            o.insert("@removed".into(), json!({"reason": "deleted"}));
            value.push(Value::Object(o));
            last = Some(g.id.clone());
            continue;
        }
        if cur.sel.iter().any(|s| s == "displayName") {
            o.insert("displayName".into(), json!(g.display_name));
        }
        if with_members {
            let members: Vec<Value> = if initial {
                // A large group comes in slices: the same group id again on
                // the next page with the next members (clients must merge).
                let slice: Vec<Value> = g
                    .members
                    .iter()
                    .skip(offset)
                    .take(budget)
                    .map(|m| json!({"@odata.type": odata_type(m), "id": m}))
                    .collect();
                budget -= slice.len();
                if offset + slice.len() < g.members.len() {
                    resume = Some(Cursor {
                        a: last.clone(),
                        m: offset + slice.len(),
                        ..cur.clone()
                    });
                }
                slice
            } else {
                let mut latest: BTreeMap<&str, bool> = BTreeMap::new();
                for (seq, m, add) in &g.log {
                    if *seq > cur.s && *seq <= cur.u {
                        latest.insert(m, *add);
                    }
                }
                latest
                    .into_iter()
                    .map(|(m, add)| {
                        if add {
                            json!({"@odata.type": odata_type(m), "id": m})
                        } else {
                            json!({"@odata.type": odata_type(m), "id": m, "@removed": {"reason": "deleted"}})
                        }
                    })
                    .collect()
            };
            o.insert("members@delta".into(), Value::Array(members));
        }
        offset = 0;
        value.push(Value::Object(o));
        if resume.is_some() {
            break;
        }
        last = Some(g.id.clone());
    }
    drop(tenant);
    sim.stats_mut().graph_delta_pages += 1;
    let next = match resume {
        Some(c) => Ok(c),
        None => Err(Cursor {
            s: cur.u,
            u: cur.u,
            a: None,
            sel: cur.sel,
            t: chrono::Utc::now().timestamp(),
            m: 0,
        }),
    };
    finish(&headers, client_req, "groups", "groups", value, next)
}
