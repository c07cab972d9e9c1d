//! WebAssembly component packs (world `provisor:rules/rule-pack`): one
//! engine, the component compiled once (and cached on disk by content
//! hash) and pre-instantiated, a fresh instance per call (pooled, so it is
//! cheap) with a fuel budget and a memory cap, and WASI with nothing in it
//! (no files, env, network or inherited stdio).

use std::sync::OnceLock;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{Decision, MatchKey, RuleError, SettingTables, fields_from_pairs};
use crate::model::{DesiredUser, EntraUser, FieldValue};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rule-pack",
    });
}

use bindings::RulePackPre;
use bindings::provisor::rules::types;

/// Instructions' worth of fuel per call.
const FUEL: u64 = 50_000_000;
/// Linear memory cap per instance.
const MEMORY: usize = 64 << 20;

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut cfg = Config::new();
            cfg.consume_fuel(true);
            // A fresh instance per call keeps every user's mapping pure (no
            // state carried from one user to the next); the pooling
            // allocator with copy-on-write memory images makes that cheap.
            // Calls are sequential per pack; the slots cover several packs and
            // engines in one process (tests run many at once).
            let mut pool = wasmtime::PoolingAllocationConfig::new();
            pool.total_component_instances(64)
                .total_core_instances(256)
                .total_memories(128)
                .total_tables(256)
                .max_memory_size(MEMORY);
            cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
            // Compiled components are kept on disk by content hash (with
            // the compiler's settings), so a restart or a reload of an
            // unchanged pack does not compile again.
            if let Some(dir) = cache_dir() {
                let mut cc = wasmtime::CacheConfig::new();
                cc.with_directory(&dir);
                match wasmtime::Cache::new(cc) {
                    Ok(cache) => {
                        cfg.cache(Some(cache));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "no compilation cache")
                    }
                }
            }
            Engine::new(&cfg).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Where compiled components are cached: `PROVISOR_CACHE_DIR`, else the
/// user's cache directory (`$XDG_CACHE_HOME` or `~/.cache`) + `provisor/wasm`.
fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("PROVISOR_CACHE_DIR") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("provisor").join("wasm"))
}

pub(super) struct WasmPack {
    engine: &'static Engine,
    pre: RulePackPre<State>,
    /// The pack's settings in the contract's shape, converted once.
    tables: std::sync::OnceLock<Vec<types::SettingTable>>,
}

fn to_wit(u: &EntraUser, groups: &[String]) -> types::EntraUser {
    types::EntraUser {
        id: u.id.clone(),
        user_principal_name: u.user_principal_name.clone(),
        mail: u.mail.clone(),
        given_name: u.given_name.clone(),
        surname: u.surname.clone(),
        display_name: u.display_name.clone(),
        department: u.department.clone(),
        job_title: u.job_title.clone(),
        employee_id: u.employee_id.clone(),
        mobile_phone: u.mobile_phone.clone(),
        business_phones: u.business_phones.clone(),
        preferred_language: u.preferred_language.clone(),
        user_type: u.user_type.clone(),
        account_enabled: u.account_enabled,
        manager_id: u.manager_id.clone(),
        deleted: u.removed.is_some(),
        groups: groups.to_vec(),
        extensions: u
            .extensions
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => types::Value::Text(s.clone()),
                    serde_json::Value::Bool(b) => types::Value::Boolean(*b),
                    serde_json::Value::Number(n) => types::Value::Number(n.as_f64().unwrap_or(0.0)),
                    serde_json::Value::Null => types::Value::Null,
                    other => types::Value::Text(other.to_string()),
                };
                (k.clone(), v)
            })
            .collect(),
    }
}

impl WasmPack {
    pub(super) fn compile(pack: &str, bytes: &[u8]) -> Result<Self, RuleError> {
        let load = |message: String| RuleError::Load {
            pack: pack.into(),
            message,
        };
        let engine = engine().map_err(load)?;
        let component = Component::from_binary(engine, bytes)
            .map_err(|e| load(format!("not a valid component: {e}")))?;
        let mut linker: Linker<State> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| load(e.to_string()))?;
        // Pre-instantiating resolves imports now, so a component that needs
        // more than the contract offers fails at load, not mid-sync.
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| load(format!("imports not satisfied: {e}")))?;
        let pre = RulePackPre::new(pre)
            .map_err(|e| load(format!("does not implement world rule-pack: {e}")))?;
        Ok(Self {
            engine,
            pre,
            tables: std::sync::OnceLock::new(),
        })
    }

    /// A fresh instance for one user: every export called for that user
    /// runs in it, so a user costs one instantiation, and no state passes
    /// from one user to the next.
    fn session<'a>(
        &'a self,
        pack: &'a str,
        user: &'a EntraUser,
        groups: &[String],
        settings: &SettingTables,
    ) -> Result<Session<'a>, RuleError> {
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(MEMORY)
                .instances(4)
                .build(),
        };
        let mut store = Store::new(self.engine, state);
        store.limiter(|s| &mut s.limits);
        let fail = |message: String| RuleError::Call {
            pack: pack.into(),
            export: "instantiate",
            user: user.id.clone(),
            message,
        };
        // Instantiation runs the component's start code: it pays fuel too.
        store.set_fuel(FUEL).map_err(|e| fail(e.to_string()))?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail(format!("instantiation failed: {e}")))?;
        let tables = self.tables.get_or_init(|| {
            settings
                .iter()
                .map(|(name, entries)| types::SettingTable {
                    name: name.clone(),
                    entries: entries.clone(),
                })
                .collect()
        });
        Ok(Session {
            pack,
            user,
            wit_user: to_wit(user, groups),
            tables,
            store,
            instance,
        })
    }

    /// `map`, and with `ask_scope` `scope`, then `match-keys`, all in one
    /// instance: (desired user, scope decision, match keys).
    pub(super) fn evaluate(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        settings: &SettingTables,
        ask_scope: bool,
    ) -> Result<(DesiredUser, Option<Decision>, Vec<MatchKey>), RuleError> {
        let mut s = self.session(pack, user, groups, settings)?;
        let desired = s.map()?;
        let decision = if ask_scope { Some(s.scope()?) } else { None };
        let keys = s.match_keys()?;
        Ok((desired, decision, keys))
    }

    pub(super) fn map(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        settings: &SettingTables,
    ) -> Result<DesiredUser, RuleError> {
        self.session(pack, user, groups, settings)?.map()
    }
}

/// One user's instance and inputs.
struct Session<'a> {
    pack: &'a str,
    user: &'a EntraUser,
    wit_user: types::EntraUser,
    tables: &'a [types::SettingTable],
    store: Store<State>,
    instance: bindings::RulePack,
}

impl Session<'_> {
    /// Runs one export with a full fuel budget of its own; traps and fuel
    /// exhaustion become errors naming the pack, export and user.
    fn run<T>(
        &mut self,
        export: &'static str,
        f: impl FnOnce(
            &bindings::RulePack,
            &mut Store<State>,
            &types::EntraUser,
            &[types::SettingTable],
        ) -> wasmtime::Result<T>,
    ) -> Result<T, RuleError> {
        let call = |message: String| RuleError::Call {
            pack: self.pack.into(),
            export,
            user: self.user.id.clone(),
            message,
        };
        self.store.set_fuel(FUEL).map_err(|e| call(e.to_string()))?;
        f(&self.instance, &mut self.store, &self.wit_user, self.tables).map_err(|e| {
            let out_of_fuel =
                e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::OutOfFuel);
            call(if out_of_fuel {
                format!("ran out of its budget of {FUEL} fuel")
            } else {
                format!("trapped: {e:?}")
            })
        })
    }

    fn scope(&mut self) -> Result<Decision, RuleError> {
        let d = self.run("scope", |i, store, u, t| i.call_scope(store, u, t))?;
        Ok(Decision {
            in_scope: d.in_scope,
            reason: d.reason,
        })
    }

    fn match_keys(&mut self) -> Result<Vec<MatchKey>, RuleError> {
        let keys = self.run("match-keys", |i, store, u, t| {
            i.call_match_keys(store, u, t)
        })?;
        Ok(keys
            .into_iter()
            .map(|k| MatchKey {
                field: k.field,
                value: k.value,
            })
            .collect())
    }

    fn map(&mut self) -> Result<DesiredUser, RuleError> {
        let out = self.run("map", |i, store, u, t| i.call_map(store, u, t))?;
        let pairs = out.fields.into_iter().map(|(k, v)| {
            let v = match v {
                types::Value::Null => FieldValue::Null,
                types::Value::Text(s) => FieldValue::Text(s),
                types::Value::Boolean(b) => FieldValue::Bool(b),
                types::Value::Number(n) => FieldValue::Number(n),
            };
            (k, v)
        });
        let fields = fields_from_pairs(pairs).map_err(|message| RuleError::Output {
            pack: self.pack.into(),
            export: "map",
            user: self.user.id.clone(),
            message,
        })?;
        Ok(DesiredUser {
            fields,
            profile: out.profile,
            role: out.role,
            permission_sets: out.permission_sets,
            permission_set_groups: out.permission_set_groups,
            permission_set_licenses: out.permission_set_licenses,
            queues: out.queues,
            active: out.active,
        })
    }
}
