//! The sync engine: one cycle reads Entra changes into the store, runs the
//! rule pack for every user with work owed, matches and diffs against
//! Salesforce into a [`Plan`], applies it through the outbox and audits.

mod access;
mod apply;
pub mod blockers;
mod directory;
mod guard;
mod leave;
mod reconcile;
mod release;

pub use leave::{ReassignPreview, render_previews};
pub use reconcile::{Drift, DriftReport};

pub use guard::Orphan;
pub mod plan;
pub mod scope;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value, json};

pub use plan::{Action, ActionKind, Basis, Change, Plan};

use crate::audit::AuditEvent;
use crate::config::SyncConfig;
use crate::entra::{EntraClient, EntraError};
use crate::model::{Access, DesiredUser, FieldValue};
use crate::rules::{MatchKey, PackSlot, Reload, RuleError};
use crate::salesforce::{SalesforceClient, SfError, soql_quote};
use crate::store::{DirtyUser, Store, StoreError};

/// A Salesforce record as the REST API returns it.
type SfRecord = Map<String, Value>;
/// Records indexed by a lower-cased key value.
type Index = HashMap<String, Vec<SfRecord>>;

/// Empty delta pages in a row before a round is declared stalled.
const MAX_EMPTY_PAGES: usize = 1000;

/// A fetched delta page of either resource, items not parsed yet.
struct AnyPage {
    resource: &'static str,
    raw: crate::entra::RawPage,
}

impl AnyPage {
    fn next_link(&self) -> Option<&str> {
        self.raw.next_link.as_deref()
    }
    fn delta_link(&self) -> Option<&str> {
        self.raw.delta_link.as_deref()
    }
}

/// URL-encoded characters of one SOQL `IN (...)` list. Queries travel in
/// the URL, which Salesforce caps at 16,384 bytes (414 above); 14,000
/// leaves room for the rest of the statement and the path: 500 record ids,
/// or about 280 usernames, a query.
const IN_LIST_ENCODED: usize = 14_000;

/// Adds `actions` to a chunked cycle's report plan up to
/// [`REPORT_ACTIONS`], counting the rest in `omitted`.
fn keep_for_report(kept: &mut Vec<Action>, omitted: &mut usize, actions: Vec<Action>) {
    let room = REPORT_ACTIONS.saturating_sub(kept.len());
    *omitted += actions.len().saturating_sub(room);
    kept.extend(actions.into_iter().take(room));
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Actions a chunked cycle's report keeps (the rest are counted in
/// `plan_omitted`): a 100k-user plan would not fit the memory budget.
const REPORT_ACTIONS: usize = 2_000;

/// Settings: the `$select` the users deltaLink tracks; the wider one a
/// baseline round under way reads; one Graph refused.
const SELECT_TRACKED: &str = "entra.users.select";
/// Setting: when managers were last read outside delta (RFC 3339).
const MANAGERS_READ_AT: &str = "entra.managers.read_at";
const SELECT_PENDING: &str = "entra.users.select_pending";
const SELECT_REFUSED: &str = "entra.users.select_refused";

/// How long `s` is once form-URL-encoded (as the query travels).
fn encoded_len(s: &str) -> usize {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .map(str::len)
        .sum()
}

/// Quoted, comma-separated `IN` lists of `values`, each at most `budget`
/// characters once URL-encoded (a single longer literal gets a list of its
/// own).
fn in_lists(values: &[String], budget: usize) -> Vec<String> {
    const SEPARATOR: usize = 4; // ", " is "%2C+"
    let mut lists = Vec::new();
    let mut list = String::new();
    let mut size = 0;
    for v in values {
        let quoted = soql_quote(v);
        let len = encoded_len(&quoted);
        if !list.is_empty() && size + SEPARATOR + len > budget {
            size = 0;
            lists.push(std::mem::take(&mut list));
        }
        if !list.is_empty() {
            list.push_str(", ");
            size += SEPARATOR;
        }
        list.push_str(&quoted);
        size += len;
    }
    if !list.is_empty() {
        lists.push(list);
    }
    lists
}

/// Above this many users to match by key, the User table is read whole
/// instead of looked up IN-list by IN-list (20 calls per key at this size).
const SCAN_THRESHOLD: usize = 2000;

/// Why a cycle stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error(transparent)]
    Salesforce(#[from] SfError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error("rule evaluation: {0}")]
    Evaluation(String),
    /// Moving a leaver's records through Bulk API 2.0 failed as a whole.
    #[error("reassigning a leaver's records: {0}")]
    Reassign(#[source] crate::salesforce::BulkError),
    /// The task planning a large cycle's next chunk stopped (it panicked).
    #[error("planning the cycle's next chunk of users failed: {0}")]
    Planner(String),
    #[error("the plan is refused: {0}; run `provisor plan` again")]
    StalePlan(String),
    #[error("no Entra user {0:?} in the mirror (give an object id or a userPrincipalName)")]
    UnknownUser(String),
}

/// Progress of a cycle, for bars and logs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A delta page was journaled.
    Page {
        resource: &'static str,
        items: usize,
    },
    /// Planning starts for this many users.
    Planning { users: usize },
    /// Applying starts for this many writes.
    Applying { writes: usize },
    /// This many more writes are settled.
    Applied { n: usize },
}

/// Something that wants to hear about progress.
pub trait Observer: Send + Sync {
    fn on(&self, p: Progress);
}

/// Ignores progress.
pub struct Quiet;

impl Observer for Quiet {
    fn on(&self, _: Progress) {}
}

/// What a cycle did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    pub cycle: String,
    pub delta_pages: usize,
    pub entra_changes: usize,
    /// Users, groups and memberships a full resync found gone.
    pub swept: usize,
    pub users_considered: usize,
    pub created: usize,
    pub updated: usize,
    pub deactivated: usize,
    pub reactivated: usize,
    pub frozen: usize,
    pub unfrozen: usize,
    pub permission_sets_assigned: usize,
    pub permission_sets_removed: usize,
    /// Grants of every kind (permission sets, groups, licences, queues).
    pub granted: usize,
    /// Revocations of every kind.
    pub revoked: usize,
    pub linked: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub parked: usize,
    /// Users waiting for a licence seat (retried each cycle, never failed).
    pub waiting: usize,
    /// One line per waiting user: `upn: reason`.
    pub waiting_for: Vec<String>,
    /// One line per failed user: `entra id: error`.
    pub failures: Vec<String>,
    pub plan: Plan,
    /// Leavers' open records moved to a new owner.
    #[serde(skip_serializing_if = "is_zero")]
    pub records_reassigned: usize,
    /// Licence seats deactivated leavers freed (user licences and the
    /// permission set licences provisor had granted them).
    #[serde(skip_serializing_if = "is_zero")]
    pub seats_released: usize,
    /// Actions of a large (chunked) cycle left out of `plan`, which keeps
    /// the first ones.
    #[serde(skip_serializing_if = "is_zero")]
    pub plan_omitted: usize,
}

/// Per-user outcome while a cycle runs.
#[derive(Default)]
pub(crate) struct Outcome {
    /// The user's work failed; counts as an attempt.
    failed: Option<String>,
    /// The user's actions were not sent (the cycle stopped first): it stays
    /// dirty without counting an attempt.
    deferred: bool,
    /// Held back by something outside provisor's control (no licence seat):
    /// stays dirty, spends no attempt, is retried every cycle.
    waiting: Option<String>,
    /// The audit event for a newly held user (default: waiting for a licence).
    hold_event: Option<&'static str>,
    /// The hold is audited already (with more detail) where it arose.
    quiet: bool,
    /// The failure will not pass by retrying (org automation refused the
    /// save): park the user at once.
    permanent: bool,
}

/// How a held adoption's review reason starts.
const ADOPTION: &str = "adoption: changes that may reduce access";

/// How long Salesforce waits for a new Email's owner to confirm it.
const EMAIL_CONFIRMATION_HOURS: i64 = 72;

/// What `provisor provision` did for one user, step by step.
pub struct Provisioned {
    pub user: Option<crate::model::EntraUser>,
    pub groups: Vec<String>,
    /// Why the configuration's scope leaves the user out, if it does.
    pub configuration_scope: Option<String>,
    /// The rules' answer (scope, match keys, desired user) or their error.
    pub evaluation: Option<Result<crate::rules::Evaluation, String>>,
    /// The cycle run for the user alone.
    pub report: CycleReport,
}

/// Why a match needs an operator, and the Salesforce users involved.
type NeedsReview = (String, Vec<String>);

/// What planning produced.
pub(crate) struct Planned {
    pub plan: Plan,
    outcomes: HashMap<String, Outcome>,
    dirty: Vec<DirtyUser>,
    /// What the packs asked for beyond their manifests (to audit).
    refusals: Vec<crate::rules::Refusal>,
    /// Ambiguous matches to put in the review queue: (user, why, candidates).
    reviews: Vec<(String, String, Vec<String>)>,
    /// (user, manager) whose ManagerId waits for the manager's account.
    manager_pass: Vec<(String, String)>,
    /// Names of profiles, roles and permission sets resolved to ids.
    refs: Refs,
    /// The access kinds `refs.catalog` covers.
    covered: HashSet<Access>,
    /// Planned users' accounts as read: (Entra id, record).
    observed: Vec<(String, SfRecord)>,
}

/// What planning a large cycle chunk by chunk carries from one chunk to
/// the next, so that no chunk reads it again or forgets it: the reference
/// lookups (and the seats they count down), the one read of the User
/// table, aliases in use, and Salesforce users already claimed.
#[derive(Default)]
pub(crate) struct CycleMemo {
    /// Profiles, roles and the access catalog, with the kinds it covers.
    refs: Option<(Refs, HashSet<Access>)>,
    seats: Option<Seats>,
    scan: Option<Scan>,
    aliases: HashSet<String>,
    alias_next: HashMap<String, usize>,
    claimed: HashMap<String, String>,
}

/// User licences: each profile's, the seats left, names by id.
struct Seats {
    profile_licence: HashMap<String, String>,
    seats: HashMap<String, (String, i64, i64)>,
    licence_names: HashMap<String, String>,
}

/// The whole User table, read once with `select`, indexed per key field
/// (lower-case value) as chunks ask for them. Indexes hold row numbers:
/// copies of the rows, one set per key field, were the largest part of a
/// large cycle's memory.
struct Scan {
    select: Vec<String>,
    rows: Vec<SfRecord>,
    by_field: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl Scan {
    /// The rows whose `field` has the lower-case `value`.
    fn lookup(&mut self, field: &str, value: &str) -> Vec<SfRecord> {
        let rows = &self.rows;
        let index = self.by_field.entry(field.to_string()).or_insert_with(|| {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, r) in rows.iter().enumerate() {
                if let Some(v) = r.get(field).and_then(sf_key_text) {
                    index.entry(v).or_default().push(i);
                }
            }
            index
        });
        index
            .get(value)
            .map(|at| at.iter().map(|i| rows[*i].clone()).collect())
            .unwrap_or_default()
    }
}

/// Salesforce access objects by name, read once per cycle.
#[derive(Debug, Default, Clone)]
pub(crate) struct Refs {
    pub profiles: HashMap<String, String>,
    pub roles: HashMap<String, String>,
    pub catalog: access::Catalog,
}

/// The engine for one tenant ↔ org connection.
///
/// Cheap to clone (its parts are shared): a large cycle plans its next
/// chunk on another task while the current one is applied.
#[derive(Clone)]
pub struct Engine {
    pub entra: std::sync::Arc<EntraClient>,
    /// Shared with the rules' host API, which reads on a blocking thread.
    pub salesforce: std::sync::Arc<SalesforceClient>,
    pub store: Store,
    /// The rule pack in use, replaced in place by [`Engine::reload_rules`].
    pub pack: std::sync::Arc<PackSlot>,
    pub cfg: SyncConfig,
    /// Which Entra users are managed.
    pub scope: scope::Scope,
    /// The organisation's mapping tables (`[rules.tables]`) for packs.
    pub org_tables: std::sync::Arc<BTreeMap<String, BTreeMap<String, String>>>,
    /// Counters for `[metrics]`.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Deletion threshold and protected users.
    pub safety: crate::config::SafetyConfig,
}

fn new_cycle_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Text of a Salesforce value, for comparisons.
fn sf_text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Whether Salesforce already holds the desired value. Username and Email
/// compare without case: Salesforce may store them lower-cased, and a
/// case-only difference must not become an update every cycle.
fn same(field: &str, desired: &FieldValue, current: Option<&Value>) -> bool {
    match desired {
        FieldValue::Null => sf_text(current).is_none(),
        FieldValue::Text(s) if s.is_empty() => sf_text(current).is_none(),
        FieldValue::Text(s) => match sf_text(current) {
            Some(c) if matches!(field, "Username" | "Email") => c.eq_ignore_ascii_case(s),
            // A numbered variant given to avoid a clash stays.
            Some(c) if field == "Alias" => alias_candidates(s).any(|a| a == c),
            Some(c) => &c == s,
            None => false,
        },
        FieldValue::Bool(b) => current.and_then(Value::as_bool) == Some(*b),
        FieldValue::Number(n) => current.and_then(Value::as_f64) == Some(*n),
    }
}

/// Alias candidates checked against the org before a create: the wanted
/// one and its first numbered variants.
const ALIAS_LOOKAHEAD: usize = 10;

/// A wanted Alias, then variants with a number in its last characters
/// (`jsmith`, `jsmith2`, ... `jsmit10`): at most 8 characters, the same
/// sequence every time, so a user's alias depends only on what is taken.
fn alias_candidates(alias: &str) -> impl Iterator<Item = String> + '_ {
    (0..ALIAS_VARIANTS).map(move |i| alias_variant(alias, i))
}

/// How many aliases one wanted alias can become (`x`, `x2` ... `x999`).
const ALIAS_VARIANTS: usize = 999;

/// The `i`-th alias candidate: the wanted alias, then `i + 1` in its last
/// characters.
fn alias_variant(alias: &str, i: usize) -> String {
    if i == 0 {
        return alias.chars().take(8).collect();
    }
    let n = (i + 1).to_string();
    let keep = 8usize.saturating_sub(n.len());
    format!("{}{n}", alias.chars().take(keep).collect::<String>())
}

/// Keeps the grants whose permission set licence has a seat (taking it);
/// a licence without seats holds back itself and the permission sets that
/// need it, and says why (the user waits, the rest goes ahead).
fn with_seats(
    catalog: &mut access::Catalog,
    grants: Vec<(Access, String)>,
) -> (Vec<(Access, String)>, Option<String>) {
    let mut blocked: HashSet<String> = HashSet::new();
    let mut waiting = None;
    let mut out = Vec::with_capacity(grants.len());
    // Licences sort first (Access order), so they are decided before the
    // permission sets that need them.
    for (access, name) in grants {
        match access {
            Access::PermissionSetLicense => {
                if let Err(why) = catalog.take_seat(&name) {
                    blocked.insert(name);
                    waiting.get_or_insert(why);
                    continue;
                }
            }
            Access::PermissionSet
                if catalog
                    .licence_of(&name)
                    .is_some_and(|l| blocked.contains(l)) =>
            {
                continue;
            }
            _ => {}
        }
        out.push((access, name));
    }
    (out, waiting)
}

/// Name -> Id of query rows that have both.
fn by_name(rows: Vec<SfRecord>) -> HashMap<String, String> {
    rows.into_iter()
        .filter_map(|r| {
            Some((
                r.get("Name")?.as_str()?.to_string(),
                r.get("Id")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// A Salesforce value as a match-key index holds it: text lower-cased
/// (SOQL compares case-insensitively), numbers as written.
fn sf_key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn current_value(v: Option<&Value>) -> FieldValue {
    v.and_then(FieldValue::from_json)
        .unwrap_or(FieldValue::Null)
}

fn text_field(d: &DesiredUser, name: &str) -> Option<String> {
    d.fields
        .get(name)
        .and_then(FieldValue::as_text)
        .map(str::to_string)
}

impl Engine {
    /// Runs one full cycle: read → decide → plan → apply → audit.
    pub async fn sync_once(&self, obs: &dyn Observer) -> Result<CycleReport, SyncError> {
        let cycle = new_cycle_id();
        let recovered = self.store.recover_outbox().await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "actions from an interrupted cycle had no recorded result; their users will be matched again before any create"
            );
            self.store
                .append_audit(
                    &cycle,
                    &[AuditEvent {
                        event: "outbox.recovered".into(),
                        entra_id: None,
                        sf_id: None,
                        detail: json!({"actions": recovered}),
                    }],
                )
                .await?;
        }
        let report = self.read_both(&cycle, obs).await?;
        self.reread_managers_if_due(&cycle).await?;
        self.replan_on_new_rules(&cycle).await?;
        self.decide_and_apply(cycle, report, None, None, obs).await
    }

    /// With `sync.manager`, every `sync.manager_reread_hours` reads every
    /// user's manager outside delta and marks those that changed dirty. A
    /// failed read is logged and audited; the cycle goes on and the next
    /// one tries again.
    async fn reread_managers_if_due(&self, cycle: &str) -> Result<(), SyncError> {
        if !self.cfg.manager || self.cfg.manager_reread_hours == 0 {
            return Ok(());
        }
        let now = chrono::Utc::now();
        let last = self
            .store
            .setting(MANAGERS_READ_AT)
            .await?
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok());
        let Some(last) = last else {
            // The first read of Entra brought every manager.
            self.store
                .set_setting(MANAGERS_READ_AT, &now.to_rfc3339())
                .await?;
            return Ok(());
        };
        let hours = i64::try_from(self.cfg.manager_reread_hours).unwrap_or(i64::MAX);
        if now.signed_duration_since(last) < chrono::Duration::hours(hours) {
            return Ok(());
        }
        let event = match self.entra.managers().await {
            Ok(managers) => {
                let users = managers.len();
                let managers: HashMap<String, Option<String>> = managers.into_iter().collect();
                let changed = self.store.refresh_managers(&managers).await?;
                self.store
                    .set_setting(MANAGERS_READ_AT, &now.to_rfc3339())
                    .await?;
                if changed > 0 {
                    tracing::info!(changed, "managers changed without showing in delta");
                }
                AuditEvent {
                    event: "entra.managers.reread".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"users": users, "changed": changed}),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading managers failed; the next cycle tries again");
                AuditEvent {
                    event: "entra.managers.reread_failed".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"error": e.to_string()}),
                }
            }
        };
        self.store.append_audit(cycle, &[event]).await?;
        Ok(())
    }

    /// A cycle's report after reading Entra's users and groups into the mirror.
    async fn read_both(&self, cycle: &str, obs: &dyn Observer) -> Result<CycleReport, SyncError> {
        let mut report = CycleReport {
            cycle: cycle.to_string(),
            ..Default::default()
        };
        // The two delta rounds are independent (memberships name users by
        // id, whichever arrives first): read them side by side, so a cycle
        // waits for the longer round, not for both in turn.
        let mut groups = report.clone();
        let (users, groups_read) = tokio::join!(
            self.read("users", obs, &mut report),
            self.read("groups", obs, &mut groups)
        );
        users?;
        groups_read?;
        report.delta_pages += groups.delta_pages;
        report.entra_changes += groups.entra_changes;
        report.swept += groups.swept;
        Ok(report)
    }

    /// `provisor provision USER`: reads Entra, then runs one user (by object
    /// id or UPN) through scope, match, map, plan, guard and apply now,
    /// whether or not it changed. Returns the user's id and the cycle.
    pub async fn provision(&self, who: &str, obs: &dyn Observer) -> Result<Provisioned, SyncError> {
        let cycle = new_cycle_id();
        let report = self.read_both(&cycle, obs).await?;
        let id = self
            .store
            .find_user(who)
            .await?
            .ok_or_else(|| SyncError::UnknownUser(who.to_string()))?;
        self.store.mark_dirty(&id).await?;
        // What the rules say, for the operator (the cycle decides the same).
        let one: Vec<DirtyUser> = self
            .store
            .dirty_users()
            .await?
            .into_iter()
            .filter(|d| d.user.id == id)
            .collect();
        let config_scope: Vec<Option<String>> = one
            .iter()
            .map(|d| self.scope.check(&d.user, &d.group_refs).err())
            .collect();
        let (mut evals, _) = self
            .evaluate_all(&self.pack.get(), &one, &config_scope, |_| true)
            .await?;
        let evaluation = evals.pop().map(|e| e.map_err(|e| e.to_string()));
        let report = self
            .decide_and_apply(cycle, report, None, Some(&id), obs)
            .await?;
        Ok(Provisioned {
            user: one.first().map(|d| d.user.clone()),
            groups: one.first().map(|d| d.groups.clone()).unwrap_or_default(),
            configuration_scope: config_scope.into_iter().flatten().next(),
            evaluation,
            report,
        })
    }

    /// Different rules (a new pack version, a changed setting or table)
    /// plan every user again, as Entra does a full sync after a mapping
    /// change; that plan passes the same deletion threshold.
    async fn replan_on_new_rules(&self, cycle: &str) -> Result<(), SyncError> {
        let pack = self.pack.get();
        let last = self.store.setting("rules.planned_with").await?;
        if last.as_deref() == Some(pack.fingerprint.as_str()) {
            return Ok(());
        }
        if last.is_some() {
            let users = self.store.mark_all_dirty().await?;
            tracing::info!(pack = %pack.id(), users, "the rules changed: every user is planned again");
            self.store
                .append_audit(
                    cycle,
                    &[AuditEvent {
                        event: "rules.replan_all".into(),
                        entra_id: None,
                        sf_id: None,
                        detail: json!({"pack": pack.id(), "users": users}),
                    }],
                )
                .await?;
        }
        self.store
            .set_setting("rules.planned_with", &pack.fingerprint)
            .await?;
        Ok(())
    }

    /// `provisor plan`: reads Entra into the mirror, then plans and guards
    /// without writing anything to Salesforce (and without staging).
    pub async fn dry_run(&self, obs: &dyn Observer) -> Result<Plan, SyncError> {
        let cycle = new_cycle_id();
        self.read_both(&cycle, obs).await?;
        let Planned {
            mut plan,
            mut outcomes,
            ..
        } = self.plan(&cycle, obs).await?;
        self.guard(&cycle, &mut plan, &mut outcomes, true).await?;
        Ok(plan)
    }

    /// Where the open records of a plan's leavers would go: the same
    /// reads, rule and target checks as a sync, with no write at all.
    pub async fn preview_leavers(&self, plan: &Plan) -> Result<Vec<ReassignPreview>, SyncError> {
        let leavers = plan
            .accounts_where(|a| matches!(a.kind, ActionKind::Deactivate | ActionKind::Handover));
        self.preview_reassignments(&leavers).await
    }

    /// `provisor apply --plan FILE`: applies an approved plan, and refuses
    /// one whose basis changed since it was made: Entra was read further
    /// (other delta links), or planning again now gives other actions
    /// (Salesforce or the mirror changed). Entra is not read first.
    pub async fn apply_approved(
        &self,
        approved: &Plan,
        obs: &dyn Observer,
    ) -> Result<CycleReport, SyncError> {
        let cycle = new_cycle_id();
        let report = CycleReport {
            cycle: cycle.clone(),
            ..Default::default()
        };
        self.decide_and_apply(cycle, report, Some(approved), None, obs)
            .await
    }

    /// Plan → guard → apply → settle → audit, for a cycle whose Entra
    /// reading is done; with `approved`, only if planning gives that plan.
    async fn decide_and_apply(
        &self,
        cycle: String,
        mut report: CycleReport,
        approved: Option<&Plan>,
        only: Option<&str>,
        obs: &dyn Observer,
    ) -> Result<CycleReport, SyncError> {
        if approved.is_none() && only.is_none() {
            let ids = self.store.dirty_ids().await?;
            if ids.len() > self.cfg.plan_chunk_users {
                return self.decide_and_apply_chunked(cycle, report, ids, obs).await;
            }
        }
        let Planned {
            mut plan,
            mut outcomes,
            dirty,
            refusals,
            reviews,
            manager_pass,
            refs,
            covered: _,
            observed,
        } = self.plan_for(&cycle, only, obs).await?;
        for (id, why, candidates) in &reviews {
            self.store.open_review(id, why, candidates).await?;
        }
        let guarded = self.guard(&cycle, &mut plan, &mut outcomes, false).await?;
        if let Some(want) = approved {
            if want.basis != plan.basis {
                return Err(SyncError::StalePlan(
                    "Entra was read further since it was made (its delta links are not the current ones)".into(),
                ));
            }
            if want.actions != plan.actions {
                let differ = plan
                    .actions
                    .iter()
                    .filter(|a| !want.actions.contains(a))
                    .count()
                    + want
                        .actions
                        .iter()
                        .filter(|a| !plan.actions.contains(a))
                        .count();
                return Err(SyncError::StalePlan(format!(
                    "planning now gives other actions ({differ} differ): Salesforce or the rules changed since"
                )));
            }
        }
        if !guarded.is_empty() {
            self.store.append_audit(&cycle, &guarded).await?;
        }
        self.audit_refusals(&cycle, &refusals).await?;
        report.users_considered = dirty.len();
        let mut stopped = self
            .apply(&cycle, &plan, &refs, &mut outcomes, obs, &mut report)
            .await?;
        if stopped.is_none() && !manager_pass.is_empty() {
            // Second pass: managers created in this cycle now have accounts.
            let second = self
                .manager_pass_plan(&plan, &manager_pass, &outcomes)
                .await?;
            if !second.actions.is_empty() {
                stopped = self
                    .apply(&cycle, &second, &refs, &mut outcomes, obs, &mut report)
                    .await?;
                plan.actions.extend(second.actions);
            }
        }
        // Deactivated leavers give back what provisor granted them, once
        // per cycle (not for an approved plan, which lists what it does).
        if stopped.is_none() && approved.is_none() {
            stopped = self.release_leavers(&cycle, &mut report).await?;
        }
        self.settle_users(&cycle, &dirty, &plan, &outcomes, &mut report)
            .await?;
        if stopped.is_some() {
            self.replan(&manager_pass).await?;
        }
        self.remember_state(observed, &plan, &outcomes, &refs)
            .await?;
        report.plan = plan;
        self.finish_cycle(&cycle, report, stopped).await
    }

    /// Records the last known Salesforce state of the planned users: their
    /// accounts as read, with what this cycle wrote successfully merged in
    /// (new accounts from what they were created with).
    async fn remember_state(
        &self,
        observed: Vec<(String, SfRecord)>,
        plan: &Plan,
        outcomes: &HashMap<String, Outcome>,
        refs: &Refs,
    ) -> Result<(), SyncError> {
        let mut state: HashMap<String, SfRecord> = observed
            .into_iter()
            .map(|(e, mut r)| {
                r.remove("attributes");
                (e, r)
            })
            .collect();
        let created: Vec<String> = plan
            .actions
            .iter()
            .filter(|a| matches!(a.kind, ActionKind::Create { .. }))
            .map(|a| a.entra_id.clone())
            .collect();
        let new_ids = self.store.links_of(&created).await?;
        let id_of = |names: &HashMap<String, String>, name: &str| {
            names.get(name).map_or(Value::Null, |id| json!(id))
        };
        for a in &plan.actions {
            if outcomes
                .get(&a.entra_id)
                .is_some_and(|o| o.failed.is_some() || o.deferred || o.waiting.is_some())
            {
                continue;
            }
            match &a.kind {
                ActionKind::Create {
                    fields,
                    profile,
                    role,
                } => {
                    let Some(id) = new_ids.get(&a.entra_id) else {
                        continue;
                    };
                    let mut r: SfRecord = fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_json()))
                        .collect();
                    r.insert("Id".into(), json!(id));
                    r.insert("IsActive".into(), json!(true));
                    r.insert("ProfileId".into(), id_of(&refs.profiles, profile));
                    if let Some(role) = role {
                        r.insert("UserRoleId".into(), id_of(&refs.roles, role));
                    }
                    state.insert(a.entra_id.clone(), r);
                }
                ActionKind::Update { changes } | ActionKind::Reactivate { changes } => {
                    let Some(r) = state.get_mut(&a.entra_id) else {
                        continue;
                    };
                    for (k, c) in changes {
                        let to = c.to.as_text().unwrap_or_default();
                        match k.as_str() {
                            "Profile" => r.insert("ProfileId".into(), id_of(&refs.profiles, to)),
                            "Role" => r.insert("UserRoleId".into(), id_of(&refs.roles, to)),
                            _ => r.insert(k.clone(), c.to.to_json()),
                        };
                    }
                    if matches!(a.kind, ActionKind::Reactivate { .. }) {
                        r.insert("IsActive".into(), json!(true));
                    }
                }
                ActionKind::Deactivate => {
                    if let Some(r) = state.get_mut(&a.entra_id) {
                        r.insert("IsActive".into(), json!(false));
                    }
                }
                _ => {}
            }
        }
        let rows: Vec<(String, String, String)> = state
            .into_iter()
            .filter_map(|(e, r)| {
                let sf = r.get("Id").and_then(Value::as_str)?.to_string();
                Some((sf, e, Value::Object(r).to_string()))
            })
            .collect();
        self.store.remember_sf_users(&rows).await?;
        Ok(())
    }

    /// A stopped cycle never ran its ManagerId pass: those users are
    /// planned again next cycle.
    async fn replan(&self, manager_pass: &[(String, String)]) -> Result<(), SyncError> {
        for (u, _) in manager_pass {
            self.store.mark_dirty(u).await?;
        }
        Ok(())
    }

    /// Audits what the packs asked for beyond their manifests.
    async fn audit_refusals(
        &self,
        cycle: &str,
        refusals: &[crate::rules::Refusal],
    ) -> Result<(), SyncError> {
        if refusals.is_empty() {
            return Ok(());
        }
        self.metrics.rule_refusals.inc_by(refusals.len() as u64);
        let events: Vec<AuditEvent> = refusals
            .iter()
            .map(|r| AuditEvent {
                event: "rules.refused".into(),
                entra_id: Some(r.user.clone()),
                sf_id: None,
                detail: json!({"pack": r.pack, "rule": r.rule, "capability": r.capability, "target": r.target}),
            })
            .collect();
        self.store.append_audit(cycle, &events).await?;
        Ok(())
    }

    /// The second pass of a cycle: ManagerId for users whose manager's
    /// account was created in the same cycle (and exists now).
    async fn manager_pass_plan(
        &self,
        plan: &Plan,
        manager_pass: &[(String, String)],
        outcomes: &HashMap<String, Outcome>,
    ) -> Result<Plan, SyncError> {
        let ids: Vec<String> = manager_pass
            .iter()
            .flat_map(|(u, m)| [u.clone(), m.clone()])
            .collect();
        let links = self.store.links_of(&ids).await?;
        Ok(Plan {
            cycle: plan.cycle.clone(),
            basis: plan.basis.clone(),
            actions: manager_pass
                .iter()
                .filter(|(u, _)| outcomes.get(u).is_none_or(|o| o.failed.is_none()))
                .filter_map(|(u, m)| {
                    let (sf, boss) = (links.get(u)?, links.get(m)?);
                    Some(Action {
                        entra_id: u.clone(),
                        upn: plan
                            .actions
                            .iter()
                            .find(|a| &a.entra_id == u)
                            .and_then(|a| a.upn.clone()),
                        sf_id: Some(sf.clone()),
                        kind: ActionKind::Update {
                            changes: BTreeMap::from([(
                                "ManagerId".to_string(),
                                plan::Change {
                                    from: FieldValue::Null,
                                    to: FieldValue::Text(boss.clone()),
                                },
                            )]),
                        },
                        reason: "manager: set once the manager's account exists".into(),
                    })
                })
                .collect(),
        })
    }

    /// Counts the cycle and audits how it ended.
    async fn finish_cycle(
        &self,
        cycle: &str,
        report: CycleReport,
        stopped: Option<SfError>,
    ) -> Result<CycleReport, SyncError> {
        crate::metrics::Metrics::count(
            &self.metrics.cycles,
            if stopped.is_some() {
                "failed"
            } else {
                "completed"
            },
        );
        let cycle = cycle.to_string();
        if let Some(e) = stopped {
            self.store
                .append_audit(
                    &cycle,
                    &[AuditEvent {
                        event: "cycle.stopped".into(),
                        entra_id: None,
                        sf_id: None,
                        detail: json!({"error": e.to_string(), "failed": report.failed}),
                    }],
                )
                .await?;
            return Err(e.into());
        }
        self.store
            .append_audit(&cycle, &[AuditEvent {
                event: "cycle.completed".into(),
                entra_id: None,
                sf_id: None,
                detail: json!({"created": report.created, "updated": report.updated, "deactivated": report.deactivated, "reactivated": report.reactivated, "linked": report.linked, "unchanged": report.unchanged, "failed": report.failed, "parked": report.parked, "entra_changes": report.entra_changes}),
            }])
            .await?;
        Ok(report)
    }

    /// A cycle with more dirty users than `sync.plan_chunk_users`: planned
    /// and applied a chunk at a time, so memory stays flat however large the
    /// tenant. What spans the cycle is kept once ([`CycleMemo`]). Freezes
    /// and deactivations wait until every chunk is planned, because the
    /// deletion threshold counts the whole cycle; ManagerId of users whose
    /// manager was created in a later chunk is set in a pass at the end.
    async fn decide_and_apply_chunked(
        &self,
        cycle: String,
        mut report: CycleReport,
        ids: Vec<String>,
        obs: &dyn Observer,
    ) -> Result<CycleReport, SyncError> {
        let mut memo = CycleMemo::default();
        let mut basis: Option<Basis> = None;
        let mut leavers: Vec<Action> = Vec::new();
        let mut leaver_users: Vec<DirtyUser> = Vec::new();
        let mut leaver_outcomes: HashMap<String, Outcome> = HashMap::new();
        let mut leaver_observed: Vec<(String, SfRecord)> = Vec::new();
        let mut manager_pass: Vec<(String, String)> = Vec::new();
        let mut kept: Vec<Action> = Vec::new();
        let mut stopped: Option<SfError> = None;
        // While a chunk's writes are in flight the next chunk is planned:
        // planning is CPU and reads, applying mostly waits on Salesforce.
        // What the next plan needs from this one (reference lookups, seats,
        // aliases, claimed accounts) is in `memo` before its writes start.
        let mut chunks = ids.chunks(self.cfg.plan_chunk_users);
        let mut next = match chunks.next() {
            Some(first) => Some(self.plan_chunk(&cycle, first, obs, &mut memo).await?),
            None => None,
        };
        while let Some(planned) = next.take() {
            let Planned {
                mut plan,
                mut outcomes,
                dirty,
                refusals,
                reviews,
                manager_pass: later,
                refs,
                covered,
                observed,
            } = planned;
            basis.get_or_insert_with(|| plan.basis.clone());
            for (id, why, candidates) in &reviews {
                self.store.open_review(id, why, candidates).await?;
            }
            self.audit_refusals(&cycle, &refusals).await?;
            report.users_considered += dirty.len();
            let (leave, rest): (Vec<Action>, Vec<Action>) =
                plan.actions.into_iter().partition(|a| {
                    matches!(a.kind, ActionKind::Freeze { .. } | ActionKind::Deactivate)
                });
            plan.actions = rest;
            let leaving: HashSet<String> = leave.iter().map(|a| a.entra_id.clone()).collect();
            leavers.extend(leave);
            manager_pass.extend(later);
            memo.refs = Some((refs.clone(), covered));
            let (going, staying): (Vec<DirtyUser>, Vec<DirtyUser>) = dirty
                .into_iter()
                .partition(|d| leaving.contains(&d.user.id));
            // Leavers' accounts are remembered at the end, with their
            // deactivation.
            let (gone, seen): (Vec<_>, Vec<_>) =
                observed.into_iter().partition(|(e, _)| leaving.contains(e));
            leaver_observed.extend(gone);
            let this = async {
                let stopped = self
                    .apply(&cycle, &plan, &refs, &mut outcomes, obs, &mut report)
                    .await?;
                for d in &going {
                    if let Some(o) = outcomes.remove(&d.user.id) {
                        leaver_outcomes.insert(d.user.id.clone(), o);
                    }
                }
                self.settle_users(&cycle, &staying, &plan, &outcomes, &mut report)
                    .await?;
                self.remember_state(seen, &plan, &outcomes, &refs).await?;
                Ok::<_, SyncError>(stopped)
            };
            // The next chunk is planned on a task of its own, so that it
            // runs on another core (planning in this task starved the
            // writes of CPU). It owns the memo until it is done.
            let upcoming = chunks.next().map(|c| {
                obs.on(Progress::Planning { users: c.len() });
                let engine = self.clone();
                let (cycle, chunk) = (cycle.clone(), c.to_vec());
                let mut memo = std::mem::take(&mut memo);
                tokio::spawn(async move {
                    let planned = engine.plan_chunk(&cycle, &chunk, &Quiet, &mut memo).await;
                    (planned, memo)
                })
            });
            let applied = this.await;
            let planned = match upcoming {
                None => Ok(None),
                Some(task) => {
                    let (planned, m) = task.await.map_err(|e| SyncError::Planner(e.to_string()))?;
                    memo = m;
                    planned.map(Some)
                }
            };
            stopped = applied?;
            leaver_users.extend(going);
            keep_for_report(&mut kept, &mut report.plan_omitted, plan.actions);
            if stopped.is_some() {
                // The next chunk was planned but nothing of it is sent:
                // its users stay dirty for the next cycle.
                if let Ok(Some(p)) = planned {
                    memo.refs = Some((p.refs, p.covered));
                }
                break;
            }
            next = planned?;
        }
        let basis = basis.unwrap_or_default();
        let refs = memo.refs.take().map(|(r, _)| r).unwrap_or_default();
        // Leavers of the whole cycle, under the deletion threshold.
        let mut leave = Plan {
            cycle: cycle.clone(),
            basis: basis.clone(),
            actions: leavers,
        };
        let guarded = self
            .guard(&cycle, &mut leave, &mut leaver_outcomes, false)
            .await?;
        if !guarded.is_empty() {
            self.store.append_audit(&cycle, &guarded).await?;
        }
        if stopped.is_none() && !leave.actions.is_empty() {
            stopped = self
                .apply(
                    &cycle,
                    &leave,
                    &refs,
                    &mut leaver_outcomes,
                    obs,
                    &mut report,
                )
                .await?;
        } else if stopped.is_some() {
            // Salesforce stopped the cycle before the leavers' turn: they
            // stay dirty, without spending an attempt.
            for d in &leaver_users {
                leaver_outcomes
                    .entry(d.user.id.clone())
                    .or_default()
                    .deferred = true;
            }
        }
        self.settle_users(&cycle, &leaver_users, &leave, &leaver_outcomes, &mut report)
            .await?;
        self.remember_state(leaver_observed, &leave, &leaver_outcomes, &refs)
            .await?;
        // ManagerId for users whose manager's account came later in the
        // cycle. Their users are settled already: a failure here marks
        // them for another try.
        if stopped.is_none() && !manager_pass.is_empty() {
            let mut outcomes: HashMap<String, Outcome> = HashMap::new();
            let second = self
                .manager_pass_plan(
                    &Plan {
                        cycle: cycle.clone(),
                        basis: basis.clone(),
                        actions: Vec::new(),
                    },
                    &manager_pass,
                    &outcomes,
                )
                .await?;
            if !second.actions.is_empty() {
                stopped = self
                    .apply(&cycle, &second, &refs, &mut outcomes, obs, &mut report)
                    .await?;
                for (id, o) in &outcomes {
                    if let Some(err) = &o.failed {
                        self.store.mark_dirty(id).await?;
                        self.store
                            .mark_failed(id, err, self.cfg.max_attempts)
                            .await?;
                    } else if o.deferred || o.waiting.is_some() {
                        self.store.mark_dirty(id).await?;
                    }
                }
                keep_for_report(&mut kept, &mut report.plan_omitted, second.actions);
            }
        }
        if stopped.is_some() {
            self.replan(&manager_pass).await?;
        }
        keep_for_report(&mut kept, &mut report.plan_omitted, leave.actions);
        if stopped.is_none() {
            stopped = self.release_leavers(&cycle, &mut report).await?;
        }
        report.plan = Plan {
            cycle: cycle.clone(),
            basis,
            actions: kept,
        };
        self.finish_cycle(&cycle, report, stopped).await
    }

    /// Runs cycles forever: every `interval`, or at once when a change
    /// notification arrives (if a fast trigger is given). Each cycle's
    /// outcome goes to `each`; a failed cycle does not stop the loop.
    pub async fn run_forever(
        &self,
        interval: std::time::Duration,
        mut trigger: Option<&mut crate::entra::notify::FastTrigger>,
        mut each: impl FnMut(Result<CycleReport, SyncError>),
    ) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut force = false;
        let mut last_reconcile = std::time::Instant::now();
        loop {
            // A changed pack (or SIGHUP) is tried before the cycle.
            self.reload_rules(force).await;
            force = false;
            if let Some(h) = self.cfg.reconcile_every_hours
                && last_reconcile.elapsed() >= std::time::Duration::from_secs(h.max(1) * 3600)
            {
                last_reconcile = std::time::Instant::now();
                match self.store.mark_managed_dirty().await {
                    Ok(n) => tracing::info!(
                        users = n,
                        "scheduled reconcile: every managed user is planned"
                    ),
                    Err(e) => tracing::error!(error = %e, "scheduled reconcile could not start"),
                }
            }
            each(self.sync_once(&Quiet).await);
            if let Some(t) = trigger.as_deref_mut()
                && let Err(e) = t.renew_if_due(&self.entra).await
            {
                tracing::error!(error = %e, "cannot renew change-notification subscriptions; polling continues");
            }
            let notified = async {
                match trigger.as_deref() {
                    Some(t) => t.notified().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = notified => tracing::info!("change notification: polling delta now"),
                _ = hup => {
                    tracing::info!("SIGHUP: reloading the rule pack");
                    force = true;
                }
            }
        }
    }

    /// Replaces the rule pack when its files changed (or always, with
    /// `force`): the new version must load, compile and pass its own test
    /// cases first; otherwise the last good pack keeps running. Both
    /// outcomes are audited (`rules.reloaded`, `rules.reload_failed`).
    pub async fn reload_rules(&self, force: bool) -> Reload {
        let outcome = self.pack.reload(force);
        let event = match &outcome {
            Reload::Unchanged => return outcome,
            Reload::Replaced { from, to, cases } => {
                crate::metrics::Metrics::count(&self.metrics.rule_reloads, "replaced");
                tracing::info!(%from, %to, cases, "rule pack reloaded");
                AuditEvent {
                    event: "rules.reloaded".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"from": from, "to": to, "cases_passed": cases}),
                }
            }
            Reload::Refused { running, error } => {
                crate::metrics::Metrics::count(&self.metrics.rule_reloads, "refused");
                tracing::error!(%running, %error, "rule pack refused; the last good one keeps running");
                AuditEvent {
                    event: "rules.reload_failed".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"running": running, "error": error.to_string()}),
                }
            }
        };
        if let Err(e) = self.store.append_audit("reload", &[event]).await {
            tracing::error!(error = %e, "cannot audit the rule pack reload");
        }
        outcome
    }

    /// The configured Salesforce API version, e.g. "62.0".
    pub fn salesforce_api_version(&self) -> String {
        self.salesforce.api_version().to_string()
    }

    /// Reads Entra changes into the store and stops: no rules, no
    /// Salesforce. (Benchmarks and mirror checks; `sync_once` does this first.)
    pub async fn read_entra(&self, obs: &dyn Observer) -> Result<CycleReport, SyncError> {
        let mut report = self.read_resource("users", obs).await?;
        let groups = self.read_resource("groups", obs).await?;
        report.delta_pages += groups.delta_pages;
        report.entra_changes += groups.entra_changes;
        report.swept += groups.swept;
        Ok(report)
    }

    /// Reads one resource (`users` or `groups`) into the store.
    pub async fn read_resource(
        &self,
        resource: &'static str,
        obs: &dyn Observer,
    ) -> Result<CycleReport, SyncError> {
        let mut report = CycleReport {
            cycle: new_cycle_id(),
            ..Default::default()
        };
        self.read(resource, obs, &mut report).await?;
        Ok(report)
    }

    /// Follows one resource's delta pages from the checkpoint, the saved
    /// deltaLink, or a full enumeration; every page is journaled with its
    /// link, while the next page is already being fetched. When Graph says
    /// the delta state is gone (410, or `syncStateNotFound` /
    /// `resyncRequired`), or a checkpoint went stale, a full resync starts;
    /// it deprovisions nobody until its last page.
    async fn read(
        &self,
        resource: &'static str,
        obs: &dyn Observer,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let attributes = self.pack.get().source_attributes();
        let start = if resource == "users" {
            self.entra.users_start(&attributes)
        } else {
            self.entra.groups_start()
        };
        let mut state = self.store.sync_state(resource).await?;
        // Only selected properties are tracked: a pack that reads more
        // needs a new baseline round with the wider $select. The old
        // deltaLink stays until that round completes.
        let widening = if resource == "users" {
            self.widen_users_select(&self.entra.users_select(&attributes), &state, report)
                .await?
        } else {
            None
        };
        if widening.is_some() {
            state = self.store.sync_state(resource).await?;
        }
        let mut url = match (&state.next_link, &state.delta_link, &state.resync_round) {
            (Some(n), _, _) => n.clone(),
            (None, Some(d), None) => d.clone(),
            // First read, or a resync that had not listed its first page.
            _ => {
                self.store.begin_resync(resource).await?;
                start.clone()
            }
        };
        let mut restarts = 0;
        let mut prefetched: Option<Result<AnyPage, EntraError>> = None;
        let mut links_seen: HashSet<String> = HashSet::new();
        let mut empty_run = 0usize;
        loop {
            let result = match prefetched.take() {
                Some(r) => r,
                None => self.fetch(resource, &url).await,
            };
            let page = match result {
                Ok(p) => p,
                Err(e) => {
                    // Graph refused the wider $select of a new baseline:
                    // back to the old deltaLink, alerted, not retried.
                    if widening.is_some()
                        && url == start
                        && matches!(e, EntraError::Graph { status: 400, .. })
                        && let Some(old) = state.delta_link.clone()
                    {
                        self.refuse_widening(&e, report).await?;
                        url = old;
                        continue;
                    }
                    let stale_checkpoint = matches!(
                        e,
                        EntraError::Graph {
                            status: 400..=499,
                            ..
                        }
                    ) && url != start
                        && !url.contains("$deltatoken");
                    if (e.needs_resync() || stale_checkpoint) && restarts < 2 {
                        restarts += 1;
                        tracing::warn!(resource, error = %e, "delta state lost: full resync (nobody is deprovisioned before it completes)");
                        self.store.begin_resync(resource).await?;
                        self.store
                            .append_audit(
                                &report.cycle,
                                &[AuditEvent {
                                    event: format!("entra.{resource}.resync_started"),
                                    entra_id: None,
                                    sf_id: None,
                                    detail: json!({"reason": e.to_string()}),
                                }],
                            )
                            .await?;
                        // Our own start URL, not Graph's Location: it carries
                        // the $select the mapping needs.
                        url = start.clone();
                        links_seen.clear();
                        continue;
                    }
                    return Err(e.into());
                }
            };
            // Graph can page without progressing (the same nextLink again,
            // or endless empty pages): alert and resync rather than spin.
            if let Some(next) = page.next_link()
                && page.delta_link().is_none()
                && !links_seen.insert(next.to_string())
            {
                self.stalled(
                    resource,
                    &url,
                    "the nextLink repeated an earlier one",
                    &mut restarts,
                    report,
                )
                .await?;
                url = start.clone();
                links_seen.clear();
                empty_run = 0;
                continue;
            }
            let (items, swept) = match page.next_link() {
                Some(next) if page.delta_link().is_none() => {
                    let next = next.to_string();
                    let (journaled, fetched) =
                        tokio::join!(self.journal(&page), self.fetch(resource, &next));
                    prefetched = Some(fetched);
                    url = next;
                    journaled?
                }
                _ => self.journal(&page).await?,
            };
            empty_run = if items == 0 { empty_run + 1 } else { 0 };
            if empty_run > MAX_EMPTY_PAGES {
                let detail = format!("{MAX_EMPTY_PAGES} empty pages in a row");
                self.stalled(resource, &url, &detail, &mut restarts, report)
                    .await?;
                url = start.clone();
                links_seen.clear();
                empty_run = 0;
                prefetched = None;
                continue;
            }
            report.delta_pages += 1;
            report.entra_changes += items;
            if swept > 0 {
                report.swept += swept as usize;
                self.store
                    .append_audit(
                        &report.cycle,
                        &[AuditEvent {
                            event: format!("entra.{resource}.swept"),
                            entra_id: None,
                            sf_id: None,
                            detail: json!({"not_listed_by_full_enumeration": swept}),
                        }],
                    )
                    .await?;
            }
            obs.on(Progress::Page { resource, items });
            if page.delta_link().is_some() || page.next_link().is_none() {
                if resource == "users" {
                    self.users_round_done(report).await?;
                }
                return Ok(());
            }
        }
    }

    /// Delta paging stopped progressing: an alert and a full resync (which
    /// deprovisions nobody before it completes), at most twice a cycle;
    /// then the cycle fails with the stall named.
    async fn stalled(
        &self,
        resource: &'static str,
        url: &str,
        detail: &str,
        restarts: &mut u32,
        report: &CycleReport,
    ) -> Result<(), SyncError> {
        if *restarts >= 2 {
            return Err(EntraError::Stalled {
                url: url.to_string(),
                detail: detail.to_string(),
            }
            .into());
        }
        *restarts += 1;
        tracing::error!(
            resource,
            url,
            detail,
            "Graph delta paging is not progressing: full resync"
        );
        self.store.begin_resync(resource).await?;
        self.store
            .append_audit(
                &report.cycle,
                &[AuditEvent {
                    event: format!("entra.{resource}.stalled"),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"url": url, "detail": detail, "action": "full resync"}),
                }],
            )
            .await?;
        Ok(())
    }

    /// Starts a new users baseline round when `select` asks for properties
    /// the current deltaLink does not track (a pack now reads more).
    /// Returns the added properties when a round was started or is under way.
    async fn widen_users_select(
        &self,
        select: &str,
        state: &crate::store::SyncState,
        report: &CycleReport,
    ) -> Result<Option<Vec<String>>, SyncError> {
        let setting = |v: Option<String>| v.filter(|s| !s.is_empty());
        let Some(tracked) = setting(self.store.setting(SELECT_TRACKED).await?) else {
            // First round (or a store from before this was recorded): the
            // round under way or the link in hand tracks this $select.
            self.store.set_setting(SELECT_TRACKED, select).await?;
            return Ok(None);
        };
        let added: Vec<String> = select
            .split(',')
            .filter(|p| !tracked.split(',').any(|t| t == *p))
            .map(str::to_string)
            .collect();
        if added.is_empty() || state.delta_link.is_none() {
            // Nothing new, or no link yet: the round under way is the baseline.
            if added.is_empty() {
                self.store.set_setting(SELECT_PENDING, "").await?;
            } else {
                self.store.set_setting(SELECT_TRACKED, select).await?;
            }
            return Ok(None);
        }
        let pending = setting(self.store.setting(SELECT_PENDING).await?);
        if pending.as_deref() == Some(select) {
            return Ok(Some(added));
        }
        if setting(self.store.setting(SELECT_REFUSED).await?).as_deref() == Some(select) {
            return Ok(None);
        }
        self.store.begin_resync("users").await?;
        self.store.set_setting(SELECT_PENDING, select).await?;
        tracing::info!(added = ?added, "the rule packs read more Entra attributes: new baseline round (the old deltaLink is kept until it completes)");
        self.store
            .append_audit(
                &report.cycle,
                &[AuditEvent {
                    event: "entra.users.baseline_started".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"added_attributes": added, "select": select}),
                }],
            )
            .await?;
        Ok(Some(added))
    }

    /// Graph refused a widened $select: the round is abandoned, the old
    /// deltaLink carries on, and this $select is not tried again.
    async fn refuse_widening(&self, e: &EntraError, report: &CycleReport) -> Result<(), SyncError> {
        let select = self
            .store
            .setting(SELECT_PENDING)
            .await?
            .unwrap_or_default();
        self.store.abandon_resync("users").await?;
        self.store.set_setting(SELECT_PENDING, "").await?;
        self.store.set_setting(SELECT_REFUSED, &select).await?;
        tracing::error!(error = %e, "Graph refused the wider $select the rule packs need; carrying on with the old deltaLink");
        self.store
            .append_audit(
                &report.cycle,
                &[AuditEvent {
                    event: "entra.users.baseline_refused".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"select": select, "error": e.to_string()}),
                }],
            )
            .await?;
        Ok(())
    }

    /// A users round reached its deltaLink: a baseline started for a wider
    /// $select is now what the link tracks.
    async fn users_round_done(&self, report: &CycleReport) -> Result<(), SyncError> {
        let Some(pending) = self
            .store
            .setting(SELECT_PENDING)
            .await?
            .filter(|s| !s.is_empty())
        else {
            return Ok(());
        };
        self.store.set_setting(SELECT_TRACKED, &pending).await?;
        self.store.set_setting(SELECT_PENDING, "").await?;
        self.store
            .append_audit(
                &report.cycle,
                &[AuditEvent {
                    event: "entra.users.baseline_completed".into(),
                    entra_id: None,
                    sf_id: None,
                    detail: json!({"select": pending}),
                }],
            )
            .await?;
        Ok(())
    }

    async fn fetch(&self, resource: &'static str, url: &str) -> Result<AnyPage, EntraError> {
        Ok(AnyPage {
            resource,
            raw: self.entra.page(url).await?,
        })
    }

    /// Parses a page and journals it with its link in one transaction;
    /// returns (items, swept).
    async fn journal(&self, page: &AnyPage) -> Result<(usize, u64), SyncError> {
        let p = &page.raw;
        if page.resource == "users" {
            let changes = p.users()?;
            let swept = self
                .store
                .apply_user_page(
                    &changes,
                    p.next_link.as_deref(),
                    p.delta_link.as_deref(),
                    &p.request_id,
                )
                .await?;
            Ok((changes.len(), swept))
        } else {
            let changes = p.groups()?;
            let swept = self
                .store
                .apply_group_page(&changes, p.next_link.as_deref(), p.delta_link.as_deref())
                .await?;
            Ok((changes.len(), swept))
        }
    }

    /// Runs the pack for every dirty user (asking its scope only for users
    /// the configuration lets in) on a blocking thread, where the host
    /// API's lookups may wait on Salesforce and the store; returns each
    /// user's evaluation and what the pack was refused.
    /// The rules' host API, reading through this engine's Salesforce
    /// client, store and the organisation's mapping tables.
    fn rules_env(&self) -> crate::rules::HostEnv {
        crate::rules::HostEnv::new(std::sync::Arc::new(directory::LiveDirectory::new(
            self.salesforce.clone(),
            self.store.clone(),
            self.org_tables.clone(),
        )))
    }

    async fn evaluate_all(
        &self,
        pack: &std::sync::Arc<crate::rules::Pack>,
        dirty: &[DirtyUser],
        config_outs: &[Option<String>],
        want_keys: impl Fn(&DirtyUser) -> bool,
    ) -> Result<
        (
            Vec<Result<crate::rules::Evaluation, RuleError>>,
            Vec<crate::rules::Refusal>,
        ),
        SyncError,
    > {
        let jobs: Vec<(crate::model::EntraUser, Vec<String>, bool, bool)> = dirty
            .iter()
            .zip(config_outs)
            .map(|(d, out)| {
                let ask = d.user.removed.is_none() && out.is_none();
                (d.user.clone(), d.groups.clone(), ask, want_keys(d))
            })
            .collect();
        let env = self.rules_env();
        let pack = pack.clone();
        let worker_env = env.clone();
        let evaluations = tokio::task::spawn_blocking(move || {
            jobs.iter()
                .map(|(user, groups, ask, keys)| {
                    pack.evaluate_with(user, groups, *ask, *keys, &worker_env)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| SyncError::Evaluation(format!("the rule evaluation thread failed: {e}")))?;
        Ok((evaluations, env.take_refusals()))
    }

    /// Runs the rules for every dirty user, matches and diffs against
    /// Salesforce. Reads only: nothing is written anywhere.
    pub(crate) async fn plan(&self, cycle: &str, obs: &dyn Observer) -> Result<Planned, SyncError> {
        self.plan_for(cycle, None, obs).await
    }

    /// [`Engine::plan`], for one user only when `only` is given.
    async fn plan_for(
        &self,
        cycle: &str,
        only: Option<&str>,
        obs: &dyn Observer,
    ) -> Result<Planned, SyncError> {
        let mut dirty = self.store.dirty_users().await?;
        if let Some(one) = only {
            dirty.retain(|d| d.user.id == one);
        }
        self.plan_users(cycle, dirty, obs, &mut CycleMemo::default())
            .await
    }

    /// Plans the users of one chunk of a large cycle (read only).
    async fn plan_chunk(
        &self,
        cycle: &str,
        chunk: &[String],
        obs: &dyn Observer,
        memo: &mut CycleMemo,
    ) -> Result<Planned, SyncError> {
        let dirty = self.store.users_in(chunk).await?;
        self.plan_users(cycle, dirty, obs, memo).await
    }

    /// Plans the given users (read only).
    async fn plan_users(
        &self,
        cycle: &str,
        dirty: Vec<DirtyUser>,
        obs: &dyn Observer,
        memo: &mut CycleMemo,
    ) -> Result<Planned, SyncError> {
        // One pack for the whole plan, even if a reload lands meanwhile.
        let pack = self.pack.get();
        let basis = Basis {
            users_delta_link: self.store.sync_state("users").await?.delta_link,
            groups_delta_link: self.store.sync_state("groups").await?.delta_link,
        };
        let mut plan = Plan {
            cycle: cycle.to_string(),
            basis,
            actions: Vec::new(),
        };
        let mut outcomes: HashMap<String, Outcome> = HashMap::new();
        if dirty.is_empty() {
            return Ok(Planned {
                plan,
                outcomes,
                dirty,
                refusals: Vec::new(),
                reviews: Vec::new(),
                manager_pass: Vec::new(),
                refs: Refs::default(),
                covered: HashSet::new(),
                observed: Vec::new(),
            });
        }
        obs.on(Progress::Planning { users: dirty.len() });

        // Decide: the rules' desired state for every dirty user.
        let mut desired: Vec<(&DirtyUser, DesiredUser)> = Vec::new();
        let mut out_of_scope: HashMap<&str, String> = HashMap::new();
        // The pack's match keys per user, in order of precedence.
        let mut keys_of: HashMap<&str, Vec<MatchKey>> = HashMap::new();
        // Scope overrides the rules: out of scope is a leaver. The
        // configuration's scope and the pack's must both agree; the pack is
        // asked only when the configuration lets the user in.
        let config_outs: Vec<Option<String>> = dirty
            .iter()
            .map(|d| {
                if d.user.removed.is_some() {
                    None
                } else {
                    self.scope.check(&d.user, &d.group_refs).err()
                }
            })
            .collect();
        // Match keys are asked only for users not linked yet: a linked
        // user is read by its Id (`match-keys` is a call into every pack).
        let dirty_ids: Vec<String> = dirty.iter().map(|d| d.user.id.clone()).collect();
        let linked_before = self.store.links_of(&dirty_ids).await?;
        let (evaluations, mut refusals) = self
            .evaluate_all(&pack, &dirty, &config_outs, |d| {
                !linked_before.contains_key(&d.user.id)
            })
            .await?;
        for ((d, config_out), evaluated) in dirty.iter().zip(config_outs).zip(evaluations) {
            let decided = evaluated.map(|e| {
                let why = config_out.or_else(|| {
                    e.scope.filter(|s| !s.in_scope).map(|s| {
                        let reason = if s.reason.is_empty() {
                            "out of scope".to_string()
                        } else {
                            s.reason
                        };
                        format!("rule pack {}: {reason}", pack.id())
                    })
                });
                (e.desired, why, e.keys)
            });
            match decided {
                Ok((mut x, why, keys)) => {
                    if let Some(why) = why {
                        x.active = false;
                        out_of_scope.insert(d.user.id.as_str(), why);
                    }
                    keys_of.insert(d.user.id.as_str(), keys);
                    desired.push((d, x));
                }
                Err(e) => {
                    outcomes.entry(d.user.id.clone()).or_default().failed = Some(e.to_string());
                }
            }
        }

        // Current state: profiles, linked users by Id, others by match keys.
        // Profiles, roles, the seats left on each user licence and the
        // access catalog are read once per cycle (kept across chunks).
        let (refs0, covered0, seats0, fresh) = match (memo.refs.take(), memo.seats.take()) {
            (Some((r, c)), Some(s)) => (r, c, s, false),
            _ => {
                let (refs, seats) = self.read_refs().await?;
                (refs, HashSet::new(), seats, true)
            }
        };
        let Seats {
            profile_licence,
            mut seats,
            licence_names,
        } = seats0;
        let Refs {
            profiles,
            roles,
            mut catalog,
        } = refs0;
        // Takes a seat for a profile's licence, or says why there is none.
        let mut take_seat = |profile_id: &str| -> Result<(), String> {
            let Some(lic) = profile_licence.get(profile_id) else {
                return Ok(());
            };
            let Some((name, total, used)) = seats.get_mut(lic) else {
                return Ok(());
            };
            if *used < *total {
                *used += 1;
                Ok(())
            } else {
                Err(format!(
                    "waiting for a {name} licence: all {total} seats are used"
                ))
            }
        };
        let chunk_ids: Vec<String> = desired.iter().map(|(d, _)| d.user.id.clone()).collect();
        let managed = self.store.managed_grants_of(&chunk_ids).await?;
        let kinds = access::kinds_in_use(&pack.access, desired.iter().map(|(_, d)| d), &managed);
        let covered = if fresh || !kinds.is_subset(&covered0) {
            let all: HashSet<Access> = covered0.union(&kinds).copied().collect();
            catalog = access::Catalog::read(&self.salesforce, &all).await?;
            all
        } else {
            covered0
        };
        let mut select: Vec<String> = vec![
            "Id".into(),
            "IsActive".into(),
            "ProfileId".into(),
            "UserRoleId".into(),
            "Username".into(),
            "FederationIdentifier".into(),
        ];
        // Managers: ManagerId is the manager's linked account; a manager
        // created in this very cycle gets it in a second pass after apply.
        let mut manager_pass: Vec<(String, String)> = Vec::new();
        if self.cfg.manager {
            let managers: Vec<String> = desired
                .iter()
                .filter_map(|(d, _)| d.user.manager_id.clone())
                .collect();
            let links_now = self.store.links_of(&managers).await?;
            for (d, want) in desired.iter_mut() {
                let Some(m) = d.user.manager_id.as_ref().filter(|_| want.active) else {
                    continue;
                };
                match links_now.get(m) {
                    Some(sf) => {
                        want.fields
                            .insert("ManagerId".into(), FieldValue::Text(sf.clone()));
                    }
                    None => manager_pass.push((d.user.id.clone(), m.clone())),
                }
            }
        }
        let mut extra: Vec<String> = desired
            .iter()
            .flat_map(|(_, d)| d.fields.keys().cloned())
            .chain(keys_of.values().flatten().map(|k| k.field.clone()))
            // Everything the pack may set, so that one read of the User
            // table serves every chunk of a large cycle.
            .chain(pack.access.fields.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        extra.sort();
        for f in extra {
            if !select.contains(&f) {
                select.push(f);
            }
        }
        let mut select_fields = select.clone();
        let mut select = select.join(", ");
        // Planning writes nothing: the links read before the rules ran hold.
        let links = &linked_before;

        let linked_ids: Vec<String> = desired
            .iter()
            .filter_map(|(d, _)| links.get(&d.user.id).cloned())
            .collect();
        let mut by_id: HashMap<String, Map<String, Value>> = HashMap::new();
        for r in self
            .query_in(&linked_ids, |list| {
                format!("SELECT {select} FROM User WHERE Id IN ({list})")
            })
            .await?
        {
            if let Some(id) = r.get("Id").and_then(Value::as_str) {
                by_id.insert(id.to_string(), r);
            }
        }
        // A linked user whose account is gone (an org refresh) is matched
        // again: its keys are asked for now.
        let relink: Vec<DirtyUser> = desired
            .iter()
            .filter(|(d, _)| linked_before.contains_key(&d.user.id))
            .filter(|(d, _)| links.get(&d.user.id).is_none_or(|s| !by_id.contains_key(s)))
            .map(|(d, _)| (*d).clone())
            .collect();
        if !relink.is_empty() {
            let no_scope = vec![Some(String::new()); relink.len()];
            let (evals, more) = self
                .evaluate_all(&pack, &relink, &no_scope, |_| true)
                .await?;
            refusals.extend(more);
            let mut failed: HashSet<String> = HashSet::new();
            for (d, e) in relink.iter().zip(evals) {
                match e {
                    Ok(e) => {
                        for k in &e.keys {
                            if !select_fields.contains(&k.field) {
                                select_fields.push(k.field.clone());
                            }
                        }
                        if let Some((id, _)) = desired.iter().find(|(x, _)| x.user.id == d.user.id)
                        {
                            keys_of.insert(id.user.id.as_str(), e.keys);
                        }
                    }
                    Err(e) => {
                        failed.insert(d.user.id.clone());
                        outcomes.entry(d.user.id.clone()).or_default().failed = Some(e.to_string());
                    }
                }
            }
            // Never matched without keys (that would create a duplicate).
            desired.retain(|(d, _)| !failed.contains(&d.user.id));
            select = select_fields.join(", ");
        }
        let unmatched: Vec<(&str, &DesiredUser)> = desired
            .iter()
            .filter(|(d, _)| links.get(&d.user.id).is_none_or(|s| !by_id.contains_key(s)))
            .filter(|(d, _)| {
                !out_of_scope.contains_key(d.user.id.as_str()) || links.contains_key(&d.user.id)
            })
            .map(|(d, x)| (d.user.id.as_str(), x))
            .collect();
        // The match keys of the unmatched users: (field, lower-case value).
        let wanted: HashSet<(&str, String)> = unmatched
            .iter()
            .flat_map(|(id, _)| keys_of.get(id).into_iter().flatten())
            .map(|k| (k.field.as_str(), k.value.to_lowercase()))
            .collect();
        // Per key field: lower-case value -> the Salesforce users holding it.
        let mut indexes: HashMap<String, Index> = HashMap::new();
        // Aliases in use (lower-case): Salesforce does not keep them unique,
        // but people tell users apart by them in list views and reports.
        let mut aliases: HashSet<String> = std::mem::take(&mut memo.aliases);
        // Per wanted alias, the first candidate not yet known to be taken.
        let mut alias_next: HashMap<String, usize> = std::mem::take(&mut memo.alias_next);
        // An initial load matches many users at once: one read of the whole
        // User table (2,000 rows a page) then costs fewer calls than IN-list
        // lookups of 100 values per key.
        // The table is kept for the rest of the cycle: later chunks of a
        // large cycle match against the same read.
        if unmatched.len() > SCAN_THRESHOLD || memo.scan.is_some() {
            let covers = memo
                .scan
                .as_ref()
                .is_some_and(|s| select_fields.iter().all(|f| s.select.contains(f)));
            if !covers {
                let rows = self
                    .salesforce
                    .query(&format!("SELECT {select} FROM User"))
                    .await?;
                for r in &rows {
                    if let Some(a) = r.get("Alias").and_then(Value::as_str) {
                        aliases.insert(a.to_lowercase());
                    }
                }
                memo.scan = Some(Scan {
                    select: select_fields.clone(),
                    rows,
                    by_field: HashMap::new(),
                });
            }
            if let Some(scan) = memo.scan.as_mut() {
                // Only rows a wanted key value points at are used.
                for (field, value) in &wanted {
                    let recs = scan.lookup(field, value);
                    if !recs.is_empty() {
                        indexes
                            .entry(field.to_string())
                            .or_default()
                            .insert(value.clone(), recs);
                    }
                }
            }
        } else {
            let mut by_field: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for (field, _) in &wanted {
                by_field.entry(field).or_default();
            }
            for (id, _) in &unmatched {
                for k in keys_of.get(id).into_iter().flatten() {
                    if let Some(values) = by_field.get_mut(k.field.as_str()) {
                        values.push(k.value.clone());
                    }
                }
            }
            for (field, mut values) in by_field {
                values.sort();
                values.dedup();
                for r in self
                    .query_in(&values, |list| {
                        format!("SELECT {select} FROM User WHERE {field} IN ({list})")
                    })
                    .await?
                {
                    if let Some(v) = r.get(field).and_then(sf_key_text) {
                        indexes
                            .entry(field.to_string())
                            .or_default()
                            .entry(v)
                            .or_default()
                            .push(r);
                    }
                }
            }
        }
        if memo.scan.is_none() {
            let mut candidates: Vec<String> = unmatched
                .iter()
                .filter_map(|(_, d)| text_field(d, "Alias"))
                .flat_map(|a| {
                    alias_candidates(&a)
                        .take(ALIAS_LOOKAHEAD)
                        .collect::<Vec<_>>()
                })
                .collect();
            candidates.sort();
            candidates.dedup();
            for r in self
                .query_in(&candidates, |list| {
                    format!("SELECT Alias FROM User WHERE Alias IN ({list})")
                })
                .await?
            {
                if let Some(a) = r.get("Alias").and_then(Value::as_str) {
                    aliases.insert(a.to_lowercase());
                }
            }
        }

        // Login state (frozen?) of every Salesforce user already known.
        let mut known: Vec<String> = by_id.keys().cloned().collect();
        for recs in indexes.values().flat_map(HashMap::values) {
            known.extend(
                recs.iter()
                    .filter_map(|r| r.get("Id").and_then(Value::as_str).map(str::to_string)),
            );
        }
        known.sort();
        known.dedup();
        // Which of the candidates are linked already, and to whom.
        let linked_to = self.store.linked_to(&known).await?;
        let mut logins: HashMap<String, (String, bool)> = HashMap::new();
        for r in self
            .query_in(&known, |list| {
                format!("SELECT Id, UserId, IsFrozen FROM UserLogin WHERE UserId IN ({list})")
            })
            .await?
        {
            if let (Some(id), Some(user)) = (
                r.get("Id").and_then(Value::as_str),
                r.get("UserId").and_then(Value::as_str),
            ) {
                logins.insert(
                    user.to_string(),
                    (
                        id.to_string(),
                        r.get("IsFrozen").and_then(Value::as_bool).unwrap_or(false),
                    ),
                );
            }
        }

        // Current grants (permission sets, groups, licences, queues).
        let assigned = catalog.current(&known, self).await?;

        // Plan per user.
        let mut claimed: HashMap<String, String> = std::mem::take(&mut memo.claimed);
        // Candidates an operator rejected, per user; reviews to open.
        let rejected: HashMap<String, HashSet<String>> = self
            .store
            .reviews()
            .await?
            .into_iter()
            .filter(|r| r.status == "rejected")
            .map(|r| (r.entra_id, r.candidates.into_iter().collect()))
            .collect();
        let mut reviews: Vec<(String, String, Vec<String>)> = Vec::new();
        // Adopted accounts whose held downgrades an operator has not
        // approved yet (open) or refused (rejected).
        let adoption_holds: HashSet<String> = self
            .store
            .reviews()
            .await?
            .into_iter()
            .filter(|r| r.reason.starts_with(ADOPTION) && r.status != "linked")
            .map(|r| r.entra_id)
            .collect();
        let pending_emails = self.store.pending_emails().await?;
        // Already-inactive users whose records are still being handed over.
        let handovers = {
            let ids: Vec<String> = desired.iter().map(|(d, _)| d.user.id.clone()).collect();
            self.store.handovers_pending(&ids).await?
        };
        // Leavers provisor froze whose deactivation it has not seen.
        let open_leavers = self.store.open_leaver_sf_ids().await?;
        // The accounts as read, for the store's last known state.
        let mut observed: Vec<(String, SfRecord)> = Vec::new();
        for (d, want) in &desired {
            let id = &d.user.id;
            let upn = d.user.user_principal_name.clone();
            // Out of scope and never managed: not ours to adopt or touch.
            if out_of_scope.contains_key(id.as_str()) && !links.contains_key(id) {
                continue;
            }
            let mut current: Option<&Map<String, Value>> = links.get(id).and_then(|s| by_id.get(s));
            // Adopting an existing account: changes that may take access
            // away from it (hand-made, possibly on purpose) wait for an
            // operator instead of silently overwriting it.
            let mut first_match = false;
            let mut held_back: Vec<String> = Vec::new();
            if current.is_none() {
                let keys = keys_of.get(id.as_str()).map_or(&[][..], Vec::as_slice);
                let excluded = rejected.get(id.as_str()).cloned().unwrap_or_default();
                match self.match_user(id, keys, &indexes, &linked_to, &claimed, &excluded) {
                    Ok(Some((rec, key))) => {
                        let sf_id = rec
                            .get("Id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        // A new Entra user whose keys find an inactive
                        // account: a rehire. Reactivating someone's old
                        // account is a decision, unless the pack says auto.
                        let inactive = rec.get("IsActive") == Some(&Value::Bool(false));
                        if want.active && inactive && !pack.rehires_auto() {
                            let why = format!(
                                "needs review: rehire? {key} matches inactive Salesforce user {sf_id}; link to reactivate it, or reject to create a new account"
                            );
                            reviews.push((id.clone(), why.clone(), vec![sf_id]));
                            let o = outcomes.entry(id.clone()).or_default();
                            o.waiting = Some(why);
                            o.hold_event = Some("user.needs_review");
                            continue;
                        }
                        claimed.insert(sf_id.clone(), id.clone());
                        first_match = true;
                        plan.actions.push(Action {
                            entra_id: id.clone(),
                            upn: upn.clone(),
                            sf_id: Some(sf_id),
                            kind: ActionKind::Link {
                                matched_by: key.clone(),
                            },
                            reason: format!("existing Salesforce user has the same {key}"),
                        });
                        current = Some(rec);
                    }
                    Ok(None) => {}
                    Err((why, candidates)) => {
                        // Nothing is written for the user until an operator
                        // decides (`provisor review`); it spends no attempt.
                        reviews.push((id.clone(), why.clone(), candidates));
                        let o = outcomes.entry(id.clone()).or_default();
                        o.waiting = Some(why);
                        o.hold_event = Some("user.needs_review");
                        continue;
                    }
                }
            }
            if let Some(rec) = current {
                observed.push((id.clone(), rec.clone()));
            }
            let cause = match out_of_scope.get(id.as_str()) {
                Some(why) => format!("out of scope: {why}"),
                None => cause_text(d),
            };
            let wanted = match catalog.wanted(want) {
                Ok(w) => w,
                Err(why) => {
                    outcomes.entry(id.clone()).or_default().failed = Some(why);
                    continue;
                }
            };
            if let Some(r) = want.role.as_ref().filter(|r| !roles.contains_key(*r)) {
                outcomes.entry(id.clone()).or_default().failed =
                    Some(format!("role {r:?} does not exist in Salesforce"));
                continue;
            }
            match current {
                None if !want.active => {}
                None => {
                    let Some(profile) = want.profile.clone() else {
                        outcomes.entry(id.clone()).or_default().failed = Some(format!(
                            "rule pack {} gave no profile for a new user",
                            pack.id()
                        ));
                        continue;
                    };
                    if !profiles.contains_key(&profile) {
                        outcomes.entry(id.clone()).or_default().failed =
                            Some(format!("profile {profile:?} does not exist in Salesforce"));
                        continue;
                    }
                    if let Err(why) = take_seat(&profiles[&profile]) {
                        outcomes.entry(id.clone()).or_default().waiting = Some(why);
                        continue;
                    }
                    let mut fields: BTreeMap<String, FieldValue> = want
                        .fields
                        .iter()
                        .filter(|(_, v)| !matches!(v, FieldValue::Null) && v.as_text() != Some(""))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if let Some(a) = fields.get("Alias").and_then(FieldValue::as_text) {
                        // Candidates before `start` are known to be taken.
                        let start = alias_next.get(a).copied().unwrap_or(0);
                        let free = (start..ALIAS_VARIANTS)
                            .find(|&i| !aliases.contains(&alias_variant(a, i).to_lowercase()));
                        let chosen = match free {
                            Some(i) => {
                                alias_next.insert(a.to_string(), i + 1);
                                alias_variant(a, i)
                            }
                            None => a.to_string(),
                        };
                        aliases.insert(chosen.to_lowercase());
                        fields.insert("Alias".into(), FieldValue::Text(chosen));
                    }
                    // A deterministic nickname rather than Salesforce's
                    // own pick, so a retry after a clash is predictable.
                    if !fields.contains_key("CommunityNickname")
                        && let Some(u) = fields.get("Username").and_then(FieldValue::as_text)
                    {
                        let nick = apply::nickname_for(u);
                        fields.insert("CommunityNickname".into(), FieldValue::Text(nick));
                    }
                    plan.actions.push(Action {
                        entra_id: id.clone(),
                        upn: upn.clone(),
                        sf_id: None,
                        kind: ActionKind::Create {
                            fields,
                            profile,
                            role: want.role.clone(),
                        },
                        reason: format!(
                            "joiner: {cause}, no Salesforce user matches{}",
                            precedence_note(
                                pack.settings_table("group_profiles"),
                                &d.groups,
                                &want.profile.clone().unwrap_or_default()
                            )
                        ),
                    });
                    let grants: Vec<(Access, String)> = wanted.into_iter().collect();
                    let (grants, waiting) = with_seats(&mut catalog, grants);
                    if let Some(why) = waiting {
                        outcomes.entry(id.clone()).or_default().waiting = Some(why);
                    }
                    for (access, name) in grants {
                        plan.actions.push(Action {
                            entra_id: id.clone(),
                            upn: upn.clone(),
                            sf_id: None,
                            reason: format!("joiner: the pack grants {} {name}", access.label()),
                            kind: ActionKind::Grant { access, name },
                        });
                    }
                }
                Some(rec) => {
                    let sf_id = rec.get("Id").and_then(Value::as_str).map(str::to_string);
                    let active_now = rec
                        .get("IsActive")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let mut changes: BTreeMap<String, Change> = BTreeMap::new();
                    for (k, v) in &want.fields {
                        // Create-only fields: a hand edit in Salesforce stands.
                        if pack.access.create_only.contains(k) {
                            continue;
                        }
                        // A new Email waits for its owner's confirmation:
                        // asked for already and not expired, it is neither
                        // sent again (each save mails the user) nor drift.
                        if k == "Email"
                            && let (Some((pending, at)), Some(to)) =
                                (pending_emails.get(id.as_str()), v.as_text())
                            && pending.eq_ignore_ascii_case(to)
                            && chrono::DateTime::parse_from_rfc3339(at).is_ok_and(|t| {
                                chrono::Utc::now().signed_duration_since(t)
                                    < chrono::Duration::hours(EMAIL_CONFIRMATION_HOURS)
                            })
                        {
                            continue;
                        }
                        if !same(k, v, rec.get(k)) {
                            changes.insert(
                                k.clone(),
                                Change {
                                    from: current_value(rec.get(k)),
                                    to: v.clone(),
                                },
                            );
                        }
                    }
                    if let Some(p) = &want.profile {
                        let Some(pid) = profiles.get(p) else {
                            outcomes.entry(id.clone()).or_default().failed =
                                Some(format!("profile {p:?} does not exist in Salesforce"));
                            continue;
                        };
                        let cur = rec
                            .get("ProfileId")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if cur != pid {
                            let from = profiles
                                .iter()
                                .find(|(_, v)| v.as_str() == cur)
                                .map_or(cur.to_string(), |(k, _)| k.clone());
                            changes.insert(
                                "Profile".into(),
                                Change {
                                    from: FieldValue::Text(from),
                                    to: FieldValue::Text(p.clone()),
                                },
                            );
                        }
                    }
                    if let Some(r) = &want.role {
                        let cur = rec
                            .get("UserRoleId")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if roles.get(r).map(String::as_str) != Some(cur) {
                            let from = roles
                                .iter()
                                .find(|(_, v)| v.as_str() == cur)
                                .map_or(FieldValue::Null, |(k, _)| FieldValue::Text(k.clone()));
                            changes.insert(
                                "Role".into(),
                                Change {
                                    from,
                                    to: FieldValue::Text(r.clone()),
                                },
                            );
                        }
                    }
                    // An activation, or a move to a profile on another
                    // licence, needs a free seat first.
                    let current_profile = rec
                        .get("ProfileId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let hold_downgrades = first_match || adoption_holds.contains(id);
                    if hold_downgrades {
                        for k in ["Profile", "Role"] {
                            if let Some(c) = changes.remove(k) {
                                held_back.push(format!(
                                    "{k} {} -> {}",
                                    c.from.as_text().unwrap_or("(none)"),
                                    c.to.as_text().unwrap_or("(none)")
                                ));
                            }
                        }
                    }
                    let target_profile = want
                        .profile
                        .as_ref()
                        .filter(|_| !hold_downgrades)
                        .and_then(|p| profiles.get(p))
                        .cloned()
                        .unwrap_or_else(|| current_profile.clone());
                    // A profile move to another user licence changes what the
                    // user can do and which seat it takes: the plan says so.
                    let crosses = match (
                        profile_licence.get(&current_profile),
                        profile_licence.get(&target_profile),
                    ) {
                        (Some(a), Some(b)) if a != b => format!(
                            "; the profile change crosses licence types ({} -> {})",
                            licence_names.get(a).map_or(a.as_str(), String::as_str),
                            licence_names.get(b).map_or(b.as_str(), String::as_str)
                        ),
                        _ => String::new(),
                    };
                    let needs_seat = want.active
                        && (!active_now
                            || profile_licence.get(&target_profile)
                                != profile_licence.get(&current_profile));
                    if needs_seat && let Err(why) = take_seat(&target_profile) {
                        outcomes.entry(id.clone()).or_default().waiting = Some(why);
                        continue;
                    }
                    let login = sf_id.as_ref().and_then(|s| logins.get(s));
                    let frozen = login.is_some_and(|(_, f)| *f);
                    let push = |plan: &mut Plan, kind: ActionKind, reason: String| {
                        plan.actions.push(Action {
                            entra_id: id.clone(),
                            upn: upn.clone(),
                            sf_id: sf_id.clone(),
                            kind,
                            reason,
                        });
                    };
                    match (want.active, active_now) {
                        (false, true) => {
                            // Freeze first: it blocks logins at once, even if
                            // deactivation is refused by org configuration.
                            if let Some((login_id, false)) = login {
                                push(
                                    &mut plan,
                                    ActionKind::Freeze {
                                        login_id: login_id.clone(),
                                    },
                                    format!("leaver: {cause}; frozen at once"),
                                );
                            }
                            push(
                                &mut plan,
                                ActionKind::Deactivate,
                                format!("leaver: {cause}"),
                            );
                        }
                        (false, false) => {
                            // Inactive before provisor took it over: its
                            // open records may still sit with it.
                            let by_hand = sf_id.as_ref().is_some_and(|s| open_leavers.contains(s));
                            if first_match || handovers.contains(id.as_str()) || by_hand {
                                push(
                                    &mut plan,
                                    ActionKind::Handover,
                                    if by_hand {
                                        format!(
                                            "leaver deactivated outside provisor while frozen ({cause}): its open records are handed over"
                                        )
                                    } else {
                                        format!(
                                            "leaver already inactive in Salesforce when provisor took it over ({cause}): its open records are handed over"
                                        )
                                    },
                                );
                            }
                        }
                        (true, false) => {
                            push(
                                &mut plan,
                                ActionKind::Reactivate { changes },
                                format!(
                                    "returner: active again in Entra (restored or re-enabled); {cause}"
                                ),
                            );
                            if let Some((login_id, true)) = login {
                                push(
                                    &mut plan,
                                    ActionKind::Unfreeze {
                                        login_id: login_id.clone(),
                                    },
                                    "returner: unfreeze".into(),
                                );
                            }
                        }
                        (true, true) => {
                            let precedence = if changes.contains_key("Profile") {
                                precedence_note(
                                    pack.settings_table("group_profiles"),
                                    &d.groups,
                                    want.profile.as_deref().unwrap_or_default(),
                                )
                            } else {
                                String::new()
                            };
                            if !changes.is_empty() {
                                push(
                                    &mut plan,
                                    ActionKind::Update { changes },
                                    format!("changed in Entra: {cause}{precedence}{crosses}"),
                                );
                            }
                            // Frozen but wanted active (a leaver whose
                            // deactivation was refused, then came back).
                            if frozen && let Some((login_id, _)) = login {
                                push(
                                    &mut plan,
                                    ActionKind::Unfreeze {
                                        login_id: login_id.clone(),
                                    },
                                    format!("active in Entra but frozen in Salesforce: {cause}"),
                                );
                            }
                        }
                    }
                    // Access: add what is missing; revoke only what
                    // provisor granted or the pack owns, never hand-made ones.
                    if want.active {
                        let held = sf_id
                            .as_ref()
                            .and_then(|s| assigned.get(s))
                            .map_or(&[][..], Vec::as_slice);
                        let (grants, revokes) =
                            access::diff(&wanted, held, managed.get(id.as_str()), &pack.access);
                        let (grants, waiting) = with_seats(&mut catalog, grants);
                        if let Some(why) = waiting {
                            outcomes.entry(id.clone()).or_default().waiting = Some(why);
                        }
                        for (access, name) in grants {
                            let reason = format!("the pack grants {} {name}", access.label());
                            push(&mut plan, ActionKind::Grant { access, name }, reason);
                        }
                        for h in revokes {
                            if first_match || adoption_holds.contains(id) {
                                held_back.push(format!("revoke {} {}", h.access.label(), h.name));
                                continue;
                            }
                            push(
                                &mut plan,
                                ActionKind::Revoke {
                                    access: h.access,
                                    name: h.name.clone(),
                                    assignment_id: h.assignment_id,
                                },
                                format!(
                                    "the pack no longer grants {} {}",
                                    h.access.label(),
                                    h.name
                                ),
                            );
                        }
                    }
                    if !held_back.is_empty()
                        && let Some(sf) = &sf_id
                    {
                        reviews.push((
                            id.clone(),
                            format!(
                                "{ADOPTION} held for an existing Salesforce user: {}; `provisor review link {id} {sf}` applies them, `reject` keeps its access",
                                held_back.join("; ")
                            ),
                            vec![sf.clone()],
                        ));
                    }
                }
            }
        }
        memo.seats = Some(Seats {
            profile_licence,
            seats,
            licence_names,
        });
        memo.aliases = aliases;
        memo.alias_next = alias_next;
        memo.claimed = claimed;
        Ok(Planned {
            plan,
            outcomes,
            dirty,
            refusals,
            reviews,
            manager_pass,
            refs: Refs {
                profiles,
                roles,
                catalog,
            },
            covered,
            observed,
        })
    }

    /// Profiles (with their user licence), user licences (with seats
    /// left) and roles: what every cycle's planning starts from.
    async fn read_refs(&self) -> Result<(Refs, Seats), SyncError> {
        let mut profiles: HashMap<String, String> = HashMap::new();
        let mut profile_licence: HashMap<String, String> = HashMap::new();
        for p in self
            .salesforce
            .query("SELECT Id, Name, UserLicenseId FROM Profile")
            .await?
        {
            let (Some(id), Some(name)) = (
                p.get("Id").and_then(Value::as_str),
                p.get("Name").and_then(Value::as_str),
            ) else {
                continue;
            };
            profiles.insert(name.to_string(), id.to_string());
            if let Some(l) = p.get("UserLicenseId").and_then(Value::as_str) {
                profile_licence.insert(id.to_string(), l.to_string());
            }
        }
        let mut seats: HashMap<String, (String, i64, i64)> = HashMap::new();
        for l in self
            .salesforce
            .query("SELECT Id, Name, TotalLicenses, UsedLicenses FROM UserLicense")
            .await?
        {
            let Some(id) = l.get("Id").and_then(Value::as_str) else {
                continue;
            };
            let total = l.get("TotalLicenses").and_then(Value::as_i64).unwrap_or(0);
            let used = l.get("UsedLicenses").and_then(Value::as_i64).unwrap_or(0);
            seats.insert(
                id.to_string(),
                (
                    l.get("Name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    total,
                    used,
                ),
            );
        }
        // Licence names by id, for plans that move a user across licences.
        let licence_names: HashMap<String, String> = seats
            .iter()
            .map(|(id, (name, _, _))| (id.clone(), name.clone()))
            .collect();
        let roles = by_name(
            self.salesforce
                .query("SELECT Id, Name FROM UserRole")
                .await?,
        );
        Ok((
            Refs {
                profiles,
                roles,
                catalog: access::Catalog::default(),
            },
            Seats {
                profile_licence,
                seats,
                licence_names,
            },
        ))
    }

    /// Runs `soql(list)` for the values in `IN` lists of at most
    /// [`IN_LIST_ENCODED`] characters of quoted literals and returns every row.
    async fn query_in(
        &self,
        values: &[String],
        soql: impl Fn(&str) -> String,
    ) -> Result<Vec<SfRecord>, SfError> {
        let mut out = Vec::new();
        for list in in_lists(values, IN_LIST_ENCODED) {
            out.extend(self.salesforce.query(&soql(&list)).await?);
        }
        Ok(out)
    }

    /// Tries the match keys in order: FederationIdentifier, then Username.
    /// More than one candidate, keys that disagree, or a candidate linked
    /// to someone else is an error: nothing is written for that user.
    fn match_user<'a>(
        &self,
        id: &str,
        keys: &[MatchKey],
        indexes: &'a HashMap<String, Index>,
        linked_to: &HashMap<String, String>,
        claimed: &HashMap<String, String>,
        excluded: &HashSet<String>,
    ) -> Result<Option<(&'a SfRecord, String)>, NeedsReview> {
        let sid = |r: &Map<String, Value>| {
            r.get("Id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        // Every key is looked at, so keys that disagree are caught; the
        // first key (in the pack's order) that finds someone names the match.
        let mut found: Option<(&'a SfRecord, &str)> = None;
        for k in keys {
            // Accounts an operator said are not this user are not candidates.
            let hits: Vec<&'a SfRecord> = indexes
                .get(&k.field)
                .and_then(|ix| ix.get(&k.value.to_lowercase()))
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter(|r| !excluded.contains(&sid(r)))
                .collect();
            match hits.as_slice() {
                [] => {}
                [one] => match found {
                    None => found = Some((one, k.field.as_str())),
                    Some((first, first_key)) if sid(first) != sid(one) => {
                        return Err((
                            format!(
                                "needs review: {first_key} matches {} but {} matches {}",
                                sid(first),
                                k.field,
                                sid(one)
                            ),
                            vec![sid(first), sid(one)],
                        ));
                    }
                    Some(_) => {}
                },
                many => {
                    return Err((
                        format!(
                            "needs review: {} Salesforce users have {} {:?}",
                            many.len(),
                            k.field,
                            k.value
                        ),
                        many.iter().map(|r| sid(r)).collect(),
                    ));
                }
            }
        }
        let Some((rec, key)) = found else {
            return Ok(None);
        };
        let s = sid(rec);
        if let Some(other) = linked_to.get(&s).filter(|o| o.as_str() != id) {
            return Err((
                format!(
                    "needs review: Salesforce user {s} matches by {key} but is already linked to Entra user {other}"
                ),
                vec![s],
            ));
        }
        if let Some(other) = claimed.get(&s).filter(|o| o.as_str() != id) {
            return Err((
                format!(
                    "needs review: Salesforce user {s} matches both this user and Entra user {other}"
                ),
                vec![s],
            ));
        }
        Ok(Some((rec, key.to_string())))
    }

    /// Marks users clean, failed or parked from their outcomes.
    async fn settle_users(
        &self,
        cycle: &str,
        dirty: &[DirtyUser],
        plan: &Plan,
        outcomes: &HashMap<String, Outcome>,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let with_actions: HashSet<&str> =
            plan.actions.iter().map(|a| a.entra_id.as_str()).collect();
        let mut events = Vec::new();
        let mut clean: Vec<&str> = Vec::new();
        for d in dirty {
            let id = d.user.id.as_str();
            if outcomes
                .get(id)
                .is_some_and(|o| o.deferred && o.failed.is_none())
            {
                continue;
            }
            if let Some(why) = outcomes.get(id).and_then(|o| o.waiting.as_ref()) {
                report.waiting += 1;
                report.waiting_for.push(format!(
                    "{}: {why}",
                    d.user.user_principal_name.as_deref().unwrap_or(id)
                ));
                let quiet = outcomes.get(id).is_some_and(|o| o.quiet);
                if self.store.mark_waiting(id, why).await? && !quiet {
                    // Newly waiting: an alert, once, not every cycle.
                    let event = outcomes
                        .get(id)
                        .and_then(|o| o.hold_event)
                        .unwrap_or("user.waiting_for_licence");
                    tracing::warn!(user = %id, reason = %why, "{event}");
                    events.push(AuditEvent {
                        event: event.into(),
                        entra_id: Some(id.into()),
                        sf_id: None,
                        detail: json!({"reason": why}),
                    });
                }
                continue;
            }
            match outcomes.get(id).and_then(|o| o.failed.as_ref()) {
                Some(err) => {
                    report.failed += 1;
                    report.failures.push(format!(
                        "{}: {err}",
                        d.user.user_principal_name.as_deref().unwrap_or(id)
                    ));
                    let parked = self
                        .store
                        .mark_failed(
                            id,
                            err,
                            if outcomes.get(id).is_some_and(|o| o.permanent) {
                                1
                            } else {
                                self.cfg.max_attempts
                            },
                        )
                        .await?;
                    events.push(AuditEvent {
                        event: "user.failed".into(),
                        entra_id: Some(id.into()),
                        sf_id: None,
                        detail: json!({"error": err, "attempt": d.attempts + 1}),
                    });
                    if parked {
                        report.parked += 1;
                        events.push(AuditEvent {
                            event: "user.parked".into(),
                            entra_id: Some(id.into()),
                            sf_id: None,
                            detail: json!({"error": err, "attempts": d.attempts + 1}),
                        });
                    }
                }
                None => {
                    if !with_actions.contains(id) {
                        report.unchanged += 1;
                    }
                    clean.push(id);
                }
            }
        }
        self.store.mark_clean_many(&clean).await?;
        self.store.append_audit(cycle, &events).await?;
        Ok(())
    }
}

/// The Entra change behind a user's actions, in words.
/// When the user's groups map to different profiles in the pack's
/// `group_profiles` table (ordered: the first listed group the user is in
/// wins), says so and which group decided.
fn precedence_note(table: Option<&[(String, String)]>, groups: &[String], chosen: &str) -> String {
    let hits: Vec<&(String, String)> = table
        .unwrap_or_default()
        .iter()
        .filter(|(g, _)| groups.contains(g))
        .collect();
    let mut profiles: Vec<&str> = hits.iter().map(|(_, p)| p.as_str()).collect();
    profiles.sort_unstable();
    profiles.dedup();
    if profiles.len() < 2 {
        return String::new();
    }
    let winner = hits
        .iter()
        .find(|(_, p)| p == chosen)
        .map_or("the pack's own logic", |(g, _)| g.as_str());
    format!(
        "; groups disagree on the profile ({}): the pack's precedence (group_profiles order) picks {chosen} from {winner}",
        hits.iter()
            .map(|(g, p)| format!("{g} -> {p}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn cause_text(d: &DirtyUser) -> String {
    let u = &d.user;
    match (u.removed, u.account_enabled) {
        (Some(crate::model::Removal::HardDeleted), _) => "deleted permanently in Entra".into(),
        (Some(crate::model::Removal::SoftDeleted), _) => "deleted in Entra".into(),
        (None, Some(false)) => "account disabled in Entra".into(),
        _ if d.groups.is_empty() => "Entra user created or changed".into(),
        _ => format!(
            "Entra user created or changed; groups: {}",
            d.groups.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_fill_the_budget_and_keep_every_value() {
        let ids: Vec<String> = (0..1000).map(|i| format!("005{i:015}")).collect();
        let lists = in_lists(&ids, IN_LIST_ENCODED);
        assert!(lists.iter().all(|l| encoded_len(l) <= IN_LIST_ENCODED));
        // 24 encoded characters quoted, 4 between: 500 ids a list.
        assert_eq!(lists.len(), 2);
        // The whole query URL stays under Salesforce's 16,384 bytes.
        let soql = format!(
            "SELECT Id, AssigneeId, PermissionSetId, PermissionSetGroupId FROM PermissionSetAssignment WHERE AssigneeId IN ({}) AND PermissionSet.IsOwnedByProfile = false",
            lists[0]
        );
        let url = format!(
            "https://mydomain.my.salesforce.com/services/data/v62.0/query?q={}",
            url::form_urlencoded::byte_serialize(soql.as_bytes()).collect::<String>()
        );
        assert!(url.len() < 16_384, "{}", url.len());
        let back: Vec<String> = lists
            .iter()
            .flat_map(|l| l.split(", ").map(|v| v.trim_matches('\'').to_string()))
            .collect();
        assert_eq!(back, ids);
        // One literal longer than the budget still goes, alone.
        let long = vec!["x".repeat(30), "y".repeat(3)];
        assert_eq!(
            in_lists(&long, 10),
            vec![format!("'{}'", "x".repeat(30)), "'yyy'".into()]
        );
        assert!(in_lists(&[], 10).is_empty());
    }

    #[test]
    fn alias_variants_stay_within_eight_characters() {
        let v: Vec<String> = alias_candidates("alexandra").take(11).collect();
        assert_eq!(v[0], "alexandr");
        assert_eq!(v[1], "alexand2");
        assert_eq!(v[9], "alexan10");
        assert!(v.iter().all(|a| a.chars().count() <= 8));
        let short: Vec<String> = alias_candidates("jo").take(2).collect();
        assert_eq!(short, vec!["jo", "jo2"]);
        assert!(same(
            "Alias",
            &FieldValue::Text("alexandr".into()),
            Some(&Value::String("alexand2".into()))
        ));
        assert!(!same(
            "Alias",
            &FieldValue::Text("alexandr".into()),
            Some(&Value::String("bob".into()))
        ));
    }
}
