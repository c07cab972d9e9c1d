//! Access granted through assignment records: permission sets, permission
//! set groups, permission set licences and queue memberships.
//!
//! The catalog (what exists in the org, by API name) is read once per
//! cycle, only for the kinds the pack or the store uses. Each user's grants
//! are diffed against what the rules want: what is missing is granted,
//! and an assignment is revoked only when provisor made it or the pack
//! owns what it grants, so an admin's hand-made assignments survive.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::SfRecord;
use crate::model::{Access, DesiredUser};
use crate::rules::AccessClaims;
use crate::salesforce::{SalesforceClient, SfError};
use crate::store::ManagedGrants;

/// Seats of one permission set licence: (name, total, used).
type Seats = (String, i64, i64);

/// What exists in the org, per kind of access, read once per cycle.
#[derive(Debug, Default, Clone)]
pub(crate) struct Catalog {
    /// API name -> Id, per kind.
    ids: HashMap<Access, HashMap<String, String>>,
    /// Permission set Id -> the permission set licence Id it needs.
    needs_licence: HashMap<String, String>,
    /// Permission set licence Id -> seats.
    seats: HashMap<String, Seats>,
    /// Kinds that were read (the others are not in use).
    read: HashSet<Access>,
}

impl Catalog {
    /// Reads the catalog for `kinds`. Permission sets owned by a profile,
    /// and the aggregate permission sets behind groups, are not grantable
    /// by themselves and are left out.
    pub(crate) async fn read(
        sf: &SalesforceClient,
        kinds: &HashSet<Access>,
    ) -> Result<Self, SfError> {
        let mut c = Self::default();
        for &kind in kinds {
            let (soql, name_field) = match kind {
                Access::PermissionSet => (
                    "SELECT Id, Name, LicenseId FROM PermissionSet WHERE IsOwnedByProfile = false AND PermissionSetGroupId = null",
                    "Name",
                ),
                Access::PermissionSetGroup => (
                    "SELECT Id, DeveloperName, Status FROM PermissionSetGroup",
                    "DeveloperName",
                ),
                Access::PermissionSetLicense => (
                    "SELECT Id, DeveloperName, TotalLicenses, UsedLicenses FROM PermissionSetLicense",
                    "DeveloperName",
                ),
                Access::Queue => (
                    "SELECT Id, DeveloperName FROM Group WHERE Type = 'Queue'",
                    "DeveloperName",
                ),
            };
            let mut names = HashMap::new();
            for r in sf.query(soql).await? {
                let (Some(id), Some(name)) = (text(&r, "Id"), text(&r, name_field)) else {
                    continue;
                };
                if kind == Access::PermissionSet
                    && let Some(l) = text(&r, "LicenseId")
                {
                    c.needs_licence.insert(id.to_string(), l.to_string());
                }
                if kind == Access::PermissionSetLicense {
                    let n = |k: &str| r.get(k).and_then(Value::as_i64).unwrap_or(0);
                    c.seats.insert(
                        id.to_string(),
                        (name.to_string(), n("TotalLicenses"), n("UsedLicenses")),
                    );
                }
                names.insert(name.to_string(), id.to_string());
            }
            c.ids.insert(kind, names);
            c.read.insert(kind);
        }
        // A permission set that needs a licence pulls the licence kind in.
        if !c.needs_licence.is_empty() && !c.read.contains(&Access::PermissionSetLicense) {
            let more = Box::pin(Self::read(
                sf,
                &HashSet::from([Access::PermissionSetLicense]),
            ))
            .await?;
            c.ids.extend(more.ids);
            c.seats = more.seats;
            c.read.insert(Access::PermissionSetLicense);
        }
        Ok(c)
    }

    /// The Id of a named grant.
    pub(crate) fn id(&self, kind: Access, name: &str) -> Option<&String> {
        self.ids.get(&kind)?.get(name)
    }

    fn name_of(&self, kind: Access, id: &str) -> Option<&str> {
        self.ids
            .get(&kind)?
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.as_str())
    }

    /// What the user should hold, checked against the org, with the
    /// permission set licences that wanted permission sets need added.
    pub(crate) fn wanted(&self, want: &DesiredUser) -> Result<BTreeSet<(Access, String)>, String> {
        let mut out = BTreeSet::new();
        for kind in Access::ALL {
            for name in want.grants(kind) {
                let Some(id) = self.id(kind, name) else {
                    return Err(match kind {
                        Access::PermissionSet => format!(
                            "permission set {name:?} does not exist in Salesforce (or is owned by a profile)"
                        ),
                        _ => format!("{} {name:?} does not exist in Salesforce", kind.label()),
                    });
                };
                if kind == Access::PermissionSet
                    && let Some(l) = self.needs_licence.get(id)
                    && let Some(lname) = self.name_of(Access::PermissionSetLicense, l)
                {
                    out.insert((Access::PermissionSetLicense, lname.to_string()));
                }
                out.insert((kind, name.clone()));
            }
        }
        Ok(out)
    }

    /// Takes a seat of a permission set licence, or says why there is none.
    pub(crate) fn take_seat(&mut self, licence: &str) -> Result<(), String> {
        let Some(id) = self.id(Access::PermissionSetLicense, licence).cloned() else {
            return Ok(());
        };
        let Some((name, total, used)) = self.seats.get_mut(&id) else {
            return Ok(());
        };
        if *used < *total {
            *used += 1;
            Ok(())
        } else {
            Err(format!(
                "waiting for a {name} permission set licence: all {total} seats are used"
            ))
        }
    }

    /// The licence a permission set needs, by name.
    pub(crate) fn licence_of(&self, permission_set: &str) -> Option<&str> {
        let id = self.id(Access::PermissionSet, permission_set)?;
        let l = self.needs_licence.get(id)?;
        self.name_of(Access::PermissionSetLicense, l)
    }

    /// Current grants of the kinds in use for `users` (Salesforce ids):
    /// user id -> (kind, name, assignment id). Profile-owned permission
    /// sets are left out: they come with the profile.
    pub(crate) async fn current(
        &self,
        users: &[String],
        engine: &super::Engine,
    ) -> Result<HashMap<String, Vec<Held>>, SfError> {
        let mut out: HashMap<String, Vec<Held>> = HashMap::new();
        let mut push = |user: &str, kind: Access, name: &str, id: &str| {
            out.entry(user.to_string()).or_default().push(Held {
                access: kind,
                name: name.to_string(),
                assignment_id: id.to_string(),
            });
        };
        if self.read.contains(&Access::PermissionSet)
            || self.read.contains(&Access::PermissionSetGroup)
        {
            let rows = engine
                .query_in(users, |list| format!("SELECT Id, AssigneeId, PermissionSetId, PermissionSetGroupId FROM PermissionSetAssignment WHERE AssigneeId IN ({list}) AND PermissionSet.IsOwnedByProfile = false"))
                .await?;
            for r in rows {
                let (Some(id), Some(user)) = (text(&r, "Id"), text(&r, "AssigneeId")) else {
                    continue;
                };
                let found = match text(&r, "PermissionSetGroupId") {
                    Some(g) => self
                        .name_of(Access::PermissionSetGroup, g)
                        .map(|n| (Access::PermissionSetGroup, n)),
                    None => text(&r, "PermissionSetId").and_then(|p| {
                        self.name_of(Access::PermissionSet, p)
                            .map(|n| (Access::PermissionSet, n))
                    }),
                };
                if let Some((kind, name)) = found {
                    push(user, kind, name, id);
                }
            }
        }
        if self.read.contains(&Access::PermissionSetLicense) {
            let rows = engine
                .query_in(users, |list| format!("SELECT Id, AssigneeId, PermissionSetLicenseId FROM PermissionSetLicenseAssign WHERE AssigneeId IN ({list})"))
                .await?;
            for r in rows {
                if let (Some(id), Some(user), Some(name)) = (
                    text(&r, "Id"),
                    text(&r, "AssigneeId"),
                    text(&r, "PermissionSetLicenseId")
                        .and_then(|l| self.name_of(Access::PermissionSetLicense, l)),
                ) {
                    push(user, Access::PermissionSetLicense, name, id);
                }
            }
        }
        if self.read.contains(&Access::Queue) {
            let rows = engine
                .query_in(users, |list| format!("SELECT Id, GroupId, UserOrGroupId FROM GroupMember WHERE UserOrGroupId IN ({list}) AND Group.Type = 'Queue'"))
                .await?;
            for r in rows {
                if let (Some(id), Some(user), Some(name)) = (
                    text(&r, "Id"),
                    text(&r, "UserOrGroupId"),
                    text(&r, "GroupId").and_then(|g| self.name_of(Access::Queue, g)),
                ) {
                    push(user, Access::Queue, name, id);
                }
            }
        }
        Ok(out)
    }
}

/// One assignment a user holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub access: Access,
    pub name: String,
    pub assignment_id: String,
}

/// The kinds to read this cycle: what the pack references, what the rules
/// asked for, and what provisor granted before (so it can be revoked).
pub(crate) fn kinds_in_use<'a>(
    claims: &AccessClaims,
    wants: impl Iterator<Item = &'a DesiredUser>,
    managed: &HashMap<String, ManagedGrants>,
) -> HashSet<Access> {
    let mut kinds: HashSet<Access> = Access::ALL
        .into_iter()
        .filter(|&k| !claims.referenced(k).is_empty())
        .collect();
    for w in wants {
        kinds.extend(Access::ALL.into_iter().filter(|&k| !w.grants(k).is_empty()));
    }
    for m in managed.values() {
        kinds.extend(m.keys().map(|(k, _)| *k));
    }
    kinds
}

/// The diff for one user: grants to make (in kind order) and assignments
/// to revoke. `mine` is what provisor granted this user before.
pub(crate) fn diff(
    wanted: &BTreeSet<(Access, String)>,
    held: &[Held],
    mine: Option<&ManagedGrants>,
    claims: &AccessClaims,
) -> (Vec<(Access, String)>, Vec<Held>) {
    let grant = wanted
        .iter()
        .filter(|(k, n)| !held.iter().any(|h| h.access == *k && &h.name == n))
        .cloned()
        .collect();
    let revoke = held
        .iter()
        .filter(|h| !wanted.contains(&(h.access, h.name.clone())))
        .filter(|h| {
            mine.is_some_and(|m| m.contains_key(&(h.access, h.name.clone())))
                || claims.owned(h.access).contains(&h.name)
        })
        .cloned()
        .collect();
    (grant, revoke)
}

fn text<'a>(r: &'a SfRecord, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(kind: Access, name: &str) -> Held {
        Held {
            access: kind,
            name: name.into(),
            assignment_id: format!("id-{name}"),
        }
    }

    #[test]
    fn diff_keeps_hand_made_and_revokes_ours_and_owned() {
        let wanted = BTreeSet::from([(Access::PermissionSet, "Sales".to_string())]);
        let held = vec![
            held(Access::PermissionSet, "HandMade"),
            held(Access::PermissionSet, "Ours"),
            held(Access::Queue, "Owned_Queue"),
        ];
        let mine = ManagedGrants::from([(
            (Access::PermissionSet, "Ours".to_string()),
            "id-Ours".to_string(),
        )]);
        let claims = AccessClaims {
            owns_queues: vec!["Owned_Queue".into()],
            ..Default::default()
        };
        let (grant, revoke) = diff(&wanted, &held, Some(&mine), &claims);
        assert_eq!(grant, vec![(Access::PermissionSet, "Sales".to_string())]);
        let names: Vec<&str> = revoke.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["Ours", "Owned_Queue"]);
    }

    #[test]
    fn wanted_adds_the_licence_a_permission_set_needs() {
        let mut c = Catalog::default();
        c.ids.insert(
            Access::PermissionSet,
            HashMap::from([("CRM_Analytics".to_string(), "0PS1".to_string())]),
        );
        c.ids.insert(
            Access::PermissionSetLicense,
            HashMap::from([("EinsteinAnalyticsPlusPsl".to_string(), "0PL1".to_string())]),
        );
        c.needs_licence.insert("0PS1".into(), "0PL1".into());
        c.seats
            .insert("0PL1".into(), ("EinsteinAnalyticsPlusPsl".into(), 1, 0));
        let want = DesiredUser {
            fields: Default::default(),
            profile: None,
            role: None,
            permission_sets: vec!["CRM_Analytics".into()],
            permission_set_groups: vec![],
            permission_set_licenses: vec![],
            queues: vec![],
            active: true,
        };
        let w = c.wanted(&want).expect("wanted");
        let first = w.iter().next().expect("one");
        assert_eq!(first.0, Access::PermissionSetLicense, "licence sorts first");
        assert_eq!(w.len(), 2);
        assert!(c.take_seat("EinsteinAnalyticsPlusPsl").is_ok());
        let why = c
            .take_seat("EinsteinAnalyticsPlusPsl")
            .expect_err("no seat left");
        assert!(why.contains("all 1 seats are used"), "{why}");
        let bad = DesiredUser {
            queues: vec!["Nope".into()],
            ..want
        };
        assert!(c.wanted(&bad).is_err());
    }
}
