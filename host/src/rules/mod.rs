//! Rule packs: the organisation's mapping logic, as a Rhai script or a
//! WebAssembly component behind one interface, so the engine never knows
//! which ran. A pack is a directory with a `pack.toml` manifest.

mod rhai;
mod wasm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{DesiredUser, EntraUser, FieldValue, is_api_name};

/// Contract versions (`provisor:rules@0.1.x`) this host accepts.
pub const ACCEPTED_CONTRACTS: &[&str] = &["0.1"];

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
    Contract { pack: String, found: String, accepted: String },
    #[error("rule pack {pack}: does not load: {message}")]
    Load { pack: String, message: String },
    #[error("rule pack {pack}: `map` failed for user {user}: {message}")]
    Call { pack: String, user: String, message: String },
    #[error("rule pack {pack}: `map` returned an invalid desired user for {user}: {message}")]
    Output { pack: String, user: String, message: String },
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    pack: PackInfo,
    #[serde(default)]
    settings: toml::Table,
}

/// A named settings table, entries in file order (order is precedence).
pub type SettingTables = Vec<(String, Vec<(String, String)>)>;

/// A loaded pack, ready to map users.
pub struct Pack {
    pub info: PackInfo,
    pub dir: PathBuf,
    settings: SettingTables,
    runner: Runner,
}

enum Runner {
    Rhai(rhai::RhaiPack),
    Wasm(wasm::WasmPack),
}

impl Pack {
    /// Loads and checks a pack: manifest, contract version, settings, and
    /// that the entry compiles and exports `map`.
    pub fn load(dir: &Path) -> Result<Self, RuleError> {
        let file = dir.join("pack.toml");
        let text = std::fs::read_to_string(&file).map_err(|source| RuleError::Read { dir: dir.to_path_buf(), file: file.clone(), source })?;
        let m: Manifest = toml::from_str(&text).map_err(|e| RuleError::Manifest { dir: dir.to_path_buf(), message: e.to_string() })?;
        let pack = format!("{}@{}", m.pack.name, m.pack.version);
        let contract = m.pack.contract.trim();
        let major_minor: String = contract.split('.').take(2).collect::<Vec<_>>().join(".");
        if !ACCEPTED_CONTRACTS.contains(&major_minor.as_str()) {
            return Err(RuleError::Contract { pack, found: contract.into(), accepted: ACCEPTED_CONTRACTS.join(", ") });
        }
        let mut settings = Vec::new();
        for (name, v) in &m.settings {
            let toml::Value::Table(t) = v else {
                return Err(RuleError::Manifest { dir: dir.to_path_buf(), message: format!("settings.{name} must be a table of \"key\" = \"value\"") });
            };
            let mut entries = Vec::new();
            for (k, v) in t {
                let toml::Value::String(s) = v else {
                    return Err(RuleError::Manifest { dir: dir.to_path_buf(), message: format!("settings.{name}.{k} must be a string") });
                };
                entries.push((k.clone(), s.clone()));
            }
            settings.push((name.clone(), entries));
        }
        let entry = dir.join(&m.pack.entry);
        let runner = match m.pack.engine {
            EngineKind::Rhai => {
                let src = std::fs::read_to_string(&entry).map_err(|source| RuleError::Read { dir: dir.to_path_buf(), file: entry.clone(), source })?;
                Runner::Rhai(rhai::RhaiPack::compile(&pack, &src, &settings)?)
            }
            EngineKind::Wasm => {
                let bytes = std::fs::read(&entry).map_err(|source| RuleError::Read { dir: dir.to_path_buf(), file: entry.clone(), source })?;
                Runner::Wasm(wasm::WasmPack::compile(&pack, &bytes)?)
            }
        };
        Ok(Self { info: m.pack, dir: dir.to_path_buf(), settings, runner })
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.info.name, self.info.version)
    }

    /// Maps one user (with the display names of its groups) to the
    /// Salesforce user it should have.
    pub fn map(&self, user: &EntraUser, groups: &[String]) -> Result<DesiredUser, RuleError> {
        let desired = match &self.runner {
            Runner::Rhai(r) => r.map(&self.id(), user, groups),
            Runner::Wasm(w) => w.map(&self.id(), user, groups, &self.settings),
        }?;
        validate(&self.id(), &user.id, desired)
    }
}

/// Checks what any engine returned: API names only, and lifecycle and
/// profile through their own fields rather than raw `IsActive`/`ProfileId`.
fn validate(pack: &str, user: &str, d: DesiredUser) -> Result<DesiredUser, RuleError> {
    let out = |message: String| RuleError::Output { pack: pack.into(), user: user.into(), message };
    for (k, v) in &d.fields {
        if !is_api_name(k) {
            return Err(out(format!("field name {k:?} is not a Salesforce API name")));
        }
        if matches!(k.as_str(), "IsActive" | "ProfileId" | "Id") {
            return Err(out(format!("field {k} is set by the host; use `active` / `profile`")));
        }
        if let FieldValue::Number(n) = v
            && !n.is_finite()
        {
            return Err(out(format!("field {k} is not a finite number")));
        }
    }
    Ok(d)
}

/// Builds the fields map from (name, value) pairs, refusing duplicates.
pub(crate) fn fields_from_pairs(pairs: impl IntoIterator<Item = (String, FieldValue)>) -> Result<BTreeMap<String, FieldValue>, String> {
    let mut m = BTreeMap::new();
    for (k, v) in pairs {
        if m.insert(k.clone(), v).is_some() {
            return Err(format!("field {k} is set twice"));
        }
    }
    Ok(m)
}
