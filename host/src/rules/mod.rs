//! Rule packs: the organisation's mapping logic, as a Rhai script or a
//! WebAssembly component behind one interface, so the engine never knows
//! which ran. A pack is a directory with a `pack.toml` manifest.

pub mod cases;
pub mod host;
mod rhai;
mod slot;
mod wasm;

pub use host::{Capabilities, Directory, Fixture, HostEnv, Person, Refusal, SalesforceUser};
pub use slot::{PackSlot, Reload};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Access, DesiredUser, EntraUser, FieldValue, is_api_name};

/// Contract versions (`provisor:rules@major.minor`) this host accepts.
pub const ACCEPTED_CONTRACTS: &[&str] = &["0.4"];

/// Contract versions a Rhai pack may also declare: for scripts 0.4 only
/// added the optional `fn configure(settings)` (settings are still passed
/// to every call), so a 0.3 script loads unchanged, and its `configure`,
/// if it happens to have one, is not called.
pub const ACCEPTED_RHAI_CONTRACTS: &[&str] = &["0.3", "0.4"];

/// Errors loading or running a pack; each names the pack.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule pack {dir}: cannot read {file}: {source}")]
    Read {
        dir: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rule pack {dir}: invalid pack.toml: {message}")]
    Manifest { dir: PathBuf, message: String },
    #[error("rule pack {pack}: contract {found} is not one this host accepts ({accepted})")]
    Contract {
        pack: String,
        found: String,
        accepted: String,
    },
    #[error("rule pack {pack}: does not load: {message}")]
    Load { pack: String, message: String },
    #[error("rule pack {pack}: `{export}` failed for user {user}: {message}")]
    Call {
        pack: String,
        export: &'static str,
        user: String,
        message: String,
    },
    #[error("rule pack {pack}: `{export}` returned an invalid result for {user}: {message}")]
    Output {
        pack: String,
        export: &'static str,
        user: String,
        message: String,
    },
    /// The pack asked for something its manifest does not declare; nothing
    /// of that user's result is used.
    #[error("rule pack {pack}: `{export}` for user {user} was refused: {message}")]
    Refused {
        pack: String,
        export: &'static str,
        user: String,
        message: String,
    },
    #[error("rule packs cannot be stacked: {0}")]
    Stack(String),
    /// The pack reads an Entra attribute Graph delta cannot track: its
    /// changes would never reach the rules.
    #[error(
        "rule pack {pack}: reads Entra attribute `{attribute}`, which Graph delta queries cannot track ({why}); read it some other way or drop it"
    )]
    Untrackable {
        pack: String,
        attribute: String,
        why: &'static str,
    },
}

/// Which engine runs the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Rhai,
    Wasm,
}

/// `[pack]` of `pack.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackInfo {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub vendor: Option<String>,
    pub engine: EngineKind,
    pub entry: PathBuf,
    /// The `provisor:rules` contract version the pack was written for.
    pub contract: String,
    /// A new Entra user whose match keys find an inactive Salesforce user
    /// (a rehire): `review` (default) holds it for an operator, `auto`
    /// reactivates and relinks that account.
    #[serde(default)]
    pub rehires: Rehires,
}

/// What to do with rehires (see [`PackInfo::rehires`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rehires {
    #[default]
    Review,
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    pack: PackInfo,
    #[serde(default)]
    settings: toml::Table,
    #[serde(default)]
    access: AccessClaims,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    source: SourceClaims,
}

/// `[source]` of `pack.toml`: what the pack reads from Entra beyond the
/// properties every pack gets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceClaims {
    /// Graph user properties (e.g. `officeLocation`, `employeeType`,
    /// `extension_<appId>_costCenter`), handed to the rules in
    /// `user.extensions`. Adding one starts a new baseline read of Entra
    /// with the wider `$select`; one Graph delta cannot track (such as
    /// `signInActivity`) refuses the pack.
    #[serde(default)]
    pub attributes: Vec<String>,
}

/// `[access]` of `pack.toml`: what the pack owns in Salesforce.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    /// Permission sets (by API name) the pack owns: assignments of these
    /// that the pack no longer wants are removed even if an admin made them.
    /// Other hand-made assignments are never removed.
    #[serde(default)]
    pub owns_permission_sets: Vec<String>,
    /// Profiles the pack may ask for (checked by `provisor test-connection`).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Roles the pack may ask for.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permission sets the pack may grant.
    #[serde(default)]
    pub permission_sets: Vec<String>,
    /// Permission set groups the pack may grant.
    #[serde(default)]
    pub permission_set_groups: Vec<String>,
    /// Permission set licences the pack may grant.
    #[serde(default)]
    pub permission_set_licenses: Vec<String>,
    /// Queues the pack may add users to.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Permission set groups the pack owns (see `owns_permission_sets`).
    #[serde(default)]
    pub owns_permission_set_groups: Vec<String>,
    /// Permission set licences the pack owns.
    #[serde(default)]
    pub owns_permission_set_licenses: Vec<String>,
    /// Queues whose membership the pack owns.
    #[serde(default)]
    pub owns_queues: Vec<String>,
    /// User fields (API names) the pack may set. A desired user with any
    /// other field is refused.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Objects (API names) whose records `on-leave` may reassign, child
    /// objects included.
    #[serde(default)]
    pub objects: Vec<String>,
    /// Fields set when the user is created and never corrected afterwards
    /// (hand edits in Salesforce stand). Every other field the pack
    /// returns is enforced: a hand edit is corrected on the next plan.
    #[serde(default)]
    pub create_only: Vec<String>,
}

impl AccessClaims {
    /// Names of one kind the pack owns: their assignments are revoked when
    /// the pack no longer wants them, whoever made them.
    pub fn owned(&self, access: Access) -> &[String] {
        match access {
            Access::PermissionSet => &self.owns_permission_sets,
            Access::PermissionSetGroup => &self.owns_permission_set_groups,
            Access::PermissionSetLicense => &self.owns_permission_set_licenses,
            Access::Queue => &self.owns_queues,
        }
    }

    /// Every name of one kind the pack references (granted or owned),
    /// sorted and without repeats.
    pub fn referenced(&self, access: Access) -> Vec<String> {
        let granted = match access {
            Access::PermissionSet => &self.permission_sets,
            Access::PermissionSetGroup => &self.permission_set_groups,
            Access::PermissionSetLicense => &self.permission_set_licenses,
            Access::Queue => &self.queues,
        };
        let mut out: Vec<String> = granted.iter().chain(self.owned(access)).cloned().collect();
        out.sort();
        out.dedup();
        out
    }

    /// Everything either claims (a stack's packs together).
    fn union(&self, other: &AccessClaims) -> AccessClaims {
        fn u(a: &[String], b: &[String]) -> Vec<String> {
            let mut v: Vec<String> = a.iter().chain(b).cloned().collect();
            v.sort();
            v.dedup();
            v
        }
        AccessClaims {
            owns_permission_sets: u(&self.owns_permission_sets, &other.owns_permission_sets),
            profiles: u(&self.profiles, &other.profiles),
            roles: u(&self.roles, &other.roles),
            permission_sets: u(&self.permission_sets, &other.permission_sets),
            permission_set_groups: u(&self.permission_set_groups, &other.permission_set_groups),
            permission_set_licenses: u(
                &self.permission_set_licenses,
                &other.permission_set_licenses,
            ),
            queues: u(&self.queues, &other.queues),
            owns_permission_set_groups: u(
                &self.owns_permission_set_groups,
                &other.owns_permission_set_groups,
            ),
            owns_permission_set_licenses: u(
                &self.owns_permission_set_licenses,
                &other.owns_permission_set_licenses,
            ),
            owns_queues: u(&self.owns_queues, &other.owns_queues),
            fields: u(&self.fields, &other.fields),
            objects: u(&self.objects, &other.objects),
            create_only: u(&self.create_only, &other.create_only),
        }
    }

    /// The first thing in a desired user these claims do not declare, as
    /// (kind, name): a field, the profile, the role, or a grant.
    fn undeclared(&self, d: &DesiredUser) -> Option<(&'static str, String)> {
        let has = |list: &[String], x: &str| list.iter().any(|y| y == x);
        if let Some(f) = d.fields.keys().find(|f| !has(&self.fields, f)) {
            return Some(("field", f.clone()));
        }
        if let Some(p) = d.profile.as_ref().filter(|p| !has(&self.profiles, p)) {
            return Some(("profile", p.clone()));
        }
        if let Some(r) = d.role.as_ref().filter(|r| !has(&self.roles, r)) {
            return Some(("role", r.clone()));
        }
        for kind in Access::ALL {
            let grants = d.grants(kind);
            // `referenced` builds a list: most users are granted nothing.
            if grants.is_empty() {
                continue;
            }
            let declared = self.referenced(kind);
            if let Some(n) = grants.iter().find(|n| !has(&declared, n)) {
                return Some((kind.label(), n.clone()));
            }
        }
        None
    }
}

/// A named settings table, entries in file order (order is precedence).
pub type SettingTables = Vec<(String, Vec<(String, String)>)>;

/// A loaded pack (or a stack of them), ready to map users.
pub struct Pack {
    /// The top pack's manifest (the organisation's, in a stack).
    pub info: PackInfo,
    /// The top pack's directory.
    pub dir: PathBuf,
    /// What the packs claim in Salesforce, together.
    pub access: AccessClaims,
    /// Bottom (vendor base) first; each sees what the ones below decided.
    layers: Vec<Layer>,
    /// Per layer, what it and the layers below declare (intents are
    /// checked against this; computed once, not per user).
    declared: Vec<AccessClaims>,
    /// A hash of every file of every pack in the stack: a different one
    /// means different rules, and every user is planned again.
    pub fingerprint: String,
}

/// One pack of a stack.
struct Layer {
    info: PackInfo,
    source: SourceClaims,
    /// `name@version`, made once.
    id: std::sync::Arc<str>,
    /// Its own claims: intents are checked against what it and the packs
    /// below it declared.
    access: AccessClaims,
    caps: std::sync::Arc<Capabilities>,
    tables: std::sync::Arc<host::PackTables>,
    settings: SettingTables,
    runner: Runner,
}

// One per loaded pack; the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Runner {
    Rhai(rhai::RhaiPack),
    Wasm(wasm::WasmPack),
}

/// A leaver's open records of one object type (input of `on-leave`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedRecords {
    pub object: String,
    pub count: u32,
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// Who receives a leaver's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerTarget {
    /// The leaver's manager, if active in Salesforce.
    Manager,
    /// A Salesforce user by Username.
    User(String),
    /// Spread evenly over these usernames.
    RoundRobin(Vec<String>),
    /// A queue by DeveloperName.
    Queue(String),
    /// Leave the records where they are (the leaver stays frozen).
    Keep,
}

/// Where one object's records go: the first valid target, then fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reassignment {
    pub object: String,
    pub targets: Vec<OwnerTarget>,
    #[serde(default)]
    pub children: Vec<String>,
}

/// What `on-leave` decided for a leaver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReassignmentPlan {
    pub reassignments: Vec<Reassignment>,
    #[serde(default)]
    pub deactivate_anyway: bool,
}

fn read_manifest(dir: &Path) -> Result<Manifest, RuleError> {
    let file = dir.join("pack.toml");
    let text = std::fs::read_to_string(&file).map_err(|source| RuleError::Read {
        dir: dir.to_path_buf(),
        file: file.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| RuleError::Manifest {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })
}

impl Layer {
    fn id(&self) -> String {
        self.id.to_string()
    }

    fn load(dir: &Path) -> Result<Self, RuleError> {
        let m = read_manifest(dir)?;
        let pack = format!("{}@{}", m.pack.name, m.pack.version);
        let contract = m.pack.contract.trim();
        let major_minor: String = contract.split('.').take(2).collect::<Vec<_>>().join(".");
        let accepted = match m.pack.engine {
            EngineKind::Rhai => ACCEPTED_RHAI_CONTRACTS,
            EngineKind::Wasm => ACCEPTED_CONTRACTS,
        };
        if !accepted.contains(&major_minor.as_str()) {
            return Err(RuleError::Contract {
                pack,
                found: contract.into(),
                accepted: accepted.join(", "),
            });
        }
        let configures = major_minor != "0.3";
        let mut settings = Vec::new();
        for (name, v) in &m.settings {
            let toml::Value::Table(t) = v else {
                return Err(RuleError::Manifest {
                    dir: dir.to_path_buf(),
                    message: format!("settings.{name} must be a table of \"key\" = \"value\""),
                });
            };
            let mut entries = Vec::new();
            for (k, v) in t {
                let toml::Value::String(s) = v else {
                    return Err(RuleError::Manifest {
                        dir: dir.to_path_buf(),
                        message: format!("settings.{name}.{k} must be a string"),
                    });
                };
                entries.push((k.clone(), s.clone()));
            }
            settings.push((name.clone(), entries));
        }
        for a in &m.source.attributes {
            if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(RuleError::Manifest {
                    dir: dir.to_path_buf(),
                    message: format!("source.attributes: {a:?} is not a Graph property name"),
                });
            }
            if let Some(why) = crate::entra::untrackable(a) {
                return Err(RuleError::Untrackable {
                    pack,
                    attribute: a.clone(),
                    why,
                });
            }
        }
        for f in m.access.fields.iter().chain(&m.access.objects) {
            if !is_api_name(f) {
                return Err(RuleError::Manifest {
                    dir: dir.to_path_buf(),
                    message: format!("access: {f:?} is not a Salesforce API name"),
                });
            }
        }
        let tables = host::load_tables(dir)?;
        let entry = dir.join(&m.pack.entry);
        let runner = match m.pack.engine {
            EngineKind::Rhai => {
                let src = std::fs::read_to_string(&entry).map_err(|source| RuleError::Read {
                    dir: dir.to_path_buf(),
                    file: entry.clone(),
                    source,
                })?;
                Runner::Rhai(rhai::RhaiPack::compile(&pack, &src, &settings, configures)?)
            }
            EngineKind::Wasm => {
                let bytes = std::fs::read(&entry).map_err(|source| RuleError::Read {
                    dir: dir.to_path_buf(),
                    file: entry.clone(),
                    source,
                })?;
                Runner::Wasm(wasm::WasmPack::compile(&pack, &bytes, &settings)?)
            }
        };
        let layer = Self {
            id: pack.as_str().into(),
            info: m.pack,
            source: m.source,
            access: m.access,
            caps: std::sync::Arc::new(m.capabilities),
            tables: std::sync::Arc::new(tables),
            settings,
            runner,
        };
        // `configure` runs now, so a pack that refuses its settings is
        // refused at load. Host calls it makes are checked like any other.
        let gate = layer.gate(&HostEnv::empty(), "configure", "");
        match &layer.runner {
            Runner::Rhai(r) => r.configure(&pack, gate)?,
            Runner::Wasm(w) => w.configure_check(&pack, gate)?,
        }
        Ok(layer)
    }

    fn gate(&self, env: &HostEnv, rule: &'static str, user: &str) -> host::Gate {
        host::Gate {
            pack: self.id.clone(),
            caps: self.caps.clone(),
            tables: self.tables.clone(),
            env: env.clone(),
            rule,
            user: user.to_string(),
        }
    }

    /// Runs `map` (with the result so far), then `scope` if asked, then
    /// `match-keys` if wanted; `None` keys = not asked, or no opinion (a
    /// Rhai pack without the rule).
    #[allow(clippy::type_complexity)]
    fn evaluate(
        &self,
        user: &EntraUser,
        groups: &[String],
        (ask_scope, want_keys): (bool, bool),
        base: Option<&DesiredUser>,
        env: &HostEnv,
    ) -> Result<(DesiredUser, Option<Decision>, Option<Vec<MatchKey>>), RuleError> {
        let id: &str = &self.id;
        match &self.runner {
            Runner::Rhai(r) => {
                let desired = r.map(id, user, groups, base, self.gate(env, "map", &user.id))?;
                let scope = if ask_scope {
                    Some(r.scope(id, user, groups, self.gate(env, "scope", &user.id))?)
                } else {
                    None
                };
                let keys = if want_keys {
                    r.match_keys(id, user, groups, self.gate(env, "match-keys", &user.id))?
                } else {
                    None
                };
                Ok((desired, scope, keys))
            }
            Runner::Wasm(w) => {
                let (desired, scope, keys) = w.evaluate(
                    id,
                    user,
                    groups,
                    (ask_scope, want_keys),
                    base,
                    self.gate(env, "map", &user.id),
                )?;
                Ok((desired, scope, keys))
            }
        }
    }
}

impl Pack {
    /// Loads and checks one pack: manifest, contract version, settings,
    /// tables, and that the entry compiles and has the contract's exports.
    pub fn load(dir: &Path) -> Result<Self, RuleError> {
        Self::load_stack(&[dir.to_path_buf()])
    }

    /// Loads packs stacked in order: the first is the base (a vendor's),
    /// each next one sees what the ones below decided and may change it
    /// (the organisation's overrides). Each pack keeps its own settings and
    /// capabilities; intents are checked against what it and the packs
    /// below declared.
    pub fn load_stack(dirs: &[PathBuf]) -> Result<Self, RuleError> {
        let Some(top_dir) = dirs.last() else {
            return Err(RuleError::Stack("no pack given".into()));
        };
        let mut layers: Vec<Layer> = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let layer = Layer::load(dir)?;
            if i > 0
                && let Runner::Rhai(r) = &layer.runner
                && !r.takes_base()
            {
                return Err(RuleError::Stack(format!(
                    "{} is stacked on {} but its `map` takes no base: define `fn map(user, settings, base)` and start from `base`",
                    layer.id(),
                    layers[i - 1].id()
                )));
            }
            if let Some(same) = layers.iter().find(|l| l.info.name == layer.info.name) {
                return Err(RuleError::Stack(format!(
                    "{} appears twice ({} and {})",
                    layer.info.name,
                    same.id(),
                    layer.id()
                )));
            }
            layers.push(layer);
        }
        let mut declared: Vec<AccessClaims> = Vec::with_capacity(layers.len());
        for l in &layers {
            let below = declared.last().cloned().unwrap_or_default();
            declared.push(below.union(&l.access));
        }
        let access = declared.last().cloned().unwrap_or_default();
        let info = layers[layers.len() - 1].info.clone();
        let fingerprint = slot::fingerprint_all(dirs)?;
        Ok(Self {
            info,
            dir: top_dir.clone(),
            access,
            layers,
            declared,
            fingerprint,
        })
    }

    /// `name@version`, or for a stack every pack's, bottom first, joined by ` + `.
    pub fn id(&self) -> String {
        self.layers
            .iter()
            .map(Layer::id)
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Whether rehires are reactivated without review (the top pack says).
    pub fn rehires_auto(&self) -> bool {
        self.info.rehires == Rehires::Auto
    }

    /// The Entra attributes the packs read beyond the standard ones
    /// (`[source] attributes` of every pack in the stack), sorted, once each.
    pub fn source_attributes(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .layers
            .iter()
            .flat_map(|l| l.source.attributes.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// A `[settings.<name>]` table of the top-most pack that has one, in
    /// manifest order.
    pub fn settings_table(&self, name: &str) -> Option<&[(String, String)]> {
        self.layers.iter().rev().find_map(|l| {
            l.settings
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.as_slice())
        })
    }

    /// How many packs are stacked.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Runs the packs for one user: `map`, then (with `ask_scope`) `scope`,
    /// then `match-keys`, each pack on the result of the ones below. Every
    /// pack's scope must agree; the top-most pack that gives match keys
    /// decides them. Without any, users match by the FederationIdentifier
    /// and then the Username that `map` returned. A WASM pack runs all
    /// three in one instance. Host calls go to `env`, which also collects
    /// refusals; an intent outside the manifests fails the user.
    pub fn evaluate(
        &self,
        user: &EntraUser,
        groups: &[String],
        ask_scope: bool,
        env: &HostEnv,
    ) -> Result<Evaluation, RuleError> {
        self.evaluate_with(user, groups, ask_scope, true, env)
    }

    /// [`Pack::evaluate`], asking for match keys only with `want_keys`:
    /// a user already linked to its Salesforce account needs none, and
    /// `match-keys` is a call into every pack. Without, `keys` is empty.
    pub fn evaluate_with(
        &self,
        user: &EntraUser,
        groups: &[String],
        ask_scope: bool,
        want_keys: bool,
        env: &HostEnv,
    ) -> Result<Evaluation, RuleError> {
        let mut desired: Option<DesiredUser> = None;
        let mut scope: Option<Decision> = None;
        let mut keys: Option<Vec<MatchKey>> = None;
        for (layer, declared) in self.layers.iter().zip(&self.declared) {
            let id: &str = &layer.id;
            // Once a pack says out of scope, the ones above are not asked.
            let ask = ask_scope && scope.as_ref().is_none_or(|s| s.in_scope);
            let (d, s, k) =
                layer.evaluate(user, groups, (ask, want_keys), desired.as_ref(), env)?;
            let d = validate(id, &user.id, d)?;
            if let Some((kind, name)) = declared.undeclared(&d) {
                env.refuse(Refusal {
                    pack: id.to_string(),
                    rule: "map".into(),
                    user: user.id.clone(),
                    capability: kind.into(),
                    target: name.clone(),
                });
                return Err(RuleError::Refused {
                    pack: id.to_string(),
                    export: "map",
                    user: user.id.clone(),
                    message: format!(
                        "{kind} {name:?} is not declared in the [access] of this pack or the packs below it"
                    ),
                });
            }
            if let Some(mut s) = s
                && scope.as_ref().is_none_or(|prev| prev.in_scope)
            {
                if !s.in_scope && self.layers.len() > 1 {
                    s.reason = if s.reason.is_empty() {
                        format!("{id}: out of scope")
                    } else {
                        format!("{id}: {}", s.reason)
                    };
                }
                scope = Some(s);
            }
            if let Some(k) = k.filter(|k| !k.is_empty() || self.layers.len() == 1) {
                keys = Some(k);
            }
            desired = Some(d);
        }
        let Some(desired) = desired else {
            return Err(RuleError::Stack("no pack given".into()));
        };
        let keys = keys.filter(|_| want_keys).unwrap_or_else(|| {
            if !want_keys {
                return Vec::new();
            }
            ["FederationIdentifier", "Username"]
                .iter()
                .filter_map(|f| {
                    let v = desired.fields.get(*f)?.as_text()?;
                    (!v.is_empty()).then(|| MatchKey {
                        field: (*f).to_string(),
                        value: v.to_string(),
                    })
                })
                .collect()
        });
        let out = |message: String| RuleError::Output {
            pack: self.id(),
            export: "match-keys",
            user: user.id.clone(),
            message,
        };
        if keys.len() > MAX_MATCH_KEYS {
            return Err(out(format!(
                "{} keys; at most {MAX_MATCH_KEYS}",
                keys.len()
            )));
        }
        for k in &keys {
            if !is_api_name(&k.field) {
                return Err(out(format!("{:?} is not a Salesforce API name", k.field)));
            }
            if k.value.is_empty() || k.value.len() > 512 {
                return Err(out(format!(
                    "the value for {} is empty or too long",
                    k.field
                )));
            }
        }
        Ok(Evaluation {
            desired,
            scope,
            keys,
        })
    }

    /// Maps one user (with the display names of its groups) to the
    /// Salesforce user it should have; host lookups find nothing.
    pub fn map(&self, user: &EntraUser, groups: &[String]) -> Result<DesiredUser, RuleError> {
        self.map_with(user, groups, &HostEnv::empty())
    }

    /// [`Pack::map`] with a host.
    pub fn map_with(
        &self,
        user: &EntraUser,
        groups: &[String],
        env: &HostEnv,
    ) -> Result<DesiredUser, RuleError> {
        Ok(self.evaluate_with(user, groups, false, false, env)?.desired)
    }

    /// Asks the packs where a leaver's open records go, top of the stack
    /// first: the first pack with a non-empty plan decides (the packs
    /// below are not asked). Objects, child objects and queues that neither
    /// it nor the packs below declared are refused (recorded in `env`),
    /// and the whole plan with them.
    pub fn on_leave(
        &self,
        user: &EntraUser,
        groups: &[String],
        records: &[OwnedRecords],
        env: &HostEnv,
    ) -> Result<ReassignmentPlan, RuleError> {
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let id = layer.id();
            let gate = layer.gate(env, "on-leave", &user.id);
            let plan = match &layer.runner {
                Runner::Rhai(r) => r.on_leave(&id, user, groups, records, gate)?,
                Runner::Wasm(w) => w.on_leave(&id, user, groups, records, gate)?,
            };
            let Some(plan) = plan.filter(|p| !p.reassignments.is_empty()) else {
                continue;
            };
            let declared = &self.declared[i];
            let refuse = |capability: &'static str, target: &str| {
                env.refuse(Refusal {
                    pack: id.clone(),
                    rule: "on-leave".into(),
                    user: user.id.clone(),
                    capability: capability.into(),
                    target: target.into(),
                });
                RuleError::Refused {
                    pack: id.clone(),
                    export: "on-leave",
                    user: user.id.clone(),
                    message: format!(
                        "{capability} {target:?} is not declared in the [access] of this pack or the packs below it"
                    ),
                }
            };
            let has = |list: &[String], x: &str| list.iter().any(|y| y == x);
            for r in &plan.reassignments {
                for o in std::iter::once(&r.object).chain(&r.children) {
                    if !has(&declared.objects, o) {
                        return Err(refuse("object", o));
                    }
                }
                for t in &r.targets {
                    if let OwnerTarget::Queue(q) = t
                        && !has(&declared.queues, q)
                    {
                        return Err(refuse("queue", q));
                    }
                }
            }
            return Ok(plan);
        }
        Ok(ReassignmentPlan::default())
    }
}

/// Checks what any engine returned: API names only, and lifecycle and
/// profile through their own fields rather than raw `IsActive`/`ProfileId`.
fn validate(pack: &str, user: &str, d: DesiredUser) -> Result<DesiredUser, RuleError> {
    let out = |message: String| RuleError::Output {
        pack: pack.into(),
        export: "map",
        user: user.into(),
        message,
    };
    if d.fields.len() > MAX_FIELDS {
        return Err(out(format!(
            "{} fields; a Salesforce User has at most {MAX_FIELDS}",
            d.fields.len()
        )));
    }
    let grants = Access::ALL
        .iter()
        .map(|&k| d.grants(k).len())
        .sum::<usize>();
    if grants > MAX_GRANTS {
        return Err(out(format!(
            "{grants} permission sets, groups, licences and queues; at most {MAX_GRANTS}"
        )));
    }
    let too_long = d.fields.iter().find_map(|(k, v)| match v {
        FieldValue::Text(t) if t.len() > MAX_TEXT => Some(k),
        _ => None,
    });
    if let Some(k) = too_long {
        return Err(out(format!(
            "field {k} is longer than {MAX_TEXT} bytes (Salesforce's longest text field)"
        )));
    }
    for (k, v) in &d.fields {
        if !is_api_name(k) {
            return Err(out(format!(
                "field name {k:?} is not a Salesforce API name"
            )));
        }
        if matches!(k.as_str(), "IsActive" | "ProfileId" | "Id") {
            return Err(out(format!(
                "field {k} is set by the host; use `active` / `profile`"
            )));
        }
        if let FieldValue::Number(n) = v
            && !n.is_finite()
        {
            return Err(out(format!("field {k} is not a finite number")));
        }
    }
    Ok(d)
}

/// A pack's decision on whether it manages a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub in_scope: bool,
    pub reason: String,
}

impl Decision {
    /// In scope, no reason given (packs without a scope rule).
    pub fn in_scope() -> Self {
        Self {
            in_scope: true,
            reason: String::new(),
        }
    }
}

/// What a pack says about one user.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub desired: DesiredUser,
    /// The pack's scope decision, when it was asked.
    pub scope: Option<Decision>,
    /// Match keys, in order of precedence (checked: API names, values).
    pub keys: Vec<MatchKey>,
}

/// One way to find a user's Salesforce account: a User field and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchKey {
    pub field: String,
    pub value: String,
}

/// Match keys a pack may return per user.
const MAX_MATCH_KEYS: usize = 8;

/// Fields a desired user may carry (standard plus custom User fields stay
/// well below this); more is a runaway pack, not a mapping.
const MAX_FIELDS: usize = 1_000;
/// Grants of all kinds per user.
const MAX_GRANTS: usize = 1_000;
/// Longest text value (Salesforce's long text area limit is 131,072).
const MAX_TEXT: usize = 131_072;

/// Builds the fields map from (name, value) pairs, refusing duplicates.
pub(crate) fn fields_from_pairs(
    pairs: impl IntoIterator<Item = (String, FieldValue)>,
) -> Result<BTreeMap<String, FieldValue>, String> {
    use std::collections::btree_map::Entry;
    let mut m = BTreeMap::new();
    for (k, v) in pairs {
        match m.entry(k) {
            Entry::Vacant(e) => {
                e.insert(v);
            }
            Entry::Occupied(e) => return Err(format!("field {} is set twice", e.key())),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_dir(manifest_extra: &str, engine: &str, entry: &str, body: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml = format!(
            "[pack]\nname = \"t\"\nversion = \"1.0.0\"\nengine = \"{engine}\"\nentry = \"{entry}\"\ncontract = \"0.4\"\n{manifest_extra}\n[access]\nprofiles = [\"Standard User\"]\nfields = [\"Alias\", \"FirstName\", \"Department\", \"Title\", \"CommunityNickname\", \"EmployeeNumber\", \"MobilePhone\", \"Email\"]\n"
        );
        std::fs::write(dir.path().join("pack.toml"), toml).expect("write manifest");
        std::fs::write(dir.path().join(entry), body).expect("write entry");
        dir
    }

    /// Why loading the pack in `dir` fails; empty if it loads.
    fn load_error(dir: &Path) -> String {
        Pack::load(dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// Makes the pack in `dir` declare contract `version`.
    fn set_contract(dir: &Path, version: &str) {
        let manifest = dir.join("pack.toml");
        let toml = std::fs::read_to_string(&manifest).expect("manifest");
        assert!(toml.contains("contract = \"0.4\""), "{toml}");
        std::fs::write(
            &manifest,
            toml.replace("contract = \"0.4\"", &format!("contract = \"{version}\"")),
        )
        .expect("write");
    }

    fn rhai(script: &str) -> Result<Pack, RuleError> {
        let dir = pack_dir("", "rhai", "main.rhai", script.as_bytes());
        Pack::load(dir.path())
    }

    fn user() -> EntraUser {
        EntraUser {
            id: "u1".into(),
            user_principal_name: Some("zoë.ødegård@contoso.com".into()),
            given_name: Some("Zoë".into()),
            account_enabled: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn gallery_pack_maps_like_the_gallery_app() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/gallery-defaults");
        let pack = Pack::load(&dir).expect("gallery pack loads");
        let d = pack.map(&user(), &["SF-Sales".into()]).expect("maps");
        assert_eq!(
            d.fields["Alias"],
            FieldValue::Text("zoë.ødeg".into()),
            "eight characters, not eight bytes"
        );
        assert_eq!(d.fields["LastName"], FieldValue::Text(".".into()));
        assert_eq!(d.fields["Email"], FieldValue::Null);
        assert_eq!(d.fields["LocaleSidKey"], FieldValue::Text("en_US".into()));
        assert_eq!(d.profile.as_deref(), Some("Standard User"));
        assert!(d.active);
        let mut gone = user();
        gone.removed = Some(crate::model::Removal::SoftDeleted);
        assert!(!pack.map(&gone, &[]).expect("maps").active);
        assert_eq!(
            pack.map(&gone, &[]).expect("maps").profile.as_deref(),
            Some("Chatter Free User")
        );
    }

    #[test]
    fn a_rhai_configure_that_throws_refuses_the_pack_at_load() {
        let body = |check: &str| {
            format!(
                r#"fn configure(settings) {{ {check} }}
                fn map(user, settings) {{ #{{ fields: #{{}}, profile: "Standard User", active: true }} }}"#
            )
        };
        let dir = pack_dir(
            "[settings.group_profiles]\n\"SF-Sales\" = \"\"\n",
            "rhai",
            "main.rhai",
            body(r#"for e in settings.group_profiles { if e[1] == "" { throw `group ${e[0]} has no profile`; } }"#)
                .as_bytes(),
        );
        let e = load_error(dir.path());
        assert!(
            e.contains("t@1.0.0")
                && e.contains("configure refused its settings")
                && e.contains("group SF-Sales has no profile"),
            "{e}"
        );
        // A configure that does not throw loads.
        let fine = pack_dir("", "rhai", "main.rhai", body("let n = 1;").as_bytes());
        assert!(Pack::load(fine.path()).is_ok());

        // The host API answers only `log` there (the clock is granted, and
        // still refused).
        let clock = pack_dir(
            "[capabilities]\nclock = true\n",
            "rhai",
            "main.rhai",
            body("let t = now();").as_bytes(),
        );
        let e = load_error(clock.path());
        assert!(e.contains("clock is not available in configure"), "{e}");

        // A script written for contract 0.3 loads unchanged: a function
        // that happens to be called `configure` is not run at load.
        let old = pack_dir("", "rhai", "main.rhai", body("throw \"ran\";").as_bytes());
        set_contract(old.path(), "0.3");
        assert!(Pack::load(old.path()).is_ok());
        // A component must say 0.4.
        let wasm = pack_dir("", "wasm", "c.wasm", b"\0asm");
        set_contract(wasm.path(), "0.3");
        let e = load_error(wasm.path());
        assert!(e.contains("0.3") && e.contains("0.4"), "{e}");
    }

    #[test]
    fn rhai_first_match_takes_the_first_entry_in_file_order() {
        let dir = pack_dir(
            "[settings.group_profiles]\n\"SF-Admins\" = \"System Administrator\"\n\"SF-Sales\" = \"Standard User\"\n",
            "rhai",
            "main.rhai",
            br#"fn map(user, settings) {
                #{ fields: #{
                       Alias: first_match(settings.group_profiles, user.groups) ?? "none",
                       FirstName: first_match(settings.missing, user.groups) ?? "no table",
                       Department: first_match([["a"], 1, ["b", "B"]], ["a", "b"]),
                       Title: first_match([1, ["b", "B"]], ["a", "b"]),
                   },
                   profile: "Standard User", active: true }
            }"#,
        );
        let p = Pack::load(dir.path()).expect("loads");
        let text = |d: &DesiredUser, f: &str| d.fields[f].clone();
        // File order decides, not the order of the user's groups.
        let d = p
            .map(&user(), &["SF-Sales".into(), "SF-Admins".into()])
            .expect("maps");
        assert_eq!(
            text(&d, "Alias"),
            FieldValue::Text("System Administrator".into())
        );
        assert_eq!(text(&d, "FirstName"), FieldValue::Text("no table".into()));
        // An entry without a value gives (); entries that are not pairs are
        // skipped.
        assert_eq!(text(&d, "Department"), FieldValue::Null);
        assert_eq!(text(&d, "Title"), FieldValue::Text("B".into()));
        let d = p.map(&user(), &["SF-Sales".into()]).expect("maps");
        assert_eq!(text(&d, "Alias"), FieldValue::Text("Standard User".into()));
        let d = p.map(&user(), &["Other".into()]).expect("maps");
        assert_eq!(text(&d, "Alias"), FieldValue::Text("none".into()));
    }

    #[test]
    fn rhai_string_membership_matches_the_standard_library() {
        // The host's own `contains(array, string)` must answer like the
        // standard library's (which compares element by element with `==`).
        let p = rhai(
            r#"fn map(user, settings) {
                let mixed = ["SF-Sales", 1, true, (), ["SF-Admins"], 'x'];
                let hits = [
                    mixed.contains("SF-Sales"),
                    "SF-Admins" in mixed,
                    mixed.contains("sf-sales"),
                    mixed.contains(1),
                    mixed.contains("x"),
                    mixed.contains("xy"),
                    user.groups.contains("SF-Support"),
                    "SF-Support" in user.groups,
                    [].contains(""),
                ];
                #{ fields: #{ Alias: hits.map(|h| if h { "1" } else { "0" }).reduce(|a, b| a + b, "") },
                   profile: "Standard User", active: true }
            }"#,
        )
        .expect("loads");
        let d = p.map(&user(), &["SF-Support".into()]).expect("maps");
        assert_eq!(d.fields["Alias"], FieldValue::Text("100110110".into()));
    }

    #[test]
    fn rhai_scripts_have_entra_expression_functions() {
        let p = rhai(
            r#"fn map(user, settings) {
                #{
                    fields: #{
                        Alias: Left(user.userPrincipalName, 8),
                        FirstName: NormalizeDiacritics(user.givenName),
                        Department: IgnoreFlowIfNullOrEmpty(user.department),
                        Title: Switch(user.jobTitle, "Staff", "CEO", "Chief", "CTO", "Tech"),
                        CommunityNickname: Join(".", ToLower(user.givenName), "x"),
                        EmployeeNumber: CStr(Count(Split("a,b,c", ","))),
                        MobilePhone: IIF(IsNullOrEmpty(user.mobilePhone), "none", user.mobilePhone),
                    },
                    profile: "Standard User",
                    active: true,
                }
            }"#,
        )
        .expect("compiles");
        let d = p.map(&user(), &[]).expect("maps");
        let text = |k: &str| {
            d.fields
                .get(k)
                .and_then(FieldValue::as_text)
                .map(str::to_string)
        };
        assert_eq!(text("Alias").as_deref(), Some("zoë.ødeg"));
        assert_eq!(text("FirstName").as_deref(), Some("Zoe"));
        assert!(
            !d.fields.contains_key("Department"),
            "IgnoreFlowIfNullOrEmpty leaves the field out"
        );
        assert_eq!(text("Title").as_deref(), Some("Staff"));
        assert_eq!(text("CommunityNickname").as_deref(), Some("zoë.x"));
        assert_eq!(text("EmployeeNumber").as_deref(), Some("3"));
        assert_eq!(text("MobilePhone").as_deref(), Some("none"));

        // A wrong call names the function and is the user's error, not a crash.
        let p = rhai(r#"fn map(user, settings) { #{ fields: #{ Alias: Mid("abc") }, profile: (), active: true } }"#)
            .expect("compiles");
        let e = p.map(&user(), &[]).expect_err("arity").to_string();
        assert!(e.contains("Mid") && e.contains("t@1.0.0"), "{e}");
    }

    #[test]
    fn slow_scripts_hit_the_wall_clock_deadline() {
        // Few operations, each slow: the operations limit would not stop it.
        let p = rhai(
            r#"fn map(user, settings) {
                let big = "é";
                big.pad(30000, "é");
                for i in 0..40000 { let x = NormalizeDiacritics(big); }
                #{ fields: #{}, profile: (), active: true }
            }"#,
        )
        .expect("compiles");
        let started = std::time::Instant::now();
        let e = p.map(&user(), &[]).expect_err("must stop").to_string();
        assert!(e.contains("t@1.0.0") && e.contains("deadline"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn match_keys_are_asked_for_only_when_wanted() {
        // A linked user needs none.
        let p = rhai(
            r#"fn map(user, settings) { #{ fields: #{ Alias: "a" }, profile: "Standard User", active: true } }
               fn match_keys(user, settings) { throw "asked" }"#,
        )
        .expect("compiles");
        let env = HostEnv::empty();
        assert!(p.evaluate_with(&user(), &[], false, false, &env).is_ok());
        assert!(p.evaluate_with(&user(), &[], false, true, &env).is_err());
        assert!(p.map(&user(), &[]).is_ok(), "map never asks for keys");
    }

    #[test]
    fn deep_recursion_and_memory_bombs_are_stopped() {
        let p = rhai("fn f(n) { f(n + 1) } fn map(user, settings) { f(0) }").expect("compiles");
        let e = p.map(&user(), &[]).expect_err("recursion").to_string();
        assert!(e.contains("t@1.0.0") && e.contains("u1"), "{e}");
        let p =
            rhai(r#"fn map(user, settings) { let s = "x"; loop { s += s; } }"#).expect("compiles");
        let e = p.map(&user(), &[]).expect_err("string bomb").to_string();
        assert!(e.to_lowercase().contains("length of string"), "{e}");
        let p =
            rhai("fn map(user, settings) { let a = []; loop { a.push(1); } }").expect("compiles");
        let e = p.map(&user(), &[]).expect_err("array bomb").to_string();
        assert!(e.contains("t@1.0.0"), "{e}");
    }

    #[test]
    fn one_call_cannot_change_what_the_next_sees() {
        let dir = pack_dir(
            "[settings.t]\n\"k\" = \"v\"\n",
            "rhai",
            "main.rhai",
            br#"fn map(user, settings) {
                let seen = settings.t.len();
                settings.t.push(["x", "y"]);
                #{ fields: #{ Title: `${seen}` }, profile: (), active: true }
            }"#,
        );
        let p = Pack::load(dir.path()).expect("loads");
        for _ in 0..3 {
            match p.map(&user(), &[]) {
                Ok(d) => assert_eq!(d.fields["Title"], FieldValue::Text("1".into())),
                Err(e) => assert!(e.to_string().contains("t@1.0.0"), "{e}"),
            }
        }
    }

    #[test]
    fn runaway_scripts_hit_the_operations_limit() {
        let p = rhai("fn map(user, settings) { let x = 0; loop { x += 1; } }").expect("compiles");
        let e = p.map(&user(), &[]).expect_err("must stop").to_string();
        assert!(
            e.contains("t@1.0.0") && e.contains("u1") && e.to_lowercase().contains("operations"),
            "{e}"
        );
    }

    #[test]
    fn eval_is_not_available() {
        let e = rhai("fn map(user, settings) { eval(\"1\") }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("eval"), "{e}");
    }

    #[test]
    fn outputs_are_checked() {
        let p = rhai("fn map(user, settings) { #{ fields: #{}, active: true, extra: 1 } }")
            .expect("compiles");
        assert!(
            p.map(&user(), &[])
                .expect_err("unknown key")
                .to_string()
                .contains("unknown key `extra`")
        );
        let p = rhai("fn map(user, settings) { #{ fields: #{ IsActive: false }, active: true } }")
            .expect("compiles");
        assert!(
            p.map(&user(), &[])
                .expect_err("host field")
                .to_string()
                .contains("IsActive is set by the host")
        );
        let p = rhai("fn map(user, settings) { #{ fields: #{ Email: [1] }, active: true } }")
            .expect("compiles");
        assert!(
            p.map(&user(), &[])
                .expect_err("array")
                .to_string()
                .contains("field Email has a array value")
        );
    }

    #[test]
    fn manifests_are_strict() {
        assert!(matches!(rhai("fn nope() {}"), Err(RuleError::Load { .. })));
        let dir = pack_dir(
            "colour = \"red\"",
            "rhai",
            "main.rhai",
            b"fn map(u, s) { () }",
        );
        let e = load_error(dir.path());
        assert!(e.contains("colour"), "{e}");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pack.toml"), "[pack]\nname = \"t\"\nversion = \"1\"\nengine = \"rhai\"\nentry = \"m.rhai\"\ncontract = \"0.1\"\n").expect("write");
        assert!(matches!(
            Pack::load(dir.path()),
            Err(RuleError::Contract { .. })
        ));
    }

    fn fixture_env() -> HostEnv {
        HostEnv::new(std::sync::Arc::new(Fixture {
            now: Some("2026-12-01T09:00:00Z".into()),
            users: vec![
                SalesforceUser {
                    id: "005BOSS".into(),
                    username: "boss@contoso.com".into(),
                    is_active: true,
                    ..Default::default()
                },
                SalesforceUser {
                    id: "005TAKEN".into(),
                    username: "zoe@contoso.com".into(),
                    is_active: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }))
    }

    #[test]
    fn intents_the_manifest_does_not_declare_are_refused_and_recorded() {
        let env = HostEnv::empty();
        let p = rhai(r#"fn map(user, settings) { #{ fields: #{ Secret__c: "x" }, profile: (), active: true } }"#)
            .expect("compiles");
        let e = p
            .map_with(&user(), &[], &env)
            .expect_err("undeclared field");
        assert!(
            matches!(&e, RuleError::Refused { pack, export: "map", .. } if pack == "t@1.0.0"),
            "{e}"
        );
        assert!(e.to_string().contains("Secret__c"), "{e}");
        let p = rhai(r#"fn map(user, settings) { #{ fields: #{}, profile: "System Administrator", active: true } }"#)
            .expect("compiles");
        assert!(p.map_with(&user(), &[], &env).is_err());
        let p = rhai(r#"fn map(user, settings) { #{ fields: #{}, permission_sets: ["God_Mode"], active: true } }"#)
            .expect("compiles");
        assert!(p.map_with(&user(), &[], &env).is_err());
        let refused: Vec<(String, String)> = env
            .take_refusals()
            .into_iter()
            .map(|r| (r.capability, r.target))
            .collect();
        assert_eq!(
            refused,
            [
                ("field".to_string(), "Secret__c".to_string()),
                ("profile".into(), "System Administrator".into()),
                ("permission set".into(), "God_Mode".into()),
            ]
        );
    }

    #[test]
    fn rhai_packs_call_the_host_api_within_their_capabilities() {
        let dir = pack_dir(
            "[capabilities]\nfind_user = [\"Username\"]\ntables = [\"titles\"]\nclock = true\n",
            "rhai",
            "main.rhai",
            br#"fn map(user, settings) {
                let boss = find_user("Username", "boss@contoso.com");
                let missing = find_user("Username", "nobody@contoso.com");
                let refused = "no";
                try { find_user("Email", "x@y"); } catch (e) { refused = `${e}`; }
                #{
                    fields: #{
                        Title: lookup("titles", user.givenName),
                        Department: `${boss.id} ${missing == ()}`,
                        EmployeeNumber: now(),
                        Email: refused,
                        Alias: SelectUniqueValue("Username", "zoe@contoso.com", "zoe2@contoso.com"),
                    },
                    profile: (),
                    active: true,
                }
            }"#,
        );
        std::fs::create_dir_all(dir.path().join("tables")).expect("mkdir");
        std::fs::write(
            dir.path().join("tables/titles.csv"),
            "name,title\nZoë,Captain\n",
        )
        .expect("table");
        let p = Pack::load(dir.path()).expect("loads");
        let env = fixture_env();
        let d = p.map_with(&user(), &[], &env).expect("maps");
        let text = |k: &str| d.fields[k].as_text().unwrap_or_default().to_string();
        assert_eq!(text("Title"), "Captain");
        assert_eq!(text("Department"), "005BOSS true");
        assert_eq!(text("EmployeeNumber"), "2026-12-01T09:00:00Z");
        assert!(text("Email").contains("refused"), "{}", text("Email"));
        assert_eq!(
            text("Alias"),
            "zoe2@contoso.com",
            "the first free candidate"
        );
        let r = env.take_refusals();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            (
                r[0].pack.as_str(),
                r[0].rule.as_str(),
                r[0].user.as_str(),
                r[0].capability.as_str(),
                r[0].target.as_str()
            ),
            ("t@1.0.0", "map", "u1", "find-user", "Email")
        );
    }

    #[test]
    fn printing_needs_the_log_capability() {
        let env = HostEnv::empty();
        let p = rhai(r#"fn map(user, settings) { print("hello"); #{ fields: #{}, profile: (), active: true } }"#)
            .expect("compiles");
        p.map_with(&user(), &[], &env).expect("maps");
        let r = env.take_refusals();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].capability, "log");
    }

    #[test]
    fn stacked_packs_see_the_result_below_and_all_scopes_must_agree() {
        let base = pack_dir(
            "",
            "rhai",
            "main.rhai",
            br#"fn map(user, settings) { #{ fields: #{ Title: "base", Alias: "b" }, profile: "Standard User", active: true } }
                fn match_keys(user, settings) { [#{ field: "Alias", value: "b" }] }"#,
        );
        let top = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            top.path().join("pack.toml"),
            "[pack]\nname = \"org\"\nversion = \"2.0.0\"\nengine = \"rhai\"\nentry = \"main.rhai\"\ncontract = \"0.4\"\n[access]\nfields = [\"Department\"]\n",
        )
        .expect("manifest");
        std::fs::write(
            top.path().join("main.rhai"),
            r#"fn map(user, settings, base) { base.fields.Title = base.fields.Title + "+org"; base.fields.Department = "D"; base }
               fn scope(user, settings) { #{ in_scope: user.givenName != "Zoë", reason: "no Zoës" } }"#,
        )
        .expect("script");
        let stack = Pack::load_stack(&[base.path().into(), top.path().into()]).expect("stacks");
        assert_eq!(stack.id(), "t@1.0.0 + org@2.0.0");
        let e = stack
            .evaluate(&user(), &[], true, &HostEnv::empty())
            .expect("evaluates");
        assert_eq!(
            e.desired.fields["Title"],
            FieldValue::Text("base+org".into())
        );
        assert_eq!(e.desired.fields["Department"], FieldValue::Text("D".into()));
        assert_eq!(e.desired.profile.as_deref(), Some("Standard User"));
        let scope = e.scope.expect("asked");
        assert!(!scope.in_scope);
        assert_eq!(scope.reason, "org@2.0.0: no Zoës");
        assert_eq!(
            e.keys,
            [MatchKey {
                field: "Alias".into(),
                value: "b".into()
            }],
            "the base's keys"
        );

        // An override whose `map` takes no base cannot be stacked.
        std::fs::write(
            top.path().join("main.rhai"),
            r#"fn map(user, settings) { #{ fields: #{}, active: true } }"#,
        )
        .expect("script");
        let e = Pack::load_stack(&[base.path().into(), top.path().into()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("org@2.0.0") && e.contains("takes no base"),
            "{e}"
        );

        // A field neither pack declares is refused, naming the pack that set it.
        std::fs::write(
            top.path().join("main.rhai"),
            r#"fn map(user, settings, base) { base.fields.Secret__c = "x"; base }"#,
        )
        .expect("script");
        let stack = Pack::load_stack(&[base.path().into(), top.path().into()]).expect("stacks");
        let e = stack.map(&user(), &[]).expect_err("refused").to_string();
        assert!(e.contains("org@2.0.0") && e.contains("Secret__c"), "{e}");
    }

    #[test]
    fn on_leave_plans_are_checked_against_declared_objects_and_queues() {
        let script = br#"
            fn map(user, settings) { #{ fields: #{}, active: false } }
            fn on_leave(user, records, settings) {
                records.map(|r| #{
                    object: r.object,
                    targets: if r.object == "Lead" { [#{ queue: "Leads_Q" }, "manager"] } else { [#{ round_robin: ["a@x", "b@x"] }, #{ user: "ops@x" }, "keep"] },
                })
            }"#;
        let declared = pack_dir("", "rhai", "main.rhai", script);
        let manifest = std::fs::read_to_string(declared.path().join("pack.toml")).expect("read");
        std::fs::write(
            declared.path().join("pack.toml"),
            manifest.replace(
                "[access]\n",
                "[access]\nobjects = [\"Opportunity\", \"Lead\"]\nqueues = [\"Leads_Q\"]\n",
            ),
        )
        .expect("write");
        let p = Pack::load(declared.path()).expect("loads");
        let recs = [
            OwnedRecords {
                object: "Opportunity".into(),
                count: 3,
                accounts: vec![],
            },
            OwnedRecords {
                object: "Lead".into(),
                count: 1,
                accounts: vec![],
            },
        ];
        let env = HostEnv::empty();
        let plan = p.on_leave(&user(), &[], &recs, &env).expect("plan");
        assert_eq!(
            plan.reassignments[0].targets,
            [
                OwnerTarget::RoundRobin(vec!["a@x".into(), "b@x".into()]),
                OwnerTarget::User("ops@x".into()),
                OwnerTarget::Keep
            ]
        );
        assert_eq!(
            plan.reassignments[1].targets[0],
            OwnerTarget::Queue("Leads_Q".into())
        );

        // The same script without the declarations: refused and recorded.
        let bare = pack_dir("", "rhai", "main.rhai", script);
        let p = Pack::load(bare.path()).expect("loads");
        let e = p
            .on_leave(&user(), &[], &recs, &env)
            .expect_err("undeclared");
        assert!(
            matches!(
                e,
                RuleError::Refused {
                    export: "on-leave",
                    ..
                }
            ),
            "{e}"
        );
        let r = env.take_refusals();
        assert_eq!(
            (r[0].capability.as_str(), r[0].target.as_str()),
            ("object", "Opportunity")
        );
    }

    #[test]
    fn a_file_that_is_not_a_component_is_refused_at_load() {
        let dir = pack_dir("", "wasm", "x.wasm", b"\0asm not really");
        let e = load_error(dir.path());
        assert!(
            e.contains("t@1.0.0") && e.contains("not a valid component"),
            "{e}"
        );
    }
}
