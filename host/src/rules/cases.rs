//! Pack-local test cases (`provisor rules test`): each JSON file under the
//! pack's `tests/` holds one case or an array of cases, an Entra user (Graph
//! camelCase, as `users/delta` returns it), the user's group names and the
//! desired user the pack must return; optionally what the host knows
//! (`host`: Salesforce users, queues, teams, managers, tables, a pinned
//! clock) and a leaver's open records with the reassignment plan
//! `on-leave` must return. `--bless` writes what the pack returns as the
//! expectations (golden files).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Fixture, HostEnv, OwnedRecords, Pack, ReassignmentPlan, RuleError};
use crate::model::{DesiredUser, EntraUser};

/// One case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in reports; defaults to the file name and position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub user: EntraUser,
    #[serde(default)]
    pub groups: Vec<String>,
    /// What the host API answers for this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Fixture>,
    /// What `map` must return; absent until blessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<DesiredUser>,
    /// A leaver's open records: the case then checks `on-leave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<OwnedRecords>>,
    /// What `on-leave` must return for `records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_on_leave: Option<ReassignmentPlan>,
}

/// How one case went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    /// The pack returned something else; one line per difference.
    Fail(Vec<String>),
    /// `map` failed (or the case has no expectation yet).
    Error(String),
    /// `--bless` wrote the pack's output as the expectation.
    Blessed,
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub outcome: Outcome,
}

/// Errors reading the cases themselves (never the pack's failures).
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("cannot read test cases in {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("test case file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("rule pack {0} has no test cases (add JSON files under its tests/ directory)")]
    None(PathBuf),
}

/// The case files of a pack, sorted.
pub fn case_files(pack_dir: &Path) -> Result<Vec<PathBuf>, CaseError> {
    let dir = pack_dir.join("tests");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let read = |source| CaseError::Read {
        path: dir.clone(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// The cases of a file, with their JSON as written (blessing changes only
/// `expect`), and whether the file holds an array.
fn load(path: &Path) -> Result<(Vec<Case>, Vec<Value>, bool), CaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaseError::Read {
        path: path.into(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| CaseError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    let many = v.is_array();
    let raw = match v {
        Value::Array(items) => items,
        one => vec![one],
    };
    let cases = raw
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::from_value(c.clone()).map_err(|e| CaseError::Parse {
                path: path.into(),
                message: format!("case {}: {e}", i + 1),
            })
        })
        .collect::<Result<Vec<Case>, _>>()?;
    Ok((cases, raw, many))
}

/// Runs every case of the pack; with `bless`, rewrites expectations from
/// what the pack returns instead of comparing.
pub fn run(pack: &Pack, bless: bool) -> Result<Vec<CaseResult>, CaseError> {
    let files = case_files(&pack.dir)?;
    if files.is_empty() {
        return Err(CaseError::None(pack.dir.clone()));
    }
    let mut out = Vec::new();
    for file in files {
        let (mut cases, mut raw, many) = load(&file)?;
        let stem = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, case) in cases.iter_mut().enumerate() {
            let name = case.name.clone().unwrap_or_else(|| {
                if many {
                    format!("{stem}#{}", i + 1)
                } else {
                    stem.clone()
                }
            });
            let env = HostEnv::new(std::sync::Arc::new(case.host.clone().unwrap_or_default()));
            let mut outcomes = Vec::new();
            // A leaver-only case (records, no expect) need not pin `map`.
            if case.expect.is_some() || case.records.is_none() {
                let got = pack.map_with(&case.user, &case.groups, &env);
                outcomes.push(check(
                    got,
                    &mut case.expect,
                    raw.get_mut(i),
                    "expect",
                    bless,
                ));
            }
            if let Some(records) = &case.records {
                let got = pack.on_leave(&case.user, &case.groups, records, &env);
                outcomes.push(check(
                    got,
                    &mut case.expect_on_leave,
                    raw.get_mut(i),
                    "expect_on_leave",
                    bless,
                ));
            }
            let outcome = merge(outcomes);
            out.push(CaseResult {
                file: file.clone(),
                name,
                outcome,
            });
        }
        if bless {
            let v = if many {
                Value::Array(raw)
            } else {
                raw.pop().unwrap_or(Value::Null)
            };
            let text = serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
            std::fs::write(&file, text).map_err(|source| CaseError::Read {
                path: file.clone(),
                source,
            })?;
        }
    }
    Ok(out)
}

/// Compares (or with `bless`, records) one result against its expectation
/// `key` in the case's JSON.
fn check<T: PartialEq + Serialize>(
    got: Result<T, RuleError>,
    want: &mut Option<T>,
    raw: Option<&mut Value>,
    key: &str,
    bless: bool,
) -> Outcome {
    match (got, want.as_ref(), bless) {
        (Err(e), _, _) => Outcome::Error(e.to_string()),
        (Ok(got), _, true) => {
            if let Some(Value::Object(m)) = raw {
                m.insert(
                    key.into(),
                    serde_json::to_value(&got).unwrap_or(Value::Null),
                );
            }
            *want = Some(got);
            Outcome::Blessed
        }
        (Ok(_), None, false) => {
            Outcome::Error(format!("no `{key}` yet: run with --bless to record it"))
        }
        (Ok(got), Some(w), false) if &got == w => Outcome::Pass,
        (Ok(got), Some(w), false) => Outcome::Fail(differences(w, &got)),
    }
}

/// One outcome for a case from its checks: an error wins, then failures.
fn merge(outcomes: Vec<Outcome>) -> Outcome {
    let mut fails = Vec::new();
    let mut blessed = false;
    for o in outcomes {
        match o {
            Outcome::Error(e) => return Outcome::Error(e),
            Outcome::Fail(d) => fails.extend(d),
            Outcome::Blessed => blessed = true,
            Outcome::Pass => {}
        }
    }
    if !fails.is_empty() {
        Outcome::Fail(fails)
    } else if blessed {
        Outcome::Blessed
    } else {
        Outcome::Pass
    }
}

/// Runs the cases of a pack that has some, for a reload gate: the first
/// failure is the error. A pack without cases passes.
pub fn gate(pack: &Pack) -> Result<usize, RuleError> {
    let fail = |message: String| RuleError::Load {
        pack: pack.id(),
        message,
    };
    if case_files(&pack.dir)
        .map_err(|e| fail(e.to_string()))?
        .is_empty()
    {
        return Ok(0);
    }
    let results = run(pack, false).map_err(|e| fail(e.to_string()))?;
    for r in &results {
        match &r.outcome {
            Outcome::Pass | Outcome::Blessed => {}
            Outcome::Fail(d) => {
                return Err(fail(format!("test {} fails: {}", r.name, d.join("; "))));
            }
            Outcome::Error(e) => return Err(fail(format!("test {}: {e}", r.name))),
        }
    }
    Ok(results.len())
}

/// One line per differing value, by JSON path.
fn differences<T: Serialize>(want: &T, got: &T) -> Vec<String> {
    let (w, g) = (
        serde_json::to_value(want).unwrap_or(Value::Null),
        serde_json::to_value(got).unwrap_or(Value::Null),
    );
    let mut out = Vec::new();
    diff_values("", &w, &g, &mut out);
    out
}

fn diff_values(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let mut keys: Vec<&String> = w.keys().chain(g.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(
                    &p,
                    w.get(k).unwrap_or(&Value::Null),
                    g.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (w, g) if w != g => out.push(format!("{path}: expected {w}, got {g}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_path() {
        let want: DesiredUser = serde_json::from_value(serde_json::json!({
            "fields": {"Alias": "ab", "Email": "a@x"},
            "profile": "Standard User",
            "active": true
        }))
        .expect("desired");
        let mut got = want.clone();
        got.active = false;
        got.fields.remove("Email");
        let d = differences(&want, &got);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|l| l.starts_with("active: expected true, got false"))
        );
        assert!(d.iter().any(|l| l.starts_with("fields.Email: expected")));
    }
}
