//! After a leaver's deactivation: what provisor granted is removed
//! (Salesforce keeps permission set, permission set group, permission set
//! licence assignments and queue memberships on an inactive user, and a
//! permission set licence seat stays taken) and the seats freed are
//! recorded for the seats-freed report (`provisor status`).
//!
//! The work is found from the store each cycle (deactivated leavers with
//! grants left, or whose seat is not yet counted), so a crash or a refusal
//! part-way is picked up by the next cycle.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{CycleReport, Engine, SyncError};
use crate::audit::AuditEvent;
use crate::model::Access;
use crate::salesforce::SfError;

impl Engine {
    /// Releases the access and counts the seats of deactivated leavers.
    /// Returns the error that should stop the cycle's writes (the API
    /// limit), if any; other failures are audited and retried next cycle.
    pub(super) async fn release_leavers(
        &self,
        cycle: &str,
        report: &mut CycleReport,
    ) -> Result<Option<SfError>, SyncError> {
        let leavers = self.store.leavers_to_release().await?;
        if leavers.is_empty() {
            return Ok(None);
        }
        let mut events = Vec::new();
        let mut seats: Vec<(String, String, &str, String)> = Vec::new();
        // The user licence each deactivation freed.
        let uncounted: Vec<String> = leavers
            .iter()
            .filter(|(_, _, n)| *n)
            .map(|(_, s, _)| s.clone())
            .collect();
        if !uncounted.is_empty() {
            let entra_of: HashMap<&str, &str> = leavers
                .iter()
                .map(|(e, s, _)| (s.as_str(), e.as_str()))
                .collect();
            match self
                .query_in(&uncounted, |list| {
                    format!("SELECT Id, IsActive, Profile.UserLicense.Name FROM User WHERE Id IN ({list})")
                })
                .await
            {
                Ok(rows) => {
                    for r in rows {
                        // Reactivated by hand meanwhile: no seat was freed.
                        if r.get("IsActive") == Some(&Value::Bool(true)) {
                            continue;
                        }
                        let (Some(id), Some(licence)) = (
                            r.get("Id").and_then(Value::as_str),
                            r.get("Profile")
                                .and_then(|p| p.get("UserLicense"))
                                .and_then(|l| l.get("Name"))
                                .and_then(Value::as_str),
                        ) else {
                            continue;
                        };
                        if let Some(e) = entra_of.get(id) {
                            seats.push((
                                e.to_string(),
                                id.to_string(),
                                "user_licence",
                                licence.to_string(),
                            ));
                        }
                    }
                }
                Err(e) if e.is_limit() => return Ok(Some(e)),
                Err(e) => tracing::warn!(error = %e, "cannot read the licences of deactivated leavers"),
            }
        }
        // What provisor granted them, removed in the reverse order of
        // grants (a permission set licence after the sets that need it).
        let ids: Vec<String> = leavers.iter().map(|(e, _, _)| e.clone()).collect();
        let sf_of: HashMap<&str, &str> = leavers
            .iter()
            .map(|(e, s, _)| (e.as_str(), s.as_str()))
            .collect();
        let grants = self.store.managed_grants_of(&ids).await?;
        let mut stop = None;
        'kinds: for kind in Access::ALL.into_iter().rev() {
            let list: Vec<(&str, &str, &str)> = grants
                .iter()
                .flat_map(|(e, g)| {
                    g.iter()
                        .filter(move |((a, _), _)| *a == kind)
                        .map(move |((_, name), id)| (e.as_str(), name.as_str(), id.as_str()))
                })
                .collect();
            for chunk in list.chunks(self.cfg.batch_size.clamp(1, 200)) {
                let del: Vec<String> = chunk.iter().map(|(_, _, id)| id.to_string()).collect();
                let results = match self.salesforce.delete_many(&del).await {
                    Ok(r) => r,
                    Err(e) if e.is_limit() => {
                        stop = Some(e);
                        break 'kinds;
                    }
                    Err(e) => {
                        for (entra, name, _) in chunk {
                            events.push(release_failed(entra, &sf_of, kind, name, &e.to_string()));
                        }
                        continue;
                    }
                };
                for ((entra, name, assignment), r) in chunk.iter().zip(results) {
                    let removal = super::apply::Removal {
                        entra_id: entra,
                        sf_id: sf_of.get(entra).copied(),
                        kind,
                        name,
                        assignment,
                        reason: "released after deactivation",
                    };
                    if self
                        .settle_removal(&r, &removal, report, &mut events)
                        .await?
                    {
                        if kind == Access::PermissionSetLicense
                            && let Some(sf) = sf_of.get(entra)
                        {
                            seats.push((
                                entra.to_string(),
                                sf.to_string(),
                                "permission_set_license",
                                name.to_string(),
                            ));
                        }
                    } else {
                        events.push(release_failed(entra, &sf_of, kind, name, &r.error_text()));
                    }
                }
            }
        }
        for (entra, sf, kind, licence) in &seats {
            events.push(AuditEvent {
                event: "leaver.seat_released".into(),
                entra_id: Some(entra.clone()),
                sf_id: Some(sf.clone()),
                detail: json!({"kind": kind, "licence": licence}),
            });
        }
        report.seats_released += seats.len();
        self.store.add_released_seats(&seats).await?;
        self.store.append_audit(cycle, &events).await?;
        Ok(stop)
    }
}

fn release_failed(
    entra: &str,
    sf_of: &HashMap<&str, &str>,
    kind: Access,
    name: &str,
    error: &str,
) -> AuditEvent {
    AuditEvent {
        event: "leaver.release_failed".into(),
        entra_id: Some(entra.to_string()),
        sf_id: sf_of.get(entra).map(|s| s.to_string()),
        detail: json!({kind.key(): name, "error": error, "retried": "next cycle"}),
    }
}
