//! Round-robin reassignment: an example provisor rule component that only
//! decides where a leaver's open records go.
//!
//! It is an *override pack*, meant to be stacked on top of a base pack that
//! does the actual user mapping, e.g. in the provisor configuration:
//!
//! ```toml
//! [rules]
//! packs = ["rules/gallery-defaults", "rules/round-robin"]
//! ```
//!
//! On its own exports it stays out of the way: `scope` lets everyone
//! through (the base pack and the host decide), `match-keys` returns an
//! empty list (defer to the pack below) and `map` hands back `base`
//! unchanged.
//!
//! `on-leave` is what it is for. Per object type the leaver owns open
//! records of, it reads its pack settings (`rules/round-robin/pack.toml`):
//!
//! * `[settings.teams]` object -> Entra group display name: the records are
//!   spread round-robin over that group's members who have an active
//!   Salesforce user (the leaver excluded), via the host's `team-members`;
//! * `[settings.queues]` object -> queue `DeveloperName` (used when the
//!   object has no team): the records go to the queue;
//! * `[settings.children]` object -> comma-separated child objects whose
//!   records follow the parent's new owner;
//! * `[settings.options] fallback_user`: a Salesforce Username tried last.
//!
//! Every object also falls back to the leaver's manager, then the fallback
//! user. If `team-members` fails (not granted in `[capabilities]`, or the
//! host cannot answer), the pack logs a warning and leaves the round-robin
//! target out.

wit_bindgen::generate!({
    path: "../../wit",
    world: "rule-pack",
});

use provisor::rules::host;
use provisor::rules::types::{HostError, LogLevel, OwnerTarget, Reassignment};

struct RoundRobin;

/// The pack's settings, kept by `configure` (the same for every user).
static SETTINGS: std::sync::OnceLock<Vec<SettingTable>> = std::sync::OnceLock::new();

fn settings() -> &'static [SettingTable] {
    SETTINGS.get().map_or(&[], Vec::as_slice)
}

/// The value of `key` in the settings table `table`, if both exist.
fn setting<'a>(settings: &'a [SettingTable], table: &str, key: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|t| t.name == table)
        .and_then(|t| t.entries.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v.as_str())
}

/// A setting that is present and not blank, trimmed.
fn non_blank<'a>(settings: &'a [SettingTable], table: &str, key: &str) -> Option<&'a str> {
    setting(settings, table, key)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn describe(e: &HostError) -> String {
    match e {
        HostError::Refused(why) => format!("refused: {why}"),
        HostError::Unavailable(why) => format!("unavailable: {why}"),
    }
}

/// Sorted, distinct Salesforce usernames of the team's members who have an
/// active Salesforce user, the leaver excluded; none if the host refused or
/// could not answer (logged).
fn team_usernames(team: &str, leaver_id: &str) -> Option<Vec<String>> {
    match host::team_members(team) {
        Ok(members) => {
            let mut names: Vec<String> = members
                .into_iter()
                .filter(|p| p.id != leaver_id && p.salesforce_active == Some(true))
                .filter_map(|p| p.salesforce_username)
                .collect();
            names.sort();
            names.dedup();
            Some(names)
        }
        Err(e) => {
            // Logging is best effort: a refused log has nowhere else to go.
            let _ = host::log(
                LogLevel::Warn,
                &format!(
                    "team-members({team}) failed, no round-robin for this object: {}",
                    describe(&e)
                ),
            );
            None
        }
    }
}

impl Guest for RoundRobin {
    fn configure(settings: Vec<SettingTable>) -> Result<(), String> {
        // An object with both a team and a queue is ambiguous: say so at
        // load rather than pick one silently.
        // Blank entries count as absent, as in `on_leave`.
        let keys = |table: &str| -> Vec<String> {
            settings
                .iter()
                .filter(|t| t.name == table)
                .flat_map(|t| t.entries.iter())
                .filter(|(_, v)| !v.trim().is_empty())
                .map(|(k, _)| k.clone())
                .collect()
        };
        let queues = keys("queues");
        if let Some(both) = keys("teams").into_iter().find(|o| queues.contains(o)) {
            return Err(format!(
                "{both} has both a team ([settings.teams]) and a queue ([settings.queues]); keep one"
            ));
        }
        SETTINGS
            .set(settings)
            .map_err(|_| "configured twice".to_string())
    }

    // The base pack and the host decide scope; this pack agrees with them.
    fn scope(_user: EntraUser) -> Decision {
        Decision {
            in_scope: true,
            reason: String::new(),
        }
    }

    // Empty: defer to the pack below.
    fn match_keys(_user: EntraUser) -> Vec<MatchKey> {
        Vec::new()
    }

    // The base pack's decision, untouched. Alone (no base) it asks for a
    // bare user that is active only if Entra says the account is enabled.
    fn map(user: EntraUser, base: Option<DesiredUser>) -> DesiredUser {
        base.unwrap_or_else(|| DesiredUser {
            fields: Vec::new(),
            profile: None,
            role: None,
            permission_sets: Vec::new(),
            permission_set_groups: Vec::new(),
            permission_set_licenses: Vec::new(),
            queues: Vec::new(),
            active: user.account_enabled.unwrap_or(false) && !user.deleted,
        })
    }

    fn on_leave(user: EntraUser, records: Vec<OwnedRecords>) -> ReassignmentPlan {
        let settings = settings();
        let fallback = non_blank(settings, "options", "fallback_user");
        let reassignments = records
            .into_iter()
            .map(|r| {
                let mut targets = Vec::new();
                if let Some(team) = non_blank(settings, "teams", &r.object) {
                    if let Some(names) = team_usernames(team, &user.id)
                        && !names.is_empty()
                    {
                        targets.push(OwnerTarget::RoundRobin(names));
                    }
                } else if let Some(queue) = non_blank(settings, "queues", &r.object) {
                    targets.push(OwnerTarget::Queue(queue.to_string()));
                }
                targets.push(OwnerTarget::Manager);
                if let Some(u) = fallback {
                    targets.push(OwnerTarget::User(u.to_string()));
                }
                let children = setting(settings, "children", &r.object)
                    .map(|list| {
                        list.split(',')
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                Reassignment {
                    object: r.object,
                    targets,
                    children,
                }
            })
            .collect();
        ReassignmentPlan {
            reassignments,
            deactivate_anyway: false,
        }
    }
}

export!(RoundRobin);
