//! Which Entra users provisor manages. Out of scope means leaver: an
//! existing Salesforce user is deactivated, none is created.

use std::collections::HashSet;

use regex::Regex;
use serde_json::Value;

use crate::config::{ScopeClause, ScopeConfig, ScopeMode, ScopeOperator};
use crate::model::EntraUser;

/// A compiled scope: groups and scoping filters.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    mode: ScopeMode,
    groups: HashSet<String>,
    filters: Vec<Vec<Clause>>,
}

#[derive(Debug, Clone)]
struct Clause {
    attribute: String,
    operator: ScopeOperator,
    value: String,
    regex: Option<Regex>,
}

impl Scope {
    /// Compiles the configuration (regular expressions once).
    pub fn new(cfg: &ScopeConfig) -> Result<Self, regex::Error> {
        let mut filters = Vec::new();
        for f in &cfg.filters {
            let mut clauses = Vec::new();
            for ScopeClause {
                attribute,
                operator,
                value,
            } in &f.clauses
            {
                let value = value.clone().unwrap_or_default();
                let regex = match operator {
                    ScopeOperator::RegexMatch | ScopeOperator::NotRegexMatch => {
                        Some(Regex::new(&value)?)
                    }
                    _ => None,
                };
                clauses.push(Clause {
                    attribute: attribute.clone(),
                    operator: *operator,
                    value,
                    regex,
                });
            }
            filters.push(clauses);
        }
        Ok(Self {
            mode: cfg.mode,
            groups: cfg.groups.iter().cloned().collect(),
            filters,
        })
    }

    /// `Ok` when in scope, else why not. `groups` are (id, display name)
    /// pairs of the user's groups, nested membership flattened.
    pub fn check(&self, user: &EntraUser, groups: &[(String, String)]) -> Result<(), String> {
        if self.mode == ScopeMode::Groups
            && !groups
                .iter()
                .any(|(id, name)| self.groups.contains(id) || self.groups.contains(name))
        {
            return Err("not a member of any scoped group".into());
        }
        if self.filters.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_value(user).unwrap_or(Value::Null);
        let attr = |name: &str| -> Value {
            user.extensions
                .get(name)
                .cloned()
                .or_else(|| json.get(name).cloned())
                .unwrap_or(Value::Null)
        };
        for clauses in &self.filters {
            if clauses.iter().all(|c| c.holds(&attr(&c.attribute))) {
                return Ok(());
            }
        }
        Err("no scoping filter matches".into())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

impl Clause {
    /// Entra's semantics: EQUALS is exact (case-sensitive); INCLUDES tests
    /// a multi-valued attribute (e.g. businessPhones) for the value.
    fn holds(&self, v: &Value) -> bool {
        let t = text(v);
        match self.operator {
            ScopeOperator::Equals => t.as_deref() == Some(self.value.as_str()),
            ScopeOperator::NotEquals => t.as_deref() != Some(self.value.as_str()),
            ScopeOperator::IsTrue => {
                v.as_bool() == Some(true)
                    || t.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("true"))
            }
            ScopeOperator::IsFalse => {
                v.as_bool() == Some(false)
                    || t.as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case("false"))
            }
            ScopeOperator::IsNull => t.is_none() || t.as_deref() == Some(""),
            ScopeOperator::IsNotNull => t.is_some_and(|s| !s.is_empty()),
            ScopeOperator::RegexMatch => {
                t.is_some_and(|s| self.regex.as_ref().is_some_and(|r| r.is_match(&s)))
            }
            ScopeOperator::NotRegexMatch => {
                !t.is_some_and(|s| self.regex.as_ref().is_some_and(|r| r.is_match(&s)))
            }
            ScopeOperator::Includes => v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| text(x).as_deref() == Some(self.value.as_str()))
            }),
            ScopeOperator::NotIncludes => !v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| text(x).as_deref() == Some(self.value.as_str()))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScopeFilter;

    fn clause(attribute: &str, operator: ScopeOperator, value: Option<&str>) -> ScopeClause {
        ScopeClause {
            attribute: attribute.into(),
            operator,
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn filters_or_across_and_within() {
        let cfg = ScopeConfig {
            mode: ScopeMode::All,
            groups: vec![],
            filters: vec![
                ScopeFilter {
                    clauses: vec![
                        clause("userType", ScopeOperator::Equals, Some("Member")),
                        clause("department", ScopeOperator::RegexMatch, Some("^Sales")),
                    ],
                },
                ScopeFilter {
                    clauses: vec![clause(
                        "extension_abc_costCenter",
                        ScopeOperator::Equals,
                        Some("42"),
                    )],
                },
            ],
        };
        let scope = Scope::new(&cfg).expect("compiles");
        let mut u = EntraUser {
            id: "1".into(),
            user_type: Some("Member".into()),
            department: Some("Sales EMEA".into()),
            ..Default::default()
        };
        assert!(scope.check(&u, &[]).is_ok());
        u.user_type = Some("Guest".into());
        assert!(scope.check(&u, &[]).is_err());
        u.extensions.insert(
            "extension_abc_costCenter".into(),
            Value::String("42".into()),
        );
        assert!(scope.check(&u, &[]).is_ok(), "second filter matches");
        u.department = None;
        let only_null = Scope::new(&ScopeConfig {
            filters: vec![ScopeFilter {
                clauses: vec![
                    clause("department", ScopeOperator::IsNull, None),
                    clause("accountEnabled", ScopeOperator::IsFalse, None),
                ],
            }],
            ..Default::default()
        })
        .expect("compiles");
        u.account_enabled = Some(false);
        assert!(only_null.check(&u, &[]).is_ok());
    }

    #[test]
    fn group_mode_accepts_ids_or_names() {
        let scope = Scope::new(&ScopeConfig {
            mode: ScopeMode::Groups,
            groups: vec!["SF-Users".into(), "g-2".into()],
            filters: vec![],
        })
        .expect("compiles");
        let u = EntraUser::default();
        assert!(
            scope
                .check(&u, &[("g-1".into(), "SF-Users".into())])
                .is_ok()
        );
        assert!(scope.check(&u, &[("g-2".into(), "Other".into())]).is_ok());
        assert!(scope.check(&u, &[("g-3".into(), "Other".into())]).is_err());
        assert!(scope.check(&u, &[]).is_err());
    }
}
