//! Salesforce OAuth token endpoint and the REST API subset provisor uses:
//! SOQL query with `nextRecordsUrl` paging, sObject rows, sObject
//! Collections (≤200, `allOrNone`, per-record `statusCode` results), `/limits`,
//! `Sforce-Limit-Info` on every response and array error bodies with
//! `errorCode`. User writes are validated as Salesforce does (required
//! fields, lengths, restricted picklists, global Username uniqueness,
//! Federation ID and nickname uniqueness, licence seats, last admin).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};

use super::{Sim, creds, set_header, soql};

// Record objects and Bulk API 2.0 live beside this file but are child
// modules, so they share its private field tables and helpers.
#[path = "bulk.rs"]
mod bulk;
#[path = "leaving.rs"]
mod leaving;
#[path = "records.rs"]
mod records;

pub use leaving::HIERARCHY_FIELDS;

pub use bulk::BulkSettings;

const SESSION_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// Daily API request allocation of the emulated org (rolling 24 h).
const DAILY_API_LIMIT: u64 = 1_000_000;
const MIN_VERSION: u32 = 31;
const MAX_VERSION: u32 = 66;
const COLLECTION_LIMIT: usize = 200;

/// One error as Salesforce reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SfErr {
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<String>,
}

fn err(code: &'static str, message: impl Into<String>, fields: &[&str]) -> SfErr {
    SfErr {
        code,
        message: message.into(),
        fields: fields.iter().map(|s| s.to_string()).collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Id,
    Text,
    Email,
    Bool,
    Number,
    Picklist(&'static [&'static str]),
    Ref(&'static str),
    /// A polymorphic owner: a User (`005`) or a queue (`00G`).
    Owner,
    ReadOnly,
}

/// The object a lookup points at; for a polymorphic owner the id decides
/// (without one, the User side is used to check field paths).
fn ref_target(kind: Kind, id: Option<&str>) -> Option<&'static str> {
    match kind {
        Kind::Ref(t) => Some(t),
        Kind::Owner if id.is_some_and(|i| i.starts_with("00G")) => Some("Group"),
        Kind::Owner => Some("User"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct FieldDef {
    name: &'static str,
    kind: Kind,
    len: usize,
    required: bool,
    writable: bool,
}

const fn f(name: &'static str, kind: Kind, len: usize, required: bool, writable: bool) -> FieldDef {
    FieldDef {
        name,
        kind,
        len,
        required,
        writable,
    }
}

/// Restricted picklists (a realistic subset of Salesforce's values).
pub const TIME_ZONES: &[&str] = &[
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Dublin",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Amsterdam",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Asia/Tokyo",
    "Asia/Shanghai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Australia/Sydney",
    "GMT",
];
pub const LOCALES: &[&str] = &[
    "en_US", "en_GB", "en_AU", "en_CA", "en_IE", "en_IN", "de_DE", "de_AT", "de_CH", "fr_FR",
    "fr_CA", "fr_BE", "es_ES", "es_MX", "it_IT", "ja_JP", "ko_KR", "nl_NL", "nl_BE", "pt_BR",
    "pt_PT", "sv_SE", "pl_PL", "zh_CN", "zh_TW", "da_DK", "fi_FI", "nb_NO", "cs_CZ", "tr_TR",
];
pub const LANGUAGES: &[&str] = &[
    "en_US", "en_GB", "de", "fr", "es", "it", "ja", "ko", "nl_NL", "pt_BR", "sv", "pl", "zh_CN",
    "zh_TW", "da", "fi", "no", "cs", "tr",
];
pub const ENCODINGS: &[&str] = &[
    "UTF-8",
    "ISO-8859-1",
    "Shift_JIS",
    "ISO-2022-JP",
    "EUC-JP",
    "ks_c_5601-1987",
    "Big5",
    "GB2312",
];

const USER: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Username", Kind::Email, 80, true, true),
    f("LastName", Kind::Text, 80, true, true),
    f("FirstName", Kind::Text, 40, false, true),
    f("Name", Kind::ReadOnly, 121, false, false),
    f("Email", Kind::Email, 128, true, true),
    f("Alias", Kind::Text, 8, true, true),
    f("CommunityNickname", Kind::Text, 40, false, true),
    f("TimeZoneSidKey", Kind::Picklist(TIME_ZONES), 40, true, true),
    f("LocaleSidKey", Kind::Picklist(LOCALES), 40, true, true),
    f(
        "EmailEncodingKey",
        Kind::Picklist(ENCODINGS),
        40,
        true,
        true,
    ),
    f(
        "LanguageLocaleKey",
        Kind::Picklist(LANGUAGES),
        40,
        true,
        true,
    ),
    f("ProfileId", Kind::Ref("Profile"), 18, true, true),
    f("UserRoleId", Kind::Ref("UserRole"), 18, false, true),
    f("ManagerId", Kind::Ref("User"), 18, false, true),
    f("FederationIdentifier", Kind::Text, 512, false, true),
    f("Department", Kind::Text, 80, false, true),
    f("Title", Kind::Text, 80, false, true),
    f("CompanyName", Kind::Text, 80, false, true),
    f("Phone", Kind::Text, 40, false, true),
    f("MobilePhone", Kind::Text, 40, false, true),
    f("EmployeeNumber", Kind::Text, 20, false, true),
    f("IsActive", Kind::Bool, 0, false, true),
    // A custom hierarchy field (another user's approver).
    f("Approver__c", Kind::Ref("User"), 18, false, true),
    f("UserType", Kind::ReadOnly, 40, false, false),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
const PROFILE: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::ReadOnly, 255, false, false),
    f("UserLicenseId", Kind::Ref("UserLicense"), 18, false, false),
];
const USER_LICENSE: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::ReadOnly, 40, false, false),
    f("LicenseDefinitionKey", Kind::ReadOnly, 40, false, false),
    f("TotalLicenses", Kind::Number, 0, false, false),
    f("UsedLicenses", Kind::Number, 0, false, false),
    f("Status", Kind::ReadOnly, 40, false, false),
];
const USER_ROLE: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::ReadOnly, 80, false, false),
    f("DeveloperName", Kind::ReadOnly, 80, false, false),
    f("ParentRoleId", Kind::Ref("UserRole"), 18, false, false),
];
const USER_LOGIN: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("UserId", Kind::Ref("User"), 18, false, false),
    f("IsFrozen", Kind::Bool, 0, false, true),
    f("IsPasswordLocked", Kind::Bool, 0, false, false),
];
const ORGANIZATION: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::ReadOnly, 80, false, false),
    f("OrganizationType", Kind::ReadOnly, 40, false, false),
];

const PERMISSION_SET: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::ReadOnly, 80, false, false),
    f("Label", Kind::ReadOnly, 80, false, false),
    f("IsOwnedByProfile", Kind::Bool, 0, false, false),
    f("ProfileId", Kind::Ref("Profile"), 18, false, false),
    f("PermissionsManageUsers", Kind::Bool, 0, false, false),
    f("PermissionsViewSetup", Kind::Bool, 0, false, false),
    f("PermissionsApiEnabled", Kind::Bool, 0, false, false),
    f(
        "PermissionsUpdateWithInactiveOwner",
        Kind::Bool,
        0,
        false,
        false,
    ),
    f(
        "LicenseId",
        Kind::Ref("PermissionSetLicense"),
        18,
        false,
        false,
    ),
    f(
        "PermissionSetGroupId",
        Kind::Ref("PermissionSetGroup"),
        18,
        false,
        false,
    ),
    f("Type", Kind::ReadOnly, 40, false, false),
];
const PERMISSION_SET_ASSIGNMENT: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("AssigneeId", Kind::Ref("User"), 18, true, true),
    // One of the two is required: a permission set or a group.
    f(
        "PermissionSetId",
        Kind::Ref("PermissionSet"),
        18,
        false,
        true,
    ),
    f(
        "PermissionSetGroupId",
        Kind::Ref("PermissionSetGroup"),
        18,
        false,
        true,
    ),
];
const PERMISSION_SET_GROUP: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("DeveloperName", Kind::ReadOnly, 80, false, false),
    f("MasterLabel", Kind::ReadOnly, 80, false, false),
    f("Status", Kind::ReadOnly, 40, false, false),
];
const PERMISSION_SET_LICENSE: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("DeveloperName", Kind::ReadOnly, 80, false, false),
    f("MasterLabel", Kind::ReadOnly, 80, false, false),
    f("TotalLicenses", Kind::Number, 0, false, false),
    f("UsedLicenses", Kind::Number, 0, false, false),
    f("Status", Kind::ReadOnly, 40, false, false),
];
const PERMISSION_SET_LICENSE_ASSIGN: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("AssigneeId", Kind::Ref("User"), 18, true, true),
    f(
        "PermissionSetLicenseId",
        Kind::Ref("PermissionSetLicense"),
        18,
        true,
        true,
    ),
];
const GROUP_MEMBER: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("GroupId", Kind::Ref("Group"), 18, true, true),
    // Polymorphic in Salesforce (a user or a group); users here.
    f("UserOrGroupId", Kind::Ref("User"), 18, true, true),
];

fn schema(object: &str) -> Option<(&'static str, &'static [FieldDef])> {
    Some(match object.to_ascii_lowercase().as_str() {
        "user" => ("User", USER),
        "profile" => ("Profile", PROFILE),
        "userlicense" => ("UserLicense", USER_LICENSE),
        "userrole" => ("UserRole", USER_ROLE),
        "userlogin" => ("UserLogin", USER_LOGIN),
        "organization" => ("Organization", ORGANIZATION),
        "permissionset" => ("PermissionSet", PERMISSION_SET),
        "permissionsetassignment" => ("PermissionSetAssignment", PERMISSION_SET_ASSIGNMENT),
        "permissionsetgroup" => ("PermissionSetGroup", PERMISSION_SET_GROUP),
        "permissionsetlicense" => ("PermissionSetLicense", PERMISSION_SET_LICENSE),
        "permissionsetlicenseassign" => {
            ("PermissionSetLicenseAssign", PERMISSION_SET_LICENSE_ASSIGN)
        }
        "groupmember" => ("GroupMember", GROUP_MEMBER),
        "authsession" => ("AuthSession", leaving::AUTH_SESSION),
        "oauthtoken" => ("OauthToken", leaving::OAUTH_TOKEN),
        _ => return records::schema(object),
    })
}

fn prefix(object: &str) -> &'static str {
    match object {
        "User" => "005",
        "Profile" => "00e",
        "UserLicense" => "100",
        "UserRole" => "00E",
        "UserLogin" => "060",
        "Organization" => "00D",
        "PermissionSet" => "0PS",
        "PermissionSetAssignment" => "0Pa",
        "PermissionSetGroup" => "0PG",
        "PermissionSetLicense" => "0PL",
        "PermissionSetLicenseAssign" => "2LA",
        "GroupMember" => "011",
        "AuthSession" => "0Ak",
        "OauthToken" => "0CQ",
        _ => records::prefix(object),
    }
}

/// Setup objects can't share a transaction with non-setup ones (mixed DML).
fn is_setup(object: &str) -> bool {
    matches!(
        object,
        "User"
            | "UserLogin"
            | "UserRole"
            | "Profile"
            | "PermissionSet"
            | "PermissionSetAssignment"
            | "PermissionSetGroup"
            | "PermissionSetLicense"
            | "PermissionSetLicenseAssign"
            | "Group"
            | "GroupMember"
            | "QueueSobject"
    )
}

/// Builds an 18-character id: 15 case-sensitive characters plus the
/// 3-character case-insensitivity suffix Salesforce computes.
fn make_id(prefix: &str, n: u64) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body = [b'0'; 12];
    let mut v = n;
    for slot in body.iter_mut().rev() {
        *slot = B62[(v % 62) as usize];
        v /= 62;
    }
    let id15 = format!("{prefix}{}", String::from_utf8_lossy(&body));
    let mut suffix = String::new();
    for chunk in id15.as_bytes().chunks(5) {
        let mut bits = 0usize;
        for (i, c) in chunk.iter().enumerate() {
            if c.is_ascii_uppercase() {
                bits |= 1 << i;
            }
        }
        suffix.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits] as char);
    }
    format!("{id15}{suffix}")
}

/// The simulated Salesforce org.
#[derive(Debug)]
pub struct SfOrg {
    pub org_id: String,
    objects: BTreeMap<&'static str, BTreeMap<String, Map<String, Value>>>,
    next_id: u64,
    tokens: HashMap<String, Instant>,
    cursors: HashMap<String, Vec<Value>>,
    next_cursor: u64,
    /// Messages returned when deactivating these users (configuration blockers).
    blockers: HashMap<String, String>,
    /// (user, object): the user cannot read that object's records it does
    /// not own.
    read_denied: std::collections::HashSet<(String, String)>,
    /// Active Lead / Case assignment rules: object -> the owner they give.
    /// An API save runs them unless it sends `Sforce-Auto-Assign: FALSE`.
    assignment_rules: HashMap<String, String>,
    pub integration_user_id: String,
    /// The username-password OAuth flow (blocked by default, as in orgs
    /// created since Summer '23).
    pub password_flow_allowed: bool,
    /// SOAP `login()` (disabled by default in new orgs).
    pub soap_login_allowed: bool,
    /// Daily API request allocation (rolling 24 h); beyond it every call
    /// answers 403 `REQUEST_LIMIT_EXCEEDED`.
    pub daily_api_limit: u64,
    /// API requests counted so far.
    pub api_usage: u64,
    /// Usernames taken in other orgs of the environment (Usernames are
    /// unique across all of them): creating one fails DUPLICATE_USERNAME.
    pub foreign_usernames: std::collections::HashSet<String>,
    /// Bulk API 2.0 ingest jobs.
    bulk: bulk::BulkState,
    /// Lookups derived from the rows, so that an org of 100k users stays
    /// fast; rebuilt after a rollback.
    idx: Indexes,
    /// Org automation on User saves (validation rules, Apex triggers).
    pub automation: Vec<Automation>,
    /// New Email addresses waiting for their owner to click the
    /// verification link: User Id -> address. Salesforce keeps the old
    /// Email until then, whoever saves it, API included.
    pub pending_emails: HashMap<String, String>,
    /// Verification mails sent, per User Id (one per save that changes Email).
    pub verification_mails: HashMap<String, u32>,
}

/// Org automation that refuses some User saves, as customers' orgs do.
#[derive(Debug, Clone)]
pub enum Automation {
    /// A validation rule: a save where `field` equals `equals` fails with
    /// FIELD_CUSTOM_VALIDATION_EXCEPTION and the rule's `message`.
    ValidationRule {
        field: String,
        equals: String,
        message: String,
    },
    /// An Apex trigger that throws on such a save:
    /// CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY naming the trigger.
    Trigger {
        name: String,
        field: String,
        equals: String,
    },
}

/// The unique User fields (case-insensitive, like Salesforce).
const UNIQUE_USER_FIELDS: [&str; 3] = ["Username", "FederationIdentifier", "CommunityNickname"];

/// Lookups derived from the rows.
#[derive(Debug, Default)]
struct Indexes {
    /// (field, lower-case value) -> user id, for [`UNIQUE_USER_FIELDS`].
    unique: HashMap<(&'static str, String), String>,
    /// (assignee, permission set) of every PermissionSetAssignment.
    assigned: std::collections::HashSet<(String, String)>,
}

impl Indexes {
    fn add_user(&mut self, id: &str, row: &Map<String, Value>) {
        for f in UNIQUE_USER_FIELDS {
            if let Some(v) = row.get(f).and_then(Value::as_str).filter(|v| !v.is_empty()) {
                self.unique.insert((f, v.to_lowercase()), id.to_string());
            }
        }
    }

    fn remove_user(&mut self, id: &str, row: &Map<String, Value>) {
        for f in UNIQUE_USER_FIELDS {
            if let Some(v) = row.get(f).and_then(Value::as_str) {
                let key = (f, v.to_lowercase());
                if self.unique.get(&key).map(String::as_str) == Some(id) {
                    self.unique.remove(&key);
                }
            }
        }
    }

    fn assignment_key(row: &Map<String, Value>) -> (String, String) {
        let s = |k: &str| {
            row.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        (s("AssigneeId"), s("PermissionSetId"))
    }
}

impl SfOrg {
    /// An empty org with its Organization row.
    pub fn new() -> Self {
        let mut org = Self {
            org_id: String::new(),
            objects: BTreeMap::new(),
            next_id: 1,
            tokens: HashMap::new(),
            cursors: HashMap::new(),
            next_cursor: 1,
            api_usage: 0,
            blockers: HashMap::new(),
            read_denied: std::collections::HashSet::new(),
            assignment_rules: HashMap::new(),
            integration_user_id: String::new(),
            password_flow_allowed: false,
            soap_login_allowed: false,
            daily_api_limit: DAILY_API_LIMIT,
            foreign_usernames: std::collections::HashSet::new(),
            idx: Indexes::default(),
            automation: Vec::new(),
            pending_emails: HashMap::new(),
            verification_mails: HashMap::new(),
            bulk: bulk::BulkState::default(),
        };
        org.org_id = org.insert_raw(
            "Organization",
            json_map(json!({"Name": "provisor sim org", "OrganizationType": "Enterprise Edition"})),
        );
        org
    }

    /// Inserts a row without validation (seeding); returns its id.
    pub fn insert_raw(&mut self, object: &'static str, mut fields: Map<String, Value>) -> String {
        let id = make_id(prefix(object), self.next_id);
        self.next_id += 1;
        fields.insert("Id".into(), json!(id));
        let now = now_iso();
        if object == "User" {
            fields.entry("IsActive").or_insert(json!(true));
            fields.entry("UserType").or_insert(json!("Standard"));
            fields.insert("CreatedDate".into(), json!(now));
            fields.insert("LastModifiedDate".into(), json!(now));
            refresh_name(&mut fields);
        }
        match object {
            "User" => {
                self.idx.add_user(&id, &fields);
                if fields.get("IsActive") == Some(&Value::Bool(true)) {
                    let licence = fields
                        .get("ProfileId")
                        .and_then(Value::as_str)
                        .and_then(|p| self.licence_of_profile(p));
                    self.count_user_licence(licence.as_deref(), 1);
                }
            }
            "PermissionSetAssignment" => {
                self.idx.assigned.insert(Indexes::assignment_key(&fields));
            }
            _ => {}
        }
        self.objects
            .entry(object)
            .or_default()
            .insert(id.clone(), fields);
        if object == "User" {
            // Salesforce lists a profile's own permission set as an
            // assignment of every user with that profile.
            let profile = self
                .objects
                .get("User")
                .and_then(|u| u.get(&id))
                .and_then(|u| u.get("ProfileId"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let owned = profile.and_then(|p| {
                self.rows("PermissionSet")
                    .find(|ps| ps.get("ProfileId").and_then(Value::as_str) == Some(p.as_str()))
                    .and_then(|ps| ps.get("Id")?.as_str().map(str::to_string))
            });
            if let Some(ps) = owned {
                self.insert_raw(
                    "PermissionSetAssignment",
                    json_map(json!({"AssigneeId": id, "PermissionSetId": ps})),
                );
            }
            self.insert_raw(
                "UserLogin",
                json_map(json!({"UserId": id, "IsFrozen": false, "IsPasswordLocked": false})),
            );
        }
        id
    }

    /// Adds `by` to the used seats of a user licence.
    fn count_user_licence(&mut self, licence: Option<&str>, by: i64) {
        if let Some(row) = licence.and_then(|l| {
            self.objects
                .get_mut("UserLicense")
                .and_then(|r| r.get_mut(l))
        }) {
            let used = row.get("UsedLicenses").and_then(Value::as_i64).unwrap_or(0);
            row.insert("UsedLicenses".into(), json!((used + by).max(0)));
        }
    }

    /// Recomputes everything derived from the rows (after a rollback).
    fn rebuild(&mut self) {
        let mut idx = Indexes::default();
        for u in self.rows("User") {
            if let Some(id) = u.get("Id").and_then(Value::as_str) {
                idx.add_user(id, u);
            }
        }
        for a in self.rows("PermissionSetAssignment") {
            idx.assigned.insert(Indexes::assignment_key(a));
        }
        self.idx = idx;
        self.refresh_licences();
    }

    /// Rows of one object.
    pub fn rows(&self, object: &str) -> impl Iterator<Item = &Map<String, Value>> {
        self.objects
            .get(object)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// A row by id.
    pub fn get(&self, object: &str, id: &str) -> Option<&Map<String, Value>> {
        self.objects.get(object)?.get(id)
    }

    /// Users whose `field` equals `value` (case-insensitive, as SOQL).
    pub fn users_where(&self, field: &str, value: &str) -> Vec<&Map<String, Value>> {
        self.rows("User")
            .filter(|u| {
                u.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.eq_ignore_ascii_case(value))
            })
            .collect()
    }

    /// The owner clicked the verification link: the pending Email applies.
    pub fn confirm_email(&mut self, user_id: &str) -> bool {
        let Some(email) = self.pending_emails.remove(user_id) else {
            return false;
        };
        let Some(old) = self.get("User", user_id).cloned() else {
            return false;
        };
        let mut row = old.clone();
        row.insert("Email".into(), json!(email));
        self.idx.remove_user(user_id, &old);
        self.idx.add_user(user_id, &row);
        if let Some(rows) = self.objects.get_mut("User") {
            rows.insert(user_id.to_string(), row);
        }
        true
    }

    /// Makes deactivating `user_id` fail with `message`, as an org
    /// configuration reference (default case owner, workflow user...) does.
    pub fn set_deactivation_blocker(&mut self, user_id: &str, message: Option<&str>) {
        match message {
            Some(m) => self.blockers.insert(user_id.to_string(), m.to_string()),
            None => self.blockers.remove(user_id),
        };
    }

    fn id_of_profile(&self, name: &str) -> Option<String> {
        self.rows("Profile")
            .find(|p| p.get("Name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("Id")?.as_str().map(str::to_string))
    }

    /// Sets the seats of a user licence by name (e.g. "Salesforce").
    pub fn set_licence_total(&mut self, name: &str, total: i64) -> bool {
        self.set_total("UserLicense", "Name", name, total)
    }

    /// Sets `TotalLicenses` on the rows of `object` whose `key` is `name`.
    fn set_total(&mut self, object: &str, key: &str, name: &str, total: i64) -> bool {
        let Some(rows) = self.objects.get_mut(object) else {
            return false;
        };
        let mut found = false;
        for row in rows.values_mut() {
            if row.get(key).and_then(Value::as_str) == Some(name) {
                row.insert("TotalLicenses".into(), json!(total));
                found = true;
            }
        }
        found
    }

    /// Creates a permission set group with the aggregate permission set
    /// (Type 'Group') that Salesforce keeps behind every group; returns
    /// the group's id.
    pub fn add_permission_set_group(&mut self, developer_name: &str, label: &str) -> String {
        let group = self.insert_raw(
            "PermissionSetGroup",
            json_map(
                json!({"DeveloperName": developer_name, "MasterLabel": label, "Status": "Updated"}),
            ),
        );
        self.insert_raw(
            "PermissionSet",
            json_map(json!({"Name": format!("X0PG_{developer_name}"), "Label": label, "IsOwnedByProfile": false, "Type": "Group", "PermissionSetGroupId": group})),
        );
        group
    }

    /// Sets the seats of a permission set licence by DeveloperName.
    pub fn set_permission_set_licence_total(&mut self, name: &str, total: i64) -> bool {
        self.set_total("PermissionSetLicense", "DeveloperName", name, total)
    }

    /// Profile id by name (seeding and tests).
    pub fn profile_id(&self, name: &str) -> Option<String> {
        self.id_of_profile(name)
    }

    fn licence_of_profile(&self, profile_id: &str) -> Option<String> {
        self.get("Profile", profile_id)?
            .get("UserLicenseId")?
            .as_str()
            .map(str::to_string)
    }

    fn refresh_licences(&mut self) {
        let mut used: HashMap<String, u64> = HashMap::new();
        for u in self.rows("User") {
            if u.get("IsActive") == Some(&Value::Bool(true))
                && let Some(l) = u
                    .get("ProfileId")
                    .and_then(Value::as_str)
                    .and_then(|p| self.licence_of_profile(p))
            {
                *used.entry(l).or_default() += 1;
            }
        }
        if let Some(lic) = self.objects.get_mut("UserLicense") {
            for (id, row) in lic.iter_mut() {
                row.insert(
                    "UsedLicenses".into(),
                    json!(used.get(id).copied().unwrap_or(0)),
                );
            }
        }
    }

    fn seats_left(&self, licence: &str) -> i64 {
        self.get("UserLicense", licence)
            .map(|l| {
                l.get("TotalLicenses").and_then(Value::as_i64).unwrap_or(0)
                    - l.get("UsedLicenses").and_then(Value::as_i64).unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Resolves a field path such as `Profile.Name` on a row.
    fn path_value(&self, object: &str, row: &Map<String, Value>, path: &str) -> Value {
        match path.split_once('.') {
            None => row
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(path))
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Null),
            Some((rel, rest)) => {
                let Some((_, defs)) = schema(object) else {
                    return Value::Null;
                };
                let Some(def) = defs
                    .iter()
                    .find(|d| d.name.eq_ignore_ascii_case(&format!("{rel}Id")))
                else {
                    return Value::Null;
                };
                let Some(id) = row.get(def.name).and_then(Value::as_str) else {
                    return Value::Null;
                };
                let Some(target) = ref_target(def.kind, Some(id)) else {
                    return Value::Null;
                };
                match self.get(target, id) {
                    Some(r) => self.path_value(target, r, rest),
                    None => Value::Null,
                }
            }
        }
    }

    /// Checks that a field path exists on an object.
    fn check_path(object: &str, path: &str) -> Result<(), SfErr> {
        let (name, defs) = schema(object).ok_or_else(|| {
            err(
                "INVALID_TYPE",
                format!("sObject type '{object}' is not supported."),
                &[],
            )
        })?;
        let no_column = || {
            err(
                "INVALID_FIELD",
                format!(
                    "No such column '{path}' on entity '{name}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
                ),
                &[],
            )
        };
        match path.split_once('.') {
            None => defs
                .iter()
                .any(|d| d.name.eq_ignore_ascii_case(path))
                .then_some(())
                .ok_or_else(no_column),
            Some((rel, rest)) => {
                let def = defs
                    .iter()
                    .find(|d| d.name.eq_ignore_ascii_case(&format!("{rel}Id")))
                    .ok_or_else(no_column)?;
                match ref_target(def.kind, None) {
                    Some(target) => Self::check_path(target, rest),
                    None => Err(no_column()),
                }
            }
        }
    }

    /// Runs a query and renders all its records.
    fn run_query(&self, q: &soql::Query, version: &str) -> Result<Vec<Value>, SfErr> {
        if q.object.eq_ignore_ascii_case("UserRecordAccess") {
            return self.user_record_access(q);
        }
        let (object, _) = schema(&q.object).ok_or_else(|| err("INVALID_TYPE", format!("\n{}\n^\nERROR at Row:1:Column:1\nsObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.", q.object, q.object), &[]))?;
        let mut paths = q.fields.clone();
        if let Some(c) = &q.filter {
            c.fields(&mut paths);
        }
        if let Some((o, _)) = &q.order_by {
            paths.push(o.clone());
        }
        for p in &paths {
            Self::check_path(object, p)?;
        }
        let mut rows: Vec<&Map<String, Value>> = self
            .rows(object)
            .filter(|r| {
                q.filter
                    .as_ref()
                    .is_none_or(|c| c.eval(&|p| self.path_value(object, r, p)))
            })
            .collect();
        if let Some((o, desc)) = &q.order_by {
            rows.sort_by(|a, b| {
                let (x, y) = (self.path_value(object, a, o), self.path_value(object, b, o));
                let ord = x.to_string().cmp(&y.to_string());
                if *desc { ord.reverse() } else { ord }
            });
        }
        if let Some(l) = q.limit {
            rows.truncate(l);
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut v = self.render(object, r, &q.fields, version);
                // Salesforce documents OauthToken.Id as always null.
                if object == "OauthToken"
                    && let Some(id) = v.get_mut("Id")
                {
                    *id = Value::Null;
                }
                v
            })
            .collect())
    }

    fn render(
        &self,
        object: &str,
        row: &Map<String, Value>,
        fields: &[String],
        version: &str,
    ) -> Value {
        let id = row.get("Id").and_then(Value::as_str).unwrap_or_default();
        let mut out = Map::new();
        out.insert("attributes".into(), json!({"type": object, "url": format!("/services/data/v{version}/sobjects/{object}/{id}")}));
        for f in fields {
            match f.split_once('.') {
                None => {
                    let name = schema(object)
                        .and_then(|(_, d)| d.iter().find(|d| d.name.eq_ignore_ascii_case(f)))
                        .map_or(f.as_str(), |d| d.name);
                    out.insert(name.to_string(), self.path_value(object, row, f));
                }
                Some((rel, rest)) => {
                    let target = schema(object)
                        .and_then(|(_, d)| {
                            d.iter()
                                .find(|d| d.name.eq_ignore_ascii_case(&format!("{rel}Id")))
                        })
                        .and_then(|d| {
                            let rid = row.get(d.name).and_then(Value::as_str);
                            Some((d.name, ref_target(d.kind, rid)?))
                        });
                    let Some((ref_field, target)) = target else {
                        continue;
                    };
                    let rel_name = ref_field.trim_end_matches("Id").to_string();
                    let child = row
                        .get(ref_field)
                        .and_then(Value::as_str)
                        .and_then(|rid| self.get(target, rid));
                    let entry = out.entry(rel_name).or_insert(Value::Null);
                    if let Some(child) = child {
                        let rendered = self.render(target, child, &[rest.to_string()], version);
                        match entry {
                            Value::Object(m) => {
                                if let Value::Object(r) = rendered {
                                    m.extend(r);
                                }
                            }
                            _ => *entry = rendered,
                        }
                    }
                }
            }
        }
        Value::Object(out)
    }

    /// Validates and applies one create; returns the new id.
    pub fn create(
        &mut self,
        object: &str,
        mut fields: Map<String, Value>,
    ) -> Result<String, Vec<SfErr>> {
        let (name, defs) = schema(object).ok_or_else(|| {
            vec![err(
                "INVALID_TYPE",
                format!("sObject type '{object}' is not supported."),
                &[],
            )]
        })?;
        if name != "User"
            && let Some(e) = missing_required(defs, &fields)
        {
            return Err(vec![e]);
        }
        match name {
            "PermissionSetAssignment" => {
                fields.remove("attributes");
                return self.create_assignment(fields);
            }
            "PermissionSetLicenseAssign" => {
                fields.remove("attributes");
                return self.create_licence_assignment(fields);
            }
            "GroupMember" => {
                fields.remove("attributes");
                return self.create_group_member(fields);
            }
            _ => {}
        }
        if records::is_record(name) {
            fields.remove("attributes");
            return self.create_record(name, defs, fields);
        }
        if name != "User" {
            return Err(vec![err(
                "INVALID_TYPE_FOR_OPERATION",
                format!("entity type cannot be inserted: {name}"),
                &[],
            )]);
        }
        fields.remove("attributes");
        let mut errors = check_fields(name, defs, &fields);
        errors.extend(missing_required(defs, &fields));
        if !errors.is_empty() {
            return Err(errors);
        }
        fields.entry("IsActive").or_insert(json!(true));
        if fields.get("CommunityNickname").is_none_or(Value::is_null) {
            let base: String = fields
                .get("Username")
                .and_then(Value::as_str)
                .unwrap_or("user")
                .split('@')
                .next()
                .unwrap_or("user")
                .chars()
                .take(30)
                .collect();
            let mut nick = base.clone();
            let mut n = 1;
            while self
                .idx
                .unique
                .contains_key(&("CommunityNickname", nick.to_lowercase()))
            {
                nick = format!("{base}{n}");
                n += 1;
            }
            fields.insert("CommunityNickname".into(), json!(nick));
        }
        self.check_user(None, &fields).map_err(|e| vec![e])?;
        Ok(self.insert_raw("User", fields))
    }

    /// A permission set (or permission set group) assignment: both ends
    /// must exist, once only, never for a permission set owned by a
    /// profile, and a permission set tied to a permission set licence needs
    /// that licence assigned first.
    fn create_assignment(&mut self, mut fields: Map<String, Value>) -> Result<String, Vec<SfErr>> {
        let s = |k: &str| {
            fields
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (user, ps, group) = (
            s("AssigneeId"),
            s("PermissionSetId"),
            s("PermissionSetGroupId"),
        );
        let mut missing: Vec<&str> = Vec::new();
        if user.is_empty() {
            missing.push("AssigneeId");
        }
        if ps.is_empty() && group.is_empty() {
            missing.push("PermissionSetId");
        }
        if !missing.is_empty() {
            return Err(vec![err(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                &missing,
            )]);
        }
        let bad_ref = |field: &str| {
            vec![err(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                &[field],
            )]
        };
        if self.get("User", &user).is_none() {
            return Err(bad_ref("AssigneeId"));
        }
        // A group is assigned through its aggregate permission set.
        let ps = if group.is_empty() {
            ps
        } else {
            if self.get("PermissionSetGroup", &group).is_none() {
                return Err(bad_ref("PermissionSetGroupId"));
            }
            let aggregate = self
                .rows("PermissionSet")
                .find(|p| p.get("PermissionSetGroupId").and_then(Value::as_str) == Some(&group))
                .and_then(|p| p.get("Id")?.as_str().map(str::to_string));
            let Some(aggregate) = aggregate else {
                return Err(bad_ref("PermissionSetGroupId"));
            };
            fields.insert("PermissionSetId".into(), json!(aggregate));
            aggregate
        };
        let Some(set) = self.get("PermissionSet", &ps) else {
            return Err(bad_ref("PermissionSetId"));
        };
        if set.get("IsOwnedByProfile") == Some(&Value::Bool(true)) {
            return Err(vec![err(
                "INVALID_CROSS_REFERENCE_KEY",
                "Cannot assign a permission set owned by a profile",
                &["PermissionSetId"],
            )]);
        }
        // The error Salesforce gives here is unverified; this code and text
        // are the emulator's choice.
        if let Some(licence) = set.get("LicenseId").and_then(Value::as_str)
            && !self.holds_licence(&user, licence)
        {
            let lname = self
                .get("PermissionSetLicense", licence)
                .and_then(|l| l.get("DeveloperName")?.as_str())
                .unwrap_or(licence);
            let pname = set.get("Name").and_then(Value::as_str).unwrap_or(&ps);
            return Err(vec![err(
                "FIELD_INTEGRITY_EXCEPTION",
                format!(
                    "Permission set {pname} requires the permission set license {lname}, which the user is not assigned"
                ),
                &["PermissionSetId"],
            )]);
        }
        if self.idx.assigned.contains(&(user.clone(), ps.clone())) {
            return Err(vec![err(
                "DUPLICATE_VALUE",
                format!(
                    "Duplicate PermissionSetAssignment. Assignee: {user}; Permission Set: {ps}"
                ),
                &[],
            )]);
        }
        Ok(self.insert_raw("PermissionSetAssignment", fields))
    }

    fn holds_licence(&self, user: &str, licence: &str) -> bool {
        self.rows("PermissionSetLicenseAssign").any(|a| {
            a.get("AssigneeId").and_then(Value::as_str) == Some(user)
                && a.get("PermissionSetLicenseId").and_then(Value::as_str) == Some(licence)
        })
    }

    /// A permission set licence assignment: takes a seat of the licence.
    fn create_licence_assignment(
        &mut self,
        fields: Map<String, Value>,
    ) -> Result<String, Vec<SfErr>> {
        let s = |k: &str| {
            fields
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (user, licence) = (s("AssigneeId"), s("PermissionSetLicenseId"));
        let errors = check_fields(
            "PermissionSetLicenseAssign",
            PERMISSION_SET_LICENSE_ASSIGN,
            &fields,
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        if self.get("User", &user).is_none() {
            return Err(vec![err(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                &["AssigneeId"],
            )]);
        }
        let Some(row) = self.get("PermissionSetLicense", &licence) else {
            return Err(vec![err(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                &["PermissionSetLicenseId"],
            )]);
        };
        if self.holds_licence(&user, &licence) {
            return Err(vec![err(
                "DUPLICATE_VALUE",
                format!(
                    "duplicate value found: PermissionSetLicenseId duplicates value on record with id: {licence}"
                ),
                &[],
            )]);
        }
        let n = |k: &str| row.get(k).and_then(Value::as_i64).unwrap_or(0);
        if n("UsedLicenses") >= n("TotalLicenses") {
            let name = row
                .get("MasterLabel")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(vec![err(
                "LICENSE_LIMIT_EXCEEDED",
                format!("License Limit Exceeded - {name}"),
                &[],
            )]);
        }
        let id = self.insert_raw("PermissionSetLicenseAssign", fields);
        self.count_licence(&licence, 1);
        Ok(id)
    }

    fn count_licence(&mut self, licence: &str, by: i64) {
        if let Some(row) = self
            .objects
            .get_mut("PermissionSetLicense")
            .and_then(|r| r.get_mut(licence))
        {
            let used = row.get("UsedLicenses").and_then(Value::as_i64).unwrap_or(0);
            row.insert("UsedLicenses".into(), json!((used + by).max(0)));
        }
    }

    /// A queue or public group membership.
    fn create_group_member(&mut self, fields: Map<String, Value>) -> Result<String, Vec<SfErr>> {
        let errors = check_fields("GroupMember", GROUP_MEMBER, &fields);
        if !errors.is_empty() {
            return Err(errors);
        }
        let s = |k: &str| {
            fields
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (group, member) = (s("GroupId"), s("UserOrGroupId"));
        if self.get("Group", &group).is_none() {
            return Err(vec![err(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                &["GroupId"],
            )]);
        }
        if self.get("User", &member).is_none() && self.get("Group", &member).is_none() {
            return Err(vec![err(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                &["UserOrGroupId"],
            )]);
        }
        let dup = self.rows("GroupMember").any(|m| {
            m.get("GroupId").and_then(Value::as_str) == Some(group.as_str())
                && m.get("UserOrGroupId").and_then(Value::as_str) == Some(member.as_str())
        });
        if dup {
            return Err(vec![err(
                "DUPLICATE_VALUE",
                format!(
                    "duplicate value found: UserOrGroupId duplicates value on record with id: {member}"
                ),
                &[],
            )]);
        }
        Ok(self.insert_raw("GroupMember", fields))
    }

    /// Deletes one record; only assignment records can be deleted here
    /// (users never can).
    pub fn delete(&mut self, id: &str) -> Result<(), SfErr> {
        for object in ["PermissionSetAssignment", "GroupMember", "AuthSession"] {
            if let Some(row) = self
                .objects
                .get_mut(object)
                .and_then(|rows| rows.remove(id))
            {
                if object == "PermissionSetAssignment" {
                    self.idx.assigned.remove(&Indexes::assignment_key(&row));
                }
                return Ok(());
            }
        }
        if let Some(row) = self.get("PermissionSetLicenseAssign", id) {
            let s = |k: &str| {
                row.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (user, licence) = (s("AssigneeId"), s("PermissionSetLicenseId"));
            // A licence still needed by an assigned permission set stays.
            // (Salesforce's exact error here is unverified.)
            let needed_by = self
                .rows("PermissionSetAssignment")
                .filter(|a| a.get("AssigneeId").and_then(Value::as_str) == Some(user.as_str()))
                .filter_map(|a| self.get("PermissionSet", a.get("PermissionSetId")?.as_str()?))
                .find(|p| p.get("LicenseId").and_then(Value::as_str) == Some(licence.as_str()))
                .and_then(|p| p.get("Name")?.as_str().map(str::to_string));
            if let Some(ps) = needed_by {
                return Err(err(
                    "FIELD_INTEGRITY_EXCEPTION",
                    format!(
                        "The permission set license can't be removed: permission set {ps} assigned to the user requires it"
                    ),
                    &[],
                ));
            }
            if let Some(rows) = self.objects.get_mut("PermissionSetLicenseAssign") {
                rows.remove(id);
            }
            self.count_licence(&licence, -1);
            return Ok(());
        }
        if self.delete_record(id) {
            return Ok(());
        }
        if self.get("User", id).is_some() {
            return Err(err(
                "INVALID_TYPE_FOR_OPERATION",
                "entity type cannot be deleted: User",
                &[],
            ));
        }
        Err(err("ENTITY_IS_DELETED", "entity is deleted", &[]))
    }

    /// Validates and applies one update.
    pub fn update(
        &mut self,
        object: &str,
        id: &str,
        mut fields: Map<String, Value>,
    ) -> Result<(), Vec<SfErr>> {
        let (name, defs) = schema(object).ok_or_else(|| {
            vec![err(
                "INVALID_TYPE",
                format!("sObject type '{object}' is not supported."),
                &[],
            )]
        })?;
        fields.remove("attributes");
        fields.remove("id");
        fields.remove("Id");
        if !matches!(name, "User" | "UserLogin") && !records::is_record(name) {
            return Err(vec![err(
                "INVALID_TYPE_FOR_OPERATION",
                format!("entity type cannot be updated: {name}"),
                &[],
            )]);
        }
        if self.get(name, id).is_none() {
            return Err(vec![err(
                if id.len() == 15 || id.len() == 18 {
                    "ENTITY_IS_DELETED"
                } else {
                    "MALFORMED_ID"
                },
                format!("{name} ID: id value of incorrect type: {id}"),
                &["Id"],
            )]);
        }
        let errors = check_fields(name, defs, &fields);
        if !errors.is_empty() {
            return Err(errors);
        }
        for d in defs.iter().filter(|d| d.required) {
            if fields
                .get(d.name)
                .is_some_and(|v| v.is_null() || v.as_str() == Some(""))
            {
                return Err(vec![err(
                    "REQUIRED_FIELD_MISSING",
                    format!("Required fields are missing: [{}]", d.name),
                    &[d.name],
                )]);
            }
        }
        if name == "User" {
            let mut merged = self.get("User", id).cloned().unwrap_or_default();
            let was_active = merged.get("IsActive") == Some(&Value::Bool(true));
            merged.extend(fields.clone());
            let now_active = merged.get("IsActive") == Some(&Value::Bool(true));
            if was_active && !now_active {
                if let Some(msg) = self.blockers.get(id) {
                    return Err(vec![err("FIELD_INTEGRITY_EXCEPTION", msg.clone(), &[])]);
                }
                // The error code is unverified (salesforce.md §5.2); the
                // text is Salesforce's (field-failures.md §1).
                if let Some(field) = self.hierarchy_reference(id) {
                    return Err(vec![err(
                        "FIELD_INTEGRITY_EXCEPTION",
                        format!(
                            "Cannot inactivate user that is the value of a hierarchy field: {field}"
                        ),
                        &[],
                    )]);
                }
                let admin = self.id_of_profile("System Administrator");
                let is_admin = admin.is_some()
                    && merged.get("ProfileId").and_then(Value::as_str) == admin.as_deref();
                let other_admins = || {
                    self.rows("User")
                        .filter(|u| {
                            u.get("Id").and_then(Value::as_str) != Some(id)
                                && u.get("IsActive") == Some(&Value::Bool(true))
                                && u.get("ProfileId").and_then(Value::as_str) == admin.as_deref()
                        })
                        .count()
                };
                if is_admin && other_admins() == 0 {
                    return Err(vec![err(
                        "CANNOT_DISABLE_LAST_ADMIN",
                        "You cannot deactivate the last active System Administrator.",
                        &[],
                    )]);
                }
            }
            self.check_user(Some((id, was_active)), &merged)
                .map_err(|e| vec![e])?;
            // An active user's new Email waits for its owner's confirmation
            // (72 h); every save that asks for it sends another mail.
            let old_email = self
                .get("User", id)
                .and_then(|r| r.get("Email").cloned())
                .unwrap_or(Value::Null);
            let new_email = merged.get("Email").cloned().unwrap_or(Value::Null);
            if was_active
                && let (Some(old), Some(new)) = (old_email.as_str(), new_email.as_str())
                && !old.eq_ignore_ascii_case(new)
            {
                self.pending_emails.insert(id.to_string(), new.to_string());
                *self.verification_mails.entry(id.to_string()).or_default() += 1;
                merged.insert("Email".into(), old_email.clone());
            }
            merged.insert("LastModifiedDate".into(), json!(now_iso()));
            refresh_name(&mut merged);
            let seat = |org: &Self, row: &Map<String, Value>| {
                (row.get("IsActive") == Some(&Value::Bool(true)))
                    .then(|| {
                        row.get("ProfileId")
                            .and_then(Value::as_str)
                            .and_then(|p| org.licence_of_profile(p))
                    })
                    .flatten()
            };
            let old = self.get("User", id).cloned().unwrap_or_default();
            let (before, after) = (seat(self, &old), seat(self, &merged));
            if before != after {
                self.count_user_licence(before.as_deref(), -1);
                self.count_user_licence(after.as_deref(), 1);
            }
            self.idx.remove_user(id, &old);
            self.idx.add_user(id, &merged);
            if let Some(rows) = self.objects.get_mut("User") {
                rows.insert(id.to_string(), merged);
            }
        } else if records::is_record(name) {
            self.update_record(name, defs, id, fields)?;
        } else if let Some(row) = self.objects.get_mut(name).and_then(|r| r.get_mut(id)) {
            row.extend(fields);
        }
        Ok(())
    }

    /// Cross-row User rules: uniqueness, references and licence seats,
    /// then the org's automation.
    fn check_user(
        &self,
        existing: Option<(&str, bool)>,
        u: &Map<String, Value>,
    ) -> Result<(), SfErr> {
        let me = existing.map(|(id, _)| id);
        let s = |k: &str| u.get(k).and_then(Value::as_str).map(str::to_string);
        for a in &self.automation {
            match a {
                Automation::ValidationRule {
                    field,
                    equals,
                    message,
                } if s(field).as_deref() == Some(equals.as_str()) => {
                    return Err(err(
                        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                        message.clone(),
                        &[],
                    ));
                }
                Automation::Trigger {
                    name,
                    field,
                    equals,
                } if s(field).as_deref() == Some(equals.as_str()) => {
                    let when = if existing.is_some() {
                        "BeforeUpdate"
                    } else {
                        "BeforeInsert"
                    };
                    return Err(err(
                        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                        format!(
                            "{name}: execution of {when} caused by: System.DmlException: Insert failed. First exception on row 0; first error: REQUIRED_FIELD_MISSING, Required fields are missing: [Region__c]: [Region__c]: Trigger.{name}: line 12, column 1"
                        ),
                        &[],
                    ));
                }
                _ => {}
            }
        }
        // Another user holds this value of a unique field.
        let taken = |field: &'static str, value: &str| {
            self.idx
                .unique
                .get(&(field, value.to_lowercase()))
                .is_some_and(|holder| Some(holder.as_str()) != me)
        };
        if let Some(name) = s("Username") {
            // Usernames are unique across every org of the environment.
            if self.foreign_usernames.contains(&name.to_lowercase()) || taken("Username", &name) {
                return Err(err(
                    "DUPLICATE_USERNAME",
                    "Duplicate Username.<br>The username already exists in this or another Salesforce organization. Usernames must be unique across all Salesforce organizations. To resolve, use a different username (it doesn't need to match the user's email address). ",
                    &["Username"],
                ));
            }
        }
        if let Some(fid) = s("FederationIdentifier").filter(|f| !f.is_empty())
            && taken("FederationIdentifier", &fid)
        {
            return Err(err(
                "DUPLICATE_VALUE",
                "This Federation ID is already in use. Use a different Federation ID.: SAML Federation ID",
                &["FederationIdentifier"],
            ));
        }
        if let Some(nick) = s("CommunityNickname")
            && taken("CommunityNickname", &nick)
        {
            return Err(err(
                "DUPLICATE_COMM_NICKNAME",
                "Duplicate Nickname.<br>Another user has already selected this nickname.<br>Please select another.",
                &["CommunityNickname"],
            ));
        }
        for (field, target) in [
            ("ProfileId", "Profile"),
            ("UserRoleId", "UserRole"),
            ("ManagerId", "User"),
        ] {
            if let Some(id) = s(field)
                && self.get(target, &id).is_none()
            {
                return Err(err(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id".to_string(),
                    &[field],
                ));
            }
        }
        let active = u.get("IsActive") == Some(&Value::Bool(true));
        let profile = s("ProfileId").unwrap_or_default();
        let licence = self.licence_of_profile(&profile).unwrap_or_default();
        let held = existing.is_some_and(|(id, was_active)| {
            was_active
                && self
                    .get("User", id)
                    .and_then(|r| {
                        r.get("ProfileId")?
                            .as_str()
                            .and_then(|p| self.licence_of_profile(p))
                    })
                    .as_deref()
                    == Some(licence.as_str())
        });
        if active && !held && self.seats_left(&licence) <= 0 {
            let lname = self
                .get("UserLicense", &licence)
                .and_then(|l| l.get("Name")?.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(err(
                "LICENSE_LIMIT_EXCEEDED",
                format!("License Limit Exceeded - {lname}"),
                &[],
            ));
        }
        Ok(())
    }

    fn issue_token(&mut self) -> String {
        let t = format!("{}!AQ{}", &self.org_id[..15], uuid::Uuid::new_v4().simple());
        self.tokens
            .insert(t.clone(), Instant::now() + SESSION_LIFETIME);
        t
    }

    /// Ends every session (tests the client's re-authentication).
    pub fn expire_sessions(&mut self) {
        self.tokens.clear();
    }
}

impl Default for SfOrg {
    fn default() -> Self {
        Self::new()
    }
}

/// `REQUIRED_FIELD_MISSING` naming every required field `fields` lacks
/// (absent, null or empty), as Salesforce reports them all at once.
fn missing_required(defs: &[FieldDef], fields: &Map<String, Value>) -> Option<SfErr> {
    let missing: Vec<&str> = defs
        .iter()
        .filter(|d| {
            d.required
                && fields
                    .get(d.name)
                    .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
        })
        .map(|d| d.name)
        .collect();
    (!missing.is_empty()).then(|| {
        err(
            "REQUIRED_FIELD_MISSING",
            format!("Required fields are missing: [{}]", missing.join(", ")),
            &missing,
        )
    })
}

fn check_fields(object: &str, defs: &[FieldDef], fields: &Map<String, Value>) -> Vec<SfErr> {
    let mut out = Vec::new();
    for (k, v) in fields {
        let Some(d) = defs.iter().find(|d| d.name == k) else {
            out.push(err(
                "INVALID_FIELD",
                format!("No such column '{k}' on sobject of type {object}"),
                &[],
            ));
            continue;
        };
        if !d.writable {
            out.push(err("INVALID_FIELD_FOR_INSERT_UPDATE", format!("Unable to create/update fields: {k}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."), &[d.name]));
            continue;
        }
        if v.is_null() {
            continue;
        }
        match (d.kind, v) {
            (Kind::Bool, Value::Bool(_)) => {}
            (Kind::Bool, _) => out.push(err(
                "INVALID_TYPE_ON_FIELD_IN_RECORD",
                format!("{k}: value not of required type: {v}"),
                &[d.name],
            )),
            (_, Value::String(s)) => {
                if s.chars().count() > d.len {
                    out.push(err(
                        "STRING_TOO_LONG",
                        format!("{k}: data value too large: {s} (max length={})", d.len),
                        &[d.name],
                    ));
                } else if let Kind::Picklist(values) = d.kind
                    && !values.contains(&s.as_str())
                {
                    out.push(err(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        format!(
                            "{}: bad value for restricted picklist field: {s}",
                            k.trim_end_matches("SidKey").trim_end_matches("Key")
                        ),
                        &[d.name],
                    ));
                } else if d.kind == Kind::Email && !looks_like_email(s) {
                    if k == "Username" {
                        out.push(err("INVALID_NEW_USERNAME", "Username must be in the form of an email address (for example, john@acme.com): Username", &[d.name]));
                    } else {
                        out.push(err(
                            "INVALID_EMAIL_ADDRESS",
                            format!("{k}: invalid email address: {s}"),
                            &[d.name],
                        ));
                    }
                }
            }
            _ => out.push(err(
                "INVALID_TYPE_ON_FIELD_IN_RECORD",
                format!("{k}: value not of required type: {v}"),
                &[d.name],
            )),
        }
    }
    out
}

fn looks_like_email(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn refresh_name(u: &mut Map<String, Value>) {
    let first = u
        .get("FirstName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let last = u
        .get("LastName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = format!("{first} {last}").trim().to_string();
    u.insert("Name".into(), json!(name));
}

fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}

pub(crate) fn json_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn errors_json(errors: &[SfErr], key: &str) -> Value {
    Value::Array(
        errors
            .iter()
            .map(|e| json!({key: e.code, "message": e.message, "fields": e.fields}))
            .collect(),
    )
}

/// A top-level REST error: an array of `{message, errorCode, fields}`.
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    fields: &[&str],
) -> Response {
    super::json(
        status,
        json!([{"message": message, "errorCode": code, "fields": fields}]),
    )
}

pub(super) fn routes() -> Router<Sim> {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/oauth2/revoke", post(leaving::revoke))
        .route(
            "/services/data/{v}/sobjects/{object}/describe",
            get(leaving::describe),
        )
        .route("/services/Soap/u/{v}", post(soap_login))
        .route("/services/data", get(versions))
        .route("/services/data/", get(versions))
        .route("/services/data/{v}/limits", get(limits))
        .route("/services/data/{v}/query", get(query))
        .route("/services/data/{v}/query/{cursor}", get(query_more))
        .route("/services/data/{v}/sobjects/{object}", post(create_one))
        .route(
            "/services/data/{v}/sobjects/{object}/{id}",
            get(get_one).patch(update_one),
        )
        .route(
            "/services/data/{v}/composite/sobjects",
            post(collection).patch(collection).delete(collection_delete),
        )
        .merge(bulk::routes())
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            )
        })
}

fn oauth_error(error: &str, description: &str) -> Response {
    super::json(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

async fn token(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    sim.stats_mut().sf_token_calls += 1;
    let base = super::base_url(&headers);
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    let f = |k: &str| form.get(k).map(String::as_str);
    let checked = match grant {
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            check_jwt_bearer(&sim, f("assertion").unwrap_or(""), &base)
        }
        "client_credentials" => {
            if f("client_id") != Some(creds::SF_CLIENT_ID) {
                Err(("invalid_client_id", "client identifier invalid"))
            } else if f("client_secret") != Some(creds::SF_CLIENT_SECRET) {
                Err(("invalid_client", "invalid client credentials"))
            } else {
                Ok(())
            }
        }
        "password" => {
            // Blocked by default in orgs created since Summer '23.
            if !sim.salesforce().password_flow_allowed {
                Err(("invalid_grant", "authentication failure"))
            } else if f("client_id") != Some(creds::SF_CLIENT_ID) {
                Err(("invalid_client_id", "client identifier invalid"))
            } else if f("client_secret") != Some(creds::SF_CLIENT_SECRET) {
                Err(("invalid_client", "invalid client credentials"))
            } else if f("username") != Some(creds::SF_INTEGRATION_USERNAME)
                || f("password")
                    != Some(&format!(
                        "{}{}",
                        creds::SF_PASSWORD,
                        creds::SF_SECURITY_TOKEN
                    ))
            {
                Err(("invalid_grant", "authentication failure"))
            } else {
                Ok(())
            }
        }
        _ => Err(("unsupported_grant_type", "grant type not supported")),
    };
    if let Err((error, description)) = checked {
        return oauth_error(error, description);
    }
    let mut org = sim.salesforce();
    let token = org.issue_token();
    let id = format!("{base}/id/{}/{}", org.org_id, org.integration_user_id);
    let issued_at = chrono::Utc::now().timestamp_millis().to_string();
    if grant.ends_with("jwt-bearer") {
        // The JWT flow answers without issued_at/signature.
        return super::json(
            StatusCode::OK,
            json!({"access_token": token, "scope": "api id", "instance_url": base, "id": id, "token_type": "Bearer"}),
        );
    }
    let signature = match Hmac::<sha2::Sha256>::new_from_slice(creds::SF_CLIENT_SECRET.as_bytes()) {
        Ok(mut mac) => {
            mac.update(format!("{id}{issued_at}").as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    super::json(
        StatusCode::OK,
        json!({"access_token": token, "signature": signature, "scope": "api id", "instance_url": base, "id": id, "token_type": "Bearer", "issued_at": issued_at}),
    )
}

/// JWT bearer checks: RS256 signed with the connected app's certificate
/// key, `iss` = consumer key, `aud` = the login URL, `exp` in seconds and at
/// most ~3 minutes ahead, `sub` = an active, pre-authorized user.
fn check_jwt_bearer(
    sim: &Sim,
    assertion: &str,
    base: &str,
) -> Result<(), (&'static str, &'static str)> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| ("invalid_grant", "invalid assertion"))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(("invalid_grant", "invalid assertion"));
    }
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(super::graph::TRUSTED_PUBLIC_KEY_PEM.as_bytes())
            .map_err(|_| ("invalid_grant", "invalid assertion"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v.leeway = 30;
    let data = jsonwebtoken::decode::<Value>(assertion, &key, &v).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
            ("invalid_grant", "expired authorization code")
        }
        _ => ("invalid_grant", "invalid assertion"),
    })?;
    let c = |k: &str| {
        data.claims
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if c("iss") != creds::SF_CLIENT_ID {
        return Err(("invalid_client_id", "client identifier invalid"));
    }
    let aud = c("aud");
    if aud.trim_end_matches('/') != base {
        return Err(("invalid_grant", "audience is invalid"));
    }
    // exp must be seconds, not milliseconds, and no more than ~3 minutes out.
    let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp > chrono::Utc::now().timestamp() + 300 {
        return Err(("invalid_grant", "invalid assertion"));
    }
    let org = sim.salesforce();
    let active = org
        .users_where("Username", &c("sub"))
        .first()
        .is_some_and(|u| u.get("IsActive") == Some(&Value::Bool(true)));
    if !active {
        return Err(("invalid_grant", "user hasn't approved this consumer"));
    }
    Ok(())
}

/// SOAP `login()` (partner API), as the Entra gallery connector uses it.
async fn soap_login(
    State(sim): State<Sim>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.stats_mut().sf_token_calls += 1;
    let fault = |code: &str, msg: &str| {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {msg}</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{msg}</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
        );
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/xml; charset=utf-8")],
            xml,
        )
            .into_response()
    };
    let major = v
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major >= 65 {
        return fault(
            "UNSUPPORTED_API_VERSION",
            "login() is not available in API version 65.0 and later",
        );
    }
    if !sim.salesforce().soap_login_allowed {
        return fault(
            "INVALID_LOGIN",
            "Invalid username, password, security token; or user locked out.",
        );
    }
    let text = String::from_utf8_lossy(&body);
    let fields = crate::salesforce::xml_fields(&text, &["username", "password"]);
    let ok = fields.get("username").map(String::as_str) == Some(creds::SF_INTEGRATION_USERNAME)
        && fields.get("password").map(String::as_str)
            == Some(&format!(
                "{}{}",
                creds::SF_PASSWORD,
                creds::SF_SECURITY_TOKEN
            ));
    if !ok {
        return fault(
            "INVALID_LOGIN",
            "Invalid username, password, security token; or user locked out.",
        );
    }
    let base = super::base_url(&headers);
    let mut org = sim.salesforce();
    let session = org.issue_token();
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result><metadataServerUrl>{base}/services/Soap/m/{v}/{org_id}</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>false</sandbox><serverUrl>{base}/services/Soap/u/{v}/{org_id}</serverUrl><sessionId>{session}</sessionId><userId>{user}</userId></result></loginResponse></soapenv:Body></soapenv:Envelope>"#,
        org_id = org.org_id,
        user = org.integration_user_id,
    );
    (
        StatusCode::OK,
        [("content-type", "text/xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

async fn versions() -> Response {
    let list: Vec<Value> = (MIN_VERSION..=MAX_VERSION).map(|v| json!({"label": format!("v{v}.0"), "url": format!("/services/data/v{v}.0"), "version": format!("{v}.0")})).collect();
    super::json(StatusCode::OK, Value::Array(list))
}

/// Version, session and usage checks shared by every REST call. Returns
/// the version ("62.0") or the error response.
fn gate(sim: &Sim, v: &str, headers: &HeaderMap) -> Result<String, Response> {
    let version = v.strip_prefix('v').unwrap_or("");
    let major = version
        .strip_suffix(".0")
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m < MIN_VERSION => {
            return Err(error_response(
                StatusCode::GONE,
                "API_VERSION_RETIRED",
                &format!("Version {version} of the API is retired."),
                &[],
            ));
        }
        Some(m) if m <= MAX_VERSION => {}
        _ => {
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            ));
        }
    }
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut org = sim.salesforce();
    if org
        .tokens
        .get(token)
        .is_none_or(|exp| *exp <= Instant::now())
    {
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
            &[],
        ));
    }
    if org.api_usage >= org.daily_api_limit {
        let limit = org.daily_api_limit;
        let usage = org.api_usage;
        drop(org);
        let mut resp = error_response(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
            &[],
        );
        set_header(
            &mut resp,
            "sforce-limit-info",
            &format!("api-usage={usage}/{limit}"),
        );
        return Err(resp);
    }
    org.api_usage += 1;
    drop(org);
    // Too many long-running requests at once (the org's concurrent limit).
    let concurrent = {
        let mut f = sim.faults();
        let hit = f.sf_concurrent_limit_next > 0;
        f.sf_concurrent_limit_next = f.sf_concurrent_limit_next.saturating_sub(1);
        hit
    };
    if concurrent {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "ConcurrentRequests (Concurrent API Requests) Limit exceeded.",
            &[],
        ));
    }
    sim.stats_mut().sf_api_calls += 1;
    Ok(version.to_string())
}

fn with_limits(sim: &Sim, mut resp: Response) -> Response {
    let (usage, limit) = {
        let org = sim.salesforce();
        (org.api_usage, org.daily_api_limit)
    };
    set_header(
        &mut resp,
        "sforce-limit-info",
        &format!("api-usage={usage}/{limit}"),
    );
    resp
}

/// Applies the write fault: `Err` is the response to send instead, and
/// `Ok(true)` means "perform the write, then answer 500".
fn write_fault(sim: &Sim) -> Result<bool, Response> {
    let mut f = sim.faults();
    let commit = f.sf_write_fail_after_commit;
    match f.sf_write_fail_after.as_mut() {
        Some(0) if !commit => Err(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support: 1457311457-4242 (injected fault)",
            &[],
        )),
        Some(0) => Ok(true),
        Some(n) => {
            *n -= 1;
            Ok(false)
        }
        None => Ok(false),
    }
}

fn lost_response() -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: 1457311457-4243 (injected fault after commit)",
        &[],
    )
}

async fn limits(State(sim): State<Sim>, Path(v): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let used = sim.salesforce().api_usage;
    let limit = sim.salesforce().daily_api_limit;
    let batches = sim.salesforce().bulk.batches_used;
    let body = json!({"DailyApiRequests": {"Max": limit, "Remaining": limit.saturating_sub(used)}, "DailyBulkApiBatches": {"Max": bulk::DAILY_BATCHES, "Remaining": bulk::DAILY_BATCHES.saturating_sub(batches)}});
    with_limits(&sim, super::json(StatusCode::OK, body))
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().strip_prefix("batchSize=")?.parse::<usize>().ok())
        })
        .map(|n| n.clamp(200, 2000))
        .unwrap_or(2000)
}

fn page(sim: &Sim, version: &str, cursor: &str, offset: usize, size: usize) -> Response {
    let mut org = sim.salesforce();
    let Some(all) = org.cursors.get(cursor) else {
        drop(org);
        return error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
            &[],
        );
    };
    let total = all.len();
    let end = (offset + size).min(total);
    let records: Vec<Value> = all.get(offset..end).unwrap_or_default().to_vec();
    let done = end >= total;
    let mut body = json!({"totalSize": total, "done": done, "records": records});
    if done {
        org.cursors.remove(cursor);
    } else {
        body["nextRecordsUrl"] = json!(format!("/services/data/v{version}/query/{cursor}-{end}"));
    }
    drop(org);
    with_limits(sim, super::json(StatusCode::OK, body))
}

async fn query(
    State(sim): State<Sim>,
    Path(v): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let version = match gate(&sim, &v, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(text) = q.get("q") else {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "MALFORMED_QUERY",
                "A query string has to be specified",
                &[],
            ),
        );
    };
    let parsed = match soql::parse(text) {
        Ok(p) => p,
        Err(m) => {
            return with_limits(
                &sim,
                error_response(
                    StatusCode::BAD_REQUEST,
                    "MALFORMED_QUERY",
                    &format!("\n{text}\n^\nERROR at Row:1:Column:1\n{m}"),
                    &[],
                ),
            );
        }
    };
    let mut org = sim.salesforce();
    let records = match org.run_query(&parsed, &version) {
        Ok(r) => r,
        Err(e) => {
            drop(org);
            return with_limits(
                &sim,
                error_response(StatusCode::BAD_REQUEST, e.code, &e.message, &[]),
            );
        }
    };
    if parsed.count {
        drop(org);
        let body = json!({"totalSize": records.len(), "done": true, "records": []});
        return with_limits(&sim, super::json(StatusCode::OK, body));
    }
    let cursor = format!("01gSIM{:09}", org.next_cursor);
    org.next_cursor += 1;
    org.cursors.insert(cursor.clone(), records);
    drop(org);
    page(&sim, &version, &cursor, 0, batch_size(&headers))
}

async fn query_more(
    State(sim): State<Sim>,
    Path((v, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let version = match gate(&sim, &v, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some((cursor, offset)) = locator
        .rsplit_once('-')
        .and_then(|(c, o)| Some((c.to_string(), o.parse::<usize>().ok()?)))
    else {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY_LOCATOR",
                "invalid query locator",
                &[],
            ),
        );
    };
    page(&sim, &version, &cursor, offset, batch_size(&headers))
}

async fn get_one(
    State(sim): State<Sim>,
    Path((v, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let version = match gate(&sim, &v, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some((name, defs)) = schema(&object) else {
        return with_limits(
            &sim,
            error_response(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            ),
        );
    };
    let fields: Vec<String> = match q.get("fields") {
        Some(f) => f.split(',').map(|s| s.trim().to_string()).collect(),
        None => defs.iter().map(|d| d.name.to_string()).collect(),
    };
    let org = sim.salesforce();
    for f in &fields {
        if let Err(e) = SfOrg::check_path(name, f) {
            drop(org);
            return with_limits(
                &sim,
                error_response(StatusCode::BAD_REQUEST, e.code, &e.message, &[]),
            );
        }
    }
    let resp = match org.get(name, &id) {
        Some(row) => super::json(StatusCode::OK, org.render(name, row, &fields, &version)),
        None => error_response(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        ),
    };
    drop(org);
    with_limits(&sim, resp)
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            &format!("Unexpected character in request body: {e}"),
            &[],
        )
    })
}

/// Counts a write call of `kind` (method, path shape and sObject).
pub(crate) fn count_write(sim: &Sim, kind: String, records: u64) {
    let mut s = sim.stats_mut();
    s.sf_write_calls += 1;
    s.sf_records_written += records;
    *s.sf_records_by_kind.entry(kind.clone()).or_default() += records;
    *s.sf_calls_by_kind.entry(kind).or_default() += 1;
}

/// One-record write: session, body, injected write fault, counting and the
/// limit header are shared; `apply` does the write and renders the answer.
fn single_write(
    sim: &Sim,
    v: &str,
    headers: &HeaderMap,
    body: &Bytes,
    kind: String,
    apply: impl FnOnce(&mut SfOrg, Map<String, Value>) -> Response,
) -> Response {
    if let Err(r) = gate(sim, v, headers) {
        return r;
    }
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return with_limits(sim, r),
    };
    let lose = match write_fault(sim) {
        Ok(l) => l,
        Err(r) => return with_limits(sim, r),
    };
    count_write(sim, kind, 1);
    let resp = apply(&mut sim.salesforce(), json_map(body));
    with_limits(sim, if lose { lost_response() } else { resp })
}

async fn create_one(
    State(sim): State<Sim>,
    Path((v, object)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind = format!("POST sobjects/{object}");
    let auto = leaving::auto_assign(&headers);
    single_write(&sim, &v, &headers, &body, kind, |org, fields| {
        match org.create(&object, fields) {
            Ok(id) => {
                if auto {
                    org.run_assignment_rule(&object, &id);
                }
                super::json(
                    StatusCode::CREATED,
                    json!({"id": id, "success": true, "errors": []}),
                )
            }
            Err(e) => super::json(StatusCode::BAD_REQUEST, errors_json(&e, "errorCode")),
        }
    })
}

async fn update_one(
    State(sim): State<Sim>,
    Path((v, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind = format!("PATCH sobjects/{object}/{{id}}");
    let auto = leaving::auto_assign(&headers);
    single_write(&sim, &v, &headers, &body, kind, |org, fields| {
        match org.update(&object, &id, fields) {
            Ok(()) => {
                if auto {
                    org.run_assignment_rule(&object, &id);
                }
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => super::json(StatusCode::BAD_REQUEST, errors_json(&e, "errorCode")),
        }
    })
}

/// `DELETE /composite/sobjects?ids=...&allOrNone=false` (at most 200 ids).
async fn collection_delete(
    State(sim): State<Sim>,
    Path(v): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let ids: Vec<String> = q
        .get("ids")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "MISSING_ARGUMENT",
                "ids parameter not specified",
                &[],
            ),
        );
    }
    if ids.len() > COLLECTION_LIMIT {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
                &[],
            ),
        );
    }
    let lose = match write_fault(&sim) {
        Ok(l) => l,
        Err(r) => return with_limits(&sim, r),
    };
    count_write(&sim, "DELETE composite/sobjects".into(), ids.len() as u64);
    let mut org = sim.salesforce();
    let out: Vec<Value> = ids
        .iter()
        .map(|id| match org.delete(id) {
            Ok(()) => json!({"id": id, "success": true, "errors": []}),
            Err(e) => json!({"id": id, "success": false, "errors": [{"statusCode": e.code, "message": e.message, "fields": e.fields}]}),
        })
        .collect();
    drop(org);
    let resp = if lose {
        lost_response()
    } else {
        super::json(StatusCode::OK, Value::Array(out))
    };
    with_limits(&sim, resp)
}

async fn collection(
    State(sim): State<Sim>,
    method: Method,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&sim, &v, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return with_limits(&sim, r),
    };
    let all_or_none = body
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(records) = body.get("records").and_then(Value::as_array) else {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                "Missing required field: records",
                &[],
            ),
        );
    };
    if records.len() > COLLECTION_LIMIT {
        // Message as reported by client libraries; the exact text is unverified.
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
                &[],
            ),
        );
    }
    let types: Vec<Option<String>> = records
        .iter()
        .map(|r| {
            r.pointer("/attributes/type")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    if types.iter().any(Option::is_none) {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_TYPE",
                "Must send a concrete entity type.",
                &[],
            ),
        );
    }
    let setup = types.iter().flatten().filter(|t| is_setup(t)).count();
    if setup > 0 && setup < types.len() {
        return with_limits(
            &sim,
            error_response(
                StatusCode::BAD_REQUEST,
                "MIXED_DML_OPERATION",
                "DML operation on setup object is not permitted after you have updated a non-setup object (or vice versa)",
                &[],
            ),
        );
    }
    let lose = match write_fault(&sim) {
        Ok(l) => l,
        Err(r) => return with_limits(&sim, r),
    };
    let kind = format!(
        "{method} composite/sobjects {}",
        types.first().cloned().flatten().unwrap_or_default()
    );
    count_write(&sim, kind, records.len() as u64);
    let mut locked = {
        let mut f = sim.faults();
        let n = f.sf_lock_rows.min(records.len() as u32);
        f.sf_lock_rows -= n;
        n
    };
    let mut org = sim.salesforce();
    let snapshot = all_or_none.then(|| org.objects.clone());
    let mut results: Vec<Result<String, Vec<SfErr>>> = Vec::new();
    for (rec, ty) in records.iter().zip(types.iter().flatten()) {
        let fields = json_map(rec.clone());
        let r = if locked > 0 {
            locked -= 1;
            let id = rec.get("id").and_then(Value::as_str).unwrap_or_default();
            Err(vec![err(
                "UNABLE_TO_LOCK_ROW",
                format!("unable to obtain exclusive access to this record or 1 records: {id}"),
                &[],
            )])
        } else if method == Method::POST {
            if fields.contains_key("id") || fields.contains_key("Id") {
                Err(vec![err(
                    "INVALID_FIELD",
                    "cannot specify Id in an insert call",
                    &["Id"],
                )])
            } else {
                org.create(ty, fields)
            }
        } else {
            match rec
                .get("id")
                .or_else(|| rec.get("Id"))
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                Some(id) => org.update(ty, &id, fields).map(|()| id),
                None => Err(vec![err(
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    &[],
                )]),
            }
        };
        results.push(r);
    }
    let failed = results.iter().any(Result::is_err);
    if let (Some(snap), true) = (snapshot, failed) {
        org.objects = snap;
        org.rebuild();
    }
    if !all_or_none || !failed {
        let auto = leaving::auto_assign(&headers);
        for (r, ty) in results.iter().zip(types.iter().flatten()) {
            if let Ok(id) = r
                && auto
            {
                org.run_assignment_rule(ty, id);
            }
        }
    }
    drop(org);
    let out: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Ok(_) if all_or_none && failed => json!({"success": false, "errors": [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": "Record rolled back because not all records were valid and the request was using AllOrNone header", "fields": []}]}),
            Ok(id) => json!({"id": id, "success": true, "errors": []}),
            Err(e) => json!({"success": false, "errors": errors_json(e, "statusCode")}),
        })
        .collect();
    let resp = if lose {
        lost_response()
    } else {
        super::json(StatusCode::OK, Value::Array(out))
    };
    with_limits(&sim, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_case_suffix() {
        let id = make_id("005", 1);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("005"));
        // All-digit 15-char ids have no upper-case letters: suffix AAA.
        assert_eq!(&id[15..], "AAA");
    }

    fn seeded() -> (SfOrg, String) {
        let mut org = SfOrg::new();
        let lic = org.insert_raw("UserLicense", json_map(json!({"Name": "Salesforce", "TotalLicenses": 1, "UsedLicenses": 0, "Status": "Active"})));
        let p = org.insert_raw(
            "Profile",
            json_map(json!({"Name": "Standard User", "UserLicenseId": lic})),
        );
        (org, p)
    }

    fn user(p: &str, name: &str) -> Map<String, Value> {
        json_map(
            json!({"Username": format!("{name}@x.com"), "LastName": name, "Email": format!("{name}@x.com"), "Alias": "a", "TimeZoneSidKey": "GMT", "LocaleSidKey": "en_US", "EmailEncodingKey": "UTF-8", "LanguageLocaleKey": "en_US", "ProfileId": p}),
        )
    }

    #[test]
    fn create_validates_like_salesforce() {
        let (mut org, p) = seeded();
        let mut u = user(&p, "a");
        u.remove("Email");
        let e = org.create("User", u).expect_err("missing email");
        assert_eq!(e[0].code, "REQUIRED_FIELD_MISSING");
        assert_eq!(e[0].fields, vec!["Email"]);
        let mut u = user(&p, "a");
        u.insert("Alias".into(), json!("waytoolongalias"));
        assert_eq!(
            org.create("User", u).expect_err("long alias")[0].code,
            "STRING_TOO_LONG"
        );
        org.create("User", user(&p, "a")).expect("valid user");
        assert_eq!(
            org.create("User", user(&p, "a")).expect_err("dup")[0].code,
            "DUPLICATE_USERNAME"
        );
        // One seat only.
        assert_eq!(
            org.create("User", user(&p, "b")).expect_err("no seat")[0].code,
            "LICENSE_LIMIT_EXCEEDED"
        );
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    fn org_with_user() -> (SfOrg, String) {
        let mut org = SfOrg::new();
        let lic = org.insert_raw("UserLicense", json_map(json!({"Name": "Salesforce", "TotalLicenses": 10, "UsedLicenses": 0, "Status": "Active"})));
        let p = org.insert_raw(
            "Profile",
            json_map(json!({"Name": "Standard User", "UserLicenseId": lic})),
        );
        let u = org.insert_raw(
            "User",
            json_map(
                json!({"Username": "a@x.com", "LastName": "a", "ProfileId": p, "IsActive": true}),
            ),
        );
        (org, u)
    }

    fn rec(v: Value) -> Map<String, Value> {
        json_map(v)
    }

    #[test]
    fn a_licensed_permission_set_needs_its_licence_first() {
        let (mut org, u) = org_with_user();
        let psl = org.insert_raw("PermissionSetLicense", rec(json!({"DeveloperName": "Psl", "MasterLabel": "PSL", "TotalLicenses": 1, "UsedLicenses": 0})));
        let ps = org.insert_raw(
            "PermissionSet",
            rec(json!({"Name": "Needs_Psl", "IsOwnedByProfile": false, "LicenseId": psl})),
        );
        let e = org
            .create(
                "PermissionSetAssignment",
                rec(json!({"AssigneeId": u, "PermissionSetId": ps})),
            )
            .expect_err("no licence yet");
        assert_eq!(e[0].code, "FIELD_INTEGRITY_EXCEPTION");
        let la = org
            .create(
                "PermissionSetLicenseAssign",
                rec(json!({"AssigneeId": u, "PermissionSetLicenseId": psl})),
            )
            .expect("licence");
        assert_eq!(&la[..3], "2LA");
        assert_eq!(
            org.get("PermissionSetLicense", &psl)
                .map(|l| l["UsedLicenses"].clone()),
            Some(json!(1))
        );
        let pa = org
            .create(
                "PermissionSetAssignment",
                rec(json!({"AssigneeId": u, "PermissionSetId": ps})),
            )
            .expect("now it can be assigned");
        // The licence can't go while the permission set needs it.
        assert_eq!(
            org.delete(&la).expect_err("still needed").code,
            "FIELD_INTEGRITY_EXCEPTION"
        );
        org.delete(&pa).expect("remove permission set");
        org.delete(&la).expect("then the licence");
        assert_eq!(
            org.get("PermissionSetLicense", &psl)
                .map(|l| l["UsedLicenses"].clone()),
            Some(json!(0))
        );
    }

    #[test]
    fn licence_seats_and_duplicates() {
        let (mut org, u) = org_with_user();
        let (_, u2) = {
            let p = org.profile_id("Standard User").unwrap_or_default();
            let id = org.insert_raw("User", rec(json!({"Username": "b@x.com", "LastName": "b", "ProfileId": p, "IsActive": true})));
            ((), id)
        };
        let psl = org.insert_raw("PermissionSetLicense", rec(json!({"DeveloperName": "Psl", "MasterLabel": "PSL", "TotalLicenses": 1, "UsedLicenses": 0})));
        let assign = |org: &mut SfOrg, who: &str| {
            org.create(
                "PermissionSetLicenseAssign",
                rec(json!({"AssigneeId": who, "PermissionSetLicenseId": psl})),
            )
        };
        assign(&mut org, &u).expect("first seat");
        assert_eq!(
            assign(&mut org, &u).expect_err("dup")[0].code,
            "DUPLICATE_VALUE"
        );
        assert_eq!(
            assign(&mut org, &u2).expect_err("no seat")[0].code,
            "LICENSE_LIMIT_EXCEEDED"
        );
        let e = org
            .create("PermissionSetLicenseAssign", rec(json!({"AssigneeId": u2})))
            .expect_err("missing");
        assert_eq!(e[0].code, "REQUIRED_FIELD_MISSING");
        assert_eq!(e[0].fields, vec!["PermissionSetLicenseId"]);
    }

    #[test]
    fn groups_are_assigned_through_their_aggregate_permission_set() {
        let (mut org, u) = org_with_user();
        let g = org.add_permission_set_group("Bundle", "Bundle");
        let a = org
            .create(
                "PermissionSetAssignment",
                rec(json!({"AssigneeId": u, "PermissionSetGroupId": g})),
            )
            .expect("group assignment");
        let row = org
            .get("PermissionSetAssignment", &a)
            .cloned()
            .unwrap_or_default();
        assert_eq!(row["PermissionSetGroupId"], json!(g));
        let ps = row["PermissionSetId"].as_str().unwrap_or_default();
        assert_eq!(
            org.get("PermissionSet", ps).map(|p| p["Type"].clone()),
            Some(json!("Group"))
        );
        let e = org
            .create(
                "PermissionSetAssignment",
                rec(json!({"AssigneeId": u, "PermissionSetGroupId": g})),
            )
            .expect_err("twice");
        assert_eq!(e[0].code, "DUPLICATE_VALUE");
    }

    #[test]
    fn queue_membership() {
        let (mut org, u) = org_with_user();
        let q = org.insert_raw(
            "Group",
            rec(json!({"Name": "Q", "DeveloperName": "Q", "Type": "Queue"})),
        );
        let m = org
            .create(
                "GroupMember",
                rec(json!({"GroupId": q, "UserOrGroupId": u})),
            )
            .expect("member");
        assert_eq!(&m[..3], "011");
        assert_eq!(
            org.create(
                "GroupMember",
                rec(json!({"GroupId": q, "UserOrGroupId": u}))
            )
            .expect_err("twice")[0]
                .code,
            "DUPLICATE_VALUE"
        );
        assert_eq!(
            org.create(
                "GroupMember",
                rec(json!({"GroupId": u, "UserOrGroupId": u}))
            )
            .expect_err("not a group")[0]
                .code,
            "INVALID_CROSS_REFERENCE_KEY"
        );
        org.delete(&m).expect("leave");
        assert_eq!(org.rows("GroupMember").count(), 0);
    }
}
