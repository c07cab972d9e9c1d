//! provisor's configuration file (TOML). Every struct refuses unknown keys so
//! a typo is an error naming the key and its line, not a silently ignored
//! setting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or checking a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message already names the line, the column and the key.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("secret `{key}`: environment variable {var} is not set")]
    MissingEnv { key: String, var: String },
    #[error("secret `{key}`: cannot read file {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub entra: EntraConfig,
    pub salesforce: SalesforceConfig,
    #[serde(default)]
    pub store: StoreConfig,
    pub rules: RulesConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub safety: SafetyConfig,
}

/// `[safety]`: guards against mass removals and against locking out the
/// people who run the org.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// A cycle that would deactivate more users than this stages those
    /// deactivations (and their freezes) for `provisor approve` instead.
    /// Entra's provisioning service defaults to 500 too.
    #[serde(default = "default_max_deactivations")]
    pub max_deactivations: usize,
    /// The same as a share (0 to 1) of the users provisor manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deactivation_share: Option<f64>,
    /// At most this many deactivations in any hour (applied ones plus this
    /// cycle's), so frequent polls cannot slip a mass removal through in
    /// small cycles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deactivations_per_hour: Option<usize>,
    /// The same per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deactivations_per_day: Option<usize>,
    /// Salesforce usernames never frozen or deactivated (break-glass
    /// accounts). The integration user and the last active System
    /// Administrator are protected without being listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_glass: Vec<String>,
}

fn default_max_deactivations() -> usize {
    500
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            max_deactivations: default_max_deactivations(),
            max_deactivation_share: None,
            max_deactivations_per_hour: None,
            max_deactivations_per_day: None,
            break_glass: Vec::new(),
        }
    }
}

/// `[metrics]`: a Prometheus endpoint while `provisor sync` runs as a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for `GET /metrics` (e.g. "127.0.0.1:9464"); none serves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `[tls]`: extra trust for the HTTPS connections to Entra and Salesforce.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM files whose certificates are trusted besides the platform's
    /// (a TLS-inspecting proxy's CA, or `provisor sim --tls`'s certificate).
    /// Relative paths are taken relative to the config file.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
}

/// Where and how to read Entra ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Tenant id or verified domain (never `common`).
    pub tenant: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// The client secret *value* (or use `client_certificate`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A certificate credential: provisor signs a `client_assertion`
    /// (RS256, `x5t#S256`) with the private key. Preferred over a secret.
    #[serde(default)]
    pub client_certificate: Option<ClientCertificate>,
    /// Identity platform authority; national clouds and emulators differ.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Graph base URL without the version segment.
    #[serde(default = "default_graph")]
    pub graph_url: String,
    /// `Prefer: odata.maxpagesize` sent on delta reads.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Directory extension attributes to read (`extension_<appId>_<name>`).
    #[serde(default)]
    pub extension_attributes: Vec<String>,
    /// Which users are in scope.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// Change notifications as a fast trigger for delta polls (off by default).
    #[serde(default)]
    pub notifications: NotificationsConfig,
}

/// Graph change notifications: a receiver that triggers an immediate delta
/// poll. Delta stays the source of truth; this only shortens the wait.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Address the receiver listens on.
    #[serde(default = "default_notify_listen")]
    pub listen: String,
    /// Public base URL Graph can reach (HTTPS in production); notifications
    /// go to `{public_url}/graph/notify`. Defaults to `http://{listen}`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The `clientState` secret Graph echoes in every notification.
    #[serde(default)]
    pub client_state: Option<Secret>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: default_notify_listen(),
            public_url: None,
            client_state: None,
        }
    }
}

fn default_notify_listen() -> String {
    "127.0.0.1:8765".into()
}

/// Which Entra users provisor manages. Users out of scope are leavers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// `all` users (optionally narrowed by `filters`), or only members of
    /// `groups` (nested membership flattened).
    #[serde(default)]
    pub mode: ScopeMode,
    /// Group display names or object ids, for `mode = "groups"`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Scoping filters: a user is in scope if any filter matches; a filter
    /// matches if all of its clauses do (Entra's semantics).
    #[serde(default)]
    pub filters: Vec<ScopeFilter>,
}

/// Scope modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMode {
    #[default]
    All,
    Groups,
}

/// One scoping filter: clauses that must all hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeFilter {
    pub clauses: Vec<ScopeClause>,
}

/// `attribute operator value`, e.g. `userType EQUALS Member`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeClause {
    /// A Graph user property name (e.g. `department`, `userType`) or an
    /// extension attribute.
    pub attribute: String,
    pub operator: ScopeOperator,
    #[serde(default)]
    pub value: Option<String>,
}

/// Entra scoping filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScopeOperator {
    Equals,
    NotEquals,
    IsTrue,
    IsFalse,
    IsNull,
    IsNotNull,
    RegexMatch,
    NotRegexMatch,
    Includes,
    NotIncludes,
}

/// A certificate uploaded to the app registration, and its private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    /// The X.509 certificate, PEM.
    pub certificate: Secret,
    /// Its RSA private key, PEM (PKCS#8 or PKCS#1).
    pub private_key: Secret,
}

/// Where and how to reach Salesforce.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// Where to authenticate: `https://login.salesforce.com`,
    /// `https://test.salesforce.com` or the My Domain URL (client
    /// credentials only work on My Domain).
    pub login_url: String,
    /// REST API version, e.g. "62.0".
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The OAuth flow. Default: `jwt_bearer` when `private_key` is set,
    /// else `client_credentials`.
    #[serde(default)]
    pub auth: Option<SfAuthFlow>,
    /// Connected app / external client app consumer key.
    pub client_id: String,
    /// Consumer secret (client credentials, password flow).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// The integration user's username (JWT `sub`, password flow, SOAP).
    #[serde(default)]
    pub username: Option<String>,
    /// RSA private key (PEM) whose certificate is on the connected app (JWT bearer).
    #[serde(default)]
    pub private_key: Option<Secret>,
    /// Password (password flow, SOAP login).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Security token appended to the password when the caller's IP is not trusted.
    #[serde(default)]
    pub security_token: Option<Secret>,
    /// Above this share of the daily API allocation (`Sforce-Limit-Info`),
    /// calls are paced, more the closer usage gets to `stop_share`.
    #[serde(default = "default_throttle_share")]
    pub throttle_share: f64,
    /// At this share writes stop (reads go on) and the cycle reports it, so
    /// provisor never eats the last of the org's API calls.
    #[serde(default = "default_stop_share")]
    pub stop_share: f64,
    /// Longest pause between calls when pacing near the limit.
    #[serde(default = "default_pace_max_ms")]
    pub pace_max_ms: u64,
}

fn default_pace_max_ms() -> u64 {
    2000
}

fn default_throttle_share() -> f64 {
    0.8
}
fn default_stop_share() -> f64 {
    0.95
}

/// Salesforce authentication flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SfAuthFlow {
    /// OAuth 2.0 JWT bearer (recommended): RS256 assertion, no stored password.
    JwtBearer,
    /// OAuth 2.0 client credentials on My Domain, run as the app's Run As user.
    ClientCredentials,
    /// Username + password (+ security token). Legacy, blocked by default in
    /// newer orgs; breaks on every password reset.
    Password,
    /// SOAP `login()`, as the Entra gallery connector does. Retired: not
    /// available from API v65.0, removed for v31.0-64.0 in Summer '27.
    Soap,
}

impl SalesforceConfig {
    /// The flow in use (explicit, or inferred from the credentials given).
    pub fn flow(&self) -> SfAuthFlow {
        self.auth.unwrap_or(if self.private_key.is_some() {
            SfAuthFlow::JwtBearer
        } else {
            SfAuthFlow::ClientCredentials
        })
    }
}

/// The state database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// sqlx URL; SQLite by default. A relative SQLite path is taken
    /// relative to the config file.
    #[serde(default = "default_store_url")]
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
        }
    }
}

/// Which rule pack maps users.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Directory holding the pack's `pack.toml`, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PathBuf>,
    /// Packs stacked in order instead of one `pack`: a vendor's base pack
    /// first, then the organisation's overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<PathBuf>,
    /// The organisation's mapping tables (`[rules.tables.<name>]`, key =
    /// value), readable by packs granted `capabilities.tables`; a table
    /// here wins over a pack's own of the same name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl RulesConfig {
    /// The pack directories, bottom of the stack first.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.pack.iter().chain(&self.packs).cloned().collect()
    }
}

/// Tuning of one sync cycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Failed attempts before a user is parked in the dead-letter list.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Records per sObject Collections call (Salesforce allows at most 200).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Attempts per HTTP request on throttling, 5xx and timeouts.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry backoff in milliseconds (doubles, with jitter).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Salesforce write calls in flight at once (1 to 25; Salesforce allows
    /// 25 concurrent long-running requests per org).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Every this many hours, the service plans every managed user again
    /// (not only changed ones), correcting drift in enforced fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_every_hours: Option<u64>,
    /// Set ManagerId from Entra's manager when the manager is a managed
    /// user too (in a second pass when both are created in one cycle).
    #[serde(default)]
    pub manager: bool,
    /// With `manager`: every this many hours every user's manager is read
    /// again outside delta (which is known to miss manager changes); 0
    /// never.
    #[serde(default = "default_manager_reread_hours")]
    pub manager_reread_hours: u64,
    /// A cycle with more users to plan than this plans and applies them
    /// this many at a time, so memory does not grow with the tenant.
    #[serde(default = "default_plan_chunk_users")]
    pub plan_chunk_users: usize,
    /// A leaver's records of one object move through Collections (200 a
    /// call) up to this many, through Bulk API 2.0 above it.
    #[serde(default = "default_reassign_bulk_threshold")]
    pub reassign_bulk_threshold: usize,
    /// A deactivation refused by org configuration (default case owner,
    /// workflow user...) is tried again after this many minutes, doubling
    /// each time, instead of every cycle; `provisor leavers retry` tries at
    /// once.
    #[serde(default = "default_blocker_retry_minutes")]
    pub blocker_retry_minutes: u64,
    /// The longest wait between two tries of such a deactivation.
    #[serde(default = "default_blocker_retry_max_hours")]
    pub blocker_retry_max_hours: u64,
}

fn default_blocker_retry_minutes() -> u64 {
    15
}

fn default_blocker_retry_max_hours() -> u64 {
    24
}

fn default_reassign_bulk_threshold() -> usize {
    2_000
}

fn default_plan_chunk_users() -> usize {
    10_000
}

fn default_concurrency() -> usize {
    4
}

fn default_manager_reread_hours() -> u64 {
    24
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            batch_size: default_batch_size(),
            retries: default_retries(),
            retry_base_ms: default_retry_base_ms(),
            concurrency: default_concurrency(),
            reconcile_every_hours: None,
            manager: false,
            manager_reread_hours: default_manager_reread_hours(),
            plan_chunk_users: default_plan_chunk_users(),
            reassign_bulk_threshold: default_reassign_bulk_threshold(),
            blocker_retry_minutes: default_blocker_retry_minutes(),
            blocker_retry_max_hours: default_blocker_retry_max_hours(),
        }
    }
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_graph() -> String {
    "https://graph.microsoft.com".into()
}
fn default_page_size() -> u32 {
    999
}
fn default_api_version() -> String {
    "62.0".into()
}
fn default_store_url() -> String {
    "sqlite://provisor.db?mode=rwc".into()
}
fn default_max_attempts() -> u32 {
    5
}
fn default_batch_size() -> usize {
    200
}
fn default_retries() -> u32 {
    5
}
fn default_retry_base_ms() -> u64 {
    200
}

/// A secret: from an environment variable, a file, or (for emulators and
/// tests only) inline.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum Secret {
    Env(String),
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(v) => write!(f, "Secret::Env({v})"),
            Self::File(p) => write!(f, "Secret::File({})", p.display()),
            Self::Value(_) => f.write_str("Secret::Value(<redacted>)"),
        }
    }
}

impl Secret {
    /// Reads the secret; `key` names it in errors (never the value).
    pub fn resolve(&self, key: &str) -> Result<SecretString, ConfigError> {
        match self {
            Self::Env(var) => {
                std::env::var(var)
                    .map(SecretString)
                    .map_err(|_| ConfigError::MissingEnv {
                        key: key.into(),
                        var: var.clone(),
                    })
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| SecretString(s.trim_end().to_string()))
                .map_err(|source| ConfigError::SecretFile {
                    key: key.into(),
                    path: path.clone(),
                    source,
                }),
            Self::Value(v) => Ok(SecretString(v.clone())),
        }
    }
}

/// A resolved secret; its Debug and Display never show the value.
#[derive(Clone)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value (for emulators and tests).
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Parses a config file; relative paths in it are taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in cfg.rules.pack.iter_mut().chain(cfg.rules.packs.iter_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // A relative SQLite file lives beside the config file, like the pack.
        if let Some(rest) = cfg.store.url.strip_prefix("sqlite://") {
            let (file, query) = rest
                .split_once('?')
                .map_or((rest, None), |(f, q)| (f, Some(q)));
            if !file.is_empty() && !file.starts_with(':') && Path::new(file).is_relative() {
                let joined = base.join(file);
                cfg.store.url = match query {
                    Some(q) => format!("sqlite://{}?{q}", joined.display()),
                    None => format!("sqlite://{}", joined.display()),
                };
            }
        }
        for ca in &mut cfg.tls.ca_files {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        let mut secrets: Vec<&mut Secret> = Vec::new();
        let sf = &mut cfg.salesforce;
        for s in [
            &mut sf.client_secret,
            &mut sf.private_key,
            &mut sf.password,
            &mut sf.security_token,
        ]
        .into_iter()
        .flatten()
        {
            secrets.push(s);
        }
        if let Some(s) = cfg.entra.client_secret.as_mut() {
            secrets.push(s);
        }
        if let Some(c) = cfg.entra.client_certificate.as_mut() {
            secrets.push(&mut c.certificate);
            secrets.push(&mut c.private_key);
        }
        for secret in secrets {
            if let Secret::File(p) = secret
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses TOML text; the error string names line, column and key.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what can be checked without network: URLs, numbers, the pack
    /// directory and that secrets resolve.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("entra.authority", &self.entra.authority),
            ("entra.graph_url", &self.entra.graph_url),
            ("salesforce.login_url", &self.salesforce.login_url),
        ] {
            let parsed = url::Url::parse(url).map_err(|e| ConfigError::Invalid {
                key: key.into(),
                problem: format!("{url:?} is not a URL: {e}"),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    problem: format!("{url:?} must be an http(s) URL"),
                });
            }
        }
        if matches!(
            self.entra.tenant.as_str(),
            "common" | "consumers" | "organizations"
        ) {
            return Err(ConfigError::Invalid {
                key: "entra.tenant".into(),
                problem: "client credentials need a tenant id or domain, not a multi-tenant alias (AADSTS9001023)".into(),
            });
        }
        let v = &self.salesforce.api_version;
        let ok = v
            .split_once('.')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok_and(|n| n >= 31) && b == "0");
        if !ok {
            return Err(ConfigError::Invalid {
                key: "salesforce.api_version".into(),
                problem: format!(
                    "{v:?} is not a supported API version such as \"62.0\" (31.0 or later)"
                ),
            });
        }
        if self.sync.batch_size == 0 || self.sync.batch_size > 200 {
            return Err(ConfigError::Invalid {
                key: "sync.batch_size".into(),
                problem: "sObject Collections take 1 to 200 records".into(),
            });
        }
        for (i, e) in self.entra.extension_attributes.iter().enumerate() {
            if !e.starts_with("extension_") || !crate::model::is_api_name(e) {
                return Err(ConfigError::Invalid {
                    key: format!("entra.extension_attributes[{i}]"),
                    problem: format!(
                        "{e:?} is not an extension attribute name (extension_<appId>_<name>)"
                    ),
                });
            }
        }
        if self.entra.scope.mode == ScopeMode::Groups && self.entra.scope.groups.is_empty() {
            return Err(ConfigError::Invalid {
                key: "entra.scope.groups".into(),
                problem: "mode = \"groups\" needs at least one group".into(),
            });
        }
        for (i, f) in self.entra.scope.filters.iter().enumerate() {
            for (j, c) in f.clauses.iter().enumerate() {
                let key = format!("entra.scope.filters[{i}].clauses[{j}]");
                let needs_value = matches!(
                    c.operator,
                    ScopeOperator::Equals
                        | ScopeOperator::NotEquals
                        | ScopeOperator::RegexMatch
                        | ScopeOperator::NotRegexMatch
                        | ScopeOperator::Includes
                        | ScopeOperator::NotIncludes
                );
                if needs_value && c.value.is_none() {
                    return Err(ConfigError::Invalid {
                        key,
                        problem: format!("{:?} needs a value", c.operator),
                    });
                }
                if matches!(
                    c.operator,
                    ScopeOperator::RegexMatch | ScopeOperator::NotRegexMatch
                ) && let Err(e) = regex::Regex::new(c.value.as_deref().unwrap_or(""))
                {
                    return Err(ConfigError::Invalid {
                        key,
                        problem: format!("bad regular expression: {e}"),
                    });
                }
            }
        }
        let n = &self.entra.notifications;
        if n.enabled {
            if n.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    key: "entra.notifications.listen".into(),
                    problem: format!("{:?} is not an address such as 0.0.0.0:8443", n.listen),
                });
            }
            match &n.client_state {
                Some(c) => {
                    let v = c.resolve("entra.notifications.client_state")?;
                    if v.expose().is_empty() || v.expose().len() > 128 {
                        return Err(ConfigError::Invalid {
                            key: "entra.notifications.client_state".into(),
                            problem: "must be 1 to 128 characters".into(),
                        });
                    }
                }
                None => {
                    return Err(ConfigError::Invalid {
                        key: "entra.notifications.client_state".into(),
                        problem: "required when notifications are enabled".into(),
                    });
                }
            }
        }
        if !(1..=25).contains(&self.sync.concurrency) {
            return Err(ConfigError::Invalid {
                key: "sync.concurrency".into(),
                problem: "must be between 1 and 25".into(),
            });
        }
        if self.sync.plan_chunk_users == 0 {
            return Err(ConfigError::Invalid {
                key: "sync.plan_chunk_users".into(),
                problem: "must be at least 1".into(),
            });
        }
        if self.sync.retries == 0 {
            return Err(ConfigError::Invalid {
                key: "sync.retries".into(),
                problem: "must be at least 1 (the first attempt counts)".into(),
            });
        }
        if !(1..=999).contains(&self.entra.page_size) {
            return Err(ConfigError::Invalid {
                key: "entra.page_size".into(),
                problem: "must be between 1 and 999".into(),
            });
        }
        match (&self.rules.pack, self.rules.packs.is_empty()) {
            (None, true) => {
                return Err(ConfigError::Invalid {
                    key: "rules.pack".into(),
                    problem: "no rule pack: set rules.pack (or rules.packs to stack several)"
                        .into(),
                });
            }
            (Some(_), false) => {
                return Err(ConfigError::Invalid {
                    key: "rules.packs".into(),
                    problem: "set rules.pack or rules.packs, not both".into(),
                });
            }
            _ => {}
        }
        for (i, dir) in self.rules.dirs().iter().enumerate() {
            if !dir.join("pack.toml").is_file() {
                let key = if self.rules.pack.is_some() {
                    "rules.pack".to_string()
                } else {
                    format!("rules.packs[{i}]")
                };
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!("{} has no pack.toml", dir.display()),
                });
            }
        }
        match (&self.entra.client_secret, &self.entra.client_certificate) {
            (Some(s), None) => {
                s.resolve("entra.client_secret")?;
            }
            (None, Some(c)) => {
                c.certificate
                    .resolve("entra.client_certificate.certificate")?;
                c.private_key
                    .resolve("entra.client_certificate.private_key")?;
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "entra".into(),
                    problem: "set either client_secret or client_certificate, not both".into(),
                });
            }
            (None, None) => {
                return Err(ConfigError::Invalid {
                    key: "entra".into(),
                    problem: "a credential is required: client_secret or client_certificate".into(),
                });
            }
        }
        let sf = &self.salesforce;
        if !(sf.throttle_share > 0.0 && sf.throttle_share <= sf.stop_share && sf.stop_share <= 1.0)
        {
            return Err(ConfigError::Invalid {
                key: "salesforce.throttle_share".into(),
                problem: format!(
                    "need 0 < throttle_share ({}) <= stop_share ({}) <= 1",
                    sf.throttle_share, sf.stop_share
                ),
            });
        }
        let need = |present: bool, key: &str, why: &str| -> Result<(), ConfigError> {
            if present {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key: format!("salesforce.{key}"),
                    problem: format!("required for {why}"),
                })
            }
        };
        match sf.flow() {
            SfAuthFlow::JwtBearer => {
                need(
                    sf.username.is_some(),
                    "username",
                    "auth = \"jwt_bearer\" (the JWT sub)",
                )?;
                need(
                    sf.private_key.is_some(),
                    "private_key",
                    "auth = \"jwt_bearer\"",
                )?;
            }
            SfAuthFlow::ClientCredentials => need(
                sf.client_secret.is_some(),
                "client_secret",
                "auth = \"client_credentials\"",
            )?,
            SfAuthFlow::Password => {
                need(
                    sf.client_secret.is_some(),
                    "client_secret",
                    "auth = \"password\"",
                )?;
                need(sf.username.is_some(), "username", "auth = \"password\"")?;
                need(sf.password.is_some(), "password", "auth = \"password\"")?;
            }
            SfAuthFlow::Soap => {
                need(sf.username.is_some(), "username", "auth = \"soap\"")?;
                need(sf.password.is_some(), "password", "auth = \"soap\"")?;
                if self
                    .salesforce
                    .api_version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u32>().ok())
                    .is_some_and(|m| m >= 65)
                {
                    return Err(ConfigError::Invalid {
                        key: "salesforce.api_version".into(),
                        problem: "SOAP login() is not available from API v65.0; use jwt_bearer"
                            .into(),
                    });
                }
            }
        }
        for (key, secret) in [
            ("client_secret", &sf.client_secret),
            ("private_key", &sf.private_key),
            ("password", &sf.password),
            ("security_token", &sf.security_token),
        ] {
            if let Some(s) = secret {
                s.resolve(&format!("salesforce.{key}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[entra]
tenant = "contoso.onmicrosoft.com"
client_id = "c1"
client_secret = { env = "X" }

[salesforce]
login_url = "https://acme.my.salesforce.com"
client_id = "k"
client_secret = { value = "s" }

[rules]
pack = "rules/gallery-defaults"
"#;

    #[test]
    fn parses_good_config_with_defaults() {
        let cfg = Config::parse(GOOD).expect("good config parses");
        assert_eq!(cfg.entra.graph_url, "https://graph.microsoft.com");
        assert_eq!(cfg.salesforce.api_version, "62.0");
        assert_eq!(cfg.sync.batch_size, 200);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let bad = GOOD.replace("client_id = \"k\"", "client_id = \"k\"\nloginurl = \"x\"");
        let err = Config::parse(&bad).expect_err("unknown key must fail");
        assert!(err.contains("loginurl"), "{err}");
        assert!(err.contains("line 10"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let cfg = Config::parse(GOOD).expect("parses");
        assert!(!format!("{cfg:?}").contains("\"s\""));
    }
}
