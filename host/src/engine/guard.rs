//! Between plan and apply: what must not happen even when the rules say so.
//! Protected users (the integration user, the last active System
//! Administrator, the configured break-glass accounts) are never frozen or
//! deactivated; a cycle that would deactivate more users than the
//! accidental-deletion threshold allows (per cycle, as a share, or within a
//! sliding hour or day) stages those deactivations until an operator
//! approves or rejects them.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::plan::{ActionKind, Plan};
use super::{Engine, Outcome, SyncError};
use crate::audit::AuditEvent;
use crate::salesforce::soql_quote;

/// Why a user's freeze and deactivation were held back.
struct Hold {
    event: &'static str,
    reason: String,
}

impl Engine {
    /// Removes the freezes and deactivations the safety rules hold back,
    /// marks those users as waiting (they stay dirty, spend no attempt) and
    /// returns the audit events for newly staged batches. A `dry_run`
    /// (`provisor plan`) changes the plan the same way but stores nothing.
    pub(super) async fn guard(
        &self,
        cycle: &str,
        plan: &mut Plan,
        outcomes: &mut HashMap<String, Outcome>,
        dry_run: bool,
    ) -> Result<Vec<AuditEvent>, SyncError> {
        let mut events = Vec::new();
        // Leavers in this plan: Entra id -> Salesforce id.
        let leavers: HashMap<String, Option<String>> = plan
            .actions
            .iter()
            .filter(|a| matches!(a.kind, ActionKind::Deactivate | ActionKind::Freeze { .. }))
            .map(|a| (a.entra_id.clone(), a.sf_id.clone()))
            .collect();
        let staged = self.store.staged_deactivations().await?;
        // Staged users who are no longer leavers (back in scope, say):
        // nothing is left to decide.
        let in_plan: HashSet<&str> = plan.actions.iter().map(|a| a.entra_id.as_str()).collect();
        let resolved: Vec<String> = staged
            .iter()
            .filter(|s| in_plan.contains(s.entra_id.as_str()) && !leavers.contains_key(&s.entra_id))
            .map(|s| s.entra_id.clone())
            .collect();
        if !dry_run {
            self.store.clear_staged(&resolved).await?;
        }
        if leavers.is_empty() {
            return Ok(events);
        }
        let mut holds: HashMap<String, Hold> = HashMap::new();

        for (id, why) in self.protected(&leavers).await? {
            holds.insert(
                id,
                Hold {
                    event: "user.protected",
                    reason: format!("protected: {why}; never frozen or deactivated"),
                },
            );
        }

        let status: HashMap<&str, &str> = staged
            .iter()
            .map(|s| (s.entra_id.as_str(), s.status.as_str()))
            .collect();
        let mut new: Vec<(String, Option<String>)> = Vec::new();
        for (id, sf) in &leavers {
            if holds.contains_key(id) {
                continue;
            }
            match status.get(id.as_str()) {
                Some(&"approved") => {}
                Some(&"rejected") => {
                    holds.insert(
                        id.clone(),
                        Hold {
                            event: "user.deactivation_rejected",
                            reason: "an operator rejected this deactivation (provisor reject)"
                                .into(),
                        },
                    );
                }
                Some(_) => {
                    holds.insert(
                        id.clone(),
                        Hold {
                            event: "user.deactivation_staged",
                            reason: "deactivation staged: waiting for provisor approve".into(),
                        },
                    );
                }
                None => new.push((id.clone(), sf.clone())),
            }
        }
        if let Some(why) = self.over_threshold(new.len()).await? {
            new.sort();
            let added = if dry_run {
                0
            } else {
                self.store.stage_deactivations(cycle, &new, &why).await?
            };
            tracing::error!(users = new.len(), reason = %why, batch = %cycle, "deactivations staged: run `provisor approve` (or `provisor reject`)");
            if added > 0 {
                events.push(AuditEvent {
                    event: "deactivations.staged".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"batch": cycle, "users": added, "reason": why}),
                });
            }
            for (id, _) in new {
                holds.insert(
                    id,
                    Hold {
                        event: "user.deactivation_staged",
                        reason: format!(
                            "deactivation staged ({why}): waiting for provisor approve"
                        ),
                    },
                );
            }
        }

        // Approved users go ahead; forget them once planned.
        let approved: Vec<String> = leavers
            .keys()
            .filter(|id| status.get(id.as_str()) == Some(&"approved"))
            .cloned()
            .collect();
        if !dry_run {
            self.store.clear_staged(&approved).await?;
        }

        plan.actions.retain(|a| {
            !(holds.contains_key(&a.entra_id)
                && matches!(a.kind, ActionKind::Deactivate | ActionKind::Freeze { .. }))
        });
        for (id, hold) in holds {
            let o = outcomes.entry(id).or_default();
            o.waiting = Some(hold.reason);
            o.hold_event = Some(hold.event);
        }
        Ok(events)
    }

    /// Whether deactivating `n` more users now trips a limit, and which.
    async fn over_threshold(&self, n: usize) -> Result<Option<String>, SyncError> {
        if n == 0 {
            return Ok(None);
        }
        let s = &self.safety;
        if n > s.max_deactivations {
            return Ok(Some(format!(
                "{n} deactivations in one cycle; safety.max_deactivations is {}",
                s.max_deactivations
            )));
        }
        if let Some(share) = s.max_deactivation_share {
            let managed = self.store.link_count().await?.max(1);
            if n as f64 > share * managed as f64 {
                return Ok(Some(format!(
                    "{n} of {managed} managed users in one cycle; safety.max_deactivation_share is {share}"
                )));
            }
        }
        let windows = [
            (
                s.max_deactivations_per_hour,
                chrono::Duration::hours(1),
                "hour",
            ),
            (
                s.max_deactivations_per_day,
                chrono::Duration::days(1),
                "day",
            ),
        ];
        for (limit, span, name) in windows {
            let Some(limit) = limit else { continue };
            let since =
                (chrono::Utc::now() - span).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let done = self.store.deactivations_since(&since).await?;
            let total = done.max(0) as usize + n;
            if total > limit {
                return Ok(Some(format!(
                    "{done} deactivations in the last {name} and {n} more now; safety.max_deactivations_per_{name} is {limit}"
                )));
            }
        }
        Ok(None)
    }

    /// Leavers who must never be frozen or deactivated, with why.
    async fn protected(
        &self,
        leavers: &HashMap<String, Option<String>>,
    ) -> Result<Vec<(String, String)>, SyncError> {
        let by_sf: HashMap<&str, &str> = leavers
            .iter()
            .filter_map(|(e, s)| Some((s.as_deref()?, e.as_str())))
            .collect();
        if by_sf.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let integration = self.salesforce.user_id().await.ok();
        let ids: Vec<String> = by_sf.keys().map(|i| soql_quote(i)).collect();
        let rows = self
            .salesforce
            .query(&format!(
                "SELECT Id, Username, ProfileId FROM User WHERE Id IN ({})",
                ids.join(", ")
            ))
            .await?;
        let admin_profile = self
            .salesforce
            .query("SELECT Id FROM Profile WHERE Name = 'System Administrator'")
            .await?
            .first()
            .and_then(|r| r.get("Id").and_then(Value::as_str).map(str::to_string));
        let mut admins_leaving: Vec<String> = Vec::new();
        for r in &rows {
            let Some(id) = r.get("Id").and_then(Value::as_str) else {
                continue;
            };
            let Some(entra) = by_sf.get(id) else { continue };
            let username = r.get("Username").and_then(Value::as_str).unwrap_or("");
            if integration.as_deref() == Some(id) {
                out.push((
                    entra.to_string(),
                    "the integration user provisor logs in as".into(),
                ));
            } else if self
                .safety
                .break_glass
                .iter()
                .any(|b| b.eq_ignore_ascii_case(username))
            {
                out.push((
                    entra.to_string(),
                    format!("{username} is a break-glass account (safety.break_glass)"),
                ));
            } else if admin_profile.is_some()
                && r.get("ProfileId").and_then(Value::as_str) == admin_profile.as_deref()
            {
                admins_leaving.push(id.to_string());
            }
        }
        if let (Some(profile), false) = (admin_profile, admins_leaving.is_empty()) {
            let active: Vec<String> = self
                .salesforce
                .query(&format!(
                    "SELECT Id FROM User WHERE IsActive = true AND ProfileId = {}",
                    soql_quote(&profile)
                ))
                .await?
                .iter()
                .filter_map(|r| r.get("Id").and_then(Value::as_str).map(str::to_string))
                .collect();
            let staying = active
                .iter()
                .filter(|a| !admins_leaving.contains(a))
                .count();
            if staying == 0 {
                // Keep one: the org must not lose its last administrator.
                admins_leaving.sort();
                if let Some(keep) = admins_leaving.first()
                    && let Some(entra) = by_sf.get(keep.as_str())
                {
                    out.push((
                        entra.to_string(),
                        "the last active System Administrator".into(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// An active Salesforce user no Entra user is linked to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Orphan {
    pub id: String,
    pub username: String,
    pub profile: Option<String>,
    /// The user licence its profile takes a seat of.
    pub licence: Option<String>,
}

impl Engine {
    /// Active standard users in Salesforce that provisor has not linked to
    /// any Entra user (left over, made by hand, or never matched), with the
    /// licence each holds. The integration user is left out.
    pub async fn orphans(&self) -> Result<Vec<Orphan>, SyncError> {
        let links = self.store.links().await?;
        let linked: HashSet<&String> = links.values().collect();
        let integration = self.salesforce.user_id().await.ok();
        let mut licences: HashMap<String, String> = HashMap::new();
        for l in self
            .salesforce
            .query("SELECT Id, Name FROM UserLicense")
            .await?
        {
            if let (Some(id), Some(name)) = (
                l.get("Id").and_then(Value::as_str),
                l.get("Name").and_then(Value::as_str),
            ) {
                licences.insert(id.into(), name.into());
            }
        }
        let mut profiles: HashMap<String, (String, Option<String>)> = HashMap::new();
        for p in self
            .salesforce
            .query("SELECT Id, Name, UserLicenseId FROM Profile")
            .await?
        {
            if let (Some(id), Some(name)) = (
                p.get("Id").and_then(Value::as_str),
                p.get("Name").and_then(Value::as_str),
            ) {
                let lic = p
                    .get("UserLicenseId")
                    .and_then(Value::as_str)
                    .and_then(|l| licences.get(l).cloned());
                profiles.insert(id.into(), (name.into(), lic));
            }
        }
        let mut out = Vec::new();
        for u in self
            .salesforce
            .query("SELECT Id, Username, ProfileId FROM User WHERE IsActive = true AND UserType = 'Standard'")
            .await?
        {
            let Some(id) = u.get("Id").and_then(Value::as_str) else {
                continue;
            };
            if linked.contains(&id.to_string()) || integration.as_deref() == Some(id) {
                continue;
            }
            let profile = u
                .get("ProfileId")
                .and_then(Value::as_str)
                .and_then(|p| profiles.get(p));
            out.push(Orphan {
                id: id.into(),
                username: u
                    .get("Username")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                profile: profile.map(|p| p.0.clone()),
                licence: profile.and_then(|p| p.1.clone()),
            });
        }
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }
}
