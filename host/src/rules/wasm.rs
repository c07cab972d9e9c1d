//! WebAssembly component packs (world `provisor:rules/rule-pack`): one
//! engine, the component compiled once (and cached on disk by content
//! hash) and pre-instantiated, instances from a pooling allocator with a
//! fuel budget per export and a memory cap, and WASI with nothing in it
//! (no files, env, network or inherited stdio). A component that imports
//! WASI filesystem, sockets or HTTP is refused at load: a rule has no use
//! for them. The host API (`interface host`) goes through the pack's
//! capability [`Gate`].

use std::sync::OnceLock;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::host::{Gate, HostError, LogLevel};
use super::{
    Decision, MatchKey, OwnedRecords, OwnerTarget, Reassignment, ReassignmentPlan, RuleError,
    SettingTables, fields_from_pairs,
};
use crate::model::{DesiredUser, EntraUser, FieldValue};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rule-pack",
        // Exports take borrowed strings: the user is lowered straight from
        // the host's own record, without a copy of every field per call.
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });
}

use bindings::RulePackPre;
use bindings::provisor::rules::{host as wit_host, types};

/// WASI interfaces a rule component may not import: a component that
/// needs files, sockets or HTTP is not a rule.
const FORBIDDEN_IMPORTS: &[&str] = &["wasi:filesystem/", "wasi:sockets/", "wasi:http/"];

/// Instructions' worth of fuel per call.
const FUEL: u64 = 50_000_000;
/// Linear memory cap per instance.
const MEMORY: usize = 64 << 20;
/// Memory kept resident per pooled slot when dirty pages can be scanned.
const KEEP_RESIDENT: usize = 2 << 20;

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// The host API, checked against the pack's capabilities.
    gate: Gate,
    /// The guest's stdout and stderr, and how much of each is logged.
    output: [(wasmtime_wasi::p2::pipe::MemoryOutputPipe, usize); 2],
}

/// Bytes of stdout (and of stderr) an instance may write; an instance past
/// half of it is not reused, and a guest writing past all of it fails.
const OUTPUT: usize = 64 * 1024;

impl State {
    /// Sends what the guest printed since last time to the host's log.
    fn log_output(&mut self) {
        for (i, (pipe, seen)) in self.output.iter_mut().enumerate() {
            let all = pipe.contents();
            if all.len() > *seen {
                let text = String::from_utf8_lossy(&all[*seen..]);
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let stream = if i == 0 { "stdout" } else { "stderr" };
                    tracing::info!(pack = %self.gate.pack, user = %self.gate.user, stream, "{line}");
                }
                *seen = all.len();
            }
        }
    }
}

fn host_error(e: HostError) -> types::HostError {
    match e {
        HostError::Refused(m) => types::HostError::Refused(m),
        HostError::Unavailable(m) => types::HostError::Unavailable(m),
    }
}

fn wit_person(p: super::host::Person) -> types::Person {
    types::Person {
        id: p.id,
        user_principal_name: p.user_principal_name,
        display_name: p.display_name,
        account_enabled: p.account_enabled,
        salesforce_username: p.salesforce_username,
        salesforce_active: p.salesforce_active,
    }
}

impl types::Host for State {}

impl wit_host::Host for State {
    fn find_user(
        &mut self,
        field: String,
        value: String,
    ) -> Result<Option<types::SalesforceUser>, types::HostError> {
        let u = self.gate.find_user(&field, &value).map_err(host_error)?;
        Ok(u.map(|u| types::SalesforceUser {
            id: u.id,
            username: u.username,
            is_active: u.is_active,
            email: u.email,
            federation_identifier: u.federation_identifier,
            manager_id: u.manager_id,
        }))
    }

    fn queue_members(&mut self, queue: String) -> Result<Vec<String>, types::HostError> {
        self.gate.queue_members(&queue).map_err(host_error)
    }

    fn team_members(&mut self, team: String) -> Result<Vec<types::Person>, types::HostError> {
        let v = self.gate.team_members(&team).map_err(host_error)?;
        Ok(v.into_iter().map(wit_person).collect())
    }

    fn manager_chain(
        &mut self,
        user_id: String,
        depth: u32,
    ) -> Result<Vec<types::Person>, types::HostError> {
        let v = self
            .gate
            .manager_chain(&user_id, depth)
            .map_err(host_error)?;
        Ok(v.into_iter().map(wit_person).collect())
    }

    fn lookup(&mut self, table: String, key: String) -> Result<Option<String>, types::HostError> {
        self.gate.lookup(&table, &key).map_err(host_error)
    }

    fn now(&mut self) -> Result<String, types::HostError> {
        self.gate.now().map_err(host_error)
    }

    fn log(&mut self, level: types::LogLevel, message: String) -> Result<(), types::HostError> {
        let level = match level {
            types::LogLevel::Debug => LogLevel::Debug,
            types::LogLevel::Info => LogLevel::Info,
            types::LogLevel::Warn => LogLevel::Warn,
            types::LogLevel::Error => LogLevel::Error,
        };
        self.gate.log(level, &message).map_err(host_error)
    }
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
            // Fresh instances (for verification, for packs that keep state,
            // and every 1,000 users) come from the pooling allocator with
            // copy-on-write memory images, which makes them cheap. The slots
            // cover several packs and engines in one process (tests run
            // many at once).
            let mut pool = wasmtime::PoolingAllocationConfig::new();
            pool.total_component_instances(64)
                .total_core_instances(256)
                .total_memories(128)
                .total_tables(256)
                .max_memory_size(MEMORY);
            // Where the kernel can say which pages an instance dirtied
            // (PAGEMAP_SCAN, Linux 6.7+), reset only those with memset and
            // keep them resident: no madvise, TLB shootdown and page faults
            // per user. Without it, memsetting the whole keep-resident region
            // would cost more than it saves, so the default stays.
            if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
                pool.pagemap_scan(wasmtime::Enabled::Yes)
                    .linear_memory_keep_resident(KEEP_RESIDENT)
                    .table_keep_resident(KEEP_RESIDENT);
            }
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
    /// The pack's settings, handed to `configure` in each new instance.
    settings: SettingTables,
    /// Instances kept warm for the next user (see [`Reuse`]).
    warm: std::sync::Mutex<Vec<Warm>>,
    reuse: Reuse,
}

/// An instantiated component that may serve another user.
struct Warm {
    store: Store<State>,
    instance: bindings::RulePack,
    /// Users it has served.
    served: u32,
}

/// Instantiation costs several times what a mapping does, so instances are
/// reused from user to user, but only while that cannot change a result:
/// every [`VERIFY_EVERY`]th user served by a reused instance is evaluated
/// again in a fresh one and the two results compared. A component whose
/// results depend on what it saw before (a counter, a cache, the clock or
/// randomness) differs sooner or later; from then on the pack gets a fresh
/// instance per user, for good. Plans stay a pure function of their inputs.
///
/// A verification costs an instantiation (about 13 us, three times a
/// mapping): at one in 16 it was a sixth of the per-user cost. State shows
/// early (a counter or a cache at the first verification), so once a pack
/// has passed [`SETTLE`] reused evaluations (256 verifications) one in
/// [`VERIFY_EVERY_SETTLED`] is checked instead, for as long as it is loaded.
struct Reuse {
    /// Set once a reused instance gave another answer than a fresh one.
    stateful: std::sync::atomic::AtomicBool,
    /// Users evaluated on reused instances (to pick whom to verify).
    reused: std::sync::atomic::AtomicU64,
}

/// One reused evaluation in this many is checked against a fresh instance.
const VERIFY_EVERY: u64 = 16;
/// Reused evaluations after which a pack is checked less often.
const SETTLE: u64 = 4_096;
/// One reused evaluation in this many is checked once a pack has settled.
const VERIFY_EVERY_SETTLED: u64 = 128;
/// Whether the `n`th reused evaluation (from 0) is checked in a fresh instance.
fn verifies(n: u64) -> bool {
    let every = if n < SETTLE {
        VERIFY_EVERY
    } else {
        VERIFY_EVERY_SETTLED
    };
    n.is_multiple_of(every)
}

/// Users one instance serves before it is dropped (its heap only grows).
const MAX_SERVED: u32 = 1_000;
/// Warm instances kept per pack (one per thread evaluating it at once).
const MAX_WARM: usize = 4;

/// What the borrowed user record points into besides the user itself:
/// the contract's lists are slices of `&str`, built per user.
struct UserLists<'a> {
    phones: Vec<&'a str>,
    groups: Vec<&'a str>,
    extensions: Vec<(&'a str, types::ValueParam<'a>)>,
}

/// Extension values that are neither text, bool, number nor null (arrays,
/// objects), rendered as JSON text; `None` for the others.
fn rendered_extensions(u: &EntraUser) -> Vec<Option<String>> {
    u.extensions
        .values()
        .map(|v| match v {
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => Some(v.to_string()),
            _ => None,
        })
        .collect()
}

impl<'a> UserLists<'a> {
    fn new(u: &'a EntraUser, groups: &'a [String], rendered: &'a [Option<String>]) -> Self {
        Self {
            phones: u.business_phones.iter().map(String::as_str).collect(),
            groups: groups.iter().map(String::as_str).collect(),
            extensions: u
                .extensions
                .iter()
                .zip(rendered)
                .map(|((k, v), r)| {
                    let v = match (v, r) {
                        (_, Some(text)) => types::ValueParam::Text(text),
                        (serde_json::Value::String(s), None) => types::ValueParam::Text(s),
                        (serde_json::Value::Bool(b), None) => types::ValueParam::Boolean(*b),
                        (serde_json::Value::Number(n), None) => {
                            types::ValueParam::Number(n.as_f64().unwrap_or(0.0))
                        }
                        _ => types::ValueParam::Null,
                    };
                    (k.as_str(), v)
                })
                .collect(),
        }
    }
}

fn to_wit<'a>(u: &'a EntraUser, lists: &'a UserLists<'a>) -> types::EntraUser<'a> {
    types::EntraUser {
        id: &u.id,
        user_principal_name: u.user_principal_name.as_deref(),
        mail: u.mail.as_deref(),
        given_name: u.given_name.as_deref(),
        surname: u.surname.as_deref(),
        display_name: u.display_name.as_deref(),
        department: u.department.as_deref(),
        job_title: u.job_title.as_deref(),
        employee_id: u.employee_id.as_deref(),
        mobile_phone: u.mobile_phone.as_deref(),
        business_phones: &lists.phones,
        preferred_language: u.preferred_language.as_deref(),
        user_type: u.user_type.as_deref(),
        account_enabled: u.account_enabled,
        manager_id: u.manager_id.as_deref(),
        deleted: u.removed.is_some(),
        groups: &lists.groups,
        extensions: &lists.extensions,
    }
}

impl WasmPack {
    /// Compiles (or finds in the cache) and pre-instantiates a component;
    /// [`WasmPack::configure_check`] then tries it with its settings.
    pub(super) fn compile(
        pack: &str,
        bytes: &[u8],
        settings: &SettingTables,
    ) -> Result<Self, RuleError> {
        let load = |message: String| RuleError::Load {
            pack: pack.into(),
            message,
        };
        let engine = engine().map_err(load)?;
        let component = Component::from_binary(engine, bytes)
            .map_err(|e| load(format!("not a valid component: {e}")))?;
        let forbidden: Vec<String> = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| FORBIDDEN_IMPORTS.iter().any(|f| name.starts_with(f)))
            .collect();
        if !forbidden.is_empty() {
            return Err(load(format!(
                "imports {} (a rule component may not use files, sockets or HTTP)",
                forbidden.join(", ")
            )));
        }
        let mut linker: Linker<State> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| load(e.to_string()))?;
        bindings::RulePack::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| load(e.to_string()))?;
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
            settings: settings.clone(),
            warm: std::sync::Mutex::default(),
            reuse: Reuse {
                stateful: std::sync::atomic::AtomicBool::new(false),
                reused: std::sync::atomic::AtomicU64::new(0),
            },
        })
    }

    fn reusing(&self) -> bool {
        !self
            .reuse
            .stateful
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An instance for one user: every export called for that user runs in
    /// it. A warm one when reuse is allowed, else a fresh one.
    fn session<'a>(
        &self,
        pack: &'a str,
        user: &'a EntraUser,
        wit_user: types::EntraUser<'a>,
        gate: Gate,
    ) -> Result<Session<'a>, RuleError> {
        let warm = if self.reusing() {
            self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop()
        } else {
            None
        };
        let warm = match warm {
            Some(mut w) => {
                w.store.data_mut().gate = gate;
                w
            }
            None => self.fresh(pack, &user.id, gate)?,
        };
        Ok(Session {
            pack,
            user,
            wit_user,
            warm,
        })
    }

    /// Returns an instance that served a user without failing.
    fn give_back(&self, mut w: Warm) {
        w.served += 1;
        self.keep(w);
    }

    /// Keeps an instance warm for the next user, unless reuse is off, it
    /// has served its share, it printed too much, or enough are kept.
    fn keep(&self, w: Warm) {
        let chatty = w
            .store
            .data()
            .output
            .iter()
            .any(|(_, seen)| *seen > OUTPUT / 2);
        if !self.reusing() || w.served >= MAX_SERVED || chatty {
            return;
        }
        let mut pool = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_WARM {
            pool.push(w);
        }
    }

    /// Instantiates and configures the component once at load, so that a
    /// component refusing its settings (or failing to start) refuses the
    /// pack then, not user by user mid-sync. The instance is kept warm.
    pub(super) fn configure_check(&self, pack: &str, gate: Gate) -> Result<(), RuleError> {
        let warm = self.fresh(pack, "", gate).map_err(|e| RuleError::Load {
            pack: pack.into(),
            message: match e {
                RuleError::Call {
                    export, message, ..
                } => format!("{export}: {message}"),
                other => other.to_string(),
            },
        })?;
        self.keep(warm);
        Ok(())
    }

    /// A freshly instantiated component, configured with the pack's
    /// settings. `user` names who it is for in errors (empty at load).
    fn fresh(&self, pack: &str, user: &str, gate: Gate) -> Result<Warm, RuleError> {
        let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(OUTPUT);
        let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(OUTPUT);
        let state = State {
            wasi: WasiCtx::builder()
                .stdout(stdout.clone())
                .stderr(stderr.clone())
                .build(),
            output: [(stdout, 0), (stderr, 0)],
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(MEMORY)
                .instances(4)
                .build(),
            gate,
        };
        let mut store = Store::new(self.engine, state);
        store.limiter(|s| &mut s.limits);
        let fail = |export: &'static str, message: String| RuleError::Call {
            pack: pack.into(),
            export,
            user: user.into(),
            message,
        };
        // Instantiation runs the component's start code: it pays fuel too.
        store
            .set_fuel(FUEL)
            .map_err(|e| fail("instantiate", e.to_string()))?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail("instantiate", format!("instantiation failed: {e}")))?;
        store
            .set_fuel(FUEL)
            .map_err(|e| fail("configure", e.to_string()))?;
        store.data_mut().gate.rule = "configure";
        let entries: Vec<Vec<(&str, &str)>> = self
            .settings
            .iter()
            .map(|(_, e)| e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .collect();
        let tables: Vec<types::SettingTable> = self
            .settings
            .iter()
            .zip(&entries)
            .map(|((name, _), entries)| types::SettingTable { name, entries })
            .collect();
        let configured = instance.call_configure(&mut store, &tables);
        store.data_mut().log_output();
        match configured {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return Err(fail("configure", format!("refused its settings: {why}")));
            }
            Err(e) => return Err(fail("configure", trap_message(&e))),
        }
        Ok(Warm {
            store,
            instance,
            served: 0,
        })
    }

    /// `map`, and with `ask_scope` `scope`, then with `want_keys`
    /// `match-keys`, all in one instance: (desired user, scope decision,
    /// match keys).
    #[allow(clippy::type_complexity)]
    pub(super) fn evaluate(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        (ask_scope, want_keys): (bool, bool),
        base: Option<&DesiredUser>,
        gate: Gate,
    ) -> Result<(DesiredUser, Option<Decision>, Option<Vec<MatchKey>>), RuleError> {
        let rendered = rendered_extensions(user);
        let lists = UserLists::new(user, groups, &rendered);
        let mut s = self.session(pack, user, to_wit(user, &lists), gate)?;
        let verify = s.warm.served > 0
            && verifies(
                self.reuse
                    .reused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            );
        // The verification run's refusals are not recorded twice. Built
        // only for a verification: most users have none.
        let quiet_gate = verify.then(|| {
            let gate = &s.warm.store.data().gate;
            Gate {
                env: super::HostEnv::new(gate.env.directory.clone()),
                ..gate.clone()
            }
        });
        let got = s.all(base, ask_scope, want_keys)?;
        self.give_back(s.warm);
        if let Some(quiet_gate) = quiet_gate {
            let warm = self.fresh(pack, &user.id, quiet_gate)?;
            let want = Session {
                pack,
                user,
                wit_user: to_wit(user, &lists),
                warm,
            }
            .all(base, ask_scope, want_keys)?;
            if want != got {
                self.reuse
                    .stateful
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.warm.lock().unwrap_or_else(|e| e.into_inner()).clear();
                tracing::warn!(
                    %pack,
                    user = %user.id,
                    "the component's result for a user depends on earlier users (state, clock or randomness): every user now gets a fresh instance"
                );
                return Ok(want);
            }
        }
        Ok(got)
    }

    /// `on-leave` in an instance of its own; `None` for an empty plan.
    pub(super) fn on_leave(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        records: &[OwnedRecords],
        gate: Gate,
    ) -> Result<Option<ReassignmentPlan>, RuleError> {
        // Leavers are few: always a fresh instance, never a reused one.
        let warm = self.fresh(pack, &user.id, gate)?;
        let rendered = rendered_extensions(user);
        let lists = UserLists::new(user, groups, &rendered);
        let mut s = Session {
            pack,
            user,
            wit_user: to_wit(user, &lists),
            warm,
        };
        let accounts: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.accounts.iter().map(String::as_str).collect())
            .collect();
        let records: Vec<types::OwnedRecords> = records
            .iter()
            .zip(&accounts)
            .map(|(r, accounts)| types::OwnedRecords {
                object: &r.object,
                count: r.count,
                accounts,
            })
            .collect();
        let plan = s.run("on-leave", |i, store, u| {
            i.call_on_leave(store, u, &records)
        })?;
        let reassignments: Vec<Reassignment> = plan
            .reassignments
            .into_iter()
            .map(|r| Reassignment {
                object: r.object,
                targets: r
                    .targets
                    .into_iter()
                    .map(|t| match t {
                        types::OwnerTarget::Manager => OwnerTarget::Manager,
                        types::OwnerTarget::User(u) => OwnerTarget::User(u),
                        types::OwnerTarget::RoundRobin(v) => OwnerTarget::RoundRobin(v),
                        types::OwnerTarget::Queue(q) => OwnerTarget::Queue(q),
                        types::OwnerTarget::Keep => OwnerTarget::Keep,
                    })
                    .collect(),
                children: r.children,
            })
            .collect();
        Ok((!reassignments.is_empty()).then_some(ReassignmentPlan {
            reassignments,
            deactivate_anyway: plan.deactivate_anyway,
        }))
    }
}

/// Why a call into the component failed: out of fuel, or the trap.
fn trap_message(e: &wasmtime::Error) -> String {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::OutOfFuel) {
        format!("ran out of its budget of {FUEL} fuel")
    } else {
        format!("trapped: {e:?}")
    }
}

/// What a borrowed `base` points into.
struct DesiredLists<'a> {
    fields: Vec<(&'a str, types::ValueParam<'a>)>,
    grants: [Vec<&'a str>; 4],
}

impl<'a> DesiredLists<'a> {
    fn new(d: &'a DesiredUser) -> Self {
        let names = |v: &'a [String]| v.iter().map(String::as_str).collect::<Vec<_>>();
        Self {
            fields: d
                .fields
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        FieldValue::Null => types::ValueParam::Null,
                        FieldValue::Text(s) => types::ValueParam::Text(s),
                        FieldValue::Bool(b) => types::ValueParam::Boolean(*b),
                        FieldValue::Number(n) => types::ValueParam::Number(*n),
                    };
                    (k.as_str(), v)
                })
                .collect(),
            grants: [
                names(&d.permission_sets),
                names(&d.permission_set_groups),
                names(&d.permission_set_licenses),
                names(&d.queues),
            ],
        }
    }

    fn to_wit(&'a self, d: &'a DesiredUser) -> types::DesiredUserParam<'a> {
        let [sets, groups, licenses, queues] = &self.grants;
        types::DesiredUserParam {
            fields: &self.fields,
            profile: d.profile.as_deref(),
            role: d.role.as_deref(),
            permission_sets: sets,
            permission_set_groups: groups,
            permission_set_licenses: licenses,
            queues,
            active: d.active,
        }
    }
}

/// One user's instance and inputs.
struct Session<'a> {
    pack: &'a str,
    user: &'a EntraUser,
    wit_user: types::EntraUser<'a>,
    warm: Warm,
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
            types::EntraUser<'_>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, RuleError> {
        let call = |message: String| RuleError::Call {
            pack: self.pack.into(),
            export,
            user: self.user.id.clone(),
            message,
        };
        let w = &mut self.warm;
        w.store.set_fuel(FUEL).map_err(|e| call(e.to_string()))?;
        w.store.data_mut().gate.rule = export;
        // The record is only references: copying it copies no string.
        let result = f(&w.instance, &mut w.store, self.wit_user.clone());
        w.store.data_mut().log_output();
        result.map_err(|e| call(trap_message(&e)))
    }

    /// `map`, then `scope` if asked, then `match-keys` if wanted.
    #[allow(clippy::type_complexity)]
    fn all(
        &mut self,
        base: Option<&DesiredUser>,
        ask_scope: bool,
        want_keys: bool,
    ) -> Result<(DesiredUser, Option<Decision>, Option<Vec<MatchKey>>), RuleError> {
        let desired = self.map(base)?;
        let decision = if ask_scope { Some(self.scope()?) } else { None };
        let keys = if want_keys {
            Some(self.match_keys()?)
        } else {
            None
        };
        Ok((desired, decision, keys))
    }

    fn scope(&mut self) -> Result<Decision, RuleError> {
        let d = self.run("scope", |i, store, u| i.call_scope(store, u))?;
        Ok(Decision {
            in_scope: d.in_scope,
            reason: d.reason,
        })
    }

    fn match_keys(&mut self) -> Result<Vec<MatchKey>, RuleError> {
        let keys = self.run("match-keys", |i, store, u| i.call_match_keys(store, u))?;
        Ok(keys
            .into_iter()
            .map(|k| MatchKey {
                field: k.field,
                value: k.value,
            })
            .collect())
    }

    fn map(&mut self, base: Option<&DesiredUser>) -> Result<DesiredUser, RuleError> {
        let lists = base.map(DesiredLists::new);
        let base = lists.as_ref().zip(base).map(|(l, d)| l.to_wit(d));
        let out = self.run("map", |i, store, u| i.call_map(store, u, base.clone()))?;
        let pairs = out.fields.into_iter().map(|(k, v)| {
            let v = match v {
                types::ValueResult::Null => FieldValue::Null,
                types::ValueResult::Text(s) => FieldValue::Text(s),
                types::ValueResult::Boolean(b) => FieldValue::Bool(b),
                types::ValueResult::Number(n) => FieldValue::Number(n),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_is_frequent_at_first_then_settles() {
        let checked = |range: std::ops::Range<u64>| range.filter(|&n| verifies(n)).count();
        // The first reused evaluation is checked: a counter shows at once.
        assert!(verifies(0));
        assert_eq!(checked(0..SETTLE), 256);
        assert_eq!(checked(SETTLE..SETTLE + 128 * 100), 100);
        // Never stops.
        assert!(verifies(SETTLE * 1000));
    }
}
