//! Rhai packs: a raw engine with the standard library only, no module
//! resolver, no `eval`, and limits on operations, depth and sizes. The
//! script is compiled once; `map` is called per user with typed maps.

use std::sync::Arc;

use provisor_functions::Value as FnValue;
use rhai::packages::{Package, StandardPackage};
use rhai::{
    AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Scope,
};

use super::host::{Gate, HostError, LogLevel, Person};
use super::{
    Decision, MatchKey, OwnedRecords, OwnerTarget, Reassignment, ReassignmentPlan, RuleError,
    SettingTables, fields_from_pairs,
};
use crate::model::{DesiredUser, EntraUser, FieldValue};

/// Operations allowed per call: generous for mapping, fatal for loops.
const MAX_OPERATIONS: u64 = 200_000;

/// Wall-clock time allowed per call: operations bound the work, this bounds
/// the slow ones (a huge string built in few operations, a host function).
const DEADLINE: std::time::Duration = std::time::Duration::from_millis(250);

thread_local! {
    /// When the call running on this thread must stop.
    static CALL_DEADLINE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
    /// The host API of the call running on this thread.
    static GATE: std::cell::RefCell<Option<Gate>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the current call's gate; outside a call nothing is granted.
fn with_gate<T>(f: impl FnOnce(&Gate) -> Result<T, HostError>) -> Result<T, Box<EvalAltResult>> {
    GATE.with(|g| match g.borrow().as_ref() {
        Some(gate) => f(gate).map_err(|e| e.to_string().into()),
        None => Err("the host API is not available here".into()),
    })
}

fn person_map(p: Person) -> Dynamic {
    let mut m = Map::new();
    m.insert("id".into(), Dynamic::from(p.id));
    m.insert("userPrincipalName".into(), opt(&p.user_principal_name));
    m.insert("displayName".into(), opt(&p.display_name));
    m.insert(
        "accountEnabled".into(),
        p.account_enabled.map_or(Dynamic::UNIT, Dynamic::from),
    );
    m.insert("salesforceUsername".into(), opt(&p.salesforce_username));
    m.insert(
        "salesforceActive".into(),
        p.salesforce_active.map_or(Dynamic::UNIT, Dynamic::from),
    );
    Dynamic::from(m)
}

/// The host API under the same names as the WIT `interface host`
/// (snake_case), each checked against the pack's capabilities: a refused
/// or failed call throws (scripts may `try { } catch { }`).
fn register_host_api(e: &mut Engine) {
    e.register_fn("find_user", |field: &str, value: &str| {
        let u = with_gate(|g| g.find_user(field, value))?;
        Ok::<_, Box<EvalAltResult>>(u.map_or(Dynamic::UNIT, |u| {
            let mut m = Map::new();
            m.insert("id".into(), Dynamic::from(u.id));
            m.insert("username".into(), Dynamic::from(u.username));
            m.insert("isActive".into(), Dynamic::from(u.is_active));
            m.insert("email".into(), opt(&u.email));
            m.insert("federationIdentifier".into(), opt(&u.federation_identifier));
            m.insert("managerId".into(), opt(&u.manager_id));
            Dynamic::from(m)
        }))
    });
    e.register_fn("queue_members", |queue: &str| {
        let v = with_gate(|g| g.queue_members(queue))?;
        Ok::<_, Box<EvalAltResult>>(v.into_iter().map(Dynamic::from).collect::<Array>())
    });
    e.register_fn("team_members", |team: &str| {
        let v = with_gate(|g| g.team_members(team))?;
        Ok::<_, Box<EvalAltResult>>(v.into_iter().map(person_map).collect::<Array>())
    });
    e.register_fn("manager_chain", |user_id: &str, depth: i64| {
        let depth = u32::try_from(depth.max(0)).unwrap_or(u32::MAX);
        let v = with_gate(|g| g.manager_chain(user_id, depth))?;
        Ok::<_, Box<EvalAltResult>>(v.into_iter().map(person_map).collect::<Array>())
    });
    e.register_fn("lookup", |table: &str, key: &str| {
        let v = with_gate(|g| g.lookup(table, key))?;
        Ok::<_, Box<EvalAltResult>>(v.map_or(Dynamic::UNIT, Dynamic::from))
    });
    e.register_fn("now", || with_gate(Gate::now));
    e.register_fn("log", |level: &str, message: &str| {
        let level = match level {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            other => {
                return Err(format!("log level {other:?}: use debug, info, warn or error").into());
            }
        };
        with_gate(|g| g.log(level, message))
    });
    // Entra's SelectUniqueValue checks each candidate against the target
    // app for the attribute being mapped; a Rhai expression does not know
    // which field it is assigned to, so the field comes first here:
    // `SelectUniqueValue("Username", a, b, c)`. Each candidate is looked up
    // with `find_user` (so the field must be in `capabilities.find_user`);
    // the first that no Salesforce user holds wins.
    macro_rules! unique {
        ($($a:ident),+) => {
            e.register_fn(
                "SelectUniqueValue",
                |field: &str, $($a: Dynamic),+| -> Result<Dynamic, Box<EvalAltResult>> {
                    select_unique(field, vec![$($a),+])
                },
            );
        };
    }
    unique!(a);
    unique!(a, b);
    unique!(a, b, c);
    unique!(a, b, c, d);
    unique!(a, b, c, d, f);
}

/// A failed call, said plainly.
fn call_error(e: &EvalAltResult) -> String {
    match e {
        // Say why: Rhai's own text is only "Script terminated".
        EvalAltResult::ErrorTerminated(why, _) => format!("stopped: {why}"),
        other => other.to_string(),
    }
}

fn select_unique(field: &str, candidates: Vec<Dynamic>) -> Result<Dynamic, Box<EvalAltResult>> {
    for c in candidates {
        if c.is_unit() {
            continue;
        }
        let v = c.to_string();
        if v.is_empty() {
            continue;
        }
        let taken = with_gate(|g| g.value_taken(field, &v))?;
        if !taken {
            return Ok(Dynamic::from(v));
        }
    }
    Err(format!("SelectUniqueValue: every candidate for {field} is taken in Salesforce").into())
}

pub(super) struct RhaiPack {
    engine: Engine,
    ast: Arc<AST>,
    /// Copied into every call, so no call can change what the next sees
    /// (a shared read-only value still let scripts push into its arrays).
    settings: Map,
    /// Which optional functions the script defines (looked up once: the
    /// AST's function list is walked otherwise for every call).
    defines: Defines,
}

/// The contract's optional functions a script defines.
#[derive(Clone, Copy)]
struct Defines {
    configure: bool,
    scope: bool,
    match_keys: bool,
    map_with_base: bool,
}

fn sandboxed_engine(pack: &str) -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(StandardPackage::new().as_shared_module());
    e.set_max_operations(MAX_OPERATIONS);
    e.on_progress(|ops| {
        // Reading the clock every operation would cost more than the
        // operation; every 256th is precise enough for a 250 ms deadline.
        if ops % 256 != 0 {
            return None;
        }
        let late = CALL_DEADLINE
            .with(std::cell::Cell::get)
            .is_some_and(|d| std::time::Instant::now() > d);
        late.then(|| Dynamic::from(format!("wall-clock deadline of {DEADLINE:?} exceeded")))
    });
    e.set_max_call_levels(32);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(64 * 1024);
    e.set_max_array_size(10_000);
    e.set_max_map_size(10_000);
    e.set_strict_variables(true);
    e.disable_symbol("eval");
    // print/debug are the host log: granted by `capabilities.log` like
    // `log()`, otherwise dropped (and the refusal recorded).
    let _ = pack;
    e.on_print(|s| {
        let _ = with_gate(|g| g.log(LogLevel::Info, s));
    });
    e.on_debug(|s, _, _| {
        let _ = with_gate(|g| g.log(LogLevel::Debug, s));
    });
    // `array.contains(string)` and `string in array` (a group name among
    // the user's groups, in nearly every pack): the standard library calls
    // the `==` operator through the function resolver once per element;
    // comparing here gives the same answers (a string equals the same
    // string, a char equals a one-character string, nothing else equals a
    // string) at a fraction of the cost. The engine's own functions are
    // found before the packages'.
    e.register_fn("contains", |array: &mut Array, value: ImmutableString| {
        array.iter().any(|item| {
            if let Some(s) = item.read_lock::<ImmutableString>() {
                return *s == value;
            }
            item.as_char().is_ok_and(|c| {
                let mut chars = value.chars();
                chars.next() == Some(c) && chars.next().is_none()
            })
        })
    });
    register_table_helpers(&mut e);
    register_entra_functions(&mut e);
    register_host_api(&mut e);
    e
}

/// Helpers for the pack's settings tables (arrays of `[key, value]`).
///
/// `first_match(table, keys)`: the value of the first entry, in file order,
/// whose key is one of `keys`, or `()` (also for a missing table, `()`).
/// "The first listed group the user is in wins" is the core of
/// group-based mapping (profile, role); as a script loop it was a fifth of
/// the gallery pack's time. A script defining its own `first_match` uses
/// its own.
fn register_table_helpers(e: &mut Engine) {
    e.register_fn("first_match", |table: &mut Array, keys: Array| {
        let wanted = |key: &ImmutableString| {
            keys.iter()
                .any(|k| k.read_lock::<ImmutableString>().is_some_and(|k| *k == *key))
        };
        table
            .iter()
            .find_map(|entry| {
                let pair = entry.read_lock::<Array>()?;
                let hit = wanted(&*pair.first()?.read_lock::<ImmutableString>()?);
                hit.then(|| pair.get(1).cloned().unwrap_or(Dynamic::UNIT))
            })
            .unwrap_or(Dynamic::UNIT)
    });
    e.register_fn("first_match", |_: (), _: Array| Dynamic::UNIT);
}

/// What `IgnoreFlowIfNullOrEmpty` returns: a field holding it is left out
/// of the desired user (not set, not cleared), as in Entra.
#[derive(Debug, Clone, Copy)]
struct IgnoreFlow;

fn to_fn_value(d: Dynamic) -> FnValue {
    // Strings first: nearly every argument is one. `as_*` read a value in
    // place; a cast would clone it for every type tried.
    if d.is_string() {
        return match d.into_immutable_string() {
            Ok(s) => FnValue::Text(s.as_str().to_owned()),
            Err(_) => FnValue::Null,
        };
    }
    if d.is_unit() {
        FnValue::Null
    } else if d.is::<IgnoreFlow>() {
        FnValue::IgnoreFlow
    } else if let Ok(b) = d.as_bool() {
        FnValue::Bool(b)
    } else if let Ok(i) = d.as_int() {
        FnValue::Number(i as f64)
    } else if let Ok(f) = d.as_float() {
        FnValue::Number(f)
    } else if d.is_array() {
        match d.into_array() {
            Ok(a) => FnValue::List(a.into_iter().map(to_fn_value).collect()),
            Err(_) => FnValue::Null,
        }
    } else {
        FnValue::Text(d.to_string())
    }
}

fn from_fn_value(v: FnValue) -> Dynamic {
    match v {
        FnValue::Null => Dynamic::UNIT,
        FnValue::Text(s) => Dynamic::from(s),
        FnValue::Bool(b) => Dynamic::from(b),
        // Whole numbers come back as integers, as scripts compare them.
        FnValue::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Dynamic::from(n as i64),
        FnValue::Number(n) => Dynamic::from(n),
        FnValue::List(items) => {
            Dynamic::from(items.into_iter().map(from_fn_value).collect::<Array>())
        }
        FnValue::IgnoreFlow => Dynamic::from(IgnoreFlow),
    }
}

fn call_entra(name: &'static str, args: Vec<Dynamic>) -> Result<Dynamic, Box<EvalAltResult>> {
    let args: Vec<FnValue> = args.into_iter().map(to_fn_value).collect();
    provisor_functions::call(name, &args)
        .map(from_fn_value)
        .map_err(|e| e.to_string().into())
}

/// Registers Entra's expression functions (`Left`, `Join`, `Replace`,
/// `FormatDateTime`, ...) under their Entra names, for every arity up to
/// 12 (Switch and Coalesce are variadic in Entra: 12 covers five Switch
/// pairs); the shared implementation checks the arity.
fn register_entra_functions(e: &mut Engine) {
    macro_rules! reg {
        ($name:expr $(, $a:ident)*) => {{
            let n: &'static str = $name;
            e.register_fn(n, move |$($a: Dynamic),*| call_entra(n, vec![$($a),*]));
        }};
    }
    e.register_type_with_name::<IgnoreFlow>("IgnoreFlow");
    for &name in provisor_functions::FUNCTIONS {
        reg!(name);
        reg!(name, a);
        reg!(name, a, b);
        reg!(name, a, b, c);
        reg!(name, a, b, c, d);
        reg!(name, a, b, c, d, f);
        reg!(name, a, b, c, d, f, g);
        reg!(name, a, b, c, d, f, g, h);
        reg!(name, a, b, c, d, f, g, h, i);
        reg!(name, a, b, c, d, f, g, h, i, j);
        reg!(name, a, b, c, d, f, g, h, i, j, k);
        reg!(name, a, b, c, d, f, g, h, i, j, k, l);
        reg!(name, a, b, c, d, f, g, h, i, j, k, l, m);
    }
}

fn opt(v: &Option<String>) -> Dynamic {
    v.as_deref().map_or(Dynamic::UNIT, text)
}

/// A string value for a script, built straight from the `&str` (no
/// intermediate `String`).
fn text(s: &str) -> Dynamic {
    Dynamic::from(ImmutableString::from(s))
}

fn strings(v: &[String]) -> Dynamic {
    Dynamic::from(v.iter().map(|s| text(s)).collect::<Array>())
}

/// The user as the script sees it: Graph's camelCase names.
fn user_map(u: &EntraUser, groups: &[String]) -> Map {
    let mut ext = Map::new();
    for (k, v) in &u.extensions {
        let d = match v {
            serde_json::Value::String(s) => text(s),
            serde_json::Value::Bool(b) => Dynamic::from(*b),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Dynamic::from(n.as_f64().unwrap_or(0.0)), Dynamic::from),
            serde_json::Value::Null => Dynamic::UNIT,
            other => Dynamic::from(other.to_string()),
        };
        ext.insert(k.as_str().into(), d);
    }
    let entries: [(&str, Dynamic); 18] = [
        (
            "accountEnabled",
            u.account_enabled.map_or(Dynamic::UNIT, Dynamic::from),
        ),
        ("businessPhones", strings(&u.business_phones)),
        ("deleted", Dynamic::from(u.removed.is_some())),
        ("department", opt(&u.department)),
        ("displayName", opt(&u.display_name)),
        ("employeeId", opt(&u.employee_id)),
        ("extensions", Dynamic::from(ext)),
        ("givenName", opt(&u.given_name)),
        ("groups", strings(groups)),
        ("id", text(&u.id)),
        ("jobTitle", opt(&u.job_title)),
        ("mail", opt(&u.mail)),
        ("managerId", opt(&u.manager_id)),
        ("mobilePhone", opt(&u.mobile_phone)),
        ("preferredLanguage", opt(&u.preferred_language)),
        ("surname", opt(&u.surname)),
        ("userPrincipalName", opt(&u.user_principal_name)),
        ("userType", opt(&u.user_type)),
    ];
    // In key order: the map is then built in one pass instead of by
    // searching for each key (this runs for every user and export).
    entries.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

fn settings_map(settings: &SettingTables) -> Map {
    let mut m = Map::new();
    for (name, entries) in settings {
        let arr: Array = entries
            .iter()
            .map(|(k, v)| Dynamic::from(vec![Dynamic::from(k.clone()), Dynamic::from(v.clone())]))
            .collect();
        m.insert(name.as_str().into(), Dynamic::from(arr));
    }
    m
}

fn field_value(name: &str, v: Dynamic) -> Result<FieldValue, String> {
    if v.is_unit() {
        return Ok(FieldValue::Null);
    }
    if v.is_string() {
        return v
            .into_immutable_string()
            .map(|s| FieldValue::Text(s.as_str().to_owned()))
            .map_err(|t| format!("field {name} has a {t} value"));
    }
    if let Ok(b) = v.as_bool() {
        Ok(FieldValue::Bool(b))
    } else if let Ok(i) = v.as_int() {
        Ok(FieldValue::Number(i as f64))
    } else if let Ok(f) = v.as_float() {
        Ok(FieldValue::Number(f))
    } else {
        Err(format!(
            "field {name} has a {} value; use a string, bool, number or ()",
            v.type_name()
        ))
    }
}

fn desired(v: Dynamic) -> Result<DesiredUser, String> {
    let mut m = v
        .try_cast::<Map>()
        .ok_or("map must return an object map #{ fields, profile, active }")?;
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "fields"
                | "profile"
                | "active"
                | "role"
                | "permission_sets"
                | "permission_set_groups"
                | "permission_set_licenses"
                | "queues"
        ) {
            return Err(format!(
                "unknown key `{k}` (expected fields, profile, role, permission_sets, permission_set_groups, permission_set_licenses, queues, active)"
            ));
        }
    }
    let fields = m
        .remove("fields")
        .and_then(|f| f.try_cast::<Map>())
        .ok_or("`fields` must be an object map")?;
    let mut pairs = Vec::with_capacity(fields.len());
    for (k, v) in fields {
        // IgnoreFlowIfNullOrEmpty: not managed for this user.
        if v.is::<IgnoreFlow>() {
            continue;
        }
        let v = field_value(&k, v)?;
        pairs.push((k.as_str().to_owned(), v));
    }
    let profile = match m.get("profile") {
        None => None,
        Some(p) if p.is_unit() => None,
        Some(p) => Some(
            p.clone()
                .try_cast::<ImmutableString>()
                .ok_or("`profile` must be a string or ()")?
                .to_string(),
        ),
    };
    let active = m
        .get("active")
        .and_then(|a| a.clone().try_cast::<bool>())
        .ok_or("`active` must be a bool")?;
    let role = match m.get("role") {
        None => None,
        Some(r) if r.is_unit() => None,
        Some(r) => Some(
            r.clone()
                .try_cast::<ImmutableString>()
                .ok_or("`role` must be a string or ()")?
                .to_string(),
        ),
    };
    let permission_sets = names(&m, "permission_sets")?;
    let permission_set_groups = names(&m, "permission_set_groups")?;
    let permission_set_licenses = names(&m, "permission_set_licenses")?;
    let queues = names(&m, "queues")?;
    Ok(DesiredUser {
        fields: fields_from_pairs(pairs)?,
        profile,
        role,
        permission_sets,
        permission_set_groups,
        permission_set_licenses,
        queues,
        active,
    })
}

/// An optional array of strings in the returned map.
fn names(m: &Map, key: &str) -> Result<Vec<String>, String> {
    let Some(v) = m.get(key) else {
        return Ok(Vec::new());
    };
    let bad = || format!("`{key}` must be an array of strings");
    let arr = v.clone().try_cast::<Array>().ok_or_else(bad)?;
    arr.into_iter()
        .map(|v| {
            v.try_cast::<ImmutableString>()
                .map(|s| s.to_string())
                .ok_or_else(bad)
        })
        .collect()
}

impl RhaiPack {
    pub(super) fn compile(
        pack: &str,
        src: &str,
        settings: &SettingTables,
        configures: bool,
    ) -> Result<Self, RuleError> {
        let engine = sandboxed_engine(pack);
        let ast = engine.compile(src).map_err(|e| RuleError::Load {
            pack: pack.into(),
            message: e.to_string(),
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "map" && matches!(f.params.len(), 2 | 3))
        {
            return Err(RuleError::Load {
                pack: pack.into(),
                message: "the script defines no `fn map(user, settings)` (or `fn map(user, settings, base)`)".into(),
            });
        }
        let has = |name: &str, params: usize| {
            ast.iter_functions()
                .any(|f| f.name == name && f.params.len() == params)
        };
        let defines = Defines {
            // Contract 0.4 and later; in a 0.3 script a function of that
            // name is just a function.
            configure: configures && has("configure", 1),
            scope: has("scope", 2),
            match_keys: has("match_keys", 2),
            map_with_base: has("map", 3),
        };
        Ok(Self {
            engine,
            ast: Arc::new(ast),
            settings: settings_map(settings),
            defines,
        })
    }

    /// `fn configure(settings)`, if the script has one, once at load: a
    /// script that `throw`s refuses its settings, and the pack with them
    /// (the WIT export of the same name). Scripts get the settings in
    /// every call too, so there is nothing to keep.
    pub(super) fn configure(&self, pack: &str, gate: Gate) -> Result<(), RuleError> {
        if !self.defines.configure {
            return Ok(());
        }
        let args = (self.settings.clone(),);
        self.call_raw("configure", "configure", args, gate)
            .map(|_| ())
            .map_err(|e| RuleError::Load {
                pack: pack.into(),
                message: match *e {
                    // The script's own `throw`: its reason.
                    EvalAltResult::ErrorRuntime(ref why, _) => {
                        format!("configure refused its settings: {why}")
                    }
                    ref other => format!("configure failed: {}", call_error(other)),
                },
            })
    }

    /// Whether `map` takes the result of the packs below (`fn map(user,
    /// settings, base)`), as a pack stacked on another must.
    pub(super) fn takes_base(&self) -> bool {
        self.defines.map_with_base
    }

    /// Calls `name(args...)` within the limits and the deadline, with the
    /// host API behind `gate` (as the export `export` for user `user`).
    fn call(
        &self,
        pack: &str,
        export: &'static str,
        name: &str,
        user: &str,
        args: impl rhai::FuncArgs,
        gate: Gate,
    ) -> Result<Dynamic, RuleError> {
        self.call_raw(export, name, args, gate)
            .map_err(|e| RuleError::Call {
                pack: pack.into(),
                export,
                user: user.into(),
                message: call_error(&e),
            })
    }

    /// [`RhaiPack::call`] with Rhai's own error.
    fn call_raw(
        &self,
        export: &'static str,
        name: &str,
        args: impl rhai::FuncArgs,
        gate: Gate,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let mut scope = Scope::new();
        // Packs hold only functions and constants; don't re-run top level.
        let opts = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        CALL_DEADLINE.with(|d| d.set(Some(std::time::Instant::now() + DEADLINE)));
        GATE.with(|g| {
            *g.borrow_mut() = Some(Gate {
                rule: export,
                ..gate
            })
        });
        let result = self
            .engine
            .call_fn_with_options(opts, &mut scope, &self.ast, name, args);
        GATE.with(|g| g.borrow_mut().take());
        result
    }

    /// `fn scope(user, settings)`, returning `true`/`false` or
    /// `#{ in_scope, reason }`; without one, everyone is in scope.
    pub(super) fn scope(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        gate: Gate,
    ) -> Result<Decision, RuleError> {
        if !self.defines.scope {
            return Ok(Decision::in_scope());
        }
        let args = (user_map(user, groups), self.settings.clone());
        let out = self.call(pack, "scope", "scope", &user.id, args, gate)?;
        let bad = |message: &str| RuleError::Output {
            pack: pack.into(),
            export: "scope",
            user: user.id.clone(),
            message: message.into(),
        };
        if let Some(b) = out.clone().try_cast::<bool>() {
            return Ok(Decision {
                in_scope: b,
                reason: String::new(),
            });
        }
        let m = out
            .try_cast::<Map>()
            .ok_or_else(|| bad("`scope` must return a bool or #{ in_scope, reason }"))?;
        let in_scope = m
            .get("in_scope")
            .and_then(|v| v.clone().try_cast::<bool>())
            .ok_or_else(|| bad("`in_scope` must be a bool"))?;
        let reason = m
            .get("reason")
            .filter(|v| !v.is_unit())
            .map(|v| v.to_string())
            .unwrap_or_default();
        Ok(Decision { in_scope, reason })
    }

    /// `fn match_keys(user, settings)`, returning an array of
    /// `#{ field, value }` (or `[field, value]`) in order of precedence;
    /// `None` without one. Keys whose value is `()` or empty are skipped.
    pub(super) fn match_keys(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        gate: Gate,
    ) -> Result<Option<Vec<MatchKey>>, RuleError> {
        if !self.defines.match_keys {
            return Ok(None);
        }
        let args = (user_map(user, groups), self.settings.clone());
        let out = self.call(pack, "match-keys", "match_keys", &user.id, args, gate)?;
        let bad = || RuleError::Output {
            pack: pack.into(),
            export: "match-keys",
            user: user.id.clone(),
            message: "`match_keys` must return an array of #{ field, value }".into(),
        };
        let arr = out.try_cast::<Array>().ok_or_else(bad)?;
        let mut keys = Vec::new();
        for item in arr {
            let (field, value) = if let Some(m) = item.clone().try_cast::<Map>() {
                (m.get("field").cloned(), m.get("value").cloned())
            } else if let Some(a) = item.try_cast::<Array>() {
                (a.first().cloned(), a.get(1).cloned())
            } else {
                return Err(bad());
            };
            let field = field
                .and_then(|f| f.try_cast::<ImmutableString>())
                .ok_or_else(bad)?
                .to_string();
            match value {
                None => {}
                Some(v) if v.is_unit() => {}
                Some(v) => {
                    let v = v.to_string();
                    if !v.is_empty() {
                        keys.push(MatchKey { field, value: v });
                    }
                }
            }
        }
        Ok(Some(keys))
    }

    /// `fn map(user, settings)`, or `fn map(user, settings, base)` with
    /// what the packs below decided (`()` for a pack at the bottom).
    pub(super) fn map(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        base: Option<&DesiredUser>,
        gate: Gate,
    ) -> Result<DesiredUser, RuleError> {
        let (u, settings) = (user_map(user, groups), self.settings.clone());
        let out = if self.takes_base() {
            let base = base.map_or(Dynamic::UNIT, desired_map);
            self.call(pack, "map", "map", &user.id, (u, settings, base), gate)?
        } else {
            self.call(pack, "map", "map", &user.id, (u, settings), gate)?
        };
        desired(out).map_err(|message| RuleError::Output {
            pack: pack.into(),
            export: "map",
            user: user.id.clone(),
            message,
        })
    }

    /// `fn on_leave(user, records, settings)`, returning an array of
    /// `#{ object, targets: [...], children: [...] }` or a map
    /// `#{ reassignments: [...], deactivate_anyway }`; a target is
    /// `"manager"`, `"keep"`, `#{ user: "name" }`, `#{ queue: "Name" }` or
    /// `#{ round_robin: ["a", "b"] }`. `None` without the function or for
    /// an empty plan.
    pub(super) fn on_leave(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
        records: &[OwnedRecords],
        gate: Gate,
    ) -> Result<Option<ReassignmentPlan>, RuleError> {
        if !self
            .ast
            .iter_functions()
            .any(|f| f.name == "on_leave" && f.params.len() == 3)
        {
            return Ok(None);
        }
        let recs: Array = records
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("object".into(), Dynamic::from(r.object.clone()));
                m.insert("count".into(), Dynamic::from(i64::from(r.count)));
                m.insert(
                    "accounts".into(),
                    Dynamic::from(
                        r.accounts
                            .iter()
                            .cloned()
                            .map(Dynamic::from)
                            .collect::<Array>(),
                    ),
                );
                Dynamic::from(m)
            })
            .collect();
        // Same argument order as the WIT export: user, records, settings.
        let args = (user_map(user, groups), recs, self.settings.clone());
        let out = self.call(pack, "on-leave", "on_leave", &user.id, args, gate)?;
        let plan = reassignment_plan(out).map_err(|message| RuleError::Output {
            pack: pack.into(),
            export: "on-leave",
            user: user.id.clone(),
            message,
        })?;
        Ok((!plan.reassignments.is_empty()).then_some(plan))
    }
}

/// A desired user as a Rhai map (the `base` of a stacked pack), in the
/// shape `map` returns.
fn desired_map(d: &DesiredUser) -> Dynamic {
    let mut fields = Map::new();
    for (k, v) in &d.fields {
        let v = match v {
            FieldValue::Null => Dynamic::UNIT,
            FieldValue::Text(t) => Dynamic::from(t.clone()),
            FieldValue::Bool(b) => Dynamic::from(*b),
            FieldValue::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                Dynamic::from(*n as i64)
            }
            FieldValue::Number(n) => Dynamic::from(*n),
        };
        fields.insert(k.as_str().into(), v);
    }
    let list =
        |v: &[String]| Dynamic::from(v.iter().cloned().map(Dynamic::from).collect::<Array>());
    let mut m = Map::new();
    m.insert("fields".into(), Dynamic::from(fields));
    m.insert("profile".into(), opt(&d.profile));
    m.insert("role".into(), opt(&d.role));
    m.insert("permission_sets".into(), list(&d.permission_sets));
    m.insert(
        "permission_set_groups".into(),
        list(&d.permission_set_groups),
    );
    m.insert(
        "permission_set_licenses".into(),
        list(&d.permission_set_licenses),
    );
    m.insert("queues".into(), list(&d.queues));
    m.insert("active".into(), Dynamic::from(d.active));
    Dynamic::from(m)
}

fn owner_target(v: Dynamic) -> Result<OwnerTarget, String> {
    const SHAPE: &str = r#"a target is "manager", "keep", #{ user: "name" }, #{ queue: "Name" } or #{ round_robin: [...] }"#;
    if let Some(s) = v.clone().try_cast::<ImmutableString>() {
        return match s.as_str() {
            "manager" => Ok(OwnerTarget::Manager),
            "keep" => Ok(OwnerTarget::Keep),
            other => Err(format!("unknown target {other:?}: {SHAPE}")),
        };
    }
    let m = v.try_cast::<Map>().ok_or(SHAPE)?;
    let text = |k: &str| {
        m.get(k)
            .and_then(|v| v.clone().try_cast::<ImmutableString>())
            .map(|s| s.to_string())
    };
    if let Some(u) = text("user") {
        Ok(OwnerTarget::User(u))
    } else if let Some(q) = text("queue") {
        Ok(OwnerTarget::Queue(q))
    } else if m.contains_key("round_robin") {
        Ok(OwnerTarget::RoundRobin(names(&m, "round_robin")?))
    } else {
        Err(SHAPE.into())
    }
}

fn reassignment_plan(v: Dynamic) -> Result<ReassignmentPlan, String> {
    let (items, deactivate_anyway) = if let Some(m) = v.clone().try_cast::<Map>() {
        let items = m
            .get("reassignments")
            .and_then(|v| v.clone().try_cast::<Array>())
            .ok_or("`reassignments` must be an array")?;
        let anyway = match m.get("deactivate_anyway") {
            None => false,
            Some(b) => b
                .clone()
                .try_cast::<bool>()
                .ok_or("`deactivate_anyway` must be a bool")?,
        };
        (items, anyway)
    } else if let Some(a) = v.try_cast::<Array>() {
        (a, false)
    } else {
        return Err("on_leave must return an array of #{ object, targets } or #{ reassignments, deactivate_anyway }".into());
    };
    let mut reassignments = Vec::new();
    for item in items {
        let m = item
            .try_cast::<Map>()
            .ok_or("each reassignment must be #{ object, targets, children }")?;
        let object = m
            .get("object")
            .and_then(|v| v.clone().try_cast::<ImmutableString>())
            .ok_or("`object` must be a string")?
            .to_string();
        let targets = m
            .get("targets")
            .and_then(|v| v.clone().try_cast::<Array>())
            .ok_or("`targets` must be an array")?
            .into_iter()
            .map(owner_target)
            .collect::<Result<Vec<_>, _>>()?;
        reassignments.push(Reassignment {
            object,
            targets,
            children: names(&m, "children")?,
        });
    }
    Ok(ReassignmentPlan {
        reassignments,
        deactivate_anyway,
    })
}
