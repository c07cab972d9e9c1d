//! The data that flows through the pipeline: Entra users in, desired
//! Salesforce users out of the rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How Graph reported a user gone (`@removed.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Removal {
    /// `changed`: soft-deleted, restorable for 30 days.
    SoftDeleted,
    /// `deleted`: permanently deleted.
    HardDeleted,
}

/// An Entra ID user as mirrored from Graph `users/delta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraUser {
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub employee_id: Option<String>,
    #[serde(default)]
    pub mobile_phone: Option<String>,
    #[serde(default)]
    pub business_phones: Vec<String>,
    #[serde(default)]
    pub preferred_language: Option<String>,
    #[serde(default)]
    pub user_type: Option<String>,
    #[serde(default)]
    pub account_enabled: Option<bool>,
    #[serde(default)]
    pub manager_id: Option<String>,
    #[serde(default)]
    pub removed: Option<Removal>,
    /// Directory extension attributes (`extension_<appId>_<name>`) that the
    /// configuration asked for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

/// A Salesforce field value as rules produce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
}

impl FieldValue {
    /// Converts a Salesforce JSON value into a field value (objects and
    /// arrays are not User field values and become `None`).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::Null => Some(Self::Null),
            serde_json::Value::Bool(b) => Some(Self::Bool(*b)),
            serde_json::Value::Number(n) => n.as_f64().map(Self::Number),
            serde_json::Value::String(s) => Some(Self::Text(s.clone())),
            _ => None,
        }
    }

    /// The JSON form Salesforce expects.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Null => serde_json::Value::Null,
            Self::Bool(b) => serde_json::Value::Bool(*b),
            Self::Number(n) => serde_json::json!(n),
            Self::Text(s) => serde_json::Value::String(s.clone()),
        }
    }

    /// Short human rendering for plans and audit lines.
    pub fn render(&self) -> String {
        match self {
            Self::Null => "(null)".into(),
            Self::Bool(b) => b.to_string(),
            Self::Number(n) => n.to_string(),
            Self::Text(s) => format!("{s:?}"),
        }
    }

    /// The text, if this is a non-empty text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

/// The Salesforce user a rule pack wants for one Entra user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredUser {
    /// User fields by API name. Never contains `IsActive` or `ProfileId`:
    /// those come from `active` and `profile`.
    pub fields: BTreeMap<String, FieldValue>,
    /// Profile by name.
    pub profile: Option<String>,
    /// Role (UserRole) by name; `None` leaves the role alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Permission sets by API name that the user should hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_sets: Vec<String>,
    /// Permission set groups by API name (`DeveloperName`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_set_groups: Vec<String>,
    /// Permission set licences by API name (`DeveloperName`). Assigned
    /// before the permission sets that need them, removed after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_set_licenses: Vec<String>,
    /// Queues (by `DeveloperName`) the user should be a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// Whether the Salesforce user should be active.
    pub active: bool,
}

impl DesiredUser {
    /// The names the user should hold for one kind of access.
    pub fn grants(&self, kind: Access) -> &[String] {
        match kind {
            Access::PermissionSet => &self.permission_sets,
            Access::PermissionSetGroup => &self.permission_set_groups,
            Access::PermissionSetLicense => &self.permission_set_licenses,
            Access::Queue => &self.queues,
        }
    }
}

/// A kind of access granted to a user through an assignment record in
/// Salesforce. Grants are diffed per kind: what is missing is added, and
/// only what provisor granted (or the pack owns) is ever taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    PermissionSetLicense,
    PermissionSet,
    PermissionSetGroup,
    Queue,
}

impl Access {
    /// Every kind, in the order grants are applied: a permission set
    /// licence before the permission sets that need it. Removals run in
    /// the reverse order.
    pub const ALL: [Access; 4] = [
        Access::PermissionSetLicense,
        Access::PermissionSet,
        Access::PermissionSetGroup,
        Access::Queue,
    ];

    /// The Salesforce object that is granted.
    pub fn object(self) -> &'static str {
        match self {
            Self::PermissionSet => "PermissionSet",
            Self::PermissionSetGroup => "PermissionSetGroup",
            Self::PermissionSetLicense => "PermissionSetLicense",
            Self::Queue => "Group",
        }
    }

    /// The assignment object that links a user to it.
    pub fn assignment_object(self) -> &'static str {
        match self {
            Self::PermissionSet | Self::PermissionSetGroup => "PermissionSetAssignment",
            Self::PermissionSetLicense => "PermissionSetLicenseAssign",
            Self::Queue => "GroupMember",
        }
    }

    /// The assignment's field naming the user.
    pub fn assignee_field(self) -> &'static str {
        match self {
            Self::Queue => "UserOrGroupId",
            _ => "AssigneeId",
        }
    }

    /// The assignment's field naming what is granted.
    pub fn target_field(self) -> &'static str {
        match self {
            Self::PermissionSet => "PermissionSetId",
            Self::PermissionSetGroup => "PermissionSetGroupId",
            Self::PermissionSetLicense => "PermissionSetLicenseId",
            Self::Queue => "GroupId",
        }
    }

    /// Words for people: "permission set", "queue"...
    pub fn label(self) -> &'static str {
        match self {
            Self::PermissionSet => "permission set",
            Self::PermissionSetGroup => "permission set group",
            Self::PermissionSetLicense => "permission set licence",
            Self::Queue => "queue",
        }
    }

    /// The snake_case name used in audit events and the store.
    pub fn key(self) -> &'static str {
        match self {
            Self::PermissionSet => "permission_set",
            Self::PermissionSetGroup => "permission_set_group",
            Self::PermissionSetLicense => "permission_set_license",
            Self::Queue => "queue",
        }
    }

    /// Parses [`Access::key`].
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.key() == key)
    }
}

/// Returns true when `name` is a plausible Salesforce API name. Names go into
/// SOQL select lists, so anything else is refused before it gets there.
pub fn is_api_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names() {
        assert!(is_api_name("FederationIdentifier"));
        assert!(is_api_name("Custom_Field__c"));
        assert!(!is_api_name("Id, (SELECT"));
        assert!(!is_api_name(""));
        assert!(!is_api_name("1abc"));
    }
}
