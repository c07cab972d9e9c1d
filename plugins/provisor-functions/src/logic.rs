//! Functions on values: conditions, multi-valued attributes, conversions.

use crate::error::{FnError, bad_arg};
use crate::value::Value;

/// `BitAnd(value1, value2)`: bitwise AND. Entra example: `BitAnd(&HF,
/// &HF7)` is 7.
pub fn bit_and(value1: i64, value2: i64) -> i64 {
    value1 & value2
}

/// `CBool(Expression)`: "If the expression evaluates to a non-zero value,
/// then CBool returns True, else it returns False." Booleans are
/// themselves; numbers are true when non-zero; text `True`/`False`
/// (any case) or a number; null is false (VBA `CBool(Nothing)`). Other
/// text is an error, as in VBA.
pub fn cbool(expression: &Value) -> Result<bool, FnError> {
    match expression {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(*n != 0.0),
        Value::Null => Ok(false),
        Value::Text(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if t.eq_ignore_ascii_case("false") {
                Ok(false)
            } else if let Ok(n) = t.parse::<f64>() {
                Ok(n != 0.0)
            } else {
                Err(bad_arg(
                    "CBool",
                    "expression",
                    format!("`{s}` is not a boolean or number"),
                ))
            }
        }
        Value::List(items) => match items.as_slice() {
            [] => Ok(false),
            [one] => cbool(one),
            _ => Err(bad_arg(
                "CBool",
                "expression",
                "a multi-valued attribute is not a boolean",
            )),
        },
        Value::IgnoreFlow => Err(bad_arg("CBool", "expression", "nothing to convert")),
    }
}

/// `Coalesce(source1, source2, ..., defaultValue)`: "Returns the first
/// source value that isn't NULL", else the default (the last argument),
/// else null. An empty string is not null, so it is returned. Entra
/// example: `Coalesce(NULL, "John.Doe@contoso.com")` is the UPN.
pub fn coalesce(sources: &[Value]) -> Value {
    sources
        .iter()
        .find(|v| !v.is_null())
        .cloned()
        .unwrap_or(Value::Null)
}

/// `Count(attribute)`: the number of values of a multi-valued attribute;
/// null counts 0 and a single value 1.
pub fn count(attribute: &Value) -> usize {
    match attribute {
        Value::Null | Value::IgnoreFlow => 0,
        Value::List(items) => items.len(),
        _ => 1,
    }
}

/// `CStr(value)`: the value as a string — text as is, booleans
/// `True`/`False`, numbers without a trailing `.0`. Entra example:
/// `CStr([dn])` is `cn=Joe,dc=contoso,dc=com`. Null gives null; a list with
/// more than one value is an error.
pub fn cstr(value: &Value) -> Result<Option<String>, FnError> {
    match value {
        Value::List(items) if items.len() > 1 => Err(bad_arg(
            "CStr",
            "value",
            "a multi-valued attribute is not a single string",
        )),
        Value::List(items) => items.first().map_or(Ok(None), cstr),
        other => Ok(other.to_text()),
    }
}

/// `IIF(condition, valueIfTrue, valueIfFalse)`. Entra example:
/// `IIF([country]="USA", [country], [department])`. The condition is read
/// with [`cbool`], except that a null condition is an error: Entra
/// documents that "If the source attribute used within the IIF function is
/// empty or null, the condition check fails" (use Switch instead).
pub fn iif(
    condition: &Value,
    value_if_true: Value,
    value_if_false: Value,
) -> Result<Value, FnError> {
    if condition.is_null() {
        return Err(bad_arg(
            "IIF",
            "condition",
            "is null (Entra: the condition check fails)",
        ));
    }
    let c = cbool(condition).map_err(|_| {
        bad_arg(
            "IIF",
            "condition",
            format!("`{condition}` is not true or false"),
        )
    })?;
    Ok(if c { value_if_true } else { value_if_false })
}

/// `IgnoreFlowIfNullOrEmpty(expression)`: [`Value::IgnoreFlow`] when the
/// expression is null, an empty string or an empty list — the caller must
/// then drop the target attribute from the flow — else the value itself.
/// Entra example: `IgnoreFlowIfNullOrEmpty(Switch([prefix], "", "3443",
/// "Dr.", ...))` with an unknown prefix drops the attribute.
pub fn ignore_flow_if_null_or_empty(expression: Value) -> Value {
    if expression.is_null_or_empty() {
        Value::IgnoreFlow
    } else {
        expression
    }
}

/// `IsNull(Expression)`: true when the value is null ("For an attribute, a
/// Null is expressed by the absence of the attribute"); an empty
/// multi-valued attribute is absent too.
pub fn is_null(expression: &Value) -> bool {
    expression.is_null()
}

/// `IsNullOrEmpty(Expression)`: true when null or an empty string. The
/// inverse of [`is_present`].
pub fn is_null_or_empty(expression: &Value) -> bool {
    expression.is_null_or_empty()
}

/// `IsPresent(Expression)`: true when neither null nor an empty string.
/// The inverse of [`is_null_or_empty`].
pub fn is_present(expression: &Value) -> bool {
    !expression.is_null_or_empty()
}

/// `IsString(Expression)`: "If the expression can be evaluated to a string
/// type" — true for text (including the empty string), false for null,
/// booleans, numbers and multi-valued attributes.
pub fn is_string(expression: &Value) -> bool {
    matches!(expression, Value::Text(_))
}

/// `Item(attribute, index)`: one value of a multi-valued attribute by
/// 1-based index ("`Item([proxyAddresses], 1)` returns the first item …
/// Index 0 shouldn't be used"). An index below 1 is an error; past the end
/// gives null; a single value is a one-item list.
pub fn item(attribute: &Value, index: i64) -> Result<Value, FnError> {
    if index < 1 {
        return Err(bad_arg(
            "Item",
            "index",
            format!("{index}: indexes start at 1"),
        ));
    }
    let i = (index - 1) as usize;
    Ok(match attribute {
        Value::List(items) => items.get(i).cloned().unwrap_or(Value::Null),
        Value::Null => Value::Null,
        single if i == 0 => single.clone(),
        _ => Value::Null,
    })
}

/// `Not(source)`: "If source value is True, returns False. Otherwise,
/// returns True." So anything that is not true — `False`, null, other text
/// — gives true. Text `True` is matched case-insensitively; numbers are
/// true when non-zero.
pub fn not(source: &Value) -> bool {
    !matches!(cbool(source), Ok(true))
}

/// `Redact(attribute/value)`: Entra returns the value unchanged and writes
/// `[Redact]` in the provisioning logs instead. Logs are the host's, so
/// this is the identity; the host registers it so as to mask the value
/// (see [`REDACTED`]).
pub fn redact(value: Value) -> Value {
    value
}

/// What Entra writes in logs in place of a redacted value.
pub const REDACTED: &str = "[Redact]";

/// `RemoveDuplicates(attribute)`: the values of a multi-valued attribute
/// with repeats removed, first occurrence kept, compared exactly
/// (case-sensitive, so `SMTP:a@x` and `smtp:a@x` both stay). Entra example:
/// `RemoveDuplicates([proxyAddresses])`.
pub fn remove_duplicates(attribute: Value) -> Value {
    match attribute {
        Value::List(items) => {
            let mut out: Vec<Value> = Vec::with_capacity(items.len());
            for v in items {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Value::List(out)
        }
        other => other,
    }
}

/// `SelectUniqueValue(uniqueValueRule1, uniqueValueRule2, …)`: the first
/// candidate that `exists` says is not yet in the target. Entra evaluates
/// the rules in order and checks each against the target directory; "If all
/// of the values already exist in the target, the entry is escrowed" —
/// here [`FnError::NoUniqueValue`]. Null and empty candidates are skipped
/// (they are never valid values). Entra requires at least two rules; that
/// is checked by [`crate::call`], not here.
pub fn select_unique_value<S: AsRef<str>>(
    candidates: &[Option<S>],
    mut exists: impl FnMut(&str) -> bool,
) -> Result<String, FnError> {
    candidates
        .iter()
        .flatten()
        .map(AsRef::as_ref)
        .filter(|c| !c.is_empty())
        .find(|c| !exists(c))
        .map(str::to_string)
        .ok_or(FnError::NoUniqueValue {
            candidates: candidates.len(),
        })
}

/// `SingleAppRoleAssignment([appRoleAssignments])`: one role from the
/// user's app role assignments (given as a list of role values). Entra
/// supports only users with a single assignment; with several it takes the
/// first in the order given (pass them sorted for a stable result). No
/// assignment gives null.
pub fn single_app_role_assignment(app_role_assignments: &Value) -> Value {
    match app_role_assignments {
        Value::List(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    }
}

/// `Switch(source, defaultValue, key1, value1, key2, value2, …)`: the value
/// paired with the first key equal to `source` (case-sensitive string
/// comparison), else `defaultValue`. A null source matches the key `""`,
/// as Entra advises ("use a literal empty string as one of the key
/// values"). Entra example: `Switch("QLD", "Australia/Sydney", "NSW",
/// "Australia/Sydney", "QLD", "Australia/Brisbane", "SA",
/// "Australia/Adelaide")` is `Australia/Brisbane`.
pub fn switch<'a>(
    source: Option<&str>,
    default_value: Value,
    pairs: impl IntoIterator<Item = (Option<&'a str>, Value)>,
) -> Value {
    let source = source.unwrap_or("");
    pairs
        .into_iter()
        .find(|(key, _)| key.unwrap_or("") == source)
        .map_or(default_value, |(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::from(s)
    }

    #[test]
    fn bit_and_doc_example() {
        assert_eq!(bit_and(0xF, 0xF7), 7);
        assert_eq!(bit_and(0, -1), 0);
        assert_eq!(bit_and(-1, 5), 5);
    }

    #[test]
    fn cbool_rules() {
        assert!(cbool(&Value::Number(2.0)).unwrap());
        assert!(!cbool(&Value::Number(0.0)).unwrap());
        assert!(cbool(&t("True")).unwrap());
        assert!(cbool(&t("true")).unwrap());
        assert!(!cbool(&t("FALSE")).unwrap());
        assert!(cbool(&t("-1")).unwrap());
        assert!(!cbool(&t("0")).unwrap());
        assert!(!cbool(&Value::Null).unwrap());
        assert!(cbool(&Value::from(vec![true])).unwrap());
        assert!(matches!(
            cbool(&t("yes")),
            Err(FnError::BadArgument {
                function: "CBool",
                ..
            })
        ));
    }

    #[test]
    fn coalesce_doc_example() {
        let upn = t("John.Doe@contoso.com");
        assert_eq!(coalesce(&[Value::Null, upn.clone()]), upn);
        assert_eq!(coalesce(&[Value::Null, Value::Null]), Value::Null);
        assert_eq!(coalesce(&[Value::Null, t("")]), t(""));
        assert_eq!(coalesce(&[t(""), upn.clone()]), t(""));
        assert_eq!(coalesce(&[Value::List(vec![]), upn.clone()]), upn);
        assert_eq!(coalesce(&[]), Value::Null);
    }

    #[test]
    fn count_rules() {
        assert_eq!(count(&Value::from(vec!["a", "b", "a"])), 3);
        assert_eq!(count(&Value::Null), 0);
        assert_eq!(count(&Value::List(vec![])), 0);
        assert_eq!(count(&t("")), 1);
    }

    #[test]
    fn cstr_doc_example() {
        assert_eq!(
            cstr(&t("cn=Joe,dc=contoso,dc=com")).unwrap().as_deref(),
            Some("cn=Joe,dc=contoso,dc=com")
        );
        assert_eq!(cstr(&Value::Number(42.0)).unwrap().as_deref(), Some("42"));
        assert_eq!(cstr(&Value::Number(0.5)).unwrap().as_deref(), Some("0.5"));
        assert_eq!(cstr(&Value::Bool(false)).unwrap().as_deref(), Some("False"));
        assert_eq!(cstr(&Value::Null).unwrap(), None);
        assert_eq!(cstr(&Value::from(vec!["x"])).unwrap().as_deref(), Some("x"));
        assert!(cstr(&Value::from(vec!["x", "y"])).is_err());
    }

    #[test]
    fn iif_doc_examples() {
        // IIF([country]="USA",[country],[department]); the comparison is the caller's.
        let (usa, dept) = (t("USA"), t("Sales"));
        assert_eq!(
            iif(&Value::Bool(true), usa.clone(), dept.clone()).unwrap(),
            usa
        );
        assert_eq!(
            iif(&Value::Bool(false), usa.clone(), dept.clone()).unwrap(),
            dept
        );
        // Nested IIF for AND: IIF(c1, IIF(c2, "True", "False"), "False").
        let and = |a: bool, b: bool| {
            let inner = iif(&Value::Bool(b), t("True"), t("False")).unwrap();
            iif(&Value::Bool(a), inner, t("False")).unwrap()
        };
        assert_eq!(and(true, true), t("True"));
        assert_eq!(and(true, false), t("False"));
        assert_eq!(iif(&t("True"), t("a"), t("b")).unwrap(), t("a"));
        assert!(matches!(
            iif(&Value::Null, t("a"), t("b")),
            Err(FnError::BadArgument {
                function: "IIF",
                argument: "condition",
                ..
            })
        ));
        assert!(iif(&t("maybe"), t("a"), t("b")).is_err());
    }

    #[test]
    fn ignore_flow_doc_examples() {
        assert_eq!(ignore_flow_if_null_or_empty(Value::Null), Value::IgnoreFlow);
        assert_eq!(ignore_flow_if_null_or_empty(t("")), Value::IgnoreFlow);
        assert_eq!(
            ignore_flow_if_null_or_empty(Value::List(vec![])),
            Value::IgnoreFlow
        );
        assert_eq!(ignore_flow_if_null_or_empty(t("Sales")), t("Sales"));
        assert_eq!(ignore_flow_if_null_or_empty(t(" ")), t(" "));
        assert_eq!(
            ignore_flow_if_null_or_empty(Value::Bool(false)),
            Value::Bool(false)
        );
    }

    #[test]
    fn is_functions() {
        for (v, null, null_or_empty, string) in [
            (Value::Null, true, true, false),
            (t(""), false, true, true),
            (t("x"), false, false, true),
            (Value::Number(0.0), false, false, false),
            (Value::List(vec![]), true, true, false),
            (Value::from(vec!["a"]), false, false, false),
        ] {
            assert_eq!(is_null(&v), null, "{v:?}");
            assert_eq!(is_null_or_empty(&v), null_or_empty, "{v:?}");
            assert_eq!(is_present(&v), !null_or_empty, "{v:?}");
            assert_eq!(is_string(&v), string, "{v:?}");
        }
    }

    #[test]
    fn item_doc_example() {
        let proxies = Value::from(vec!["SMTP:a@x.com", "smtp:b@x.com"]);
        assert_eq!(item(&proxies, 1).unwrap(), t("SMTP:a@x.com"));
        assert_eq!(item(&proxies, 2).unwrap(), t("smtp:b@x.com"));
        assert_eq!(item(&proxies, 3).unwrap(), Value::Null);
        assert!(matches!(
            item(&proxies, 0),
            Err(FnError::BadArgument {
                function: "Item",
                argument: "index",
                ..
            })
        ));
        assert_eq!(item(&Value::Null, 1).unwrap(), Value::Null);
        assert_eq!(item(&t("x"), 1).unwrap(), t("x"));
        assert_eq!(item(&t("x"), 2).unwrap(), Value::Null);
    }

    #[test]
    fn not_rules() {
        assert!(!not(&t("True")));
        assert!(not(&t("False")));
        assert!(!not(&Value::Bool(true)));
        assert!(not(&Value::Null));
        assert!(not(&t("anything")));
        assert!(!not(&Value::Number(1.0)));
    }

    #[test]
    fn redact_is_identity() {
        assert_eq!(redact(t("secret")), t("secret"));
        assert_eq!(REDACTED, "[Redact]");
    }

    #[test]
    fn remove_duplicates_doc_example() {
        let v = Value::from(vec!["SMTP:a@x", "smtp:a@x", "SMTP:a@x", "b"]);
        assert_eq!(
            remove_duplicates(v),
            Value::from(vec!["SMTP:a@x", "smtp:a@x", "b"])
        );
        assert_eq!(remove_duplicates(Value::Null), Value::Null);
        assert_eq!(remove_duplicates(t("a")), t("a"));
    }

    #[test]
    fn select_unique_value_doc_example() {
        // SelectUniqueValue(John.Smith@, J.Smith@, Jo.Smith@contoso.com)
        let c = [
            Some("John.Smith@contoso.com"),
            Some("J.Smith@contoso.com"),
            Some("Jo.Smith@contoso.com"),
        ];
        assert_eq!(
            select_unique_value(&c, |_| false).unwrap(),
            "John.Smith@contoso.com"
        );
        assert_eq!(
            select_unique_value(&c, |v| v == "John.Smith@contoso.com").unwrap(),
            "J.Smith@contoso.com"
        );
        assert_eq!(
            select_unique_value(&c, |v| v != "Jo.Smith@contoso.com").unwrap(),
            "Jo.Smith@contoso.com"
        );
        assert_eq!(
            select_unique_value(&c, |_| true),
            Err(FnError::NoUniqueValue { candidates: 3 })
        );
        let mut asked = vec![];
        let sparse = [None, Some(""), Some("x")];
        assert_eq!(
            select_unique_value(&sparse, |v| {
                asked.push(v.to_string());
                false
            })
            .unwrap(),
            "x"
        );
        assert_eq!(asked, vec!["x"]);
    }

    #[test]
    fn single_app_role_assignment_rules() {
        assert_eq!(
            single_app_role_assignment(&Value::from(vec!["Admin"])),
            t("Admin")
        );
        assert_eq!(
            single_app_role_assignment(&Value::from(vec!["A", "B"])),
            t("A")
        );
        assert_eq!(
            single_app_role_assignment(&Value::List(vec![])),
            Value::Null
        );
        assert_eq!(single_app_role_assignment(&Value::Null), Value::Null);
    }

    #[test]
    fn switch_doc_examples() {
        let states = || {
            vec![
                (Some("NSW"), t("Australia/Sydney")),
                (Some("QLD"), t("Australia/Brisbane")),
                (Some("SA"), t("Australia/Adelaide")),
            ]
        };
        assert_eq!(
            switch(Some("QLD"), t("Australia/Sydney"), states()),
            t("Australia/Brisbane")
        );
        assert_eq!(
            switch(Some("WA"), t("Australia/Sydney"), states()),
            t("Australia/Sydney")
        );
        assert_eq!(switch(Some("qld"), t("default"), states()), t("default"));
        // Switch([statusFlag], "Default Value", "true", "1", "", "0"), statusFlag empty/absent.
        let flags = || vec![(Some("true"), t("1")), (Some(""), t("0"))];
        assert_eq!(switch(Some(""), t("Default Value"), flags()), t("0"));
        assert_eq!(switch(None, t("Default Value"), flags()), t("0"));
        assert_eq!(switch(Some("true"), t("Default Value"), flags()), t("1"));
        // Default omitted: Switch([Active], , "1", ..., "0", "False").
        assert_eq!(
            switch(Some("2"), Value::Null, vec![(Some("1"), t("True"))]),
            Value::Null
        );
    }
}
