//! The host API's answers during a sync: Salesforce users and queues read
//! from the org, teams and manager chains from the Entra mirror with the
//! accounts provisor linked. Rules run on a blocking thread; this waits on
//! the async reads there, and caches them for the cycle (a rule asking the
//! same thing for every user costs one read).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::model::{EntraUser, is_api_name};
use crate::rules::{Directory, Person, SalesforceUser};
use crate::salesforce::{SalesforceClient, soql_quote};
use crate::store::Store;

/// Users a `find-user` lookup returns at most (more is not "the" user).
const FIND_LIMIT: usize = 10;

/// The Entra side, read once per cycle on first use.
struct Mirror {
    users: HashMap<String, EntraUser>,
    /// Group display name → member ids (nested groups flattened).
    teams: HashMap<String, Vec<String>>,
    /// Entra id → Salesforce id.
    links: HashMap<String, String>,
}

/// A [`Directory`] over the live org and the store, for one cycle.
pub(crate) struct LiveDirectory {
    handle: tokio::runtime::Handle,
    salesforce: Arc<SalesforceClient>,
    store: Store,
    tables: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    now: String,
    found: Mutex<HashMap<(String, String), Vec<SalesforceUser>>>,
    queues: Mutex<HashMap<String, Vec<String>>>,
    /// Salesforce id → (Username, IsActive).
    accounts: Mutex<HashMap<String, (String, bool)>>,
    mirror: OnceLock<Result<Mirror, String>>,
}

impl LiveDirectory {
    pub(crate) fn new(
        salesforce: Arc<SalesforceClient>,
        store: Store,
        tables: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    ) -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
            salesforce,
            store,
            tables,
            now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            found: Mutex::default(),
            queues: Mutex::default(),
            accounts: Mutex::default(),
            mirror: OnceLock::new(),
        }
    }

    fn query(&self, soql: &str) -> Result<Vec<serde_json::Map<String, Value>>, String> {
        self.handle
            .block_on(self.salesforce.query(soql))
            .map_err(|e| e.to_string())
    }

    fn mirror(&self) -> Result<&Mirror, String> {
        self.mirror
            .get_or_init(|| {
                self.handle.block_on(async {
                    let (users, _) = self.store.mirror().await.map_err(|e| e.to_string())?;
                    let by_user = self
                        .store
                        .groups_by_user()
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut teams: HashMap<String, Vec<String>> = HashMap::new();
                    for (user, groups) in by_user {
                        for (_, name) in groups {
                            teams.entry(name).or_default().push(user.clone());
                        }
                    }
                    for members in teams.values_mut() {
                        members.sort();
                        members.dedup();
                    }
                    let links = self.store.links().await.map_err(|e| e.to_string())?;
                    Ok(Mirror {
                        users: users.into_iter().map(|u| (u.id.clone(), u)).collect(),
                        teams,
                        links,
                    })
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Username and IsActive of linked accounts, read 200 ids at a time.
    fn accounts(&self, ids: &[String]) -> Result<HashMap<String, (String, bool)>, String> {
        let mut known = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let missing: Vec<&String> = ids.iter().filter(|i| !known.contains_key(*i)).collect();
        for chunk in missing.chunks(200) {
            let list: Vec<String> = chunk.iter().map(|i| soql_quote(i)).collect();
            let rows = self.query(&format!(
                "SELECT Id, Username, IsActive FROM User WHERE Id IN ({})",
                list.join(", ")
            ))?;
            for r in rows {
                if let (Some(id), Some(name)) = (
                    r.get("Id").and_then(Value::as_str),
                    r.get("Username").and_then(Value::as_str),
                ) {
                    let active = r.get("IsActive").and_then(Value::as_bool).unwrap_or(false);
                    known.insert(id.to_string(), (name.to_string(), active));
                }
            }
        }
        Ok(ids
            .iter()
            .filter_map(|i| Some((i.clone(), known.get(i)?.clone())))
            .collect())
    }

    fn people(&self, ids: &[String]) -> Result<Vec<Person>, String> {
        let m = self.mirror()?;
        let sf_ids: Vec<String> = ids.iter().filter_map(|i| m.links.get(i).cloned()).collect();
        let accounts = self.accounts(&sf_ids)?;
        Ok(ids
            .iter()
            .filter_map(|id| {
                let u = m.users.get(id)?;
                let account = m.links.get(id).and_then(|s| accounts.get(s));
                Some(Person {
                    id: id.clone(),
                    user_principal_name: u.user_principal_name.clone(),
                    display_name: u.display_name.clone(),
                    account_enabled: u.account_enabled,
                    salesforce_username: account.map(|a| a.0.clone()),
                    salesforce_active: account.map(|a| a.1),
                })
            })
            .collect())
    }
}

fn text(r: &serde_json::Map<String, Value>, k: &str) -> Option<String> {
    r.get(k).and_then(Value::as_str).map(str::to_string)
}

impl Directory for LiveDirectory {
    fn find_users(&self, field: &str, value: &str) -> Result<Vec<SalesforceUser>, String> {
        if !is_api_name(field) {
            return Err(format!("{field:?} is not a Salesforce API name"));
        }
        let key = (field.to_string(), value.to_lowercase());
        if let Some(hit) = self
            .found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let mut select = vec![
            "Id",
            "Username",
            "IsActive",
            "Email",
            "FederationIdentifier",
            "ManagerId",
        ];
        if !select.contains(&field) {
            select.push(field);
        }
        let rows = self.query(&format!(
            "SELECT {} FROM User WHERE {field} = {} LIMIT {FIND_LIMIT}",
            select.join(", "),
            soql_quote(value)
        ))?;
        let users: Vec<SalesforceUser> = rows
            .iter()
            .map(|r| SalesforceUser {
                id: text(r, "Id").unwrap_or_default(),
                username: text(r, "Username").unwrap_or_default(),
                is_active: r.get("IsActive").and_then(Value::as_bool).unwrap_or(false),
                email: text(r, "Email"),
                federation_identifier: text(r, "FederationIdentifier"),
                manager_id: text(r, "ManagerId"),
                fields: text(r, field)
                    .map(|v| BTreeMap::from([(field.to_string(), v)]))
                    .unwrap_or_default(),
            })
            .collect();
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, users.clone());
        Ok(users)
    }

    fn queue_members(&self, queue: &str) -> Result<Vec<String>, String> {
        if let Some(hit) = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
        {
            return Ok(hit.clone());
        }
        let q = self.query(&format!(
            "SELECT Id FROM Group WHERE Type = 'Queue' AND DeveloperName = {}",
            soql_quote(queue)
        ))?;
        let Some(id) = q.first().and_then(|r| text(r, "Id")) else {
            return Err(format!("no queue {queue:?} in Salesforce"));
        };
        let members = self.query(&format!(
            "SELECT UserOrGroupId FROM GroupMember WHERE GroupId = {}",
            soql_quote(&id)
        ))?;
        // Members may be users or groups; only users (005...) own records.
        let ids: Vec<String> = members
            .iter()
            .filter_map(|r| text(r, "UserOrGroupId"))
            .filter(|i| i.starts_with("005"))
            .collect();
        let accounts = self.accounts(&ids)?;
        let mut names: Vec<String> = accounts
            .into_values()
            .filter(|(_, active)| *active)
            .map(|(name, _)| name)
            .collect();
        names.sort();
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_string(), names.clone());
        Ok(names)
    }

    fn team_members(&self, team: &str) -> Result<Vec<Person>, String> {
        let ids = self
            .mirror()?
            .teams
            .get(team)
            .cloned()
            .ok_or_else(|| format!("no Entra group {team:?} in the mirror"))?;
        self.people(&ids)
    }

    fn manager_chain(&self, user_id: &str, depth: u32) -> Result<Vec<Person>, String> {
        let m = self.mirror()?;
        let mut chain = Vec::new();
        let mut at = user_id.to_string();
        while chain.len() < depth as usize {
            let Some(next) = m.users.get(&at).and_then(|u| u.manager_id.clone()) else {
                break;
            };
            // A cycle in the directory's manager data ends the chain.
            if next == user_id || chain.contains(&next) {
                break;
            }
            chain.push(next.clone());
            at = next;
        }
        self.people(&chain)
    }

    fn org_table(&self, name: &str) -> Option<Arc<HashMap<String, String>>> {
        self.tables
            .get(name)
            .map(|t| Arc::new(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }

    fn now(&self) -> String {
        self.now.clone()
    }
}
