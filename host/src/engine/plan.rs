//! The plan: plain data saying what will change in Salesforce and why.
//! It serialises to JSON for machines and renders terraform-like for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{Access, FieldValue};

/// One field's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub from: FieldValue,
    pub to: FieldValue,
}

/// What to do to one Salesforce user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionKind {
    /// Record that an existing Salesforce user is this Entra user's (no write).
    Link { matched_by: String },
    /// Create the user with these fields (ProfileId resolved from `profile`).
    Create {
        fields: BTreeMap<String, FieldValue>,
        profile: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    /// Change these fields of an active user.
    Update { changes: BTreeMap<String, Change> },
    /// Set IsActive = false.
    Deactivate,
    /// Set `UserLogin.IsFrozen = true`: blocks logins at once, before (and
    /// regardless of) deactivation.
    Freeze { login_id: String },
    /// Set `UserLogin.IsFrozen = false`.
    Unfreeze { login_id: String },
    /// Grant access (a permission set, group, licence or queue, by API
    /// name) by creating its assignment record.
    Grant { access: Access, name: String },
    /// Delete an assignment record provisor made, or one of access the
    /// pack owns. Hand-made assignments are never revoked otherwise.
    Revoke {
        access: Access,
        name: String,
        assignment_id: String,
    },
    /// Set IsActive = true, with any other changes that are due.
    Reactivate { changes: BTreeMap<String, Change> },
    /// Hand over the open records of a user already inactive in Salesforce
    /// when provisor took it over (by the pack's `on-leave`); no User write.
    Handover,
}

impl ActionKind {
    /// Short name used in the outbox and audit events.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Link { .. } => "link",
            Self::Create { .. } => "create",
            Self::Update { .. } => "update",
            Self::Deactivate => "deactivate",
            Self::Reactivate { .. } => "reactivate",
            Self::Freeze { .. } => "freeze",
            Self::Unfreeze { .. } => "unfreeze",
            Self::Grant { .. } => "grant",
            Self::Revoke { .. } => "revoke",
            Self::Handover => "handover",
        }
    }

    /// True if applying it writes to Salesforce.
    pub fn writes(&self) -> bool {
        !matches!(self, Self::Link { .. })
    }
}

/// One planned action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub entra_id: String,
    /// The user's UPN, for people reading the plan.
    pub upn: Option<String>,
    /// The Salesforce user, when one exists already.
    pub sf_id: Option<String>,
    #[serde(flatten)]
    pub kind: ActionKind,
    /// Why, in words.
    pub reason: String,
}

/// What the plan was computed from: the delta links whose changes it covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Basis {
    pub users_delta_link: Option<String>,
    pub groups_delta_link: Option<String>,
}

/// A plan for one cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub cycle: String,
    pub basis: Basis,
    pub actions: Vec<Action>,
}

/// Counts per action kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounts {
    pub create: usize,
    pub update: usize,
    pub deactivate: usize,
    pub reactivate: usize,
    pub link: usize,
    pub freeze: usize,
    pub unfreeze: usize,
    /// Access granted (permission sets, groups, licences, queues).
    pub grant: usize,
    /// Access revoked.
    pub revoke: usize,
    /// Already-inactive users whose open records are handed over.
    pub handover: usize,
}

impl Plan {
    /// (Entra id, Salesforce id) of the actions `keep` selects that name a
    /// Salesforce user.
    pub fn accounts_where(&self, keep: impl Fn(&Action) -> bool) -> Vec<(String, String)> {
        self.actions
            .iter()
            .filter(|a| keep(a))
            .filter_map(|a| Some((a.entra_id.clone(), a.sf_id.clone()?)))
            .collect()
    }

    /// Counts per action kind.
    pub fn counts(&self) -> PlanCounts {
        let mut c = PlanCounts::default();
        for a in &self.actions {
            match a.kind {
                ActionKind::Link { .. } => c.link += 1,
                ActionKind::Create { .. } => c.create += 1,
                ActionKind::Update { .. } => c.update += 1,
                ActionKind::Deactivate => c.deactivate += 1,
                ActionKind::Reactivate { .. } => c.reactivate += 1,
                ActionKind::Freeze { .. } => c.freeze += 1,
                ActionKind::Unfreeze { .. } => c.unfreeze += 1,
                ActionKind::Grant { .. } => c.grant += 1,
                ActionKind::Revoke { .. } => c.revoke += 1,
                ActionKind::Handover => c.handover += 1,
            }
        }
        c
    }

    /// Terraform-like rendering for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.actions.is_empty() {
            out.push_str("No changes. Salesforce matches Entra ID.\n");
            return out;
        }
        let _ = writeln!(out, "provisor plan for cycle {}:\n", self.cycle);
        for a in &self.actions {
            let who = a.upn.as_deref().unwrap_or(&a.entra_id);
            let sf = a.sf_id.as_deref().unwrap_or("(new)");
            match &a.kind {
                ActionKind::Link { matched_by } => {
                    let _ = writeln!(
                        out,
                        "  = link       User {sf}  <- {who}  (matched by {matched_by})"
                    );
                }
                ActionKind::Create {
                    fields,
                    profile,
                    role,
                } => {
                    let _ = writeln!(out, "  + create     User {who}");
                    for (k, v) in fields {
                        let _ = writeln!(out, "      {k:<22} = {}", v.render());
                    }
                    let _ = writeln!(out, "      {:<22} = {profile:?}", "Profile");
                    if let Some(role) = role {
                        let _ = writeln!(out, "      {:<22} = {role:?}", "Role");
                    }
                }
                ActionKind::Update { changes } => {
                    let _ = writeln!(out, "  ~ update     User {sf}  ({who})");
                    render_changes(&mut out, changes);
                }
                ActionKind::Handover => {
                    let _ = writeln!(
                        out,
                        "  > handover   open records of inactive User {sf}  ({who})"
                    );
                }
                ActionKind::Deactivate => {
                    let _ = writeln!(out, "  - deactivate User {sf}  ({who})");
                    let _ = writeln!(out, "      {:<22} = true -> false", "IsActive");
                }
                ActionKind::Grant { access, name } => {
                    let _ = writeln!(out, "  + grant      {} {name}  -> {who}", access.object());
                }
                ActionKind::Revoke {
                    access,
                    name,
                    assignment_id,
                } => {
                    let _ = writeln!(
                        out,
                        "  - revoke     {} {name}  from {who}  ({} {assignment_id})",
                        access.object(),
                        access.assignment_object()
                    );
                }
                ActionKind::Freeze { login_id } => {
                    let _ = writeln!(out, "  * freeze     User {sf}  ({who})");
                    let _ = writeln!(
                        out,
                        "      {:<22} = false -> true  (UserLogin {login_id})",
                        "IsFrozen"
                    );
                }
                ActionKind::Unfreeze { login_id } => {
                    let _ = writeln!(out, "  * unfreeze   User {sf}  ({who})");
                    let _ = writeln!(
                        out,
                        "      {:<22} = true -> false  (UserLogin {login_id})",
                        "IsFrozen"
                    );
                }
                ActionKind::Reactivate { changes } => {
                    let _ = writeln!(out, "  ^ reactivate User {sf}  ({who})");
                    let _ = writeln!(out, "      {:<22} = false -> true", "IsActive");
                    render_changes(&mut out, changes);
                }
            }
            let _ = writeln!(out, "      # {}", a.reason);
        }
        let c = self.counts();
        let _ = writeln!(
            out,
            "\nPlan: {} to create, {} to update, {} to freeze, {} to deactivate, {} to reactivate, {} to unfreeze, {} grants of access, {} revocations, {} to link.",
            c.create,
            c.update,
            c.freeze,
            c.deactivate,
            c.reactivate,
            c.unfreeze,
            c.grant,
            c.revoke,
            c.link
        );
        out
    }
}

fn render_changes(out: &mut String, changes: &BTreeMap<String, Change>) {
    for (k, c) in changes {
        let _ = writeln!(
            out,
            "      {k:<22} = {} -> {}",
            c.from.render(),
            c.to.render()
        );
    }
}

/// Why a plan file cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("{file}: not a provisor plan (truncated or not one): {message}")]
    Parse { file: String, message: String },
    #[error("{file}: format {found:?} is not {PLAN_FORMAT:?}")]
    Format { file: String, found: String },
    #[error("{file}: the plan was edited after it was made (its digest does not match)")]
    Edited { file: String },
}

/// The format tag of plan files.
pub const PLAN_FORMAT: &str = "provisor-plan/1";

/// A plan as written by `provisor plan --out`: the plan and a digest of it,
/// so an edited file is refused.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    format: String,
    /// SHA-256 of the plan's JSON.
    digest: String,
    plan: Plan,
}

fn digest(plan: &Plan) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_string(plan).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

impl Plan {
    /// The plan as a file: JSON with its format and digest.
    pub fn to_file(&self) -> String {
        let f = PlanFile {
            format: PLAN_FORMAT.into(),
            digest: digest(self),
            plan: self.clone(),
        };
        serde_json::to_string_pretty(&f).unwrap_or_default() + "\n"
    }

    /// Reads a plan file, refusing one that is truncated, of another
    /// format, or edited since it was written. `file` names it in errors.
    pub fn from_file(file: &str, text: &str) -> Result<Plan, PlanFileError> {
        let f: PlanFile = serde_json::from_str(text).map_err(|e| PlanFileError::Parse {
            file: file.into(),
            message: e.to_string(),
        })?;
        if f.format != PLAN_FORMAT {
            return Err(PlanFileError::Format {
                file: file.into(),
                found: f.format,
            });
        }
        if digest(&f.plan) != f.digest {
            return Err(PlanFileError::Edited { file: file.into() });
        }
        Ok(f.plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            cycle: "c1".into(),
            basis: Basis {
                users_delta_link: Some("https://graph/delta?token=1".into()),
                groups_delta_link: None,
            },
            actions: vec![Action {
                entra_id: "u1".into(),
                upn: Some("a@x".into()),
                sf_id: Some("005A".into()),
                kind: ActionKind::Deactivate,
                reason: "leaver".into(),
            }],
        }
    }

    #[test]
    fn plan_files_round_trip_and_refuse_edits_and_truncation() {
        let text = plan().to_file();
        assert_eq!(Plan::from_file("p.json", &text).expect("reads"), plan());
        let edited = text.replace("\"deactivate\"", "\"reactivate\", \"changes\": {}");
        let e = Plan::from_file("p.json", &edited).expect_err("edited");
        assert!(matches!(e, PlanFileError::Edited { .. }), "{e}");
        assert!(e.to_string().contains("p.json"));
        let e = Plan::from_file("p.json", &text[..text.len() / 2]).expect_err("truncated");
        assert!(matches!(e, PlanFileError::Parse { .. }), "{e}");
        let other = text.replace(PLAN_FORMAT, "provisor-plan/0");
        assert!(matches!(
            Plan::from_file("p.json", &other),
            Err(PlanFileError::Format { .. })
        ));
    }
}
