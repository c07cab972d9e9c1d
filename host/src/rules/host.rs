//! The capability-limited host API a pack may call (WIT `interface host`,
//! the same functions in Rhai): read-only lookups, a clock and a log. Each
//! is granted by the pack's `[capabilities]`; a call beyond them is refused,
//! the guest is told so, and the refusal is kept for the audit trail with
//! the pack, its version, the export that asked and the user.
//!
//! Where the answers come from is a [`Directory`]: the sync engine's reads
//! Salesforce and the store; a test case's is the fixture written in it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::RuleError;

/// `[capabilities]` of `pack.toml`: what the pack may ask the host.
/// Everything is denied unless listed here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// User fields the pack may look Salesforce users up by (`find-user`).
    #[serde(default)]
    pub find_user: Vec<String>,
    /// Queues (`DeveloperName`) whose members the pack may read.
    #[serde(default)]
    pub queue_members: Vec<String>,
    /// Entra groups (display name) whose members the pack may read.
    #[serde(default)]
    pub team_members: Vec<String>,
    /// Whether the pack may read a user's chain of managers.
    #[serde(default)]
    pub manager_chain: bool,
    /// Mapping tables the pack may read (`tables/<name>.csv` in the pack,
    /// or the organisation's `[rules.tables.<name>]`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Whether the pack may read the host's clock.
    #[serde(default)]
    pub clock: bool,
    /// Whether the pack may write to the host's log.
    #[serde(default)]
    pub log: bool,
}

/// A Salesforce user as a lookup returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceUser {
    pub id: String,
    pub username: String,
    pub is_active: bool,
    pub email: Option<String>,
    pub federation_identifier: Option<String>,
    pub manager_id: Option<String>,
    /// Other User fields the fixture or the org returned (lookups by them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// A person in the Entra mirror with their linked Salesforce account.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Person {
    pub id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub account_enabled: Option<bool>,
    pub salesforce_username: Option<String>,
    pub salesforce_active: Option<bool>,
}

/// Why the host gave no answer (the guest sees this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// Not granted by the manifest.
    Refused(String),
    /// The source could not answer now.
    Unavailable(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) => write!(f, "refused: {m}"),
            Self::Unavailable(m) => write!(f, "unavailable: {m}"),
        }
    }
}

/// Log levels a pack may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// A request the host refused: a host call or an intent the manifest does
/// not grant. Audited as `rules.refused`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `name@version` of the pack that asked.
    pub pack: String,
    /// The export (rule) that asked: `configure`, `map`, `scope`,
    /// `match-keys`, `on-leave`.
    pub rule: String,
    /// The Entra user it was running for.
    pub user: String,
    /// What was asked: `find-user`, `team-members`, `field`, `object`, ...
    pub capability: String,
    /// The argument: a field, a queue, a table, an object.
    pub target: String,
}

/// Where lookups are answered from. Calls are synchronous: the engine runs
/// rules on a blocking thread and its directory waits on async reads.
pub trait Directory: Send + Sync {
    /// Users whose `field` equals `value` (at most a few).
    fn find_users(&self, field: &str, value: &str) -> Result<Vec<SalesforceUser>, String>;
    /// Active usernames in a queue.
    fn queue_members(&self, queue: &str) -> Result<Vec<String>, String>;
    /// Members of an Entra group (nested flattened).
    fn team_members(&self, team: &str) -> Result<Vec<Person>, String>;
    /// A user's managers, nearest first, at most `depth`.
    fn manager_chain(&self, user_id: &str, depth: u32) -> Result<Vec<Person>, String>;
    /// A table configured by the organisation (overrides the pack's own).
    fn org_table(&self, _name: &str) -> Option<Arc<HashMap<String, String>>> {
        None
    }
    /// The time, RFC 3339 UTC.
    fn now(&self) -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// A directory that knows nothing: every lookup is empty. For `rules eval`
/// without a fixture and for benchmarks.
#[derive(Debug, Default)]
pub struct EmptyDirectory;

impl Directory for EmptyDirectory {
    fn find_users(&self, _: &str, _: &str) -> Result<Vec<SalesforceUser>, String> {
        Ok(Vec::new())
    }
    fn queue_members(&self, _: &str) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    fn team_members(&self, _: &str) -> Result<Vec<Person>, String> {
        Ok(Vec::new())
    }
    fn manager_chain(&self, _: &str, _: u32) -> Result<Vec<Person>, String> {
        Ok(Vec::new())
    }
}

/// What a test case (or `rules eval --host FILE`) says the host knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Pinned clock (RFC 3339); the real clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// Salesforce users `find-user` can see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<SalesforceUser>,
    /// Queue → active member usernames.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, Vec<String>>,
    /// Entra group → members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, Vec<Person>>,
    /// The case user's managers, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<Person>,
    /// Organisation tables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, BTreeMap<String, String>>,
}

impl Directory for Fixture {
    fn find_users(&self, field: &str, value: &str) -> Result<Vec<SalesforceUser>, String> {
        let same = |v: Option<&str>| v.is_some_and(|v| v.eq_ignore_ascii_case(value));
        Ok(self
            .users
            .iter()
            .filter(|u| match field {
                "Id" => u.id == value,
                "Username" => same(Some(&u.username)),
                "Email" => same(u.email.as_deref()),
                "FederationIdentifier" => same(u.federation_identifier.as_deref()),
                other => same(u.fields.get(other).map(String::as_str)),
            })
            .cloned()
            .collect())
    }
    fn queue_members(&self, queue: &str) -> Result<Vec<String>, String> {
        Ok(self.queues.get(queue).cloned().unwrap_or_default())
    }
    fn team_members(&self, team: &str) -> Result<Vec<Person>, String> {
        Ok(self.teams.get(team).cloned().unwrap_or_default())
    }
    fn manager_chain(&self, _: &str, depth: u32) -> Result<Vec<Person>, String> {
        Ok(self.managers.iter().take(depth as usize).cloned().collect())
    }
    fn org_table(&self, name: &str) -> Option<Arc<HashMap<String, String>>> {
        self.tables
            .get(name)
            .map(|t| Arc::new(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
    fn now(&self) -> String {
        self.now.clone().unwrap_or_else(|| {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    }
}

/// The host as one evaluation sees it: a directory and where refusals go.
#[derive(Clone)]
pub struct HostEnv {
    pub directory: Arc<dyn Directory>,
    refusals: Arc<Mutex<Vec<Refusal>>>,
}

impl HostEnv {
    pub fn new(directory: Arc<dyn Directory>) -> Self {
        Self {
            directory,
            refusals: Arc::default(),
        }
    }

    /// A host whose lookups find nothing.
    pub fn empty() -> Self {
        Self::new(Arc::new(EmptyDirectory))
    }

    /// Records a refusal.
    pub fn refuse(&self, r: Refusal) {
        tracing::warn!(pack = %r.pack, rule = %r.rule, user = %r.user, capability = %r.capability, target = %r.target, "rule pack asked for something its manifest does not grant");
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    /// The refusals recorded so far, leaving none.
    pub fn take_refusals(&self) -> Vec<Refusal> {
        std::mem::take(&mut *self.refusals.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Mapping tables a pack ships (`tables/<name>.csv`: a header row, then
/// key,value rows).
pub type PackTables = HashMap<String, Arc<HashMap<String, String>>>;

/// Reads a pack's `tables/*.csv`.
pub(super) fn load_tables(dir: &Path) -> Result<PackTables, RuleError> {
    let tables_dir = dir.join("tables");
    let mut out = PackTables::new();
    if !tables_dir.is_dir() {
        return Ok(out);
    }
    let read_err = |file: &Path, source| RuleError::Read {
        dir: dir.to_path_buf(),
        file: file.to_path_buf(),
        source,
    };
    let entries = std::fs::read_dir(&tables_dir).map_err(|e| read_err(&tables_dir, e))?;
    for e in entries {
        let path = e.map_err(|e| read_err(&tables_dir, e))?.path();
        if path.extension().is_none_or(|x| x != "csv") {
            continue;
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bad = |message: String| RuleError::Manifest {
            dir: dir.to_path_buf(),
            message: format!("table {}: {message}", path.display()),
        };
        let mut rdr = csv::Reader::from_path(&path).map_err(|e| bad(e.to_string()))?;
        let mut table = HashMap::new();
        for (i, row) in rdr.records().enumerate() {
            let row = row.map_err(|e| bad(e.to_string()))?;
            let (Some(k), Some(v)) = (row.get(0), row.get(1)) else {
                return Err(bad(format!("row {} needs two columns: key,value", i + 2)));
            };
            if table.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad(format!("key {k:?} appears twice")));
            }
        }
        out.insert(name, Arc::new(table));
    }
    Ok(out)
}

/// Longest answer a lookup returns to a guest (a team or queue list).
const MAX_LIST: usize = 10_000;

/// The host API for one call of one export: checks every request against
/// the pack's capabilities before the directory sees it.
#[derive(Clone)]
pub struct Gate {
    pub(super) pack: std::sync::Arc<str>,
    pub(super) caps: Arc<Capabilities>,
    pub(super) tables: Arc<PackTables>,
    pub(super) env: HostEnv,
    pub(super) rule: &'static str,
    pub(super) user: String,
}

impl Gate {
    /// Records a refusal of `capability` for `target` by this pack's rule.
    fn record_refusal(&self, capability: &str, target: &str) {
        self.env.refuse(Refusal {
            pack: self.pack.to_string(),
            rule: self.rule.to_string(),
            user: self.user.clone(),
            capability: capability.to_string(),
            target: target.to_string(),
        });
    }

    fn refuse(&self, capability: &str, target: &str) -> HostError {
        self.record_refusal(capability, target);
        HostError::Refused(format!(
            "{capability} {target:?} is not granted by the pack's [capabilities]"
        ))
    }

    fn granted(list: &[String], item: &str) -> bool {
        list.iter().any(|x| x == item)
    }

    /// `configure` gets the settings and nothing else: what it keeps serves
    /// every user of the instance (and the instance made at load), so
    /// answers that depend on the cycle, the user or the time (directory
    /// lookups, tables, the clock) are refused there. `log` is allowed.
    fn outside_configure(&self, capability: &str, target: &str) -> Result<(), HostError> {
        if self.rule != "configure" {
            return Ok(());
        }
        self.record_refusal(capability, target);
        Err(HostError::Refused(format!(
            "{capability} is not available in configure, which gets the settings only"
        )))
    }

    /// `find-user`: the one user whose field holds the value; none when no
    /// user or several do (a lookup must not pick among duplicates).
    pub fn find_user(&self, field: &str, value: &str) -> Result<Option<SalesforceUser>, HostError> {
        self.outside_configure("find-user", field)?;
        if !Self::granted(&self.caps.find_user, field) {
            return Err(self.refuse("find-user", field));
        }
        let mut found = self
            .env
            .directory
            .find_users(field, value)
            .map_err(HostError::Unavailable)?;
        Ok(if found.len() == 1 { found.pop() } else { None })
    }

    /// Whether any Salesforce user holds `value` in `field` (Entra's
    /// SelectUniqueValue); granted like `find-user`.
    pub fn value_taken(&self, field: &str, value: &str) -> Result<bool, HostError> {
        self.outside_configure("find-user", field)?;
        if !Self::granted(&self.caps.find_user, field) {
            return Err(self.refuse("find-user", field));
        }
        let found = self
            .env
            .directory
            .find_users(field, value)
            .map_err(HostError::Unavailable)?;
        Ok(!found.is_empty())
    }

    pub fn queue_members(&self, queue: &str) -> Result<Vec<String>, HostError> {
        self.outside_configure("queue-members", queue)?;
        if !Self::granted(&self.caps.queue_members, queue) {
            return Err(self.refuse("queue-members", queue));
        }
        let mut v = self
            .env
            .directory
            .queue_members(queue)
            .map_err(HostError::Unavailable)?;
        v.truncate(MAX_LIST);
        Ok(v)
    }

    pub fn team_members(&self, team: &str) -> Result<Vec<Person>, HostError> {
        self.outside_configure("team-members", team)?;
        if !Self::granted(&self.caps.team_members, team) {
            return Err(self.refuse("team-members", team));
        }
        let mut v = self
            .env
            .directory
            .team_members(team)
            .map_err(HostError::Unavailable)?;
        v.truncate(MAX_LIST);
        Ok(v)
    }

    pub fn manager_chain(&self, user_id: &str, depth: u32) -> Result<Vec<Person>, HostError> {
        self.outside_configure("manager-chain", user_id)?;
        if !self.caps.manager_chain {
            return Err(self.refuse("manager-chain", user_id));
        }
        self.env
            .directory
            .manager_chain(user_id, depth.min(32))
            .map_err(HostError::Unavailable)
    }

    /// `lookup`: the organisation's table of that name wins over the pack's.
    pub fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, HostError> {
        self.outside_configure("lookup", table)?;
        if !Self::granted(&self.caps.tables, table) {
            return Err(self.refuse("lookup", table));
        }
        let t = self
            .env
            .directory
            .org_table(table)
            .or_else(|| self.tables.get(table).cloned())
            .ok_or_else(|| {
                HostError::Unavailable(format!(
                    "no table {table:?} (neither tables/{table}.csv in the pack nor [rules.tables.{table}])"
                ))
            })?;
        Ok(t.get(key).cloned())
    }

    pub fn now(&self) -> Result<String, HostError> {
        self.outside_configure("clock", "now")?;
        if !self.caps.clock {
            return Err(self.refuse("clock", "now"));
        }
        Ok(self.env.directory.now())
    }

    pub fn log(&self, level: LogLevel, message: &str) -> Result<(), HostError> {
        if !self.caps.log {
            return Err(self.refuse("log", level_name(level)));
        }
        let message: String = message.chars().take(4096).collect();
        let (pack, rule, user) = (&self.pack, self.rule, &self.user);
        match level {
            LogLevel::Debug => tracing::debug!(%pack, rule, %user, "{message}"),
            LogLevel::Info => tracing::info!(%pack, rule, %user, "{message}"),
            LogLevel::Warn => tracing::warn!(%pack, rule, %user, "{message}"),
            LogLevel::Error => tracing::error!(%pack, rule, %user, "{message}"),
        }
        Ok(())
    }
}

fn level_name(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(caps: Capabilities, fixture: Fixture) -> Gate {
        Gate {
            pack: "p@1".into(),
            caps: Arc::new(caps),
            tables: Arc::default(),
            env: HostEnv::new(Arc::new(fixture)),
            rule: "on-leave",
            user: "u1".into(),
        }
    }

    #[test]
    fn ungranted_calls_are_refused_and_recorded() {
        let g = gate(Capabilities::default(), Fixture::default());
        assert!(matches!(
            g.find_user("Username", "a@b"),
            Err(HostError::Refused(_))
        ));
        assert!(matches!(g.queue_members("Q"), Err(HostError::Refused(_))));
        assert!(matches!(g.now(), Err(HostError::Refused(_))));
        let r = g.env.take_refusals();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].pack, "p@1");
        assert_eq!(r[0].rule, "on-leave");
        assert_eq!(r[0].capability, "find-user");
        assert_eq!(r[0].target, "Username");
        assert!(g.env.take_refusals().is_empty());
    }

    #[test]
    fn granted_calls_reach_the_directory() {
        let fixture = Fixture {
            now: Some("2026-12-01T00:00:00Z".into()),
            users: vec![
                SalesforceUser {
                    id: "005A".into(),
                    username: "a@x".into(),
                    is_active: true,
                    ..Default::default()
                },
                SalesforceUser {
                    id: "005B".into(),
                    username: "b@x".into(),
                    email: Some("same@x".into()),
                    ..Default::default()
                },
                SalesforceUser {
                    id: "005C".into(),
                    username: "c@x".into(),
                    email: Some("same@x".into()),
                    ..Default::default()
                },
            ],
            tables: [(
                "t".to_string(),
                [("k".to_string(), "org".to_string())].into(),
            )]
            .into(),
            ..Default::default()
        };
        let caps = Capabilities {
            find_user: vec!["Username".into(), "Email".into()],
            tables: vec!["t".into(), "p".into()],
            clock: true,
            ..Default::default()
        };
        let mut g = gate(caps, fixture);
        g.tables = Arc::new(
            [
                (
                    "t".to_string(),
                    Arc::new([("k".to_string(), "pack".to_string())].into()),
                ),
                (
                    "p".to_string(),
                    Arc::new([("k".to_string(), "pack".to_string())].into()),
                ),
            ]
            .into(),
        );
        assert_eq!(
            g.find_user("Username", "A@X")
                .expect("granted")
                .map(|u| u.id),
            Some("005A".into())
        );
        assert_eq!(
            g.find_user("Email", "same@x").expect("granted"),
            None,
            "two users hold it: no answer"
        );
        assert_eq!(g.lookup("t", "k").expect("granted").as_deref(), Some("org"));
        assert_eq!(
            g.lookup("p", "k").expect("granted").as_deref(),
            Some("pack")
        );
        assert_eq!(g.lookup("p", "nope").expect("granted"), None);
        assert_eq!(g.now().expect("granted"), "2026-12-01T00:00:00Z");
        assert!(g.env.take_refusals().is_empty());
    }
}
