//! Applying a plan: links first (no write), then creates, then updates,
//! each batched into sObject Collections of at most `batch_size` records.
//! Every action is journaled in the outbox before it is sent and settled
//! with its result after.

use std::collections::HashMap;

use futures::StreamExt;

use serde_json::{Map, Value, json};

use super::{
    Action, ActionKind, CycleReport, Engine, Observer, Outcome, Plan, Progress, SyncError,
};
use crate::audit::AuditEvent;
use crate::model::Access;

/// One batch ready to send: its Collections records and outbox ids.
/// A grant ready to send: its action, the name granted, the assignment record.
type GrantRecord<'a> = (&'a Action, &'a String, Map<String, Value>);
use crate::salesforce::{RecordResult, SfError};

impl Engine {
    pub(super) async fn apply(
        &self,
        cycle: &str,
        plan: &Plan,
        refs: &super::Refs,
        outcomes: &mut HashMap<String, Outcome>,
        obs: &dyn Observer,
        report: &mut CycleReport,
    ) -> Result<Option<SfError>, SyncError> {
        let writes = plan.actions.iter().filter(|a| a.kind.writes()).count();
        obs.on(Progress::Applying { writes });

        // Links: confirmed by matching, recorded before any write depends on them.
        let mut events = Vec::new();
        let mut links: Vec<(&str, &str, &str)> = Vec::new();
        for a in plan.actions.iter().filter(|a| !a.kind.writes()) {
            if let (ActionKind::Link { matched_by }, Some(sf)) = (&a.kind, &a.sf_id) {
                links.push((&a.entra_id, sf, matched_by));
                report.linked += 1;
                events.push(AuditEvent {
                    event: "user.linked".into(),
                    entra_id: Some(a.entra_id.clone()),
                    sf_id: Some(sf.clone()),
                    detail: json!({"matched_by": matched_by, "upn": a.upn}),
                });
            }
        }
        self.store.set_links(&links).await?;
        self.store.append_audit(cycle, &events).await?;

        // Order matters: users exist before anything else touches them;
        // leavers are frozen before deactivation; returners are active again
        // before they are unfrozen.
        let select = |f: fn(&ActionKind) -> bool| -> Vec<&Action> {
            plan.actions.iter().filter(|a| f(&a.kind)).collect()
        };
        let creates = select(|k| matches!(k, ActionKind::Create { .. }));
        let freezes = select(|k| matches!(k, ActionKind::Freeze { .. }));
        let updates = select(|k| {
            matches!(
                k,
                ActionKind::Update { .. } | ActionKind::Deactivate | ActionKind::Reactivate { .. }
            )
        });
        let unfreezes = select(|k| matches!(k, ActionKind::Unfreeze { .. }));
        let size = self.cfg.batch_size.clamp(1, 200);
        let mut handed_over: std::collections::HashSet<String> = std::collections::HashSet::new();
        let concurrency = self.cfg.concurrency.clamp(1, 25);
        for (is_create, object, mut list) in [
            (true, "User", creates),
            (false, "UserLogin", freezes),
            (false, "User", updates),
            (false, "UserLogin", unfreezes),
        ] {
            if !is_create && object == "User" {
                // Frozen leavers' open records move before they are
                // deactivated; those whose records stay are not.
                self.end_sessions(cycle).await?;
                let mut held = self.reassign_leavers(cycle, plan, outcomes, report).await?;
                let blocked = self
                    .hold_blocked_leavers(cycle, plan, outcomes, &held)
                    .await?;
                held.extend(blocked);
                list.retain(|a| {
                    !(matches!(a.kind, ActionKind::Deactivate) && held.contains(&a.entra_id))
                });
            }
            // Up to `concurrency` Collections calls in flight at once, kept
            // full: a batch is journaled and sent as soon as another one's
            // result is in, and results are settled in the order sent
            // while the others are on the wire.
            let mut batches = list.chunks(size);
            let mut in_flight = futures::stream::FuturesOrdered::new();
            let mut stop: Option<SfError> = None;
            loop {
                while stop.is_none() && in_flight.len() < concurrency {
                    let Some(batch) = batches.next() else { break };
                    let records: Vec<Map<String, Value>> =
                        batch.iter().map(|a| record_for(a, refs)).collect();
                    let entries: Vec<(&str, &str, Value)> = batch
                        .iter()
                        .map(|a| {
                            (
                                a.entra_id.as_str(),
                                a.kind.name(),
                                serde_json::to_value(a).unwrap_or(Value::Null),
                            )
                        })
                        .collect();
                    let journal = self.store.journal_many(cycle, &entries).await?;
                    handed_over.extend(batch.iter().map(|a| a.entra_id.clone()));
                    crash_point("before_send");
                    in_flight.push_back(async move {
                        let sent = if is_create {
                            self.salesforce.create_many(object, &records).await
                        } else {
                            self.salesforce.update_many(object, &records).await
                        };
                        (batch, records, journal, sent)
                    });
                }
                let Some((batch, records, journal, sent)) = in_flight.next().await else {
                    break;
                };
                crash_point("after_send");
                match sent {
                    Ok(mut results) => {
                        if is_create {
                            self.retry_nickname_clashes(batch, &records, &mut results)
                                .await;
                        }
                        if let Some(q) = self
                            .settle_batch(cycle, batch, &journal, &results, outcomes, report)
                            .await?
                        {
                            stop.get_or_insert(q);
                        }
                    }
                    Err(e) if e.is_limit() => {
                        // Nothing was done: settle as deferred, stop below.
                        let msg = e.to_string();
                        let settled: Vec<(i64, &str, String)> = journal
                            .iter()
                            .map(|oid| (*oid, "deferred", msg.clone()))
                            .collect();
                        self.store.settle_many(&settled, &[], &[]).await?;
                        stop.get_or_insert(e);
                    }
                    Err(e) => {
                        // Whole request failed. If the outcome is unknown the
                        // records may exist: the users stay dirty and the next
                        // cycle looks them up by key before acting again.
                        let status = if e.outcome_unknown() {
                            "unknown"
                        } else {
                            "failed"
                        };
                        let msg = e.to_string();
                        let mut events = Vec::new();
                        let settled: Vec<(i64, &str, String)> = journal
                            .iter()
                            .map(|oid| (*oid, status, msg.clone()))
                            .collect();
                        self.store.settle_many(&settled, &[], &[]).await?;
                        for a in batch.iter() {
                            outcomes.entry(a.entra_id.clone()).or_default().failed =
                                Some(msg.clone());
                            events.push(AuditEvent {
                                event: format!("user.{}_{status}", a.kind.name()),
                                entra_id: Some(a.entra_id.clone()),
                                sf_id: a.sf_id.clone(),
                                detail: json!({"error": msg}),
                            });
                        }
                        self.store.append_audit(cycle, &events).await?;
                        if e.outcome_unknown() {
                            // Salesforce is unwell: stop writing this cycle.
                            stop.get_or_insert(e);
                        }
                    }
                }
                obs.on(Progress::Applied { n: batch.len() });
            }
            if let Some(e) = stop {
                if e.is_limit() {
                    // The org's API allocation is (nearly) spent: charge
                    // nobody an attempt and pick up on a later cycle.
                    for a in plan.actions.iter().filter(|a| a.kind.writes()) {
                        outcomes.entry(a.entra_id.clone()).or_default().deferred = true;
                    }
                    tracing::error!(error = %e, "Salesforce API limit: writes paused");
                    self.store
                        .append_audit(
                            cycle,
                            &[AuditEvent {
                                event: "salesforce.limit_reached".into(),
                                entra_id: None,
                                sf_id: None,
                                detail: json!({"error": e.to_string()}),
                            }],
                        )
                        .await?;
                } else {
                    // Users whose actions were never sent stay dirty
                    // without spending an attempt.
                    for a in plan.actions.iter().filter(|a| a.kind.writes()) {
                        if !handed_over.contains(&a.entra_id) {
                            outcomes.entry(a.entra_id.clone()).or_default().deferred = true;
                        }
                    }
                }
                return Ok(Some(e));
            }
        }
        self.apply_grants(cycle, plan, refs, outcomes, report).await
    }

    /// Grants and revocations of access, after the users exist (new users'
    /// ids come from the links made when they were created). Grants run
    /// kind by kind, permission set licences first; revocations in the
    /// reverse order, so a licence goes only after what needed it.
    async fn apply_grants(
        &self,
        cycle: &str,
        plan: &Plan,
        refs: &super::Refs,
        outcomes: &mut HashMap<String, Outcome>,
        report: &mut CycleReport,
    ) -> Result<Option<SfError>, SyncError> {
        // Accounts created earlier in this apply have their ids in links.
        let granted: Vec<String> = plan
            .actions
            .iter()
            .filter(|a| a.sf_id.is_none() && matches!(a.kind, ActionKind::Grant { .. }))
            .map(|a| a.entra_id.clone())
            .collect();
        let links = self.store.links_of(&granted).await?;
        let failed = |outcomes: &HashMap<String, Outcome>, id: &str| {
            outcomes
                .get(id)
                .is_some_and(|o| o.failed.is_some() || o.deferred)
        };
        let size = self.cfg.batch_size.clamp(1, 200);
        let concurrency = self.cfg.concurrency.clamp(1, 25);
        let mut events = Vec::new();
        let mut stop: Option<SfError> = None;
        for kind in Access::ALL {
            // (action, name, assignment record)
            let grants: Vec<GrantRecord> = plan
                .actions
                .iter()
                .filter_map(|a| match &a.kind {
                    ActionKind::Grant { access, name }
                        if *access == kind && !failed(outcomes, &a.entra_id) =>
                    {
                        let user = a
                            .sf_id
                            .clone()
                            .or_else(|| links.get(&a.entra_id).cloned())?;
                        let target = refs.catalog.id(kind, name)?;
                        let mut r = Map::new();
                        r.insert(kind.assignee_field().into(), json!(user));
                        r.insert(kind.target_field().into(), json!(target));
                        Some((a, name, r))
                    }
                    _ => None,
                })
                .collect();
            // Kept full, as the users' writes above; a stop lets the calls
            // already sent finish and records what they granted.
            let mut batches = grants.chunks(size);
            let mut in_flight = futures::stream::FuturesOrdered::new();
            loop {
                while stop.is_none() && in_flight.len() < concurrency {
                    let Some(batch) = batches.next() else { break };
                    in_flight.push_back(async move {
                        let records: Vec<Map<String, Value>> =
                            batch.iter().map(|(_, _, r)| r.clone()).collect();
                        let sent = self
                            .salesforce
                            .create_many(kind.assignment_object(), &records)
                            .await;
                        (batch, sent)
                    });
                }
                let Some((batch, sent)) = in_flight.next().await else {
                    break;
                };
                {
                    let results = match sent {
                        Ok(r) => r,
                        Err(e) if e.is_limit() || e.outcome_unknown() => {
                            stop.get_or_insert(e);
                            continue;
                        }
                        Err(e) => {
                            for (a, _, _) in batch.iter() {
                                outcomes.entry(a.entra_id.clone()).or_default().failed =
                                    Some(e.to_string());
                            }
                            continue;
                        }
                    };
                    let mut made: Vec<(&str, &str, &str)> = Vec::new();
                    for ((a, name, record), r) in batch.iter().zip(&results) {
                        let user = record
                            .get(kind.assignee_field())
                            .cloned()
                            .unwrap_or(Value::Null);
                        // Already assigned (by hand, meanwhile): fine, and not ours.
                        let duplicate = r.errors.iter().any(|e| e.code == "DUPLICATE_VALUE");
                        if r.success {
                            if let Some(id) = &r.id {
                                made.push((&a.entra_id, name, id));
                            }
                            if kind == Access::PermissionSet {
                                report.permission_sets_assigned += 1;
                            }
                            report.granted += 1;
                            events.push(AuditEvent {
                                event: format!("user.{}_assigned", kind.key()),
                                entra_id: Some(a.entra_id.clone()),
                                sf_id: user.as_str().map(str::to_string),
                                detail: json!({kind.key(): name, "assignment": r.id, "reason": a.reason}),
                            });
                        } else if !duplicate {
                            let msg = r.error_text();
                            outcomes.entry(a.entra_id.clone()).or_default().failed = Some(format!(
                                "granting {} {name} refused by Salesforce: {msg}",
                                kind.label()
                            ));
                            events.push(AuditEvent {
                                event: format!("user.{}_assign_failed", kind.key()),
                                entra_id: Some(a.entra_id.clone()),
                                sf_id: user.as_str().map(str::to_string),
                                detail: json!({kind.key(): name, "errors": r.errors}),
                            });
                        }
                    }
                    self.store.add_managed_grants(kind, &made).await?;
                }
            }
            if stop.is_some() {
                self.store.append_audit(cycle, &events).await?;
                return Ok(stop);
            }
        }
        for kind in Access::ALL.into_iter().rev() {
            let removes: Vec<&Action> = plan
                .actions
                .iter()
                .filter(|a| {
                    matches!(&a.kind, ActionKind::Revoke { access, .. } if *access == kind)
                        && !failed(outcomes, &a.entra_id)
                })
                .collect();
            for batch in removes.chunks(size) {
                let ids: Vec<String> = batch
                    .iter()
                    .filter_map(|a| match &a.kind {
                        ActionKind::Revoke { assignment_id, .. } => Some(assignment_id.clone()),
                        _ => None,
                    })
                    .collect();
                let results = match self.salesforce.delete_many(&ids).await {
                    Ok(r) => r,
                    Err(e) if e.is_limit() || e.outcome_unknown() => {
                        // What was revoked so far is audited all the same.
                        self.store.append_audit(cycle, &events).await?;
                        return Ok(Some(e));
                    }
                    Err(e) => {
                        for a in batch {
                            outcomes.entry(a.entra_id.clone()).or_default().failed =
                                Some(e.to_string());
                        }
                        continue;
                    }
                };
                for (a, r) in batch.iter().zip(&results) {
                    let ActionKind::Revoke {
                        name,
                        assignment_id,
                        ..
                    } = &a.kind
                    else {
                        continue;
                    };
                    let removal = Removal {
                        entra_id: &a.entra_id,
                        sf_id: a.sf_id.as_deref(),
                        kind,
                        name,
                        assignment: assignment_id,
                        reason: &a.reason,
                    };
                    if !self
                        .settle_removal(r, &removal, report, &mut events)
                        .await?
                    {
                        let msg = r.error_text();
                        outcomes.entry(a.entra_id.clone()).or_default().failed = Some(format!(
                            "revoking {} {name} refused by Salesforce: {msg}",
                            kind.label()
                        ));
                    }
                }
            }
        }
        self.store.append_audit(cycle, &events).await?;
        Ok(None)
    }

    /// A removal Salesforce answered. Done, or the assignment already gone:
    /// forgotten as provisor's grant, counted and audited, and `true`.
    /// Refused: `false`, for the caller to say why.
    pub(super) async fn settle_removal(
        &self,
        r: &RecordResult,
        removal: &Removal<'_>,
        report: &mut CycleReport,
        events: &mut Vec<AuditEvent>,
    ) -> Result<bool, SyncError> {
        if !(r.success || r.errors.iter().any(|e| e.code == "ENTITY_IS_DELETED")) {
            return Ok(false);
        }
        let Removal {
            entra_id,
            sf_id,
            kind,
            name,
            assignment,
            reason,
        } = *removal;
        self.store
            .remove_managed_grant(entra_id, kind, name)
            .await?;
        if kind == Access::PermissionSet {
            report.permission_sets_removed += 1;
        }
        report.revoked += 1;
        events.push(AuditEvent {
            event: format!("user.{}_removed", kind.key()),
            entra_id: Some(entra_id.to_string()),
            sf_id: sf_id.map(str::to_string),
            detail: json!({kind.key(): name, "assignment": assignment, "reason": reason}),
        });
        Ok(true)
    }

    /// CommunityNickname is unique per org: creates refused only for a
    /// nickname clash are sent once more with a deterministic suffix taken
    /// from the Entra object id (the same user always gets the same one).
    async fn retry_nickname_clashes(
        &self,
        batch: &[&Action],
        records: &[Map<String, Value>],
        results: &mut [RecordResult],
    ) {
        let clashes: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                !r.success
                    && !r.errors.is_empty()
                    && r.errors.iter().all(|e| e.code == "DUPLICATE_COMM_NICKNAME")
            })
            .map(|(i, _)| i)
            .collect();
        if clashes.is_empty() {
            return;
        }
        let retry: Vec<Map<String, Value>> = clashes
            .iter()
            .map(|&i| {
                let mut r = records[i].clone();
                let base = r
                    .get("CommunityNickname")
                    .and_then(Value::as_str)
                    .unwrap_or("user")
                    .to_string();
                r.insert(
                    "CommunityNickname".into(),
                    json!(nickname_with_suffix(&base, &batch[i].entra_id)),
                );
                r
            })
            .collect();
        match self.salesforce.create_many("User", &retry).await {
            Ok(again) => {
                for (k, &i) in clashes.iter().enumerate() {
                    if let Some(r) = again.get(k) {
                        results[i] = r.clone();
                    }
                }
            }
            // The first refusal stands; the user is retried next cycle.
            Err(e) => tracing::warn!(error = %e, "nickname retry failed"),
        }
    }

    async fn settle_batch(
        &self,
        cycle: &str,
        batch: &[&Action],
        journal: &[i64],
        results: &[RecordResult],
        outcomes: &mut HashMap<String, Outcome>,
        report: &mut CycleReport,
    ) -> Result<Option<SfError>, SyncError> {
        let mut events = Vec::new();
        // Outcomes, links and pending emails: one transaction per batch.
        let mut settled: Vec<(i64, &str, String)> = Vec::with_capacity(batch.len());
        let mut links: Vec<(&str, String)> = Vec::new();
        let mut emails: Vec<(&str, String)> = Vec::new();
        // Permanent failures per error code, for the quarantine rule.
        let mut causes: HashMap<String, (usize, String)> = HashMap::new();
        // Leavers frozen and deactivated, users back (the leavers list).
        let (mut frozen, mut deactivated, mut returned) = (Vec::new(), Vec::new(), Vec::new());
        for ((a, oid), r) in batch.iter().zip(journal).zip(results) {
            if r.success {
                let sf_id = r.id.clone().or_else(|| a.sf_id.clone());
                settled.push((*oid, "done", json!({"id": sf_id}).to_string()));
                let event = match &a.kind {
                    ActionKind::Create {
                        fields, profile, ..
                    } => {
                        if let Some(id) = &sf_id {
                            links.push((&a.entra_id, id.clone()));
                        }
                        report.created += 1;
                        AuditEvent {
                            event: "user.created".into(),
                            entra_id: Some(a.entra_id.clone()),
                            sf_id: sf_id.clone(),
                            detail: json!({"fields": fields, "profile": profile, "reason": a.reason}),
                        }
                    }
                    ActionKind::Update { changes } => {
                        if let Some(to) = changes.get("Email").and_then(|c| c.to.as_text()) {
                            emails.push((&a.entra_id, to.to_string()));
                        }
                        report.updated += 1;
                        AuditEvent {
                            event: "user.updated".into(),
                            entra_id: Some(a.entra_id.clone()),
                            sf_id: sf_id.clone(),
                            detail: json!({"changes": changes, "reason": a.reason}),
                        }
                    }
                    ActionKind::Deactivate => {
                        report.deactivated += 1;
                        if let Some(sf) = a.sf_id.as_deref() {
                            deactivated.push((a.entra_id.as_str(), sf));
                        }
                        AuditEvent {
                            event: "user.deactivated".into(),
                            entra_id: Some(a.entra_id.clone()),
                            sf_id: sf_id.clone(),
                            detail: json!({"reason": a.reason}),
                        }
                    }
                    ActionKind::Reactivate { changes } => {
                        report.reactivated += 1;
                        returned.push(a.entra_id.as_str());
                        AuditEvent {
                            event: "user.reactivated".into(),
                            entra_id: Some(a.entra_id.clone()),
                            sf_id: sf_id.clone(),
                            detail: json!({"changes": changes, "reason": a.reason}),
                        }
                    }
                    ActionKind::Freeze { login_id } => {
                        report.frozen += 1;
                        if let Some(sf) = a.sf_id.as_deref() {
                            frozen.push((a.entra_id.as_str(), sf));
                        }
                        AuditEvent {
                            event: "user.frozen".into(),
                            entra_id: Some(a.entra_id.clone()),
                            sf_id: a.sf_id.clone(),
                            detail: json!({"user_login": login_id, "reason": a.reason}),
                        }
                    }
                    ActionKind::Unfreeze { login_id } => {
                        report.unfrozen += 1;
                        returned.push(a.entra_id.as_str());
                        AuditEvent {
                            event: "user.unfrozen".into(),
                            entra_id: Some(a.entra_id.clone()),
                            sf_id: a.sf_id.clone(),
                            detail: json!({"user_login": login_id, "reason": a.reason}),
                        }
                    }
                    ActionKind::Link { .. }
                    | ActionKind::Grant { .. }
                    | ActionKind::Revoke { .. }
                    | ActionKind::Handover => {
                        continue;
                    }
                };
                events.push(event);
            } else {
                let msg = r.error_text();
                let msg = if msg.is_empty() {
                    "Salesforce reported failure without an error".to_string()
                } else {
                    msg
                };
                // Row contention passes: try again next cycle, no attempt spent.
                let transient = !r.errors.is_empty()
                    && r.errors
                        .iter()
                        .all(|e| TRANSIENT_RECORD_CODES.contains(&e.code.as_str()));
                // Seats taken since planning (another admin, a race): wait.
                let no_seat = r.errors.iter().any(|e| e.code == "LICENSE_LIMIT_EXCEEDED");
                if transient || no_seat {
                    let status = if transient { "deferred" } else { "waiting" };
                    settled.push((*oid, status, msg.clone()));
                    let o = outcomes.entry(a.entra_id.clone()).or_default();
                    if transient {
                        o.deferred = true;
                    } else {
                        o.waiting = Some(format!("waiting for a licence seat: {msg}"));
                    }
                    events.push(AuditEvent {
                        event: format!("user.{}_{status}", a.kind.name()),
                        entra_id: Some(a.entra_id.clone()),
                        sf_id: a.sf_id.clone(),
                        detail: json!({"errors": r.errors}),
                    });
                    continue;
                }
                settled.push((*oid, "failed", msg.clone()));
                // A refused deactivation is about the user (what refers to
                // it), not the connection: it never counts to quarantine.
                if let Some(e) = r
                    .errors
                    .first()
                    .filter(|_| !matches!(a.kind, ActionKind::Deactivate))
                {
                    let c = causes
                        .entry(e.code.clone())
                        .or_insert((0, e.message.clone()));
                    c.0 += 1;
                }
                // Org automation (an Apex trigger, a validation rule) will
                // refuse the same save again: park the user at once, named.
                let automation = r
                    .errors
                    .iter()
                    .find(|e| AUTOMATION_CODES.contains(&e.code.as_str()));
                let fix = r
                    .errors
                    .first()
                    .and_then(|e| suggested_fix(&e.code, &e.message));
                // Salesforce has no distinct code for most deactivation
                // blockers (default case owner, workflow user...): any
                // refusal of IsActive=false is a blocker; the user stays
                // frozen and the step is retried on later cycles.
                let blocked = matches!(a.kind, ActionKind::Deactivate);
                let blocker = r
                    .errors
                    .iter()
                    .find_map(|e| super::blockers::classify(&e.code, &e.message))
                    .filter(|_| blocked);
                let fix = blocker.map(|b| b.fix.to_string()).or(fix);
                let mut text = if blocked {
                    format!(
                        "deactivation blocked by Salesforce{} (the user stays frozen): {msg}",
                        blocker.map_or(String::new(), |b| format!(" ({})", b.kind))
                    )
                } else if let Some(e) = automation {
                    format!(
                        "{} refused by org automation ({}): {msg}",
                        a.kind.name(),
                        automation_name(&e.code, &e.message)
                    )
                } else {
                    format!("{} refused by Salesforce: {msg}", a.kind.name())
                };
                if let Some(fix) = fix {
                    text.push_str(&format!(" (fix: {fix})"));
                }
                if blocked && let Some(sf) = a.sf_id.as_deref() {
                    // Waits frozen, spending no attempt: retried on later
                    // cycles (org configuration on a back-off).
                    let b = blocker.unwrap_or(super::blockers::UNRECOGNISED);
                    let errors = json!(r.errors);
                    let (tries, next) = self
                        .record_refused_deactivation(&a.entra_id, sf, &b, &msg, &errors)
                        .await?;
                    match &next {
                        Some(at) => text.push_str(&format!(
                            "; refused {tries} time(s), next try after {at} or at `provisor leavers retry`"
                        )),
                        None => text.push_str(&format!("; refused {tries} time(s), tried again next cycle")),
                    }
                    let o = outcomes.entry(a.entra_id.clone()).or_default();
                    o.waiting = Some(text);
                    o.quiet = true;
                    events.push(AuditEvent {
                        event: "user.deactivation_blocked".into(),
                        entra_id: Some(a.entra_id.clone()),
                        sf_id: a.sf_id.clone(),
                        detail: json!({"errors": r.errors, "blocker": b, "tries": tries, "next_try": next}),
                    });
                    continue;
                }
                let o = outcomes.entry(a.entra_id.clone()).or_default();
                o.failed = Some(text);
                o.permanent = automation.is_some() && !blocked;
                events.push(AuditEvent {
                    event: if blocked {
                        "user.deactivation_blocked".to_string()
                    } else {
                        format!("user.{}_failed", a.kind.name())
                    },
                    entra_id: Some(a.entra_id.clone()),
                    sf_id: a.sf_id.clone(),
                    detail: match blocker {
                        Some(b) => json!({"errors": r.errors, "blocker": b}),
                        None => json!({"errors": r.errors}),
                    },
                });
            }
        }
        // Most of a sizeable batch failing for one cause is not about the
        // users: pause writing and alert instead of sending more.
        let quarantine = causes
            .into_iter()
            .max_by_key(|(_, (n, _))| *n)
            .filter(|(_, (n, _))| {
                batch.len() >= QUARANTINE_MIN_BATCH && *n * 10 >= batch.len() * QUARANTINE_TENTHS
            })
            .map(|(code, (failed, message))| SfError::Quarantined {
                code,
                failed,
                of: batch.len(),
                message,
            });
        if let Some(q) = &quarantine {
            // A systemic cause is not the users' fault: they wait for the
            // next cycle without spending attempts or being parked.
            if let SfError::Quarantined { code, .. } = q {
                for a in batch {
                    if let Some(o) = outcomes.get_mut(&a.entra_id)
                        && o.failed.as_ref().is_some_and(|f| f.contains(code.as_str()))
                    {
                        o.failed = None;
                        o.permanent = false;
                        o.deferred = true;
                    }
                }
            }
            tracing::error!(error = %q, "writes paused");
            events.push(AuditEvent {
                event: "connection.quarantined".into(),
                entra_id: None,
                sf_id: None,
                detail: json!({"error": q.to_string()}),
            });
        }
        self.store.settle_many(&settled, &links, &emails).await?;
        self.store.leavers_frozen(&frozen).await?;
        self.store.leavers_deactivated(&deactivated).await?;
        self.store.leavers_returned(&returned).await?;
        crash_point("mid_batch");
        self.store.append_audit(cycle, &events).await?;
        Ok(quarantine)
    }
}

/// One assignment provisor removed, as the audit trail names it.
#[derive(Clone, Copy)]
pub(super) struct Removal<'a> {
    pub entra_id: &'a str,
    pub sf_id: Option<&'a str>,
    pub kind: Access,
    pub name: &'a str,
    pub assignment: &'a str,
    pub reason: &'a str,
}

/// Record errors from the org's own automation: permanent for that save.
const AUTOMATION_CODES: &[&str] = &[
    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
];

/// Batches at least this large can trip the quarantine...
const QUARANTINE_MIN_BATCH: usize = 10;
/// ...when this many tenths of them fail with one error code.
const QUARANTINE_TENTHS: usize = 8;

/// Names the automation behind an error: the trigger (Salesforce starts
/// the message with its name) or the validation rule's message.
fn automation_name(code: &str, message: &str) -> String {
    match code {
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY" => format!(
            "Apex trigger {}",
            message.split(':').next().unwrap_or(message).trim()
        ),
        _ => format!("validation rule \"{}\"", message.trim()),
    }
}

/// What an operator can do about a permanent record error.
fn suggested_fix(code: &str, message: &str) -> Option<String> {
    Some(match code {
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY" => format!(
            "fix the {} or exempt the integration user from it, then `provisor deadletter retry`",
            automation_name(code, message)
        ),
        "FIELD_CUSTOM_VALIDATION_EXCEPTION" => "change the pack's mapping so the value passes, or the rule in Setup > Object Manager > User > Validation Rules, then `provisor deadletter retry`".into(),
        "DUPLICATE_USERNAME" => "the Username is taken, possibly in another org (Usernames are unique across all of Salesforce): map a unique Username, e.g. with a suffix".into(),
        "STRING_TOO_LONG" => "shorten the value in the pack (Left() in Rhai)".into(),
        "REQUIRED_FIELD_MISSING" => "make the pack set the missing field".into(),
        "INVALID_EMAIL_ADDRESS" => "fix the user's mail in Entra or map another Email".into(),
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" => "map a value the picklist allows (Setup > Object Manager > User > Fields)".into(),
        _ => return None,
    })
}

/// Record-level error codes that pass by themselves: the action is tried
/// again on the next cycle without counting an attempt.
const TRANSIENT_RECORD_CODES: &[&str] = &["UNABLE_TO_LOCK_ROW"];

/// The Collections record for an action.
fn record_for(a: &Action, refs: &super::Refs) -> Map<String, Value> {
    let mut r = Map::new();
    let put_changes =
        |r: &mut Map<String, Value>,
         changes: &std::collections::BTreeMap<String, super::Change>| {
            for (k, c) in changes {
                if k == "Profile" {
                    if let Some(name) = c.to.as_text()
                        && let Some(pid) = refs.profiles.get(name)
                    {
                        r.insert("ProfileId".into(), json!(pid));
                    }
                } else if k == "Role" {
                    if let Some(name) = c.to.as_text()
                        && let Some(rid) = refs.roles.get(name)
                    {
                        r.insert("UserRoleId".into(), json!(rid));
                    }
                } else {
                    r.insert(k.clone(), c.to.to_json());
                }
            }
        };
    match &a.kind {
        ActionKind::Create {
            fields,
            profile,
            role,
        } => {
            for (k, v) in fields {
                r.insert(k.clone(), v.to_json());
            }
            if let Some(pid) = refs.profiles.get(profile) {
                r.insert("ProfileId".into(), json!(pid));
            }
            if let Some(rid) = role.as_ref().and_then(|n| refs.roles.get(n)) {
                r.insert("UserRoleId".into(), json!(rid));
            }
        }
        ActionKind::Update { changes } => {
            r.insert("id".into(), json!(a.sf_id));
            put_changes(&mut r, changes);
        }
        ActionKind::Deactivate => {
            r.insert("id".into(), json!(a.sf_id));
            r.insert("IsActive".into(), json!(false));
        }
        ActionKind::Reactivate { changes } => {
            r.insert("id".into(), json!(a.sf_id));
            r.insert("IsActive".into(), json!(true));
            put_changes(&mut r, changes);
        }
        ActionKind::Freeze { login_id } => {
            r.insert("id".into(), json!(login_id));
            r.insert("IsFrozen".into(), json!(true));
        }
        ActionKind::Unfreeze { login_id } => {
            r.insert("id".into(), json!(login_id));
            r.insert("IsFrozen".into(), json!(false));
        }
        ActionKind::Link { .. }
        | ActionKind::Grant { .. }
        | ActionKind::Revoke { .. }
        | ActionKind::Handover => {}
    }
    r
}

/// A CommunityNickname (max 40) derived from a Username's local part.
pub(crate) fn nickname_for(username: &str) -> String {
    username
        .split('@')
        .next()
        .unwrap_or(username)
        .chars()
        .take(40)
        .collect()
}

/// `base` shortened to leave room for `.` and 4 hex characters of the
/// SHA-256 of the Entra object id.
fn nickname_with_suffix(base: &str, entra_id: &str) -> String {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(entra_id.as_bytes()));
    let head: String = base.chars().take(35).collect();
    format!("{head}.{}", &digest[..4])
}

/// Fault injection for the crash tests: with `PROVISOR_FAULT_CRASH_AT` set
/// to this point's name (`before_send`: journaled, not sent; `after_send`:
/// sent, no result recorded; `mid_batch`: part of a batch's results
/// recorded), the process aborts there, as `kill -9` would stop it: no
/// destructors, no flushing, nothing more written.
fn crash_point(name: &str) {
    if std::env::var("PROVISOR_FAULT_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("provisor: crashing at {name} (PROVISOR_FAULT_CRASH_AT)");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames_are_deterministic_and_fit() {
        assert_eq!(nickname_for("adele.vance@contoso.com"), "adele.vance");
        let long = "a".repeat(60);
        assert_eq!(nickname_for(&format!("{long}@x.com")).chars().count(), 40);
        let a = nickname_with_suffix(&"b".repeat(40), "id-1");
        assert_eq!(a, nickname_with_suffix(&"b".repeat(40), "id-1"));
        assert_ne!(a, nickname_with_suffix(&"b".repeat(40), "id-2"));
        assert!(a.chars().count() <= 40);
    }
}
