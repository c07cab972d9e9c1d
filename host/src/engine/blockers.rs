//! Why Salesforce refused to deactivate a user. It has no distinct error
//! code for most reasons (the user is still referenced by org
//! configuration), so known message texts map to a kind of blocker and the
//! Setup page where an admin removes it (field-failures.md §1, §3).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Value, json};

use super::{ActionKind, Engine, Outcome, Plan, SyncError};
use crate::audit::AuditEvent;
use crate::store::NewBlocker;

/// A recognised deactivation blocker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Blocker {
    /// Stable name, for the audit trail and reports.
    pub kind: &'static str,
    /// Where in Setup it is removed.
    pub fix: &'static str,
    /// Org configuration: retrying changes nothing until an admin acts.
    pub org_config: bool,
}

/// (lower-case text in the message, blocker), most specific first.
const BY_MESSAGE: &[(&str, Blocker)] = &[
    (
        "web to lead default creator",
        Blocker {
            kind: "web_to_lead_default_creator",
            fix: "Setup > Web-to-Lead: choose another Default Lead Creator",
            org_config: true,
        },
    ),
    (
        "web-to-lead",
        Blocker {
            kind: "web_to_lead_default_creator",
            fix: "Setup > Web-to-Lead: choose another Default Lead Creator",
            org_config: true,
        },
    ),
    (
        "web-to-case",
        Blocker {
            kind: "web_to_case_default_creator",
            fix: "Setup > Web-to-Case: choose another Default Case Creator",
            org_config: true,
        },
    ),
    (
        "default owner of cases",
        Blocker {
            kind: "default_case_owner",
            fix: "Setup > Support Settings: choose another Default Case Owner",
            org_config: true,
        },
    ),
    (
        "default case owner",
        Blocker {
            kind: "default_case_owner",
            fix: "Setup > Support Settings: choose another Default Case Owner",
            org_config: true,
        },
    ),
    (
        "automated case user",
        Blocker {
            kind: "automated_case_user",
            fix: "Setup > Support Settings: choose another Automated Case User",
            org_config: true,
        },
    ),
    (
        "default lead owner",
        Blocker {
            kind: "default_lead_owner",
            fix: "Setup > Lead Settings: choose another Default Lead Owner",
            org_config: true,
        },
    ),
    (
        "default workflow user",
        Blocker {
            kind: "default_workflow_user",
            fix: "Setup > Process Automation Settings: choose another Default Workflow User",
            org_config: true,
        },
    ),
    (
        "hierarchy field",
        Blocker {
            kind: "custom_hierarchy_field",
            fix: "clear the user from the named hierarchy field on every user that points at them (a deleted field must also be erased)",
            org_config: false,
        },
    ),
    (
        "auto-response",
        Blocker {
            kind: "auto_response_rule",
            fix: "Setup > Lead or Case Auto-Response Rules: replace the user in the rule entries",
            org_config: true,
        },
    ),
    (
        "assignment rule",
        Blocker {
            kind: "assignment_rule",
            fix: "Setup > Lead or Case Assignment Rules: replace the user in the rule entries",
            org_config: true,
        },
    ),
    (
        "approver",
        Blocker {
            kind: "approver",
            fix: "approval processes, and users naming them as (delegated) approver: name someone else",
            org_config: true,
        },
    ),
    (
        "portal administrator",
        Blocker {
            kind: "customer_portal_admin",
            fix: "Setup > Customer Portal Settings: choose another Administrator",
            org_config: true,
        },
    ),
    (
        "big deal alert",
        Blocker {
            kind: "big_deal_alert",
            fix: "Setup > Big Deal Alert: change the notification sender",
            org_config: true,
        },
    ),
    (
        "update reminder",
        Blocker {
            kind: "opportunity_update_reminders",
            fix: "Setup > Opportunity Update Reminders: remove the user",
            org_config: true,
        },
    ),
    (
        "workflow",
        Blocker {
            kind: "workflow_rule",
            fix: "Setup > Workflow Rules: remove the user from email alerts, tasks and field updates",
            org_config: true,
        },
    ),
];

/// A refusal no known message names. Salesforce gives no distinct code
/// for configuration references, so it is treated as one: retried on the
/// back-off, not every cycle.
pub const UNRECOGNISED: Blocker = Blocker {
    kind: "unrecognised",
    fix: "read Salesforce's message; Setup > Users > the user shows what refers to it",
    org_config: true,
};

/// When a deactivation refused `tries` times by org configuration is
/// tried again: `first_minutes`, doubling, at most `max_hours`.
pub fn next_try(
    tries: u32,
    first_minutes: u64,
    max_hours: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let minutes = first_minutes
        .saturating_mul(1u64 << tries.saturating_sub(1).min(20))
        .min(max_hours.saturating_mul(60));
    now + chrono::Duration::minutes(i64::try_from(minutes).unwrap_or(i64::MAX / 120_000))
}

impl Engine {
    /// Records Salesforce's refusal to deactivate a leaver and says, for
    /// the cycle report, when it is tried again.
    pub(super) async fn record_refused_deactivation(
        &self,
        entra_id: &str,
        sf_id: &str,
        blocker: &Blocker,
        message: &str,
        detail: &Value,
    ) -> Result<(u32, Option<String>), SyncError> {
        let cfg = &self.cfg;
        let mut next = None;
        let (tries, _) = self
            .store
            .record_blocker(
                &NewBlocker {
                    entra_id,
                    sf_id,
                    kind: blocker.kind,
                    message,
                    fix: Some(blocker.fix),
                    detail,
                    org_config: blocker.org_config,
                },
                |tries| {
                    next = blocker.org_config.then(|| {
                        crate::store::timestamp(next_try(
                            tries,
                            cfg.blocker_retry_minutes,
                            cfg.blocker_retry_max_hours,
                            chrono::Utc::now(),
                        ))
                    });
                    next.clone()
                },
            )
            .await?;
        Ok((tries, next))
    }

    /// Before deactivations are sent: leavers whose deactivation org
    /// configuration refused and whose back-off has not passed wait
    /// without a call; the others are checked for custom hierarchy fields
    /// that name them (Salesforce refuses those, and the referencing users
    /// are listed). Returns the leavers held.
    pub(super) async fn hold_blocked_leavers(
        &self,
        cycle: &str,
        plan: &Plan,
        outcomes: &mut HashMap<String, Outcome>,
        held: &HashSet<String>,
    ) -> Result<HashSet<String>, SyncError> {
        let mut out = HashSet::new();
        let leavers = plan.accounts_where(|a| {
            matches!(a.kind, ActionKind::Deactivate)
                && !held.contains(&a.entra_id)
                && outcomes
                    .get(&a.entra_id)
                    .is_none_or(|o| o.failed.is_none() && !o.deferred && o.waiting.is_none())
        });
        if leavers.is_empty() {
            return Ok(out);
        }
        let ids: Vec<String> = leavers.iter().map(|(e, _)| e.clone()).collect();
        let known = self.store.blockers_of(&ids).await?;
        let now = chrono::Utc::now();
        for (e, _) in &leavers {
            let Some(b) = known.get(e) else { continue };
            let later = b
                .next_try
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > now);
            if b.org_config && later {
                out.insert(e.clone());
                let o = outcomes.entry(e.clone()).or_default();
                o.waiting = Some(format!(
                    "deactivation blocked by Salesforce ({}) since {}, refused {} time(s): {} (fix: {}); next try after {} or at `provisor leavers retry`",
                    b.kind,
                    b.since,
                    b.tries,
                    b.message,
                    b.fix.as_deref().unwrap_or("-"),
                    b.next_try.as_deref().unwrap_or_default()
                ));
                o.quiet = true;
            }
        }
        let rest: Vec<&(String, String)> =
            leavers.iter().filter(|(e, _)| !out.contains(e)).collect();
        if rest.is_empty() {
            return Ok(out);
        }
        let fields = self.hierarchy_fields().await?;
        let sf_ids: Vec<String> = rest.iter().map(|(_, s)| s.clone()).collect();
        // Leaver -> (field, referencing user id, its Username).
        let mut refs: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
        for f in &fields {
            let rows = self
                .query_in(&sf_ids, |list| {
                    format!("SELECT Id, Username, {f} FROM User WHERE {f} IN ({list})")
                })
                .await?;
            for r in rows {
                let s = |k: &str| {
                    r.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                refs.entry(s(f))
                    .or_default()
                    .push((f.clone(), s("Id"), s("Username")));
            }
        }
        // A stable order, so the same finding reads the same next cycle.
        for by in refs.values_mut() {
            by.sort();
        }
        let mut events = Vec::new();
        for (e, sf) in rest {
            let Some(by) = refs.get(sf) else { continue };
            let blocker = BY_MESSAGE
                .iter()
                .find(|(_, b)| b.kind == "custom_hierarchy_field")
                .map(|(_, b)| *b)
                .unwrap_or(UNRECOGNISED);
            let mut names: Vec<&str> = by.iter().map(|(f, _, _)| f.as_str()).collect();
            names.dedup();
            let users: Vec<String> = by
                .iter()
                .map(|(f, id, name)| format!("{name} ({id}) by {f}"))
                .collect();
            let message = format!(
                "the user is the value of hierarchy field {} on {} user(s): {}",
                names.join(", "),
                by.len(),
                users.join(", ")
            );
            let detail = json!({
                "checked_before_deactivation": true,
                "referenced_by": by.iter().map(|(f, id, name)| json!({"field": f, "id": id, "username": name})).collect::<Vec<_>>(),
            });
            let (tries, changed) = self
                .store
                .record_blocker(
                    &NewBlocker {
                        entra_id: e,
                        sf_id: sf,
                        kind: blocker.kind,
                        message: &message,
                        fix: Some(blocker.fix),
                        detail: &detail,
                        org_config: blocker.org_config,
                    },
                    |_| None,
                )
                .await?;
            if changed {
                let mut d = detail.clone();
                d["blocker"] = json!(blocker);
                d["message"] = json!(message);
                events.push(AuditEvent {
                    event: "user.deactivation_blocked".into(),
                    entra_id: Some(e.clone()),
                    sf_id: Some(sf.clone()),
                    detail: d,
                });
            }
            out.insert(e.clone());
            let o = outcomes.entry(e.clone()).or_default();
            o.waiting = Some(format!(
                "deactivation not tried (custom_hierarchy_field, checked {tries} time(s)): {message} (fix: {})",
                blocker.fix
            ));
            o.quiet = true;
        }
        self.store.append_audit(cycle, &events).await?;
        Ok(out)
    }

    /// The custom hierarchy fields of User, from its describe: on User a
    /// custom relationship to User can only be a hierarchy one (describe
    /// shows it as a plain reference).
    async fn hierarchy_fields(&self) -> Result<Vec<String>, SyncError> {
        let d = self.salesforce.describe("User").await?;
        Ok(d.get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|f| {
                f.get("custom") == Some(&Value::Bool(true))
                    && f.get("type").and_then(Value::as_str) == Some("reference")
                    && f.get("referenceTo")
                        .and_then(Value::as_array)
                        .is_some_and(|r| r.len() == 1 && r[0] == "User")
            })
            .filter_map(|f| f.get("name")?.as_str().map(str::to_string))
            .collect())
    }
}

/// The blocker Salesforce's refusal of a deactivation names, if known.
pub fn classify(code: &str, message: &str) -> Option<Blocker> {
    if code == "CANNOT_DISABLE_LAST_ADMIN" {
        return Some(Blocker {
            kind: "last_admin",
            fix: "give another active user the System Administrator profile first",
            org_config: true,
        });
    }
    if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" {
        return Some(Blocker {
            kind: "validation_rule",
            fix: "Setup > Object Manager > User > Validation Rules: exempt deactivation or the integration user",
            org_config: true,
        });
    }
    let m = message.to_lowercase();
    BY_MESSAGE
        .iter()
        .find(|(text, _)| m.contains(text))
        .map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_configuration_is_retried_on_a_doubling_back_off_with_a_ceiling() {
        let now = chrono::Utc::now();
        let wait = |tries| (next_try(tries, 15, 24, now) - now).num_minutes();
        assert_eq!([wait(1), wait(2), wait(3), wait(4)], [15, 30, 60, 120]);
        assert_eq!(wait(8), 24 * 60, "capped");
        assert_eq!(wait(60), 24 * 60, "no overflow");
        assert_eq!((next_try(1, 0, 24, now) - now).num_minutes(), 0);
    }

    #[test]
    fn the_documented_messages_are_recognised() {
        // Texts as Salesforce shows them (field-failures.md §1).
        for (message, kind) in [
            (
                "You cannot disable the Web to Lead Default Creator",
                "web_to_lead_default_creator",
            ),
            (
                "You cannot deactivate this user. You cannot deactivate a user who is the default owner of cases",
                "default_case_owner",
            ),
            (
                "You cannot deactivate the Default Workflow User",
                "default_workflow_user",
            ),
            (
                "Cannot inactivate user that is the value of a hierarchy field: Approver__c",
                "custom_hierarchy_field",
            ),
            (
                "This user is used in a Lead Assignment Rule",
                "assignment_rule",
            ),
            (
                "This user is the Automated Case User",
                "automated_case_user",
            ),
        ] {
            assert_eq!(
                classify("FIELD_INTEGRITY_EXCEPTION", message).map(|b| b.kind),
                Some(kind),
                "{message}"
            );
        }
        assert_eq!(
            classify("CANNOT_DISABLE_LAST_ADMIN", "").map(|b| b.kind),
            Some("last_admin")
        );
        assert_eq!(classify("FIELD_INTEGRITY_EXCEPTION", "something new"), None);
        // A hierarchy field is fixed on records, not in Setup.
        assert!(
            !classify("X", "value of a hierarchy field: Mentor__c").is_some_and(|b| b.org_config)
        );
    }
}
