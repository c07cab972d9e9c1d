//! Non-setup record objects of the emulated org (Account, Contact, Lead,
//! Opportunity, Case) and the read-only queue objects (Group,
//! QueueSobject): their schemas and the ownership rules Salesforce
//! enforces on writes (salesforce.md §7).
//!
//! A child module of `salesforce` so it shares the field tables, the
//! validation helpers and the org without widening their visibility.

use serde_json::{Map, Value, json};

use super::{FieldDef, Kind, SfErr, SfOrg, check_fields, err, f, now_iso};

const ACCOUNT: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::Text, 255, true, true),
    f("OwnerId", Kind::Owner, 18, false, true),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
const CONTACT: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("FirstName", Kind::Text, 40, false, true),
    f("LastName", Kind::Text, 80, true, true),
    f("Name", Kind::ReadOnly, 121, false, false),
    f("Email", Kind::Email, 80, false, true),
    f("AccountId", Kind::Ref("Account"), 18, false, true),
    f("OwnerId", Kind::Owner, 18, false, true),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
const LEAD: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("FirstName", Kind::Text, 40, false, true),
    f("LastName", Kind::Text, 80, true, true),
    f("Name", Kind::ReadOnly, 121, false, false),
    f("Company", Kind::Text, 255, true, true),
    f("Email", Kind::Email, 80, false, true),
    f("Status", Kind::Text, 40, false, true),
    // Set by lead conversion only (seeded through `/_sim/`).
    f("IsConverted", Kind::Bool, 0, false, false),
    f("OwnerId", Kind::Owner, 18, false, true),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
const OPPORTUNITY: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::Text, 120, true, true),
    f("StageName", Kind::Text, 40, true, true),
    // A date as `YYYY-MM-DD`.
    f("CloseDate", Kind::Text, 10, true, true),
    // Derived from the stage, as Salesforce does from the stage's settings.
    f("IsClosed", Kind::Bool, 0, false, false),
    f("AccountId", Kind::Ref("Account"), 18, false, true),
    f("OwnerId", Kind::Owner, 18, false, true),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
const CASE: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Subject", Kind::Text, 255, false, true),
    f("Status", Kind::Text, 40, false, true),
    // Derived from the status.
    f("IsClosed", Kind::Bool, 0, false, false),
    f("AccountId", Kind::Ref("Account"), 18, false, true),
    f("ContactId", Kind::Ref("Contact"), 18, false, true),
    f("OwnerId", Kind::Owner, 18, false, true),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
/// A custom object (as orgs add them): a project a user owns.
const PROJECT: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::Text, 80, true, true),
    f("Status__c", Kind::Text, 40, false, true),
    f("Account__c", Kind::Ref("Account"), 18, false, true),
    f("OwnerId", Kind::Owner, 18, false, true),
    f("CreatedDate", Kind::ReadOnly, 28, false, false),
    f("LastModifiedDate", Kind::ReadOnly, 28, false, false),
];
const GROUP: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("Name", Kind::ReadOnly, 40, false, false),
    f("DeveloperName", Kind::ReadOnly, 80, false, false),
    // 'Queue' or 'Regular'.
    f("Type", Kind::ReadOnly, 40, false, false),
];
const QUEUE_SOBJECT: &[FieldDef] = &[
    f("Id", Kind::Id, 18, false, false),
    f("QueueId", Kind::Ref("Group"), 18, false, false),
    f("SobjectType", Kind::ReadOnly, 40, false, false),
];

/// Schemas of the objects this module adds (the fallback of `schema()`).
pub(super) fn schema(object: &str) -> Option<(&'static str, &'static [FieldDef])> {
    Some(match object.to_ascii_lowercase().as_str() {
        "account" => ("Account", ACCOUNT),
        "contact" => ("Contact", CONTACT),
        "lead" => ("Lead", LEAD),
        "opportunity" => ("Opportunity", OPPORTUNITY),
        "case" => ("Case", CASE),
        "project__c" => ("Project__c", PROJECT),
        "group" => ("Group", GROUP),
        "queuesobject" => ("QueueSobject", QUEUE_SOBJECT),
        _ => return None,
    })
}

/// Key prefixes of the objects this module adds (the fallback of `prefix()`).
pub(super) fn prefix(object: &str) -> &'static str {
    match object {
        "Account" => "001",
        "Contact" => "003",
        "Lead" => "00Q",
        "Opportunity" => "006",
        "Case" => "500",
        "Project__c" => "a01",
        "Group" => "00G",
        "QueueSobject" => "03g",
        _ => "a00",
    }
}

/// The non-setup record objects (owned records the API may create,
/// update and delete).
pub(super) const RECORD_OBJECTS: &[&str] = &[
    "Account",
    "Contact",
    "Lead",
    "Opportunity",
    "Case",
    "Project__c",
];

/// Whether `object` is one of [`RECORD_OBJECTS`].
pub(super) fn is_record(object: &str) -> bool {
    RECORD_OBJECTS.contains(&object)
}

/// Objects a queue may own at all; Accounts, Contacts and Opportunities
/// are always user-owned (salesforce.md §7). A queue must still list the
/// object in `QueueSobject`.
fn queue_ownable(object: &str) -> bool {
    matches!(object, "Lead" | "Case") || object.ends_with("__c")
}

const CLOSED_STAGES: &[&str] = &["Closed Won", "Closed Lost"];

/// Fills the fields Salesforce derives or defaults.
fn derive(object: &str, row: &mut Map<String, Value>) {
    let s = |row: &Map<String, Value>, k: &str| {
        row.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match object {
        "Contact" | "Lead" => {
            let name = format!("{} {}", s(row, "FirstName"), s(row, "LastName"));
            row.insert("Name".into(), json!(name.trim()));
            if object == "Lead" {
                if s(row, "Status").is_empty() {
                    row.insert("Status".into(), json!("Open - Not Contacted"));
                }
                row.entry("IsConverted").or_insert(json!(false));
            }
        }
        "Opportunity" => {
            let closed = CLOSED_STAGES.contains(&s(row, "StageName").as_str());
            row.insert("IsClosed".into(), json!(closed));
        }
        "Case" => {
            if s(row, "Status").is_empty() {
                row.insert("Status".into(), json!("New"));
            }
            let closed = s(row, "Status") == "Closed";
            row.insert("IsClosed".into(), json!(closed));
        }
        _ => {}
    }
}

impl SfOrg {
    /// The owner rules: an existing user who is active, or a queue that
    /// lists `object` in `QueueSobject`.
    fn check_owner(&self, object: &str, owner: &str) -> Result<(), SfErr> {
        let bad_ref = || {
            err(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                &["OwnerId"],
            )
        };
        if owner.starts_with("005") {
            let user = self.get("User", owner).ok_or_else(bad_ref)?;
            if user.get("IsActive") != Some(&Value::Bool(true)) {
                return Err(err(
                    "INACTIVE_OWNER_OR_USER",
                    format!(
                        "operation performed with inactive user [{owner}] as owner of {}",
                        object.to_lowercase()
                    ),
                    &[],
                ));
            }
            return Ok(());
        }
        if owner.starts_with("00G") {
            let is_queue = self
                .get("Group", owner)
                .is_some_and(|g| g.get("Type").and_then(Value::as_str) == Some("Queue"));
            let listed = self.rows("QueueSobject").any(|q| {
                q.get("QueueId").and_then(Value::as_str) == Some(owner)
                    && q.get("SobjectType").and_then(Value::as_str) == Some(object)
            });
            if is_queue && listed && queue_ownable(object) {
                return Ok(());
            }
            // The code Salesforce uses for a queue that may not own the
            // object is unverified (salesforce.md §7); the emulator answers
            // as for any owner id that cannot be used here.
            return Err(bad_ref());
        }
        Err(bad_ref())
    }

    /// Validates and inserts one record; `OwnerId` defaults to the running
    /// (integration) user.
    pub(super) fn create_record(
        &mut self,
        name: &'static str,
        defs: &[FieldDef],
        mut fields: Map<String, Value>,
    ) -> Result<String, Vec<SfErr>> {
        let mut errors = check_fields(name, defs, &fields);
        errors.extend(super::missing_required(defs, &fields));
        if !errors.is_empty() {
            return Err(errors);
        }
        let owner = match fields.get("OwnerId").and_then(Value::as_str) {
            Some(o) => o.to_string(),
            None => self.integration_user_id.clone(),
        };
        self.check_owner(name, &owner).map_err(|e| vec![e])?;
        fields.insert("OwnerId".into(), json!(owner));
        self.check_refs(defs, &fields).map_err(|e| vec![e])?;
        Ok(self.insert_record(name, fields))
    }

    /// Inserts a record without validation, with derived fields and dates.
    fn insert_record(&mut self, name: &'static str, mut fields: Map<String, Value>) -> String {
        derive(name, &mut fields);
        let now = now_iso();
        fields.insert("CreatedDate".into(), json!(now));
        fields.insert("LastModifiedDate".into(), json!(now));
        self.insert_raw(name, fields)
    }

    /// Lookups other than the owner must point at existing rows.
    fn check_refs(&self, defs: &[FieldDef], fields: &Map<String, Value>) -> Result<(), SfErr> {
        for d in defs {
            if let Kind::Ref(target) = d.kind
                && let Some(id) = fields.get(d.name).and_then(Value::as_str)
                && self.get(target, id).is_none()
            {
                return Err(err(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    &[d.name],
                ));
            }
        }
        Ok(())
    }

    /// Applies one update to an existing record (fields already checked
    /// for names, types and required values by `update`).
    pub(super) fn update_record(
        &mut self,
        name: &'static str,
        defs: &[FieldDef],
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<(), Vec<SfErr>> {
        let Some(current) = self.get(name, id).cloned() else {
            return Err(vec![err("ENTITY_IS_DELETED", "entity is deleted", &[])]);
        };
        if name == "Lead" && current.get("IsConverted") == Some(&Value::Bool(true)) {
            return Err(vec![err(
                "CANNOT_UPDATE_CONVERTED_LEAD",
                "cannot reference converted lead",
                &[],
            )]);
        }
        if let Some(owner) = fields.get("OwnerId") {
            let owner = owner.as_str().unwrap_or_default();
            let from = current.get("OwnerId").and_then(Value::as_str);
            if from != Some(owner) {
                self.check_owner(name, owner).map_err(|e| vec![e])?;
                // Moving a record away from an inactive owner needs "Update
                // Records with Inactive Owners" (field-failures.md §7).
                if let Some(from) = from.filter(|f| f.starts_with("005"))
                    && self
                        .get("User", from)
                        .is_some_and(|u| u.get("IsActive") != Some(&Value::Bool(true)))
                    && !self.may_update_inactive_owned()
                {
                    return Err(vec![err(
                        "INACTIVE_OWNER_OR_USER",
                        format!(
                            "operation performed with inactive user [{from}] as owner of {}",
                            name.to_lowercase()
                        ),
                        &[],
                    )]);
                }
                // The new owner must be able to read the record
                // (field-failures.md §8).
                if owner.starts_with("005") && !self.can_read(owner, name, &current) {
                    return Err(vec![err(
                        "TRANSFER_REQUIRES_READ",
                        "The new owner must have read permission: []",
                        &[],
                    )]);
                }
            }
        }
        self.check_refs(defs, &fields).map_err(|e| vec![e])?;
        let mut merged = current;
        merged.extend(fields);
        derive(name, &mut merged);
        merged.insert("LastModifiedDate".into(), json!(now_iso()));
        if let Some(rows) = self.objects.get_mut(name) {
            rows.insert(id.to_string(), merged);
        }
        Ok(())
    }

    /// Deletes a record of one of the record objects; false if `id` is none.
    pub(super) fn delete_record(&mut self, id: &str) -> bool {
        for object in RECORD_OBJECTS {
            if let Some(rows) = self.objects.get_mut(object)
                && rows.remove(id).is_some()
            {
                return true;
            }
        }
        false
    }

    /// Seeds a record, queue or queue object without the API's rules
    /// (converted leads, records owned by inactive users...). Field names
    /// must exist on the object; derived fields and dates are filled in.
    pub fn seed_record(
        &mut self,
        object: &str,
        mut fields: Map<String, Value>,
    ) -> Result<String, String> {
        let (name, defs) = schema(object)
            .ok_or_else(|| format!("{object:?} is not a record or queue object of the emulator"))?;
        fields.remove("attributes");
        fields.remove("Id");
        if let Some(k) = fields.keys().find(|k| !defs.iter().any(|d| d.name == *k)) {
            return Err(format!("no field {k:?} on {name}"));
        }
        if is_record(name) && !fields.contains_key("OwnerId") {
            fields.insert("OwnerId".into(), json!(self.integration_user_id));
        }
        Ok(self.insert_record(name, fields))
    }

    /// Seeds a queue (a `Group` of type Queue) that may own `sobject_types`;
    /// returns its `00G` id.
    pub fn seed_queue(&mut self, name: &str, sobject_types: &[&str]) -> String {
        let developer: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let id = self.insert_raw(
            "Group",
            super::json_map(json!({"Name": name, "DeveloperName": developer, "Type": "Queue"})),
        );
        for t in sobject_types {
            self.insert_raw(
                "QueueSobject",
                super::json_map(json!({"QueueId": id, "SobjectType": t})),
            );
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::super::json_map;
    use super::*;

    fn org() -> (SfOrg, String, String) {
        let mut org = SfOrg::new();
        let active = org.insert_raw(
            "User",
            json_map(json!({"Username": "a@x.com", "LastName": "A", "IsActive": true})),
        );
        let inactive = org.insert_raw(
            "User",
            json_map(json!({"Username": "b@x.com", "LastName": "B", "IsActive": false})),
        );
        org.integration_user_id = active.clone();
        (org, active, inactive)
    }

    #[test]
    fn records_get_their_prefix_defaults_and_required_fields() {
        let (mut org, active, _) = org();
        let id = org
            .create("Lead", json_map(json!({"LastName": "L", "Company": "C"})))
            .expect("lead");
        assert!(id.starts_with("00Q"));
        let lead = org.get("Lead", &id).expect("stored");
        assert_eq!(lead["OwnerId"], json!(active));
        assert_eq!(lead["IsConverted"], json!(false));
        assert_eq!(lead["Status"], json!("Open - Not Contacted"));
        let e = org
            .create("Lead", json_map(json!({"LastName": "L"})))
            .expect_err("no company");
        assert_eq!(e[0].code, "REQUIRED_FIELD_MISSING");
        assert_eq!(e[0].fields, vec!["Company"]);
        let opp = org
            .create(
                "Opportunity",
                json_map(
                    json!({"Name": "O", "StageName": "Closed Won", "CloseDate": "2026-01-31"}),
                ),
            )
            .expect("opp");
        assert!(opp.starts_with("006"));
        assert_eq!(
            org.get("Opportunity", &opp).expect("row")["IsClosed"],
            json!(true)
        );
        let e = org
            .update("Opportunity", &opp, json_map(json!({"IsClosed": false})))
            .expect_err("derived");
        assert_eq!(e[0].code, "INVALID_FIELD_FOR_INSERT_UPDATE");
    }

    #[test]
    fn converted_leads_refuse_every_update() {
        let (mut org, active, _) = org();
        let id = org
            .seed_record(
                "Lead",
                json_map(json!({"LastName": "L", "Company": "C", "IsConverted": true})),
            )
            .expect("seeded");
        let e = org
            .update("Lead", &id, json_map(json!({"OwnerId": active})))
            .expect_err("converted");
        assert_eq!(e[0].code, "CANNOT_UPDATE_CONVERTED_LEAD");
        assert_eq!(e[0].message, "cannot reference converted lead");
    }

    #[test]
    fn new_owners_must_be_active_users() {
        let (mut org, _, inactive) = org();
        let id = org
            .create("Case", json_map(json!({"Subject": "S"})))
            .expect("case");
        let e = org
            .update("Case", &id, json_map(json!({"OwnerId": inactive})))
            .expect_err("inactive");
        assert_eq!(e[0].code, "INACTIVE_OWNER_OR_USER");
        assert_eq!(
            e[0].message,
            format!("operation performed with inactive user [{inactive}] as owner of case")
        );
        let e = org
            .update(
                "Case",
                &id,
                json_map(json!({"OwnerId": "005000000000ZZZAAA"})),
            )
            .expect_err("unknown");
        assert_eq!(e[0].code, "INVALID_CROSS_REFERENCE_KEY");
    }

    #[test]
    fn queues_own_only_the_objects_they_list() {
        let (mut org, _, _) = org();
        let leads = org.seed_queue("Lead Queue", &["Lead"]);
        let lead = org
            .create("Lead", json_map(json!({"LastName": "L", "Company": "C"})))
            .expect("lead");
        org.update("Lead", &lead, json_map(json!({"OwnerId": leads})))
            .expect("queue lists Lead");
        let case = org
            .create("Case", json_map(json!({"Subject": "S"})))
            .expect("case");
        let e = org
            .update("Case", &case, json_map(json!({"OwnerId": leads})))
            .expect_err("queue does not list Case");
        assert_eq!(e[0].code, "INVALID_CROSS_REFERENCE_KEY");
        // Opportunities are never queue-owned, whatever QueueSobject says.
        let any = org.seed_queue("Everything", &["Opportunity", "Lead"]);
        let e = org
            .create(
                "Opportunity",
                json_map(json!({"Name": "O", "StageName": "Prospecting", "CloseDate": "2026-01-31", "OwnerId": any})),
            )
            .expect_err("opportunity to a queue");
        assert_eq!(e[0].code, "INVALID_CROSS_REFERENCE_KEY");
        assert_eq!(e[0].fields, vec!["OwnerId"]);
    }
}
