//! Rhai packs: a raw engine with the standard library only, no module
//! resolver, no `eval`, and limits on operations, depth and sizes. The
//! script is compiled once; `map` is called per user with typed maps.

use std::sync::Arc;

use provisor_functions::Value as FnValue;
use rhai::packages::{Package, StandardPackage};
use rhai::{
    AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Scope,
};

use super::{Decision, MatchKey, RuleError, SettingTables, fields_from_pairs};
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
}

pub(super) struct RhaiPack {
    engine: Engine,
    ast: Arc<AST>,
    /// Copied into every call, so no call can change what the next sees
    /// (a shared read-only value still let scripts push into its arrays).
    settings: Map,
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
    let p = pack.to_string();
    e.on_print(move |s| tracing::info!(pack = %p, "{s}"));
    let p = pack.to_string();
    e.on_debug(move |s, _, pos| tracing::debug!(pack = %p, ?pos, "{s}"));
    register_entra_functions(&mut e);
    e
}

/// What `IgnoreFlowIfNullOrEmpty` returns: a field holding it is left out
/// of the desired user (not set, not cleared), as in Entra.
#[derive(Debug, Clone, Copy)]
struct IgnoreFlow;

fn to_fn_value(d: Dynamic) -> FnValue {
    if d.is_unit() {
        FnValue::Null
    } else if d.is::<IgnoreFlow>() {
        FnValue::IgnoreFlow
    } else if let Some(b) = d.clone().try_cast::<bool>() {
        FnValue::Bool(b)
    } else if let Some(i) = d.clone().try_cast::<i64>() {
        FnValue::Number(i as f64)
    } else if let Some(f) = d.clone().try_cast::<f64>() {
        FnValue::Number(f)
    } else if let Some(a) = d.clone().try_cast::<Array>() {
        FnValue::List(a.into_iter().map(to_fn_value).collect())
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
    v.as_ref()
        .map_or(Dynamic::UNIT, |s| Dynamic::from(s.clone()))
}

/// The user as the script sees it: Graph's camelCase names.
fn user_map(u: &EntraUser, groups: &[String]) -> Map {
    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    put("id", Dynamic::from(u.id.clone()));
    put("userPrincipalName", opt(&u.user_principal_name));
    put("mail", opt(&u.mail));
    put("givenName", opt(&u.given_name));
    put("surname", opt(&u.surname));
    put("displayName", opt(&u.display_name));
    put("department", opt(&u.department));
    put("jobTitle", opt(&u.job_title));
    put("employeeId", opt(&u.employee_id));
    put("mobilePhone", opt(&u.mobile_phone));
    put(
        "businessPhones",
        Dynamic::from(
            u.business_phones
                .iter()
                .cloned()
                .map(Dynamic::from)
                .collect::<Array>(),
        ),
    );
    put("preferredLanguage", opt(&u.preferred_language));
    put("userType", opt(&u.user_type));
    put(
        "accountEnabled",
        u.account_enabled.map_or(Dynamic::UNIT, Dynamic::from),
    );
    put("managerId", opt(&u.manager_id));
    put("deleted", Dynamic::from(u.removed.is_some()));
    put(
        "groups",
        Dynamic::from(groups.iter().cloned().map(Dynamic::from).collect::<Array>()),
    );
    let mut ext = Map::new();
    for (k, v) in &u.extensions {
        let d = match v {
            serde_json::Value::String(s) => Dynamic::from(s.clone()),
            serde_json::Value::Bool(b) => Dynamic::from(*b),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Dynamic::from(n.as_f64().unwrap_or(0.0)), Dynamic::from),
            serde_json::Value::Null => Dynamic::UNIT,
            other => Dynamic::from(other.to_string()),
        };
        ext.insert(k.as_str().into(), d);
    }
    m.insert("extensions".into(), Dynamic::from(ext));
    m
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

fn field_value(name: &str, v: &Dynamic) -> Result<FieldValue, String> {
    if v.is_unit() {
        Ok(FieldValue::Null)
    } else if let Some(s) = v.clone().try_cast::<ImmutableString>() {
        Ok(FieldValue::Text(s.to_string()))
    } else if let Some(b) = v.clone().try_cast::<bool>() {
        Ok(FieldValue::Bool(b))
    } else if let Some(i) = v.clone().try_cast::<i64>() {
        Ok(FieldValue::Number(i as f64))
    } else if let Some(f) = v.clone().try_cast::<f64>() {
        Ok(FieldValue::Number(f))
    } else {
        Err(format!(
            "field {name} has a {} value; use a string, bool, number or ()",
            v.type_name()
        ))
    }
}

fn desired(v: Dynamic) -> Result<DesiredUser, String> {
    let m = v
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
        .get("fields")
        .cloned()
        .and_then(|f| f.try_cast::<Map>())
        .ok_or("`fields` must be an object map")?;
    let mut pairs = Vec::new();
    for (k, v) in fields {
        // IgnoreFlowIfNullOrEmpty: not managed for this user.
        if v.is::<IgnoreFlow>() {
            continue;
        }
        pairs.push((k.to_string(), field_value(&k, &v)?));
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
    ) -> Result<Self, RuleError> {
        let engine = sandboxed_engine(pack);
        let ast = engine.compile(src).map_err(|e| RuleError::Load {
            pack: pack.into(),
            message: e.to_string(),
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "map" && f.params.len() == 2)
        {
            return Err(RuleError::Load {
                pack: pack.into(),
                message: "the script defines no `fn map(user, settings)`".into(),
            });
        }
        Ok(Self {
            engine,
            ast: Arc::new(ast),
            settings: settings_map(settings),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == 2)
    }

    /// Calls `name(user, settings)` within the limits and the deadline.
    fn call(
        &self,
        pack: &str,
        export: &'static str,
        name: &str,
        user: &EntraUser,
        groups: &[String],
    ) -> Result<Dynamic, RuleError> {
        let mut scope = Scope::new();
        // Packs hold only functions and constants; don't re-run top level.
        let opts = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        CALL_DEADLINE.with(|d| d.set(Some(std::time::Instant::now() + DEADLINE)));
        self.engine
            .call_fn_with_options(
                opts,
                &mut scope,
                &self.ast,
                name,
                (user_map(user, groups), self.settings.clone()),
            )
            .map_err(|e| RuleError::Call {
                pack: pack.into(),
                export,
                user: user.id.clone(),
                message: match *e {
                    // Say why: Rhai's own text is only "Script terminated".
                    EvalAltResult::ErrorTerminated(ref why, _) => format!("stopped: {why}"),
                    ref other => other.to_string(),
                },
            })
    }

    /// `fn scope(user, settings)`, returning `true`/`false` or
    /// `#{ in_scope, reason }`; without one, everyone is in scope.
    pub(super) fn scope(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
    ) -> Result<Decision, RuleError> {
        if !self.has("scope") {
            return Ok(Decision::in_scope());
        }
        let out = self.call(pack, "scope", "scope", user, groups)?;
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
    ) -> Result<Option<Vec<MatchKey>>, RuleError> {
        if !self.has("match_keys") {
            return Ok(None);
        }
        let out = self.call(pack, "match-keys", "match_keys", user, groups)?;
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

    pub(super) fn map(
        &self,
        pack: &str,
        user: &EntraUser,
        groups: &[String],
    ) -> Result<DesiredUser, RuleError> {
        let out = self.call(pack, "map", "map", user, groups)?;
        desired(out).map_err(|message| RuleError::Output {
            pack: pack.into(),
            export: "map",
            user: user.id.clone(),
            message,
        })
    }
}
