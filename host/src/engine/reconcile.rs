//! Drift: every managed Salesforce user compared with what the rules want
//! now, whether or not Entra changed. The report says who, which field,
//! what was expected, what was found and why it matters; `--fix` plans and
//! applies the corrections through the normal cycle (guard included).

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::Serialize;

use super::plan::ActionKind;
use super::{Engine, Observer, Planned, SyncError, new_cycle_id};
use crate::model::FieldValue;

/// One difference between Salesforce and the desired state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    pub entra_id: String,
    pub upn: Option<String>,
    pub sf_id: Option<String>,
    /// A User field, `Profile`, `Role`, `IsActive`, `IsFrozen`, or an
    /// access grant as `<kind>:<name>`.
    pub field: String,
    pub expected: String,
    pub found: String,
    pub why: String,
}

/// The drift of every managed user.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftReport {
    pub cycle: String,
    /// Managed users compared.
    pub users: usize,
    pub drift: Vec<Drift>,
}

fn text(v: &FieldValue) -> String {
    match v {
        FieldValue::Null => String::new(),
        FieldValue::Text(t) => t.clone(),
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::Number(n) => n.to_string(),
    }
}

impl Engine {
    /// Compares every managed user with the rules (reads only). With
    /// `fix`, marks them for planning and runs a cycle, which corrects
    /// enforced fields through the same guard as any other plan.
    pub async fn reconcile(&self, fix: bool, obs: &dyn Observer) -> Result<DriftReport, SyncError> {
        let cycle = new_cycle_id();
        let users = self.store.managed_users().await?;
        let pending: HashSet<String> = self
            .store
            .dirty_users()
            .await?
            .into_iter()
            .map(|d| d.user.id)
            .collect();
        let count = users.len();
        let Planned { plan, .. } = self
            .plan_users(&cycle, users, obs, &mut super::CycleMemo::default())
            .await?;
        let mut drift = Vec::new();
        for a in &plan.actions {
            let why = if pending.contains(&a.entra_id) {
                "changed in Entra since the last sync (not applied yet)".to_string()
            } else {
                "enforced by the rule pack; differs in Salesforce (hand edit?)".to_string()
            };
            let mut push = |field: String, expected: String, found: String| {
                drift.push(Drift {
                    entra_id: a.entra_id.clone(),
                    upn: a.upn.clone(),
                    sf_id: a.sf_id.clone(),
                    field,
                    expected,
                    found,
                    why: why.clone(),
                });
            };
            match &a.kind {
                ActionKind::Update { changes } | ActionKind::Reactivate { changes } => {
                    if matches!(a.kind, ActionKind::Reactivate { .. }) {
                        push("IsActive".into(), "true".into(), "false".into());
                    }
                    for (field, c) in changes {
                        push(field.clone(), text(&c.to), text(&c.from));
                    }
                }
                ActionKind::Deactivate => push("IsActive".into(), "false".into(), "true".into()),
                ActionKind::Handover => push(
                    "OwnerId".into(),
                    "open records handed over".into(),
                    "still owned by the inactive user".into(),
                ),
                ActionKind::Freeze { .. } => push("IsFrozen".into(), "true".into(), "false".into()),
                ActionKind::Unfreeze { .. } => {
                    push("IsFrozen".into(), "false".into(), "true".into())
                }
                ActionKind::Grant { access, name } => push(
                    format!("{}:{name}", access.label()),
                    "assigned".into(),
                    "not assigned".into(),
                ),
                ActionKind::Revoke { access, name, .. } => push(
                    format!("{}:{name}", access.label()),
                    "not assigned".into(),
                    "assigned".into(),
                ),
                ActionKind::Create { .. } => push(
                    "Id".into(),
                    "a Salesforce user".into(),
                    "none (the linked user is gone)".into(),
                ),
                ActionKind::Link { .. } => {}
            }
        }
        if fix {
            self.store.mark_managed_dirty().await?;
            self.sync_once(obs).await?;
        }
        Ok(DriftReport {
            cycle,
            users: count,
            drift,
        })
    }
}

impl DriftReport {
    /// CSV with a header row.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "entra_id", "upn", "sf_id", "field", "expected", "found", "why",
        ]);
        for d in &self.drift {
            let _ = w.write_record([
                d.entra_id.as_str(),
                d.upn.as_deref().unwrap_or(""),
                d.sf_id.as_deref().unwrap_or(""),
                d.field.as_str(),
                d.expected.as_str(),
                d.found.as_str(),
                d.why.as_str(),
            ]);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// A Markdown table for people.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut out = format!(
            "# Drift report {}\n\n{} managed users compared, {} differences.\n\n",
            self.cycle,
            self.users,
            self.drift.len()
        );
        if self.drift.is_empty() {
            return out;
        }
        out.push_str("| user | field | expected | found | why |\n|---|---|---|---|---|\n");
        for d in &self.drift {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                esc(d.upn.as_deref().unwrap_or(&d.entra_id)),
                esc(&d.field),
                esc(&d.expected),
                esc(&d.found),
                esc(&d.why)
            );
        }
        out
    }
}
