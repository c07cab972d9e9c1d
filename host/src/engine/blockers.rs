//! Why Salesforce refused to deactivate a user. It has no distinct error
//! code for most reasons (the user is still referenced by org
//! configuration), so known message texts map to a kind of blocker and the
//! Setup page where an admin removes it (field-failures.md §1, §3).

use serde::Serialize;

/// A recognised deactivation blocker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Blocker {
    /// Stable name, for the audit trail and reports.
    pub kind: &'static str,
    /// Where in Setup it is removed.
    pub fix: &'static str,
    /// Org configuration: retrying changes nothing until an admin acts.
    pub org_config: bool,
}

/// (lower-case text in the message, blocker), most specific first.
const BY_MESSAGE: &[(&str, Blocker)] = &[
    (
        "web to lead default creator",
        Blocker {
            kind: "web_to_lead_default_creator",
            fix: "Setup > Web-to-Lead: choose another Default Lead Creator",
            org_config: true,
        },
    ),
    (
        "web-to-lead",
        Blocker {
            kind: "web_to_lead_default_creator",
            fix: "Setup > Web-to-Lead: choose another Default Lead Creator",
            org_config: true,
        },
    ),
    (
        "web-to-case",
        Blocker {
            kind: "web_to_case_default_creator",
            fix: "Setup > Web-to-Case: choose another Default Case Creator",
            org_config: true,
        },
    ),
    (
        "default owner of cases",
        Blocker {
            kind: "default_case_owner",
            fix: "Setup > Support Settings: choose another Default Case Owner",
            org_config: true,
        },
    ),
    (
        "default case owner",
        Blocker {
            kind: "default_case_owner",
            fix: "Setup > Support Settings: choose another Default Case Owner",
            org_config: true,
        },
    ),
    (
        "automated case user",
        Blocker {
            kind: "automated_case_user",
            fix: "Setup > Support Settings: choose another Automated Case User",
            org_config: true,
        },
    ),
    (
        "default lead owner",
        Blocker {
            kind: "default_lead_owner",
            fix: "Setup > Lead Settings: choose another Default Lead Owner",
            org_config: true,
        },
    ),
    (
        "default workflow user",
        Blocker {
            kind: "default_workflow_user",
            fix: "Setup > Process Automation Settings: choose another Default Workflow User",
            org_config: true,
        },
    ),
    (
        "hierarchy field",
        Blocker {
            kind: "custom_hierarchy_field",
            fix: "clear the user from the named hierarchy field on every user that points at them (a deleted field must also be erased)",
            org_config: false,
        },
    ),
    (
        "auto-response",
        Blocker {
            kind: "auto_response_rule",
            fix: "Setup > Lead or Case Auto-Response Rules: replace the user in the rule entries",
            org_config: true,
        },
    ),
    (
        "assignment rule",
        Blocker {
            kind: "assignment_rule",
            fix: "Setup > Lead or Case Assignment Rules: replace the user in the rule entries",
            org_config: true,
        },
    ),
    (
        "approver",
        Blocker {
            kind: "approver",
            fix: "approval processes, and users naming them as (delegated) approver: name someone else",
            org_config: true,
        },
    ),
    (
        "portal administrator",
        Blocker {
            kind: "customer_portal_admin",
            fix: "Setup > Customer Portal Settings: choose another Administrator",
            org_config: true,
        },
    ),
    (
        "big deal alert",
        Blocker {
            kind: "big_deal_alert",
            fix: "Setup > Big Deal Alert: change the notification sender",
            org_config: true,
        },
    ),
    (
        "update reminder",
        Blocker {
            kind: "opportunity_update_reminders",
            fix: "Setup > Opportunity Update Reminders: remove the user",
            org_config: true,
        },
    ),
    (
        "workflow",
        Blocker {
            kind: "workflow_rule",
            fix: "Setup > Workflow Rules: remove the user from email alerts, tasks and field updates",
            org_config: true,
        },
    ),
];

/// The blocker Salesforce's refusal of a deactivation names, if known.
pub fn classify(code: &str, message: &str) -> Option<Blocker> {
    if code == "CANNOT_DISABLE_LAST_ADMIN" {
        return Some(Blocker {
            kind: "last_admin",
            fix: "give another active user the System Administrator profile first",
            org_config: true,
        });
    }
    if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" {
        return Some(Blocker {
            kind: "validation_rule",
            fix: "Setup > Object Manager > User > Validation Rules: exempt deactivation or the integration user",
            org_config: true,
        });
    }
    let m = message.to_lowercase();
    BY_MESSAGE
        .iter()
        .find(|(text, _)| m.contains(text))
        .map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_messages_are_recognised() {
        // Texts as Salesforce shows them (field-failures.md §1).
        for (message, kind) in [
            (
                "You cannot disable the Web to Lead Default Creator",
                "web_to_lead_default_creator",
            ),
            (
                "You cannot deactivate this user. You cannot deactivate a user who is the default owner of cases",
                "default_case_owner",
            ),
            (
                "You cannot deactivate the Default Workflow User",
                "default_workflow_user",
            ),
            (
                "Cannot inactivate user that is the value of a hierarchy field: Approver__c",
                "custom_hierarchy_field",
            ),
            (
                "This user is used in a Lead Assignment Rule",
                "assignment_rule",
            ),
            (
                "This user is the Automated Case User",
                "automated_case_user",
            ),
        ] {
            assert_eq!(
                classify("FIELD_INTEGRITY_EXCEPTION", message).map(|b| b.kind),
                Some(kind),
                "{message}"
            );
        }
        assert_eq!(
            classify("CANNOT_DISABLE_LAST_ADMIN", "").map(|b| b.kind),
            Some("last_admin")
        );
        assert_eq!(classify("FIELD_INTEGRITY_EXCEPTION", "something new"), None);
        // A hierarchy field is fixed on records, not in Setup.
        assert!(
            !classify("X", "value of a hierarchy field: Mentor__c").is_some_and(|b| b.org_config)
        );
    }
}
