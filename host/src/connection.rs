//! `provisor test-connection`: everything a first sync needs, checked
//! without writing anything, one line per check.

use serde_json::Value;

use crate::engine::Engine;
use crate::model::Access;
use crate::salesforce::soql_quote;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Runs every check; later checks still run when earlier ones fail, unless
/// they depend on them.
pub async fn test_connection(engine: &Engine) -> Vec<Check> {
    let mut out = Vec::new();

    // Entra: a token, then the cheapest reads that need User.Read.All and
    // GroupMember.Read.All (`$deltatoken=latest` returns no users).
    for (what, url) in [
        // With what the rule packs read: Graph refuses a $select it
        // cannot track, and this is where an operator should hear it.
        (
            "users",
            engine
                .entra
                .users_start(&engine.pack.get().source_attributes()),
        ),
        ("groups", engine.entra.groups_start()),
    ] {
        let probe = format!("{url}&$deltatoken=latest");
        out.push(match engine.entra.page(&probe).await {
            Ok(_) => check(format!("Entra: token and {what}/delta"), true, "readable"),
            Err(e) => check(
                format!("Entra: token and {what}/delta"),
                false,
                e.to_string(),
            ),
        });
    }

    // Salesforce: authentication and the configured API version.
    let sf = &engine.salesforce;
    let want = engine.salesforce_api_version();
    match sf.versions().await {
        Ok(versions) => {
            out.push(check("Salesforce: authentication", true, "logged in"));
            let ok = versions.contains(&want);
            let newest = versions.last().cloned().unwrap_or_default();
            out.push(check(
                format!("Salesforce: API v{want}"),
                ok,
                if ok {
                    format!("available (newest v{newest})")
                } else {
                    format!("not offered by this org (newest v{newest})")
                },
            ));
        }
        Err(e) => {
            out.push(check("Salesforce: authentication", false, e.to_string()));
            return out;
        }
    }

    // The integration user's rights, from all its permission sets
    // (its profile's own included).
    match sf.user_id().await {
        Ok(me) => {
            let q = format!(
                "SELECT PermissionSet.PermissionsManageUsers, PermissionSet.PermissionsViewSetup, PermissionSet.PermissionsApiEnabled FROM PermissionSetAssignment WHERE AssigneeId = {}",
                soql_quote(&me)
            );
            match sf.query(&q).await {
                Ok(rows) => {
                    let has = |perm: &str| {
                        rows.iter().any(|r| {
                            r.get("PermissionSet")
                                .and_then(|p| p.get(perm))
                                .and_then(Value::as_bool)
                                == Some(true)
                        })
                    };
                    for (perm, label) in [
                        ("PermissionsApiEnabled", "API Enabled"),
                        ("PermissionsManageUsers", "Manage Users"),
                        ("PermissionsViewSetup", "View Setup and Configuration"),
                    ] {
                        out.push(check(
                            format!("Salesforce: integration user has {label}"),
                            has(perm),
                            if has(perm) {
                                "granted"
                            } else {
                                "missing: grant it with a permission set"
                            },
                        ));
                    }
                }
                Err(e) => out.push(check(
                    "Salesforce: integration user rights",
                    false,
                    e.to_string(),
                )),
            }
        }
        Err(e) => out.push(check("Salesforce: integration user", false, e.to_string())),
    }
    out.push(update_inactive_owned(engine).await);

    // Everything the rule pack says it references.
    let pack = engine.pack.get();
    let access = &pack.access;
    let refs: Vec<(&str, Vec<String>, &str, &str)> = vec![
        ("Profile", access.profiles.clone(), "Name", ""),
        ("UserRole", access.roles.clone(), "Name", ""),
        (
            "PermissionSet",
            access.referenced(Access::PermissionSet),
            "Name",
            " AND IsOwnedByProfile = false",
        ),
        (
            "PermissionSetGroup",
            access.referenced(Access::PermissionSetGroup),
            "DeveloperName",
            "",
        ),
        (
            "PermissionSetLicense",
            access.referenced(Access::PermissionSetLicense),
            "DeveloperName",
            "",
        ),
        (
            "Queue",
            access.referenced(Access::Queue),
            "DeveloperName",
            " AND Type = 'Queue'",
        ),
    ];
    for (object, names, field, filter) in refs {
        let names = &names;
        if names.is_empty() {
            continue;
        }
        let list = names
            .iter()
            .map(|n| soql_quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        let name = format!(
            "Salesforce: {object}s the pack references ({})",
            names.len()
        );
        match sf
            .query(&format!(
                "SELECT {field} FROM {} WHERE {field} IN ({list}){filter}",
                if object == "Queue" { "Group" } else { object }
            ))
            .await
        {
            Ok(rows) => {
                let found: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.get(field).and_then(Value::as_str))
                    .collect();
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| !found.iter().any(|f| f.eq_ignore_ascii_case(n)))
                    .collect();
                out.push(check(
                    name,
                    missing.is_empty(),
                    if missing.is_empty() {
                        "all exist".to_string()
                    } else {
                        format!(
                            "missing: {}",
                            missing
                                .iter()
                                .map(|m| m.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                ));
            }
            Err(e) => out.push(check(name, false, e.to_string())),
        }
    }
    out
}

/// "Update Records with Inactive Owners": without it, handing over the
/// records of users already inactive fails. A separate query, because the
/// field is missing where the org preference behind it is off.
async fn update_inactive_owned(engine: &Engine) -> Check {
    const NAME: &str = "Salesforce: integration user has Update Records with Inactive Owners";
    const WITHOUT: &str = "leavers' records owned by users already inactive cannot be handed over (Salesforce answers INACTIVE_OWNER_OR_USER)";
    let sf = &engine.salesforce;
    let me = match sf.user_id().await {
        Ok(me) => me,
        Err(e) => return check(NAME, false, e.to_string()),
    };
    let q = format!(
        "SELECT Id FROM PermissionSetAssignment WHERE AssigneeId = {} AND PermissionSet.PermissionsUpdateWithInactiveOwner = true",
        soql_quote(&me)
    );
    match sf.query(&q).await {
        Ok(rows) if !rows.is_empty() => check(NAME, true, "granted"),
        Ok(_) => check(
            NAME,
            false,
            format!("missing: {WITHOUT}; grant it with a permission set"),
        ),
        Err(e) if e.to_string().contains("INVALID_FIELD") => check(
            NAME,
            false,
            format!(
                "unavailable: turn on \"Enable Set Audit Fields upon Record Creation and Update Records with Inactive Owners\" (Setup > User Interface), then grant it; otherwise {WITHOUT}"
            ),
        ),
        Err(e) => check(NAME, false, e.to_string()),
    }
}
