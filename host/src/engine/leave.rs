//! Leavers' open records: found, handed to the pack's `on-leave`, checked
//! and moved before the leaver is deactivated (issue 9).
//!
//! A leaver is frozen first (apply's order). Then, per leaver, the open
//! records it owns are read (Opportunity `IsClosed = false`, Lead
//! `IsConverted = false`, Case `IsClosed = false`, and every object the
//! pack declares in `[access] objects`), the pack says per object where
//! they go, every target is checked before any write (an active user, or
//! a queue that supports the object) and the records move with
//! `Sforce-Auto-Assign: FALSE` (Collections) or through Bulk API 2.0 above
//! `[sync] reassign_bulk_threshold`. Records nobody valid can take stay
//! with the leaver, who then stays frozen and is not deactivated, unless
//! the pack says `deactivate_anyway`.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{ActionKind, CycleReport, Engine, Outcome, SyncError};
use crate::audit::AuditEvent;
use crate::rules::{OwnedRecords, OwnerTarget, ReassignmentPlan};
use crate::salesforce::{BulkOperation, RowOutcome, soql_quote};

/// Objects whose open records every leaver is checked for, with the
/// condition that makes a record open. Closed records keep their owner.
const OPEN_RECORDS: &[(&str, &str)] = &[
    ("Opportunity", "IsClosed = false"),
    ("Lead", "IsConverted = false"),
    ("Case", "IsClosed = false"),
];

/// Objects that may point at a parent Account (`AccountId`): their
/// records are moved grouped by account, so that one batch does not hold
/// the same account's lock from several places (UNABLE_TO_LOCK_ROW).
const HAS_ACCOUNT: &[&str] = &["Opportunity", "Case", "Contact"];

/// Objects a queue may never own, whatever `QueueSobject` says.
const NEVER_QUEUED: &[&str] = &["Account", "Contact", "Opportunity"];

/// A leaver's open records, per object.
type ByObject = Vec<(String, Vec<Owned>)>;

/// One open record a leaver owns.
#[derive(Debug, Clone)]
struct Owned {
    id: String,
    account: Option<String>,
}

/// A checked owner: one user or queue, or several users in turn.
#[derive(Debug, Clone)]
struct Owners {
    ids: Vec<String>,
    /// How the pack named it, for the audit trail.
    named: String,
}

/// What the pack decided for a cycle's leavers, every target checked
/// (active, a queue that supports the object, read access to each record).
struct Decided {
    /// Per object, the records to move.
    moves: BTreeMap<String, Vec<Move>>,
    /// Per leaver (Entra id): what it owns and whether the pack lets it be
    /// deactivated with records left.
    owned: Vec<(String, ByObject, bool)>,
    /// Leavers whose `on-leave` failed: the error.
    errors: Vec<(String, String)>,
    /// Refused targets, for the audit trail.
    events: Vec<AuditEvent>,
    /// Objects the pack declares that Salesforce would not let provisor
    /// read (missing from the org, no OwnerId, no access): (object, error).
    /// No leaver can be deactivated safely while one is unread.
    unreadable: Vec<(String, String)>,
}

/// One object of one leaver still looking for a target.
struct Pending<'a> {
    leaver: usize,
    object: String,
    records: Vec<Owned>,
    targets: &'a [OwnerTarget],
    next: usize,
    /// This round gave its records to a target, pending a read check.
    placed: bool,
}

/// A leaver's records as `provisor plan` previews them: per object, how
/// many go where, and how many stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReassignPreview {
    pub entra_id: String,
    pub sf_id: String,
    pub object: String,
    /// (target as the pack named it, new owner id, records).
    pub to: Vec<(String, String, usize)>,
    /// Records no valid target can take.
    pub staying: usize,
    /// Whether the leaver is deactivated even with records staying.
    pub deactivate_anyway: bool,
    /// Why nothing can be said of this object (the org refuses to let it
    /// be read) or of the leaver (`on-leave` failed): it would stay frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Engine {
    /// Moves the open records of this plan's leavers (users with a
    /// `Deactivate`), after their freeze. Returns the leavers whose
    /// deactivation must wait because records are still theirs.
    pub(super) async fn reassign_leavers(
        &self,
        cycle: &str,
        plan: &super::Plan,
        outcomes: &mut HashMap<String, Outcome>,
        report: &mut CycleReport,
    ) -> Result<HashSet<String>, SyncError> {
        let mut held = HashSet::new();
        let leavers = plan.accounts_where(|a| {
            matches!(a.kind, ActionKind::Deactivate | ActionKind::Handover)
                && outcomes
                    .get(&a.entra_id)
                    .is_none_or(|o| o.failed.is_none() && !o.deferred)
        });
        let handovers: Vec<(&str, &str)> = plan
            .actions
            .iter()
            .filter(|a| matches!(a.kind, ActionKind::Handover))
            .filter_map(|a| Some((a.entra_id.as_str(), a.sf_id.as_deref()?)))
            .collect();
        // Kept as pending until nothing is left with the inactive user, so
        // a stopped cycle or a refused target is taken up again. A leaver
        // provisor froze and someone else deactivated is closed here, so
        // what it was granted is released.
        self.store.handovers_started(&handovers).await?;
        let ids: Vec<&str> = handovers.iter().map(|(e, _)| *e).collect();
        self.store.leavers_closed(&ids).await?;
        let Some(decided) = self.decide_reassignments(Some(cycle), &leavers).await? else {
            let done: Vec<&str> = handovers.iter().map(|(e, _)| *e).collect();
            self.store.handovers_done(&done).await?;
            return Ok(held);
        };
        let pack = self.pack.get();
        let mut events = decided.events;
        if !decided.unreadable.is_empty() {
            let what: Vec<String> = decided
                .unreadable
                .iter()
                .map(|(o, e)| format!("{o} ({e})"))
                .collect();
            for (object, error) in &decided.unreadable {
                events.push(AuditEvent {
                    event: "leaver.object_unreadable".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({
                        "object": object, "error": error, "pack": pack.id(),
                        "leavers_held": leavers.len(),
                    }),
                });
            }
            // Records of that object may be theirs: nobody is deactivated
            // with records left unseen.
            for (id, _) in &leavers {
                held.insert(id.clone());
                let o = outcomes.entry(id.clone()).or_default();
                o.waiting = Some(format!(
                    "stays frozen, not deactivated: the pack declares {} that Salesforce will not let provisor read, so the leaver's records there are unknown; fix the pack's [access] objects or the org",
                    what.join(", ")
                ));
                o.hold_event = Some("leaver.records_unknown");
            }
        }
        for (id, e) in decided.errors {
            // The records stay; so does the freeze.
            held.insert(id.clone());
            outcomes.entry(id).or_default().failed = Some(format!(
                "the leaver's records were not moved, so it stays frozen: {e}"
            ));
        }
        let mut moved: HashSet<String> = HashSet::new();
        for (object, list) in &decided.moves {
            let pairs: Vec<(String, String, Option<String>)> = list
                .iter()
                .map(|m| (m.record.clone(), m.to.clone(), m.account.clone()))
                .collect();
            let (done, refused) = self.transfer(object, &pairs).await?;
            let by_record: HashMap<&str, &Move> =
                list.iter().map(|m| (m.record.as_str(), m)).collect();
            for (id, to) in &done {
                moved.insert(id.clone());
                if let Some(m) = by_record.get(id.as_str()) {
                    events.push(m.transferred(object, to, &pack.id()));
                }
            }
            for (id, err) in &refused {
                if let Some(m) = by_record.get(id.as_str()) {
                    events.push(m.failed(object, err));
                }
            }
            report.records_reassigned += done.len();
            // Per object: what moved is on record even if a later object's
            // move fails the cycle.
            self.store
                .append_audit(cycle, &std::mem::take(&mut events))
                .await?;
        }
        self.store.append_audit(cycle, &events).await?;
        for (id, owned, anyway) in decided.owned {
            let left: Vec<String> = owned
                .iter()
                .filter_map(|(object, recs)| {
                    let n = recs.iter().filter(|r| !moved.contains(&r.id)).count();
                    (n > 0).then(|| format!("{n} {object}"))
                })
                .collect();
            if !left.is_empty() && !anyway {
                held.insert(id.clone());
                let o = outcomes.entry(id).or_default();
                o.waiting = Some(format!(
                    "stays frozen, not deactivated: still owns {} open records with no valid new owner (see leaver.target_refused in the audit trail)",
                    left.join(", ")
                ));
                o.hold_event = Some("leaver.records_remain");
            }
        }
        let done: Vec<&str> = handovers
            .iter()
            .map(|(e, _)| *e)
            .filter(|e| !held.contains(*e))
            .collect();
        self.store.handovers_done(&done).await?;
        Ok(held)
    }

    /// Ends the sessions and connected-app tokens of leavers frozen in
    /// this plan: freezing blocks new logins only. `AuthSession` rows are
    /// deleted (Salesforce allows delete on them); `OauthToken` allows no
    /// delete, so each is revoked by its `DeleteToken`. A failure is
    /// audited and does not stop the leaver's flow (the freeze holds).
    pub(super) async fn end_sessions(&self, cycle: &str) -> Result<(), SyncError> {
        // Every leaver frozen and still active whose sessions are not
        // ended yet: this cycle's, and those whose last try failed.
        let pending = self.store.sessions_to_end().await?;
        let frozen: Vec<(&str, &str)> = pending
            .iter()
            .map(|(e, s)| (e.as_str(), s.as_str()))
            .collect();
        if frozen.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = frozen.iter().map(|(_, s)| s.to_string()).collect();
        let mut events = Vec::new();
        let mut step_failed = false;
        let audit_failure =
            |events: &mut Vec<AuditEvent>, what: &str, e: &dyn std::fmt::Display| {
                for (entra, sf) in &frozen {
                    events.push(AuditEvent {
                        event: "user.sessions_end_failed".into(),
                        entra_id: Some(entra.to_string()),
                        sf_id: Some(sf.to_string()),
                        detail: json!({"step": what, "error": e.to_string()}),
                    });
                }
            };
        // Per user: (sessions ended, sessions refused, apps revoked, apps refused).
        type Ended = (usize, Vec<String>, Vec<String>, Vec<String>);
        let mut per: HashMap<String, Ended> = HashMap::new();
        match self
            .query_in(&ids, |list| {
                format!("SELECT Id, UsersId FROM AuthSession WHERE UsersId IN ({list})")
            })
            .await
        {
            Ok(rows) => {
                let sessions: Vec<(String, String)> = rows
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.get("Id")?.as_str()?.to_string(),
                            r.get("UsersId")?.as_str()?.to_string(),
                        ))
                    })
                    .collect();
                for chunk in sessions.chunks(200) {
                    let del: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
                    match self.salesforce.delete_many(&del).await {
                        Ok(results) => {
                            for ((_, user), r) in chunk.iter().zip(results) {
                                let e = per.entry(user.clone()).or_default();
                                // Already gone (logged out meanwhile) is ended.
                                if r.success
                                    || r.errors.iter().any(|x| x.code == "ENTITY_IS_DELETED")
                                {
                                    e.0 += 1;
                                } else {
                                    e.1.push(r.error_text());
                                }
                            }
                        }
                        Err(err) => {
                            step_failed = true;
                            audit_failure(&mut events, "delete AuthSession", &err);
                        }
                    }
                }
            }
            Err(err) => {
                step_failed = true;
                audit_failure(&mut events, "read AuthSession", &err);
            }
        }
        match self
            .query_in(&ids, |list| {
                format!(
                    "SELECT UserId, AppName, DeleteToken FROM OauthToken WHERE UserId IN ({list})"
                )
            })
            .await
        {
            Ok(rows) => {
                let tokens: Vec<(String, String, String)> = rows
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.get("UserId")?.as_str()?.to_string(),
                            r.get("AppName")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                                .to_string(),
                            r.get("DeleteToken")?.as_str()?.to_string(),
                        ))
                    })
                    .collect();
                let calls: Vec<_> = tokens
                    .iter()
                    .map(|(_, _, t)| self.salesforce.revoke_token(t))
                    .collect();
                let results: Vec<_> = futures::stream::iter(calls)
                    .buffered(self.cfg.concurrency.clamp(1, 25))
                    .collect()
                    .await;
                for ((user, app, _), r) in tokens.iter().zip(results) {
                    let e = per.entry(user.clone()).or_default();
                    match r {
                        Ok(()) => e.2.push(app.clone()),
                        Err(err) => e.3.push(format!("{app}: {err}")),
                    }
                }
            }
            Err(err) => {
                step_failed = true;
                audit_failure(&mut events, "read OauthToken", &err);
            }
        }
        // Done for a leaver once every session and token of it is ended
        // (none at all included); the others are tried next cycle.
        let mut done: Vec<&str> = Vec::new();
        for (entra, sf) in &frozen {
            let Some((ended, refused, revoked, failed)) = per.remove(*sf) else {
                if !step_failed {
                    done.push(entra);
                }
                continue;
            };
            if refused.is_empty() && failed.is_empty() && !step_failed {
                done.push(entra);
            }
            events.push(AuditEvent {
                event: if refused.is_empty() && failed.is_empty() {
                    "user.sessions_ended".into()
                } else {
                    "user.sessions_end_failed".into()
                },
                entra_id: Some(entra.to_string()),
                sf_id: Some(sf.to_string()),
                detail: json!({
                    "sessions_ended": ended, "sessions_refused": refused,
                    "tokens_revoked": revoked, "tokens_refused": failed,
                }),
            });
        }
        self.store.append_audit(cycle, &events).await?;
        self.store.sessions_ended(&done).await?;
        Ok(())
    }

    /// What would happen to these leavers' open records (Entra id,
    /// Salesforce id): the same reads, rule and checks as a cycle, and no
    /// write (not even to the audit trail).
    pub async fn preview_reassignments(
        &self,
        leavers: &[(String, String)],
    ) -> Result<Vec<ReassignPreview>, SyncError> {
        let Some(decided) = self.decide_reassignments(None, leavers).await? else {
            return Ok(Vec::new());
        };
        let sf_of: HashMap<&str, &str> = leavers
            .iter()
            .map(|(e, s)| (e.as_str(), s.as_str()))
            .collect();
        let mut out = Vec::new();
        for (id, owned, anyway) in &decided.owned {
            for (object, recs) in owned {
                let ids: HashSet<&str> = recs.iter().map(|r| r.id.as_str()).collect();
                let mut to: BTreeMap<(String, String), usize> = BTreeMap::new();
                let mut moving = 0;
                for m in decided.moves.get(object).into_iter().flatten() {
                    if &m.entra_id == id && ids.contains(m.record.as_str()) {
                        moving += 1;
                        *to.entry((m.target.clone(), m.to.clone())).or_default() += 1;
                    }
                }
                out.push(ReassignPreview {
                    entra_id: id.clone(),
                    sf_id: sf_of
                        .get(id.as_str())
                        .copied()
                        .unwrap_or_default()
                        .to_string(),
                    object: object.clone(),
                    to: to.into_iter().map(|((t, o), n)| (t, o, n)).collect(),
                    staying: recs.len() - moving,
                    deactivate_anyway: *anyway,
                    note: None,
                });
            }
        }
        let held = |entra: &str, object: &str, note: String| ReassignPreview {
            entra_id: entra.to_string(),
            sf_id: sf_of.get(entra).copied().unwrap_or_default().to_string(),
            object: object.to_string(),
            to: Vec::new(),
            staying: 0,
            deactivate_anyway: false,
            note: Some(note),
        };
        for (id, e) in &decided.errors {
            out.push(held(
                id,
                "on-leave",
                format!("{e}; the leaver would stay frozen"),
            ));
        }
        for (object, e) in &decided.unreadable {
            for (id, _) in leavers {
                out.push(held(
                    id,
                    object,
                    format!("Salesforce will not let provisor read it ({e}); the leaver would stay frozen"),
                ));
            }
        }
        Ok(out)
    }

    /// Reads what the leavers own, asks the pack and checks every target.
    /// `cycle` is `None` for a preview: nothing is audited then. `None`
    /// back when no leaver owns an open record.
    async fn decide_reassignments(
        &self,
        cycle: Option<&str>,
        leavers: &[(String, String)],
    ) -> Result<Option<Decided>, SyncError> {
        if leavers.is_empty() {
            return Ok(None);
        }
        let pack = self.pack.get();
        let mut objects: Vec<(String, Option<&str>)> = OPEN_RECORDS
            .iter()
            .map(|(o, open)| (o.to_string(), Some(*open)))
            .collect();
        for o in &pack.access.objects {
            if !objects.iter().any(|(x, _)| x == o) {
                objects.push((o.clone(), None));
            }
        }
        let ids: Vec<String> = leavers.iter().map(|(e, _)| e.clone()).collect();
        let users: HashMap<String, crate::store::DirtyUser> = self
            .store
            .users_in(&ids)
            .await?
            .into_iter()
            .map(|d| (d.user.id.clone(), d))
            .collect();
        // One read per object for all the cycle's leavers (a mass leave
        // must not cost a query per leaver and object).
        let owners: Vec<String> = leavers.iter().map(|(_, s)| s.clone()).collect();
        let mut by_owner: HashMap<String, ByObject> = HashMap::new();
        let mut unreadable = Vec::new();
        for (object, open) in &objects {
            let found = match self.owned_records(object, *open, &owners).await {
                Ok(f) => f,
                // A pack's own object the org refuses (a custom object
                // not deployed here, one without owners): the leavers
                // wait, the cycle goes on.
                Err(SyncError::Salesforce(crate::salesforce::SfError::Api { errors, .. }))
                    if open.is_none()
                        && errors.iter().any(|e| {
                            ["INVALID_TYPE", "INVALID_FIELD", "INSUFFICIENT_ACCESS"]
                                .iter()
                                .any(|c| e.code.starts_with(c))
                        }) =>
                {
                    let why = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.code, e.message.trim()))
                        .collect::<Vec<_>>()
                        .join("; ");
                    unreadable.push((object.clone(), why));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (owner, records) in found {
                by_owner
                    .entry(owner)
                    .or_default()
                    .push((object.clone(), records));
            }
        }
        if by_owner.is_empty() && unreadable.is_empty() {
            return Ok(None);
        }
        // The managers' accounts, checked once for the leavers who own
        // something.
        let manager_ids: Vec<String> = leavers
            .iter()
            .filter(|(_, sf)| by_owner.contains_key(sf))
            .filter_map(|(e, _)| users.get(e)?.user.manager_id.clone())
            .collect();
        let managers = self.managers_state(&manager_ids).await?;
        // Nobody leaving gets records: this cycle's leavers and every
        // leaver still frozen and active.
        let mut leaving: HashSet<String> = owners.iter().cloned().collect();
        leaving.extend(self.store.open_leaver_sf_ids().await?);
        let mut out = Decided {
            moves: BTreeMap::new(),
            owned: Vec::new(),
            errors: Vec::new(),
            events: Vec::new(),
            unreadable,
        };
        // Each leaver's decision, then every object of every leaver walks
        // its targets in rounds: all the read-access checks of a round
        // go out together.
        let mut asked: Vec<(&str, &str, &crate::store::DirtyUser, ReassignmentPlan)> = Vec::new();
        for (entra, sf) in leavers {
            let Some(d) = users.get(entra) else {
                if by_owner.contains_key(sf) {
                    out.errors.push((
                        entra.clone(),
                        "the leaver is missing from the store's Entra mirror, so on-leave cannot be asked".into(),
                    ));
                }
                continue;
            };
            let Some(owned) = by_owner.remove(sf) else {
                continue;
            };
            let summary: Vec<OwnedRecords> = owned
                .iter()
                .map(|(object, recs)| {
                    let mut accounts: Vec<String> =
                        recs.iter().filter_map(|r| r.account.clone()).collect();
                    accounts.sort();
                    accounts.dedup();
                    OwnedRecords {
                        object: object.clone(),
                        count: u32::try_from(recs.len()).unwrap_or(u32::MAX),
                        accounts,
                    }
                })
                .collect();
            match self.ask_on_leave(cycle, &pack, d, summary).await? {
                Ok(p) => {
                    out.owned.push((entra.clone(), owned, p.deactivate_anyway));
                    asked.push((entra, sf, d, p));
                }
                Err(e) => out.errors.push((entra.clone(), e.to_string())),
            }
        }
        let mut pending: Vec<Pending> = Vec::new();
        for (i, (_, _, _, p)) in asked.iter().enumerate() {
            // `owned` and `asked` grow together.
            let owned = &out.owned[i].1;
            for r in &p.reassignments {
                if let Some((_, recs)) = owned.iter().find(|(o, _)| o == &r.object) {
                    let mut records = recs.clone();
                    // Grouped by parent account, then spread in turn.
                    records.sort_by(|x, y| x.account.cmp(&y.account).then(x.id.cmp(&y.id)));
                    pending.push(Pending {
                        leaver: i,
                        object: r.object.clone(),
                        records,
                        targets: &r.targets,
                        next: 0,
                        placed: false,
                    });
                }
            }
        }
        let mut checked: HashMap<String, Result<Owners, String>> = HashMap::new();
        // (leaver, object) -> record -> new owner, for the children.
        let mut parents: HashMap<(usize, String), HashMap<String, String>> = HashMap::new();
        while !pending.is_empty() {
            let mut tentative: Vec<(usize, Owned, String, Owners)> = Vec::new();
            for (k, p) in pending.iter_mut().enumerate() {
                let (entra, sf, d, _) = &asked[p.leaver];
                let mut owners = None;
                while let Some(t) = p.targets.get(p.next) {
                    p.next += 1;
                    if matches!(t, OwnerTarget::Keep) {
                        p.next = p.targets.len();
                        break;
                    }
                    // A manager is the leaver's own; other targets are the
                    // same for everyone.
                    let whose = match t {
                        OwnerTarget::Manager => d.user.manager_id.clone().unwrap_or_default(),
                        _ => String::new(),
                    };
                    let key = format!("{}|{t:?}|{whose}", p.object);
                    if !checked.contains_key(&key) {
                        let c = self
                            .check_target(&p.object, t, d, &managers)
                            .await?
                            .and_then(|o| without_leavers(o, &leaving));
                        checked.insert(key.clone(), c);
                    }
                    match checked.get(&key) {
                        Some(Ok(o)) => {
                            owners = Some(o.clone());
                            break;
                        }
                        Some(Err(why)) => out.events.push(refused(
                            entra,
                            sf,
                            &p.object,
                            t,
                            why,
                            &p.records,
                            &pack.id(),
                        )),
                        None => {}
                    }
                }
                let Some(owners) = owners else { continue };
                p.placed = true;
                for (i, rec) in p.records.drain(..).enumerate() {
                    let to = owners.ids[i % owners.ids.len()].clone();
                    tentative.push((k, rec, to, owners.clone()));
                }
            }
            // Read access of every user target to the records it would get.
            let unreadable = self.unreadable(&tentative).await?;
            for (k, rec, to, owners) in tentative {
                let p = &mut pending[k];
                if unreadable.contains(&(to.clone(), rec.id.clone())) {
                    p.records.push(rec);
                    continue;
                }
                let (entra, sf, _, _) = &asked[p.leaver];
                parents
                    .entry((p.leaver, p.object.clone()))
                    .or_default()
                    .insert(rec.id.clone(), to.clone());
                out.moves
                    .entry(p.object.clone())
                    .or_default()
                    .push(Move::new(
                        entra,
                        sf,
                        (&rec.id, rec.account.as_ref()),
                        &to,
                        &owners,
                    ));
            }
            for p in &mut pending {
                if !std::mem::take(&mut p.placed) || p.records.is_empty() {
                    continue;
                }
                let (entra, sf, _, _) = &asked[p.leaver];
                if let Some(t) = p.targets.get(p.next - 1) {
                    out.events.push(refused(
                        entra,
                        sf,
                        &p.object,
                        t,
                        "TRANSFER_REQUIRES_READ: the target cannot read these records (UserRecordAccess)",
                        &p.records,
                        &pack.id(),
                    ));
                }
            }
            // Done: everything placed, or no target left to try.
            pending.retain(|p| !p.records.is_empty() && p.next < p.targets.len());
        }
        // Children the pack names follow their parent's new owner: open
        // ones only, not a record the object's own rule moves already, and
        // only to an owner who can read them.
        let mut children: Vec<(String, Move)> = Vec::new();
        for (i, (entra, sf, _, p)) in asked.iter().enumerate() {
            for r in &p.reassignments {
                let Some(moved) = parents.get(&(i, r.object.clone())) else {
                    continue;
                };
                // A child sits under its parent's account.
                let accounts: HashMap<&str, &String> = out.owned[i]
                    .1
                    .iter()
                    .filter(|(o, _)| o == &r.object)
                    .flat_map(|(_, recs)| recs)
                    .filter_map(|rec| Some((rec.id.as_str(), rec.account.as_ref()?)))
                    .collect();
                for child in &r.children {
                    let taken: HashSet<&str> = out
                        .moves
                        .get(child)
                        .into_iter()
                        .flatten()
                        .map(|m| m.record.as_str())
                        .collect();
                    let found = self.children_of(child, &r.object, sf, moved).await?;
                    for (id, to, parent) in found {
                        if taken.contains(id.as_str()) {
                            continue;
                        }
                        let named = Owners {
                            ids: vec![to.clone()],
                            named: format!("{} owner", r.object),
                        };
                        let account = accounts.get(parent.as_str()).copied();
                        children.push((
                            child.clone(),
                            Move::new(entra, sf, (&id, account), &to, &named),
                        ));
                    }
                }
            }
        }
        let check: Vec<(usize, Owned, String, Owners)> = children
            .iter()
            .map(|(_, m)| {
                let rec = Owned {
                    id: m.record.clone(),
                    account: None,
                };
                let owners = Owners {
                    ids: vec![m.to.clone()],
                    named: m.target.clone(),
                };
                (0, rec, m.to.clone(), owners)
            })
            .collect();
        let unreadable = self.unreadable(&check).await?;
        for (child, m) in children {
            if unreadable.contains(&(m.to.clone(), m.record.clone())) {
                out.events.push(AuditEvent {
                    event: "leaver.target_refused".into(),
                    entra_id: Some(m.entra_id.clone()),
                    sf_id: Some(m.from.clone()),
                    detail: json!({
                        "object": child, "target": m.target, "reason": "TRANSFER_REQUIRES_READ: the parent's new owner cannot read this child record (UserRecordAccess)",
                        "records": 1, "record_ids": [m.record], "pack": pack.id(), "rule": "on-leave",
                    }),
                });
                continue;
            }
            out.moves.entry(child).or_default().push(m);
        }
        Ok(Some(out))
    }

    /// The (user, record) pairs where the user may not read the record:
    /// `UserRecordAccess`, one user and at most 200 records a query, the
    /// queries kept `concurrency` in flight. Queues are not checked.
    async fn unreadable(
        &self,
        tentative: &[(usize, Owned, String, Owners)],
    ) -> Result<HashSet<(String, String)>, SyncError> {
        let mut per_user: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (_, rec, to, _) in tentative {
            if to.starts_with("005") {
                per_user.entry(to).or_default().push(&rec.id);
            }
        }
        let mut calls = Vec::new();
        for (user, records) in &per_user {
            for chunk in records.chunks(200) {
                let list: Vec<String> = chunk.iter().map(|r| soql_quote(r)).collect();
                let soql = format!(
                    "SELECT RecordId, HasReadAccess FROM UserRecordAccess WHERE UserId = {} AND RecordId IN ({})",
                    soql_quote(user),
                    list.join(", ")
                );
                let user = user.to_string();
                calls.push(async move { (user, self.salesforce.query(&soql).await) });
            }
        }
        let answers: Vec<_> = futures::stream::iter(calls)
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect()
            .await;
        let mut out = HashSet::new();
        for (user, rows) in answers {
            for r in rows? {
                if r.get("HasReadAccess") == Some(&Value::Bool(false))
                    && let Some(id) = r.get("RecordId").and_then(Value::as_str)
                {
                    out.insert((user.clone(), id.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// The open records of `object` that `owners` own, per owner.
    async fn owned_records(
        &self,
        object: &str,
        open: Option<&str>,
        owners: &[String],
    ) -> Result<HashMap<String, Vec<Owned>>, SyncError> {
        let account = HAS_ACCOUNT.contains(&object);
        let rows = self
            .query_in(owners, |list| {
                format!(
                    "SELECT Id, OwnerId{} FROM {object} WHERE OwnerId IN ({list}){}",
                    if account { ", AccountId" } else { "" },
                    open.map(|c| format!(" AND {c}")).unwrap_or_default()
                )
            })
            .await?;
        let mut out: HashMap<String, Vec<Owned>> = HashMap::new();
        for r in rows {
            let (Some(id), Some(owner)) = (
                r.get("Id").and_then(Value::as_str),
                r.get("OwnerId").and_then(Value::as_str),
            ) else {
                continue;
            };
            out.entry(owner.to_string()).or_default().push(Owned {
                id: id.to_string(),
                account: r
                    .get("AccountId")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        Ok(out)
    }

    /// Records of `child` the leaver owns whose parent (`{parent}Id`)
    /// moves: (record id, the parent's new owner).
    async fn children_of(
        &self,
        child: &str,
        parent: &str,
        owner: &str,
        parents: &HashMap<String, String>,
    ) -> Result<Vec<(String, String, String)>, SyncError> {
        let field = format!("{parent}Id");
        // Closed children keep their owner, as closed parents do.
        let open = OPEN_RECORDS
            .iter()
            .find(|(o, _)| *o == child)
            .map(|(_, c)| format!(" AND {c}"))
            .unwrap_or_default();
        let soql = format!(
            "SELECT Id, {field} FROM {child} WHERE OwnerId = {}{open}",
            soql_quote(owner)
        );
        Ok(self
            .salesforce
            .query(&soql)
            .await?
            .into_iter()
            .filter_map(|r| {
                let parent = r.get(&field)?.as_str()?;
                let to = parents.get(parent)?;
                Some((
                    r.get("Id")?.as_str()?.to_string(),
                    to.clone(),
                    parent.to_string(),
                ))
            })
            .collect())
    }

    /// Whether `target` may own records of `object`: an active user, or a
    /// queue that lists the object (and Salesforce lets queues own it).
    async fn check_target(
        &self,
        object: &str,
        target: &OwnerTarget,
        leaver: &crate::store::DirtyUser,
        managers: &HashMap<String, Result<String, String>>,
    ) -> Result<Result<Owners, String>, SyncError> {
        Ok(match target {
            OwnerTarget::Keep => Err("the pack keeps the records with the leaver".into()),
            OwnerTarget::Manager => match leaver.user.manager_id.as_ref() {
                None => Err("the leaver has no manager in Entra".into()),
                Some(m) => match managers.get(m) {
                    Some(Ok(sf)) => Ok(Owners {
                        ids: vec![sf.clone()],
                        named: "manager".into(),
                    }),
                    Some(Err(why)) => Err(why.clone()),
                    None => Err(format!("the manager (Entra {m}) has no Salesforce user")),
                },
            },
            OwnerTarget::User(name) => self.active_users(std::slice::from_ref(name)).await?,
            OwnerTarget::RoundRobin(names) if names.is_empty() => {
                Err("round-robin over nobody".into())
            }
            OwnerTarget::RoundRobin(names) => self.active_users(names).await?,
            OwnerTarget::Queue(dev) => {
                if NEVER_QUEUED.contains(&object) {
                    return Ok(Err(format!(
                        "queue {dev}: Salesforce does not let queues own {object} records"
                    )));
                }
                let rows = self
                    .salesforce
                    .query(&format!(
                        "SELECT Id FROM Group WHERE Type = 'Queue' AND DeveloperName = {}",
                        soql_quote(dev)
                    ))
                    .await?;
                let Some(id) = rows
                    .first()
                    .and_then(|r| r.get("Id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                else {
                    return Ok(Err(format!("queue {dev} does not exist")));
                };
                let supports = self
                    .salesforce
                    .query(&format!(
                        "SELECT Id FROM QueueSobject WHERE QueueId = {} AND SobjectType = {}",
                        soql_quote(&id),
                        soql_quote(object)
                    ))
                    .await?;
                if supports.is_empty() {
                    Err(format!("queue {dev} does not support {object}"))
                } else {
                    Ok(Owners {
                        ids: vec![id],
                        named: format!("queue {dev}"),
                    })
                }
            }
        })
    }

    /// Per manager (Entra id): its linked Salesforce user if active, else
    /// why not. One read for all of a cycle's leavers.
    async fn managers_state(
        &self,
        managers: &[String],
    ) -> Result<HashMap<String, Result<String, String>>, SyncError> {
        let links = self.store.links_of(managers).await?;
        let ids: Vec<String> = links.values().cloned().collect();
        let active: HashMap<String, bool> = self
            .query_in(&ids, |list| {
                format!("SELECT Id, IsActive FROM User WHERE Id IN ({list})")
            })
            .await?
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.get("Id")?.as_str()?.to_string(),
                    r.get("IsActive") == Some(&Value::Bool(true)),
                ))
            })
            .collect();
        Ok(links
            .into_iter()
            .map(|(m, sf)| {
                let state = match active.get(&sf) {
                    Some(true) => Ok(sf),
                    Some(false) => Err(format!("the manager's Salesforce user {sf} is inactive")),
                    None => Err(format!("the manager's Salesforce user {sf} does not exist")),
                };
                (m, state)
            })
            .collect())
    }

    /// The active users among `names` (Usernames), in the order given.
    async fn active_users(&self, names: &[String]) -> Result<Result<Owners, String>, SyncError> {
        let list: Vec<String> = names.iter().map(|v| soql_quote(v)).collect();
        let rows = self
            .salesforce
            .query(&format!(
                "SELECT Id, Username, IsActive FROM User WHERE Username IN ({})",
                list.join(", ")
            ))
            .await?;
        let active: HashMap<String, String> = rows
            .iter()
            .filter(|r| r.get("IsActive") == Some(&Value::Bool(true)))
            .filter_map(|r| {
                Some((
                    r.get("Username")?.as_str()?.to_lowercase(),
                    r.get("Id")?.as_str()?.to_string(),
                ))
            })
            .collect();
        let ids: Vec<String> = names
            .iter()
            .filter_map(|n| active.get(&n.to_lowercase()).cloned())
            .collect();
        Ok(if ids.is_empty() {
            Err(format!(
                "no active Salesforce user among {}",
                names.join(", ")
            ))
        } else {
            Ok(Owners {
                ids,
                named: names.join(", "),
            })
        })
    }

    /// Asks the pack's `on-leave` (on a blocking thread: rules may call
    /// the host API, which reads Salesforce). Refusals are audited.
    async fn ask_on_leave(
        &self,
        cycle: Option<&str>,
        pack: &std::sync::Arc<crate::rules::Pack>,
        leaver: &crate::store::DirtyUser,
        records: Vec<OwnedRecords>,
    ) -> Result<Result<ReassignmentPlan, crate::rules::RuleError>, SyncError> {
        let env = self.rules_env();
        let (pack, user, groups, worker_env) = (
            pack.clone(),
            leaver.user.clone(),
            leaver.groups.clone(),
            env.clone(),
        );
        let decided = tokio::task::spawn_blocking(move || {
            pack.on_leave(&user, &groups, &records, &worker_env)
        })
        .await
        .map_err(|e| SyncError::Evaluation(format!("the on-leave thread failed: {e}")))?;
        let refusals = env.take_refusals();
        if let Some(cycle) = cycle {
            self.audit_refusals(cycle, &refusals).await?;
        }
        Ok(decided)
    }

    /// Sets the new owners: Collections with `Sforce-Auto-Assign: FALSE`
    /// (assignment rules would hand Leads and Cases to someone else again)
    /// up to the bulk threshold, Bulk API 2.0 above it. Rows go ordered by
    /// parent account, and a Collections batch never splits an account
    /// that fits in one, so concurrent calls do not fight over an
    /// account's lock. Rows refused with UNABLE_TO_LOCK_ROW (or that a
    /// job did not reach) are sent again through Collections, with a
    /// doubling pause, up to [`LOCK_RETRIES`] times. `moves`: (record, new
    /// owner, account). Returns (moved: record, owner) and (refused:
    /// record, error).
    async fn transfer(
        &self,
        object: &str,
        moves: &[(String, String, Option<String>)],
    ) -> Result<(Vec<(String, String)>, Vec<(String, String)>), SyncError> {
        let mut moved = Vec::new();
        let mut refused = Vec::new();
        if moves.is_empty() {
            return Ok((moved, refused));
        }
        let mut order: Vec<usize> = (0..moves.len()).collect();
        order.sort_by(|&a, &b| {
            moves[a]
                .2
                .cmp(&moves[b].2)
                .then_with(|| moves[a].0.cmp(&moves[b].0))
        });
        let row = |i: usize| {
            let mut m = Map::new();
            m.insert("Id".into(), json!(moves[i].0));
            m.insert("OwnerId".into(), json!(moves[i].1));
            m
        };
        let done = |i: usize| (moves[i].0.clone(), moves[i].1.clone());
        let mut retry: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        if moves.len() > self.cfg.reassign_bulk_threshold {
            let rows: Vec<Map<String, Value>> = order.iter().map(|&i| row(i)).collect();
            let out = self
                .salesforce
                .ingest(object, BulkOperation::Update, &rows)
                .await
                .map_err(SyncError::Reassign)?;
            if out.rows.iter().any(|r| matches!(r, RowOutcome::Failed { error, .. } if error.code == "UNABLE_TO_LOCK_ROW")) {
                // The job met locks: give the other transactions time
                // before the Collections retry.
                self.lock_pause(0).await;
                attempt = 1;
            }
            for (&i, r) in order.iter().zip(&out.rows) {
                match r {
                    RowOutcome::Success { .. } => moved.push(done(i)),
                    RowOutcome::Failed { error, .. } if error.code == "UNABLE_TO_LOCK_ROW" => {
                        retry.push(i);
                    }
                    RowOutcome::Failed { error, .. } => {
                        refused.push((
                            moves[i].0.clone(),
                            format!("{}: {}", error.code, error.message),
                        ));
                    }
                    RowOutcome::Unprocessed => retry.push(i),
                }
            }
        } else {
            retry = order;
        }
        // Collections: everything under the threshold, and the rows a bulk
        // job could not lock or did not reach; up to the configured number
        // of calls in flight, as apply does.
        while !retry.is_empty() {
            let batches = account_batches(&retry, |i| moves[i].2.as_deref(), 200);
            let mut calls = Vec::with_capacity(batches.len());
            for batch in &batches {
                let records: Vec<Map<String, Value>> = batch.iter().map(|&i| row(i)).collect();
                calls.push(async move {
                    self.salesforce
                        .update_many_with(object, &records, &[("Sforce-Auto-Assign", "FALSE")])
                        .await
                });
            }
            let sent: Vec<_> = futures::stream::iter(calls)
                .buffered(self.cfg.concurrency.clamp(1, 25))
                .collect()
                .await;
            let mut locked = Vec::new();
            for (batch, results) in batches.iter().zip(sent) {
                let results = match results {
                    Ok(r) => r,
                    // The API allocation is spent: stop the cycle.
                    Err(e) if e.is_limit() => return Err(e.into()),
                    // The call failed: its rows are refused (and audited),
                    // the others stand.
                    Err(e) => {
                        refused.extend(batch.iter().map(|&i| (moves[i].0.clone(), e.to_string())));
                        continue;
                    }
                };
                for (&i, r) in batch.iter().zip(results) {
                    if r.success {
                        moved.push(done(i));
                    } else if attempt < LOCK_RETRIES
                        && r.errors.iter().any(|e| e.code == "UNABLE_TO_LOCK_ROW")
                    {
                        locked.push(i);
                    } else {
                        refused.push((moves[i].0.clone(), r.error_text()));
                    }
                }
            }
            if !locked.is_empty() {
                // Another transaction holds the rows: give it time.
                self.lock_pause(attempt).await;
            }
            attempt += 1;
            retry = locked;
        }
        Ok((moved, refused))
    }

    /// The pause before the `attempt`-th resend of rows refused for a lock.
    async fn lock_pause(&self, attempt: u32) {
        let pause = self
            .cfg
            .retry_base_ms
            .max(1)
            .saturating_mul(1 << attempt.min(16));
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
}

/// Drops the target users who are leaving themselves (a leaver of this
/// cycle, or frozen and not yet deactivated); none left is a refusal.
fn without_leavers(mut o: Owners, leaving: &HashSet<String>) -> Result<Owners, String> {
    o.ids.retain(|id| !leaving.contains(id));
    if o.ids.is_empty() {
        Err(format!(
            "{} is leaving too (a leaver of this cycle, or frozen and not yet deactivated)",
            o.named
        ))
    } else {
        Ok(o)
    }
}

/// Read-access queries in flight at once. They are short reads (one user
/// and at most 200 records each): Salesforce's limit on concurrent
/// requests counts only those running over 20 s, and a mass leave needs
/// one query per target user.
const CHECK_CONCURRENCY: usize = 10;

/// Times a row refused with UNABLE_TO_LOCK_ROW is sent again.
const LOCK_RETRIES: u32 = 3;

/// Splits rows (already ordered by account) into batches of at most `max`
/// that keep each account's rows together when they fit in one batch.
fn account_batches<'a>(
    rows: &[usize],
    account: impl Fn(usize) -> Option<&'a str>,
    max: usize,
) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let key = account(rows[start]);
        let mut end = start + 1;
        // Records without an account share no lock: each is its own group.
        while key.is_some() && end < rows.len() && account(rows[end]) == key {
            end += 1;
        }
        let group = &rows[start..end];
        if current.len() + group.len() > max && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
        }
        if group.len() > max {
            batches.extend(group.chunks(max).map(<[usize]>::to_vec));
        } else {
            current.extend_from_slice(group);
        }
        start = end;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// The readable preview of leavers' records, for `provisor plan`;
/// `upn` names a leaver by its Entra id.
pub fn render_previews(previews: &[ReassignPreview], upn: &dyn Fn(&str) -> String) -> String {
    use std::fmt::Write as _;
    if previews.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("\nleavers' open records (previewed; nothing moves until a sync):\n");
    let mut last = "";
    for p in previews {
        if p.entra_id != last {
            let _ = writeln!(out, "  {} (Salesforce {}):", upn(&p.entra_id), p.sf_id);
            last = &p.entra_id;
        }
        if let Some(note) = &p.note {
            let _ = writeln!(out, "    {}: {note}", p.object);
            continue;
        }
        let mut parts: Vec<String> =
            p.to.iter()
                .map(|(target, owner, n)| format!("{n} to {owner} ({target})"))
                .collect();
        if p.staying > 0 {
            parts.push(if p.deactivate_anyway {
                format!(
                    "{} stay with the leaver, deactivated anyway (the pack says so)",
                    p.staying
                )
            } else {
                format!(
                    "{} stay with the leaver, which then stays frozen and active",
                    p.staying
                )
            });
        }
        let _ = writeln!(out, "    {}: {}", p.object, parts.join("; "));
    }
    out
}

/// A refused target, for the audit trail.
fn refused(
    entra: &str,
    sf: &str,
    object: &str,
    target: &OwnerTarget,
    why: &str,
    records: &[Owned],
    pack: &str,
) -> AuditEvent {
    AuditEvent {
        event: "leaver.target_refused".into(),
        entra_id: Some(entra.to_string()),
        sf_id: Some(sf.to_string()),
        detail: json!({
            "object": object, "target": format!("{target:?}"), "reason": why,
            "records": records.len(),
            "record_ids": records.iter().take(50).map(|r| r.id.as_str()).collect::<Vec<_>>(),
            "pack": pack, "rule": "on-leave",
        }),
    }
}

/// One record to move, with what the audit trail says about it.
struct Move {
    record: String,
    to: String,
    /// The parent account, so that batches do not split one account.
    account: Option<String>,
    entra_id: String,
    from: String,
    target: String,
}

impl Move {
    fn new(
        entra_id: &str,
        from: &str,
        (record, account): (&str, Option<&String>),
        to: &str,
        owners: &Owners,
    ) -> Self {
        Self {
            record: record.to_string(),
            to: to.to_string(),
            account: account.cloned(),
            entra_id: entra_id.to_string(),
            from: from.to_string(),
            target: owners.named.clone(),
        }
    }

    fn transferred(&self, object: &str, to: &str, pack: &str) -> AuditEvent {
        AuditEvent {
            event: "record.reassigned".into(),
            entra_id: Some(self.entra_id.clone()),
            sf_id: Some(self.from.clone()),
            detail: json!({
                "object": object, "record": self.record, "from": self.from, "to": to,
                "target": self.target, "pack": pack, "rule": "on-leave",
            }),
        }
    }

    fn failed(&self, object: &str, err: &str) -> AuditEvent {
        AuditEvent {
            event: "record.reassign_failed".into(),
            entra_id: Some(self.entra_id.clone()),
            sf_id: Some(self.from.clone()),
            detail: json!({"object": object, "record": self.record, "error": err}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::account_batches;

    #[test]
    fn batches_keep_an_account_together_when_it_fits() {
        // Accounts of rows 0..: A x3, B x2, none x2, C x5.
        let acc = [
            Some("A"),
            Some("A"),
            Some("A"),
            Some("B"),
            Some("B"),
            None,
            None,
            Some("C"),
            Some("C"),
            Some("C"),
            Some("C"),
            Some("C"),
        ];
        let rows: Vec<usize> = (0..acc.len()).collect();
        let b = account_batches(&rows, |i| acc[i], 4);
        assert_eq!(
            b,
            vec![vec![0, 1, 2], vec![3, 4, 5, 6], vec![7, 8, 9, 10], vec![11]]
        );
        // Nothing lost, nothing twice.
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, rows);
        assert!(account_batches(&[], |_| None, 4).is_empty());
    }
}
