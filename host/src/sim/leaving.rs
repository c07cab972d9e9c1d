//! What a leaver touches in the emulated org beyond its User row:
//! login sessions (`AuthSession`, deletable) and connected-app tokens
//! (`OauthToken`, query only, revoked through `/services/oauth2/revoke`
//! with its `DeleteToken`), record read access (`UserRecordAccess`, and
//! TRANSFER_REQUIRES_READ when a new owner cannot read the record),
//! custom hierarchy fields on User that refuse a deactivation, the
//! "Update Records with Inactive Owners" permission, and `describe`.
//!
//! A child module of `salesforce`, so it shares the field tables.

use std::collections::HashMap;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{FieldDef, Kind, SfErr, SfOrg, err, f, json_map, soql};
use crate::sim::Sim;

pub(super) const AUTH_SESSION: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("UsersId", Kind::Ref("User"), 18, false, false),
    f("SessionType", Kind::ReadOnly, 40, false, false),
    f("LoginType", Kind::ReadOnly, 40, false, false),
    f("IsCurrent", Kind::Bool, 0, false, false),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
pub(super) const OAUTH_TOKEN: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("UserId", Kind::Ref("User"), 18, false, false),
    f("AppName", Kind::ReadOnly, 255, false, false),
    f("DeleteToken", Kind::ReadOnly, 255, false, false),
    f("UseCount", Kind::Number, 0, false, false),
    f("LastUsedDate", Kind::ReadOnly, 28, false, false),
];

/// The custom hierarchy fields of the emulated org's User object (a custom
/// User → User relationship can only be a hierarchy one).
pub const HIERARCHY_FIELDS: &[&str] = &["Approver__c"];

/// Most record ids one `UserRecordAccess` query may name.
const RECORD_ACCESS_LIMIT: usize = 200;

impl SfOrg {
    /// Opens a login session and a connected-app token for `user`, as a
    /// login through the UI and an app authorisation would. Returns the
    /// session's id and the token's `DeleteToken`.
    pub fn seed_session(&mut self, user: &str, app: &str) -> Option<(String, String)> {
        self.get("User", user)?;
        let session = self.insert_raw(
            "AuthSession",
            json_map(json!({"UsersId": user, "SessionType": "UI", "LoginType": "Application", "IsCurrent": false})),
        );
        let delete_token = format!("DT{}{}", user, self.next_id);
        self.insert_raw(
            "OauthToken",
            json_map(
                json!({"UserId": user, "AppName": app, "DeleteToken": delete_token, "UseCount": 1}),
            ),
        );
        Some((session, delete_token))
    }

    /// Revokes the connected-app token with this `DeleteToken`.
    pub(super) fn revoke_oauth_token(&mut self, delete_token: &str) -> bool {
        let id = self
            .rows("OauthToken")
            .find(|t| t.get("DeleteToken").and_then(Value::as_str) == Some(delete_token))
            .and_then(|t| t.get("Id")?.as_str().map(str::to_string));
        match id {
            Some(id) => self
                .objects
                .get_mut("OauthToken")
                .is_some_and(|rows| rows.remove(&id).is_some()),
            None => false,
        }
    }

    /// An active assignment rule for `object` (Lead or Case) that gives its
    /// records to `owner`, or none.
    pub fn set_assignment_rule(&mut self, object: &str, owner: Option<&str>) {
        match owner {
            Some(o) => self
                .assignment_rules
                .insert(object.to_string(), o.to_string()),
            None => self.assignment_rules.remove(object),
        };
    }

    /// After an API save that did not opt out: the object's assignment
    /// rule, if any, gives the record its owner.
    pub(super) fn run_assignment_rule(&mut self, object: &str, id: &str) {
        let Some(owner) = self.assignment_rules.get(object).cloned() else {
            return;
        };
        let name = if object.eq_ignore_ascii_case("lead") {
            "Lead"
        } else if object.eq_ignore_ascii_case("case") {
            "Case"
        } else {
            return;
        };
        if let Some(row) = self.objects.get_mut(name).and_then(|r| r.get_mut(id)) {
            row.insert("OwnerId".into(), json!(owner));
        }
    }

    /// `user` may not read any `object` record it does not own (a private
    /// sharing model without a rule that reaches it), or may again.
    pub fn set_read_denied(&mut self, user: &str, object: &str, denied: bool) {
        let key = (user.to_string(), object.to_string());
        if denied {
            self.read_denied.insert(key);
        } else {
            self.read_denied.remove(&key);
        }
    }

    /// Whether `user` can read this record of `object`.
    pub(super) fn can_read(&self, user: &str, object: &str, row: &Map<String, Value>) -> bool {
        row.get("OwnerId").and_then(Value::as_str) == Some(user)
            || !self
                .read_denied
                .contains(&(user.to_string(), object.to_string()))
    }

    /// Grants or removes "Update Records with Inactive Owners" on the
    /// integration user's profile.
    pub fn set_update_inactive_owned(&mut self, allowed: bool) {
        let Some(profile) = self
            .get("User", &self.integration_user_id.clone())
            .and_then(|u| u.get("ProfileId")?.as_str().map(str::to_string))
        else {
            return;
        };
        if let Some(rows) = self.objects.get_mut("PermissionSet") {
            for ps in rows.values_mut() {
                if ps.get("ProfileId").and_then(Value::as_str) == Some(profile.as_str()) {
                    ps.insert("PermissionsUpdateWithInactiveOwner".into(), json!(allowed));
                }
            }
        }
    }

    /// Whether the integration user holds "Update Records with Inactive
    /// Owners" through any of its permission sets.
    pub(super) fn may_update_inactive_owned(&self) -> bool {
        let me = self.integration_user_id.as_str();
        self.rows("PermissionSetAssignment")
            .filter(|a| a.get("AssigneeId").and_then(Value::as_str) == Some(me))
            .filter_map(|a| self.get("PermissionSet", a.get("PermissionSetId")?.as_str()?))
            .any(|p| p.get("PermissionsUpdateWithInactiveOwner") == Some(&Value::Bool(true)))
    }

    /// The hierarchy field and the users whose value it is `user`, if any
    /// (Salesforce refuses to deactivate such a user).
    pub(super) fn hierarchy_reference(&self, user: &str) -> Option<&'static str> {
        HIERARCHY_FIELDS.iter().copied().find(|field| {
            self.rows("User")
                .any(|u| u.get(*field).and_then(Value::as_str) == Some(user))
        })
    }

    /// `SELECT RecordId, HasReadAccess, ... FROM UserRecordAccess WHERE
    /// UserId = '005...' AND RecordId IN (...)`: one user, at most 200
    /// records, as Salesforce allows.
    pub(super) fn user_record_access(&self, q: &soql::Query) -> Result<Vec<Value>, SfErr> {
        let malformed = |m: &str| err("MALFORMED_QUERY", m.to_string(), &[]);
        let mut user = None;
        let mut records: Vec<String> = Vec::new();
        let mut conds = Vec::new();
        if let Some(c) = &q.filter {
            flatten_and(c, &mut conds);
        }
        for c in conds {
            match c {
                soql::Cond::Cmp(f, soql::Op::Eq, soql::Literal::Text(v))
                    if f.eq_ignore_ascii_case("UserId") =>
                {
                    user = Some(v.clone());
                }
                soql::Cond::Cmp(f, soql::Op::Eq, soql::Literal::Text(v))
                    if f.eq_ignore_ascii_case("RecordId") =>
                {
                    records.push(v.clone());
                }
                soql::Cond::In(f, values, false, _) if f.eq_ignore_ascii_case("RecordId") => {
                    records.extend(values.iter().filter_map(|v| match v {
                        soql::Literal::Text(t) => Some(t.clone()),
                        _ => None,
                    }));
                }
                _ => {
                    return Err(malformed(
                        "UserRecordAccess: filter on UserId = and RecordId = or RecordId IN only",
                    ));
                }
            }
        }
        let (Some(user), false) = (user, records.is_empty()) else {
            return Err(malformed(
                "UserRecordAccess requires a filter by a single UserId and RecordId or RecordId IN",
            ));
        };
        if records.len() > RECORD_ACCESS_LIMIT {
            return Err(malformed(
                "UserRecordAccess: no more than 200 RecordIds may be queried",
            ));
        }
        let mut out = Vec::new();
        for id in records {
            let Some((object, row)) = self.record_anywhere(&id) else {
                continue;
            };
            // Salesforce leaves out records the running user cannot read.
            if !self.can_read(&self.integration_user_id, object, row) {
                continue;
            }
            let read = self.can_read(&user, object, row);
            let owner = row.get("OwnerId").and_then(Value::as_str) == Some(user.as_str());
            let mut m = Map::new();
            m.insert(
                "attributes".into(),
                json!({"type": "UserRecordAccess", "url": Value::Null}),
            );
            for field in &q.fields {
                let v = match field.to_ascii_lowercase().as_str() {
                    "recordid" => json!(id),
                    "hasreadaccess" => json!(read),
                    "haseditaccess" | "hastransferaccess" | "hasdeleteaccess" => json!(owner),
                    "maxaccesslevel" => json!(if owner {
                        "All"
                    } else if read {
                        "Read"
                    } else {
                        "None"
                    }),
                    _ => {
                        return Err(err(
                            "INVALID_FIELD",
                            format!("No such column '{field}' on entity 'UserRecordAccess'."),
                            &[],
                        ));
                    }
                };
                m.insert(field.clone(), v);
            }
            out.push(Value::Object(m));
        }
        Ok(out)
    }

    /// A record of any record object by id.
    fn record_anywhere(&self, id: &str) -> Option<(&'static str, &Map<String, Value>)> {
        super::records::RECORD_OBJECTS
            .iter()
            .copied()
            .find_map(|o| self.get(o, id).map(|r| (o, r)))
    }
}

fn flatten_and<'a>(c: &'a soql::Cond, out: &mut Vec<&'a soql::Cond>) {
    match c {
        soql::Cond::And(a, b) => {
            flatten_and(a, out);
            flatten_and(b, out);
        }
        other => out.push(other),
    }
}

/// `GET /services/data/vXX.X/sobjects/{object}/describe`: the fields as
/// Salesforce lists them (name, type, length, custom, referenceTo,
/// relationshipName, createable, updateable, nillable).
pub(super) async fn describe(
    State(sim): State<Sim>,
    Path((v, object)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = super::gate(&sim, &v, &headers) {
        return r;
    }
    let Some((name, defs)) = super::schema(&object) else {
        return super::with_limits(
            &sim,
            super::error_response(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            ),
        );
    };
    let fields: Vec<Value> = defs
        .iter()
        .map(|d| {
            let custom = d.name.ends_with("__c");
            let (kind, refs): (&str, Vec<&str>) = match d.kind {
                Kind::Id => ("id", vec![]),
                Kind::Text | Kind::ReadOnly => ("string", vec![]),
                Kind::Email => ("email", vec![]),
                Kind::Bool => ("boolean", vec![]),
                Kind::Number => ("double", vec![]),
                Kind::Picklist(_) => ("picklist", vec![]),
                Kind::Ref(t) => ("reference", vec![t]),
                Kind::Owner => ("reference", vec!["Group", "User"]),
            };
            let relationship = (kind == "reference").then(|| {
                if custom {
                    format!("{}__r", d.name.trim_end_matches("__c"))
                } else {
                    d.name.trim_end_matches("Id").to_string()
                }
            });
            json!({
                "name": d.name, "type": kind, "length": d.len, "custom": custom,
                "referenceTo": refs, "relationshipName": relationship,
                "createable": d.writable, "updateable": d.writable,
                "nillable": !d.required && !matches!(d.kind, Kind::Bool | Kind::Id),
            })
        })
        .collect();
    let body = json!({"name": name, "custom": false, "queryable": true, "fields": fields});
    super::with_limits(&sim, crate::sim::json(StatusCode::OK, body))
}

/// `POST /services/oauth2/revoke` with `token=`: 200 when revoked; an
/// unknown token is a 400 (the exact error body is unverified).
pub(super) async fn revoke(
    State(sim): State<Sim>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    if sim.salesforce().revoke_oauth_token(token) {
        StatusCode::OK.into_response()
    } else {
        crate::sim::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_token_type", "error_description": "this token type is not supported"}),
        )
    }
}

/// Whether an API save runs assignment rules: yes unless the request sends
/// `Sforce-Auto-Assign: FALSE` (Salesforce's default is TRUE).
pub(super) fn auto_assign(headers: &HeaderMap) -> bool {
    !headers
        .get("sforce-auto-assign")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}
