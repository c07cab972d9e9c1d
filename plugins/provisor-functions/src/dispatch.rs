//! `call`: every function by its Entra name, on [`Value`]s.

use chrono::{DateTime, Utc};
use rand::RngCore;

use crate::date::{self, parse_date, to_entra_string};
use crate::error::{FnError, bad_arg};
use crate::logic;
use crate::random;
use crate::text::{self, CompareType, ReplaceArgs};
use crate::value::Value;

/// Every function [`call`] knows, spelled as Microsoft's reference spells
/// them (the reference's list minus `AppRoleAssignmentsComplex`, which
/// builds SCIM role objects rather than computing a value).
pub const FUNCTIONS: &[&str] = &[
    "Append",
    "BitAnd",
    "CBool",
    "CDate",
    "Coalesce",
    "ConvertToBase64",
    "ConvertToUTF8Hex",
    "Count",
    "CStr",
    "DateAdd",
    "DateDiff",
    "DateFromNum",
    "FormatDateTime",
    "Guid",
    "IIF",
    "IgnoreFlowIfNullOrEmpty",
    "InStr",
    "IsNull",
    "IsNullOrEmpty",
    "IsPresent",
    "IsString",
    "Item",
    "Join",
    "Left",
    "Mid",
    "NormalizeDiacritics",
    "Not",
    "Now",
    "NumFromDate",
    "PCase",
    "RandomString",
    "Redact",
    "RemoveDuplicates",
    "Replace",
    "SelectUniqueValue",
    "SingleAppRoleAssignment",
    "Split",
    "StripSpaces",
    "Switch",
    "ToLower",
    "ToUpper",
    "Word",
];

/// What [`call_with`] needs from its caller: randomness (Guid,
/// RandomString), the clock (Now, and FormatDateTime when the input has no
/// date) and the target-system lookup of SelectUniqueValue.
pub struct Env<'a> {
    pub rng: &'a mut dyn RngCore,
    pub now: DateTime<Utc>,
    /// Whether a candidate value already exists in the target system.
    /// Without it, SelectUniqueValue fails with [`FnError::HostRequired`].
    pub exists: Option<&'a mut dyn FnMut(&str) -> bool>,
}

/// The Entra spelling of `name`, matched case-insensitively
/// (`isnullorempty`, `IsNullorEmpty` → `IsNullOrEmpty`).
pub fn canonical_name(name: &str) -> Option<&'static str> {
    FUNCTIONS
        .iter()
        .copied()
        .find(|f| f.eq_ignore_ascii_case(name.trim()))
}

/// (minimum, maximum, description) of each function's argument count.
fn arity(f: &str) -> (usize, Option<usize>, &'static str) {
    match f {
        "Guid" | "Now" => (0, Some(0), "0"),
        "Append" | "BitAnd" | "Item" | "Left" | "Split" => (2, Some(2), "2"),
        "DateAdd" | "DateDiff" | "IIF" | "Mid" | "Word" => (3, Some(3), "3"),
        "FormatDateTime" => (4, Some(4), "4"),
        "Coalesce" => (1, None, "1 or more"),
        "Join" | "SelectUniqueValue" => (2, None, "2 or more"),
        "InStr" => (2, Some(4), "2 to 4"),
        "PCase" | "ToLower" | "ToUpper" => (1, Some(2), "1 or 2"),
        "RandomString" => (5, Some(6), "5 or 6"),
        "Replace" => (2, Some(7), "2 to 7"),
        "Switch" => (4, None, "an even number, at least 4,"),
        _ => (1, Some(1), "1"),
    }
}

fn check_arity(f: &'static str, got: usize) -> Result<(), FnError> {
    let (min, max, expected) = arity(f);
    let even_ok = f != "Switch" || got.is_multiple_of(2);
    if got < min || max.is_some_and(|m| got > m) || !even_ok {
        return Err(FnError::Arity {
            function: f,
            expected,
            got,
        });
    }
    Ok(())
}

struct Args<'v> {
    f: &'static str,
    v: &'v [Value],
}

impl Args<'_> {
    fn get(&self, i: usize) -> &Value {
        self.v.get(i).unwrap_or(&Value::Null)
    }

    fn text(&self, i: usize, argument: &'static str) -> Result<Option<String>, FnError> {
        scalar(self.get(i))
            .map_err(|m| bad_arg(self.f, argument, m))
            .map(|v| v.and_then(Value::to_text))
    }

    fn text_or_empty(&self, i: usize, argument: &'static str) -> Result<String, FnError> {
        Ok(self.text(i, argument)?.unwrap_or_default())
    }

    fn num(&self, i: usize, argument: &'static str) -> Result<Option<f64>, FnError> {
        let bad = |m: String| bad_arg(self.f, argument, m);
        match scalar(self.get(i)).map_err(bad)? {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_finite() => Ok(Some(*n)),
            Some(Value::Text(s)) => parse_number(s)
                .map(Some)
                .ok_or_else(|| bad(format!("`{s}` is not a number"))),
            Some(other) => Err(bad(format!("`{other}` is not a number"))),
        }
    }

    fn int(&self, i: usize, argument: &'static str) -> Result<Option<i64>, FnError> {
        let bad = |m: String| bad_arg(self.f, argument, m);
        if let Value::Text(s) = self.get(i)
            && let Ok(n) = s.trim().parse::<i64>()
        {
            return Ok(Some(n));
        }
        match self.num(i, argument)? {
            None => Ok(None),
            Some(n) if n.abs() < 9.2e18 => Ok(Some(n.trunc() as i64)),
            Some(n) => Err(bad(format!("{n} is out of range"))),
        }
    }

    fn required_int(&self, i: usize, argument: &'static str) -> Result<i64, FnError> {
        self.int(i, argument)?
            .ok_or_else(|| bad_arg(self.f, argument, "is null"))
    }

    fn required_text(&self, i: usize, argument: &'static str) -> Result<String, FnError> {
        self.text(i, argument)?
            .ok_or_else(|| bad_arg(self.f, argument, "is null"))
    }
}

/// A single value: lists of one are unwrapped, empty lists are null.
fn scalar(v: &Value) -> Result<Option<&Value>, String> {
    match v {
        Value::Null => Ok(None),
        Value::List(items) => match items.as_slice() {
            [] => Ok(None),
            [one] => scalar(one),
            _ => Err("expected a single value, got a multi-valued attribute".into()),
        },
        other => Ok(Some(other)),
    }
}

/// Decimal, or VBA hexadecimal `&HFF` (as in Entra's `BitAnd(&HF, &HF7)`).
fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("&H").or_else(|| t.strip_prefix("&h")) {
        return i64::from_str_radix(hex, 16).ok().map(|n| n as f64);
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn text_value(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::Text)
}

/// Call the Entra function `name` (case-insensitive) with `args`, using the
/// OS random generator and the current time. See [`call_with`].
pub fn call(name: &str, args: &[Value]) -> Result<Value, FnError> {
    let mut rng = rand::rng();
    let mut env = Env {
        rng: &mut rng,
        now: Utc::now(),
        exists: None,
    };
    call_with(&mut env, name, args)
}

/// Call the Entra function `name` (case-insensitive) with `args`.
///
/// Arguments are positional as in Entra expressions; an empty position
/// (`Replace([mail], "@contoso.com", , , "", , )`) is [`Value::Null`].
/// Trailing optional arguments may be left out. Numbers may come as
/// [`Value::Number`] or as text. Dates travel as text in Entra's
/// `M/d/yyyy h:mm:ss tt` (UTC); date arguments also accept ISO 8601.
///
/// Null handling, where Entra documents none: a function that transforms a
/// source string (Append, Mid, ToLower, Replace, Split, CDate, ...) returns
/// null for a null source; `Left` and `Word` return `""` as documented;
/// predicates (IsNull, ...) and Count, Coalesce, Join, Switch handle null
/// as their docs say. If any argument is [`Value::IgnoreFlow`], the result
/// is `IgnoreFlow`.
pub fn call_with(env: &mut Env<'_>, name: &str, args: &[Value]) -> Result<Value, FnError> {
    let f = canonical_name(name).ok_or_else(|| FnError::UnknownFunction {
        name: name.to_string(),
    })?;
    check_arity(f, args.len())?;
    if args.iter().any(Value::is_ignore_flow) {
        return Ok(Value::IgnoreFlow);
    }
    let a = Args { f, v: args };
    let src = |arg: &'static str| a.text(0, arg);
    Ok(match f {
        "Append" => match src("source")? {
            None => Value::Null,
            Some(s) => Value::Text(text::append(&s, &a.text_or_empty(1, "suffix")?)),
        },
        "BitAnd" => match (a.int(0, "value1")?, a.int(1, "value2")?) {
            (Some(x), Some(y)) => Value::from(logic::bit_and(x, y)),
            _ => Value::Null,
        },
        "CBool" => Value::Bool(logic::cbool(a.get(0))?),
        "CDate" => match src("expression")? {
            None => Value::Null,
            Some(s) => Value::Text(to_entra_string(date::cdate(&s)?)),
        },
        "Coalesce" => logic::coalesce(args),
        "ConvertToBase64" => text_value(src("source")?.map(|s| text::convert_to_base64(&s))),
        "ConvertToUTF8Hex" => text_value(src("source")?.map(|s| text::convert_to_utf8_hex(&s))),
        "Count" => Value::Number(logic::count(a.get(0)) as f64),
        "CStr" => text_value(logic::cstr(a.get(0))?),
        "DateAdd" => {
            let interval = a.required_text(0, "interval")?;
            let value = a
                .num(1, "value")?
                .ok_or_else(|| bad_arg(f, "value", "is null"))?;
            match a.text(2, "dateTime")? {
                None => Value::Null,
                Some(d) => {
                    let d = parse_date(f, "dateTime", &d)?;
                    Value::Text(to_entra_string(date::date_add(&interval, value, d)?))
                }
            }
        }
        "DateDiff" => {
            let interval = a.required_text(0, "interval")?;
            match (a.text(1, "date1")?, a.text(2, "date2")?) {
                (Some(d1), Some(d2)) => {
                    let d1 = parse_date(f, "date1", &d1)?;
                    let d2 = parse_date(f, "date2", &d2)?;
                    Value::from(date::date_diff(&interval, d1, d2)?)
                }
                _ => Value::Null,
            }
        }
        "DateFromNum" => match a.int(0, "value")? {
            None => Value::Null,
            Some(n) => Value::Text(to_entra_string(date::date_from_num(n)?)),
        },
        "FormatDateTime" => match src("source")? {
            None => Value::Null,
            Some(s) => Value::Text(date::format_date_time_at(
                env.now,
                &s,
                a.text(1, "dateTimeStyles")?.as_deref(),
                &a.required_text(2, "inputFormat")?,
                &a.required_text(3, "outputFormat")?,
            )?),
        },
        "Guid" => Value::Text(random::guid_with(&mut *env.rng)),
        "IIF" => logic::iif(a.get(0), a.get(1).clone(), a.get(2).clone())?,
        "IgnoreFlowIfNullOrEmpty" => logic::ignore_flow_if_null_or_empty(a.get(0).clone()),
        "InStr" => {
            let compare = match scalar(a.get(3)).map_err(|m| bad_arg(f, "compareType", m))? {
                None => CompareType::Binary,
                Some(v) => {
                    let s = v.to_text().unwrap_or_default();
                    CompareType::parse(&s).ok_or_else(|| {
                        bad_arg(
                            f,
                            "compareType",
                            format!("`{s}` is not vbBinaryCompare or vbTextCompare"),
                        )
                    })?
                }
            };
            match src("value1")? {
                None => Value::Null,
                Some(s) => Value::from(text::in_str(
                    &s,
                    &a.text_or_empty(1, "value2")?,
                    a.int(2, "start")?,
                    compare,
                )?),
            }
        }
        "IsNull" => Value::Bool(logic::is_null(a.get(0))),
        "IsNullOrEmpty" => Value::Bool(logic::is_null_or_empty(a.get(0))),
        "IsPresent" => Value::Bool(logic::is_present(a.get(0))),
        "IsString" => Value::Bool(logic::is_string(a.get(0))),
        "Item" => logic::item(a.get(0), a.required_int(1, "index")?)?,
        "Join" => {
            let separator = a.text_or_empty(0, "separator")?;
            let mut parts = Vec::new();
            for v in &args[1..] {
                match v {
                    Value::List(items) => parts.extend(items.iter().filter_map(Value::to_text)),
                    other => parts.extend(other.to_text()),
                }
            }
            Value::Text(text::join(&separator, &parts))
        }
        "Left" => Value::Text(text::left(
            &src("String")?.unwrap_or_default(),
            a.required_int(1, "NumChars")?,
        )),
        "Mid" => {
            let start = a.required_int(1, "start")?;
            let length = a.required_int(2, "length")?;
            text_value(src("source")?.map(|s| text::mid(&s, start, length)))
        }
        "NormalizeDiacritics" => text_value(src("source")?.map(|s| text::normalize_diacritics(&s))),
        "Not" => Value::Bool(logic::not(a.get(0))),
        "Now" => Value::Text(to_entra_string(env.now)),
        "NumFromDate" => text_value(
            src("value")?
                .map(|s| date::num_from_date(&s).map(|n| n.to_string()))
                .transpose()?,
        ),
        "PCase" => {
            let seps = a.text(1, "wordSeparators")?;
            text_value(src("source")?.map(|s| text::pcase(&s, seps.as_deref())))
        }
        "RandomString" => Value::Text(random::random_string_with(
            &mut *env.rng,
            a.required_int(0, "Length")?,
            a.required_int(1, "MinimumNumbers")?,
            a.required_int(2, "MinimumSpecialCharacters")?,
            a.required_int(3, "MinimumCapital")?,
            a.required_int(4, "MinimumLowerCase")?,
            &a.text_or_empty(5, "CharactersToAvoid")?,
        )?),
        "Redact" => logic::redact(a.get(0).clone()),
        "RemoveDuplicates" => logic::remove_duplicates(a.get(0).clone()),
        "Replace" => {
            let old_value = a.text(1, "oldValue")?;
            let regex_pattern = a.text(2, "regexPattern")?;
            let regex_group_name = a.text(3, "regexGroupName")?;
            let replacement_value = a.text(4, "replacementValue")?;
            let replacement_attribute_name = a.text(5, "replacementAttributeName")?;
            let template = a.text(6, "template")?;
            let ra = ReplaceArgs {
                old_value: old_value.as_deref(),
                regex_pattern: regex_pattern.as_deref(),
                regex_group_name: regex_group_name.as_deref(),
                replacement_value: replacement_value.as_deref(),
                replacement_attribute_name: replacement_attribute_name.as_deref(),
                template: template.as_deref(),
            };
            text_value(text::replace(src("source")?.as_deref(), &ra)?)
        }
        "SelectUniqueValue" => {
            let candidates = args
                .iter()
                .map(|v| scalar(v).map(|v| v.and_then(Value::to_text)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| bad_arg(f, "uniqueValueRule", m))?;
            let exists = env.exists.as_mut().ok_or(FnError::HostRequired {
                function: f,
                message: "no target-system lookup (Env::exists) was given",
            })?;
            Value::Text(logic::select_unique_value(&candidates, |c| exists(c))?)
        }
        "SingleAppRoleAssignment" => logic::single_app_role_assignment(a.get(0)),
        "Split" => match src("source")? {
            None => Value::Null,
            Some(s) => Value::from(text::split(&s, &a.text_or_empty(1, "delimiter")?)),
        },
        "StripSpaces" => text_value(src("source")?.map(|s| text::strip_spaces(&s))),
        "Switch" => {
            let source = src("source")?;
            let keys = args[2..]
                .iter()
                .step_by(2)
                .map(|k| scalar(k).map(|k| k.and_then(Value::to_text)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| bad_arg(f, "key", m))?;
            let values = args[3..].iter().step_by(2).cloned();
            logic::switch(
                source.as_deref(),
                a.get(1).clone(),
                keys.iter().map(Option::as_deref).zip(values),
            )
        }
        "ToLower" => {
            let culture = a.text(1, "culture")?;
            text_value(src("source")?.map(|s| text::to_lower(&s, culture.as_deref())))
        }
        "ToUpper" => {
            let culture = a.text(1, "culture")?;
            text_value(src("source")?.map(|s| text::to_upper(&s, culture.as_deref())))
        }
        "Word" => Value::Text(text::word(
            &src("String")?.unwrap_or_default(),
            a.required_int(1, "WordNumber")?,
            &a.text_or_empty(2, "delimiters")?,
        )),
        other => unreachable!("{other} is in FUNCTIONS but has no implementation"),
    })
}
