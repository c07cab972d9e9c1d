//! The Entra gallery Salesforce app's default attribute mapping, as a
//! provisor rule component. It must map exactly like
//! `rules/gallery-defaults/main.rhai`; the host's parity test checks that.

wit_bindgen::generate!({
    path: "../../wit",
    world: "rule-pack",
});

use provisor::rules::types::{OwnerTarget, Reassignment, Value};

struct GalleryDefaults;

const DEFAULT_PROFILE: &str = "Chatter Free User";

/// `group_profiles` (group, profile) in file order, kept by `configure`:
/// the same for every user, so keeping it carries nothing from one user
/// to the next.
static GROUP_PROFILES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

fn text(v: Option<&str>) -> Value {
    match v {
        Some(s) if !s.is_empty() => Value::Text(s.to_string()),
        _ => Value::Null,
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl Guest for GalleryDefaults {
    fn configure(settings: Vec<SettingTable>) -> Result<(), String> {
        let table = settings
            .into_iter()
            .find(|t| t.name == "group_profiles")
            .map(|t| t.entries)
            .unwrap_or_default();
        if let Some((group, _)) = table.iter().find(|(_, p)| p.trim().is_empty()) {
            return Err(format!(
                "group_profiles: group {group:?} has an empty profile"
            ));
        }
        GROUP_PROFILES
            .set(table)
            .map_err(|_| "configured twice".to_string())
    }

    // The gallery app manages every user its assignment lets through.
    fn scope(_user: EntraUser) -> Decision {
        Decision {
            in_scope: true,
            reason: String::new(),
        }
    }

    // The gallery app matches on the UPN (FederationIdentifier, then
    // Username, as it writes both from the UPN).
    fn match_keys(user: EntraUser) -> Vec<MatchKey> {
        let upn = user.user_principal_name.unwrap_or_default();
        if upn.is_empty() {
            return Vec::new();
        }
        ["FederationIdentifier", "Username"]
            .iter()
            .map(|f| MatchKey {
                field: (*f).to_string(),
                value: upn.clone(),
            })
            .collect()
    }

    // A bottom pack: there is nothing below it, so `base` is ignored.
    fn map(user: EntraUser, _base: Option<DesiredUser>) -> DesiredUser {
        let upn = user.user_principal_name.clone().unwrap_or_default();
        // Entra's Left(), the same implementation Rhai packs call.
        let alias = provisor_functions::left(&upn, 8);
        let locale = non_empty(&user.preferred_language)
            .map(|l| l.replace('-', "_"))
            .unwrap_or_else(|| "en_US".to_string());
        let last_name = non_empty(&user.surname).unwrap_or(".").to_string();

        // The first entry of `group_profiles` (in file order) whose group the
        // user is in wins; the gallery app allows only one app role per user.
        let profile = GROUP_PROFILES
            .get()
            .and_then(|table| {
                table
                    .iter()
                    .find(|(group, _)| user.groups.iter().any(|g| g == group))
                    .map(|(_, profile)| profile.clone())
            })
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string());

        let fields = vec![
            ("Username".to_string(), text(Some(&upn))),
            ("FederationIdentifier".to_string(), text(Some(&upn))),
            ("Alias".to_string(), text(Some(&alias))),
            ("Email".to_string(), text(user.mail.as_deref())),
            ("FirstName".to_string(), text(user.given_name.as_deref())),
            ("LastName".to_string(), Value::Text(last_name)),
            ("LocaleSidKey".to_string(), Value::Text(locale)),
            ("LanguageLocaleKey".to_string(), Value::Text("en_US".into())),
            (
                "EmailEncodingKey".to_string(),
                Value::Text("ISO-8859-1".into()),
            ),
            (
                "TimeZoneSidKey".to_string(),
                Value::Text("America/Los_Angeles".into()),
            ),
        ];
        DesiredUser {
            fields,
            profile: Some(profile),
            // The gallery app manages neither roles nor permission sets.
            role: None,
            permission_sets: Vec::new(),
            permission_set_groups: Vec::new(),
            permission_set_licenses: Vec::new(),
            queues: Vec::new(),
            active: !user.deleted && user.account_enabled.unwrap_or(true),
        }
    }

    // The gallery app has no notion of records: a leaver's open records go
    // to their manager, and the user is not deactivated while that fails.
    fn on_leave(_user: EntraUser, records: Vec<OwnedRecords>) -> ReassignmentPlan {
        ReassignmentPlan {
            reassignments: records
                .into_iter()
                .map(|r| Reassignment {
                    object: r.object,
                    targets: vec![OwnerTarget::Manager],
                    children: Vec::new(),
                })
                .collect(),
            deactivate_anyway: false,
        }
    }
}

export!(GalleryDefaults);
