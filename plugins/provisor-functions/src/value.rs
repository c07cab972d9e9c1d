//! The value type the functions take and return.

use std::fmt;

/// A value as a mapping rule sees it: the rule contract's `value`
/// (`null | text | boolean | number`, see `wit/rules.wit`) plus a
/// multi-valued [`Value::List`] for attributes such as `proxyAddresses`,
/// and [`Value::IgnoreFlow`], the outcome of `IgnoreFlowIfNullOrEmpty`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// An absent attribute. Entra: "For an attribute, a Null is expressed by
    /// the absence of the attribute."
    #[default]
    Null,
    Text(String),
    Bool(bool),
    Number(f64),
    /// A multi-valued attribute. An empty list counts as null.
    List(Vec<Value>),
    /// `IgnoreFlowIfNullOrEmpty` found nothing to flow: the caller must drop
    /// the target attribute from the flow (not set it, not clear it). Any
    /// function given this value as an argument returns it unchanged, so it
    /// survives nesting.
    IgnoreFlow,
}

impl Value {
    /// `Null` or an empty list.
    pub fn is_null(&self) -> bool {
        match self {
            Value::Null => true,
            Value::List(items) => items.is_empty(),
            _ => false,
        }
    }

    /// `Null`, an empty list or an empty string (Entra's `IsNullOrEmpty`).
    pub fn is_null_or_empty(&self) -> bool {
        match self {
            Value::Text(s) => s.is_empty(),
            other => other.is_null(),
        }
    }

    /// True for [`Value::IgnoreFlow`].
    pub fn is_ignore_flow(&self) -> bool {
        matches!(self, Value::IgnoreFlow)
    }

    /// The text of a `Text` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The string Entra would use for a single value: text as is, booleans as
    /// `True`/`False` (.NET `Boolean.ToString`), numbers without a trailing
    /// `.0`. `None` for `Null`, lists and `IgnoreFlow`.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Bool(b) => Some(bool_text(*b).to_string()),
            Value::Number(n) => Some(number_text(*n)),
            Value::Null | Value::List(_) | Value::IgnoreFlow => None,
        }
    }
}

/// `True` / `False`, as .NET writes booleans.
pub fn bool_text(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// A number as text: integral values without a fractional part (`1000`, not
/// `1000.0`), others in Rust's shortest round-trip form.
pub fn number_text(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::IgnoreFlow => f.write_str("<ignore flow>"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            scalar => f.write_str(&scalar.to_text().unwrap_or_default()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Number(n as f64)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::List(items.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty() {
        assert!(Value::Null.is_null());
        assert!(Value::List(vec![]).is_null());
        assert!(!Value::from("").is_null());
        assert!(Value::from("").is_null_or_empty());
        assert!(!Value::from(" ").is_null_or_empty());
        assert!(!Value::Bool(false).is_null_or_empty());
    }

    #[test]
    fn text_forms() {
        assert_eq!(Value::Number(1000.0).to_text().unwrap(), "1000");
        assert_eq!(Value::Number(-2.5).to_text().unwrap(), "-2.5");
        assert_eq!(Value::Bool(true).to_text().unwrap(), "True");
        assert_eq!(Value::Null.to_text(), None);
        assert_eq!(Value::from(vec!["a", "b"]).to_string(), "[a, b]");
    }
}
