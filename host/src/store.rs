//! Durable state through sqlx: the Entra mirror, delta links, links to
//! Salesforce users, the outbox, dead letters and the audit trail. SQLite
//! by default; the SQL is kept portable for PostgreSQL.

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::audit::{self, AuditEvent, AuditRow};
use crate::entra::{GroupChange, UserChange};
use crate::model::{Access, EntraUser, Removal};

mod leavers;
mod status;

pub use leavers::{BlockerState, NewBlocker, OpenLeaver};
pub use status::{LastCycle, Waiting};

/// One user's grants made by provisor: (kind, API name) -> assignment id.
pub type ManagedGrants = HashMap<(Access, String), String>;

/// Errors from the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store query failed ({what}): {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("corrupt row in {table} for {id}: {detail}")]
    Corrupt {
        table: &'static str,
        id: String,
        detail: String,
    },
    #[error("no {what} {id:?}")]
    Unknown { what: &'static str, id: String },
}

/// A user whose match to Salesforce waits for an operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Review {
    pub entra_id: String,
    pub reason: String,
    /// Salesforce User Ids the keys pointed at.
    pub candidates: Vec<String>,
    /// `open`, `linked` or `rejected`.
    pub status: String,
    pub sf_id: Option<String>,
    pub created_at: String,
}

/// A deactivation held back by the deletion threshold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StagedDeactivation {
    pub entra_id: String,
    pub sf_id: Option<String>,
    /// The cycle that staged it; `provisor approve BATCH` names it.
    pub batch: String,
    pub reason: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    pub staged_at: String,
}

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// How the store writes a time (RFC 3339, milliseconds, UTC): such strings
/// compare in time order.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Delta state of one Graph resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncState {
    pub delta_link: Option<String>,
    pub next_link: Option<String>,
    /// Set while a full enumeration (first read or resync) is running.
    pub resync_round: Option<String>,
}

/// A user with work owed, as the engine needs it.
#[derive(Debug, Clone)]
pub struct DirtyUser {
    pub user: EntraUser,
    /// Display names of the user's groups (nested flattened), sorted.
    pub groups: Vec<String>,
    /// The same groups as (id, display name).
    pub group_refs: Vec<(String, String)>,
    pub attempts: u32,
}

/// A dead-lettered user.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub entra_id: String,
    pub reason: String,
    pub attempts: u32,
}

/// Rows per multi-row statement. Every statement is a round trip to sqlx's
/// SQLite worker thread; one per row made a 100,000-user load spend most
/// of its time there. 500 rows of at most 8 columns stay far below
/// SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// Upserts links (Entra id, Salesforce id, matched by) inside `tx`.
async fn insert_links(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    links: &[(&str, &str, &str)],
    at: &str,
) -> Result<(), StoreError> {
    for chunk in links.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO links (entra_id, sf_id, matched_by, linked_at) ",
        );
        qb.push_values(chunk, |mut b, (entra_id, sf_id, matched_by)| {
            b.push_bind(*entra_id)
                .push_bind(*sf_id)
                .push_bind(*matched_by)
                .push_bind(at);
        });
        qb.push("ON CONFLICT (entra_id) DO UPDATE SET sf_id = excluded.sf_id, matched_by = excluded.matched_by, linked_at = excluded.linked_at");
        qb.build()
            .execute(&mut **tx)
            .await
            .map_err(q("save link"))?;
    }
    Ok(())
}

/// Binds `values` as the list of the `IN (` that `qb` ends with, and
/// closes it.
fn push_in_list<T: AsRef<str>>(qb: &mut QueryBuilder<Sqlite>, values: &[T]) {
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v.as_ref());
    }
    qb.push(")");
}

/// The state database.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, true).await
    }

    /// Opens an existing database; a wrong path is an error, not a new
    /// empty store (for read-only commands such as `audit verify`).
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, false).await
    }

    /// A write transaction that takes SQLite's write lock at once
    /// (`BEGIN IMMEDIATE`). A deferred one that reads first and writes
    /// later fails at once with `database is locked` when another writer got
    /// in between (SQLite cannot wait there without risking a deadlock);
    /// this one waits for the lock (`busy_timeout`) instead. Users and
    /// groups are journaled side by side, so this happens.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn connect(url: &str, create: bool) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|source| StoreError::Open {
                url: url.into(),
                source,
            })?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL syncs at checkpoints, not at every commit:
            // a process crash loses nothing; a power loss may roll back the
            // last commits, which the engine survives (users stay dirty and
            // are matched by key before anything is created again). FULL
            // made every journaled action an fsync: minutes at 100k users.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                url: url.into(),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Delta state of `resource` (`users` or `groups`).
    pub async fn sync_state(&self, resource: &str) -> Result<SyncState, StoreError> {
        let row = sqlx::query(
            "SELECT delta_link, next_link, resync_round FROM sync_state WHERE resource = ?",
        )
        .bind(resource)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("read sync state"))?;
        Ok(row
            .map(|r| SyncState {
                delta_link: r.get(0),
                next_link: r.get(1),
                resync_round: r.get(2),
            })
            .unwrap_or_default())
    }

    async fn save_links(
        tx: &mut sqlx::SqliteConnection,
        resource: &str,
        next: Option<&str>,
        delta: Option<&str>,
    ) -> Result<(), StoreError> {
        // A page with a nextLink is a checkpoint; a page with the deltaLink
        // completes the round: the link replaces the old one, the checkpoint goes.
        if let Some(d) = delta {
            sqlx::query("INSERT INTO sync_state (resource, delta_link, next_link, updated_at) VALUES (?, ?, NULL, ?) ON CONFLICT (resource) DO UPDATE SET delta_link = excluded.delta_link, next_link = NULL, updated_at = excluded.updated_at")
                .bind(resource)
                .bind(d)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(q("save delta link"))?;
        } else if let Some(n) = next {
            sqlx::query("INSERT INTO sync_state (resource, delta_link, next_link, updated_at) VALUES (?, NULL, ?, ?) ON CONFLICT (resource) DO UPDATE SET next_link = excluded.next_link, updated_at = excluded.updated_at")
                .bind(resource)
                .bind(n)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(q("save checkpoint"))?;
        }
        Ok(())
    }

    /// Forgets a resource's checkpoint (e.g. when the saved nextLink no
    /// longer works), keeping the last complete deltaLink.
    pub async fn clear_checkpoint(&self, resource: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sync_state SET next_link = NULL WHERE resource = ?")
            .bind(resource)
            .execute(&self.pool)
            .await
            .map_err(q("clear checkpoint"))?;
        Ok(())
    }

    /// Starts a full enumeration of `resource` (first read, or a resync
    /// after 410 / `syncStateNotFound`): a fresh round id, no checkpoint.
    /// Objects not listed by the time the round ends are swept as deleted.
    pub async fn begin_resync(&self, resource: &str) -> Result<String, StoreError> {
        let round = format!("r{}", uuid::Uuid::new_v4().simple());
        sqlx::query("INSERT INTO sync_state (resource, delta_link, next_link, resync_round, updated_at) VALUES (?, NULL, NULL, ?, ?) ON CONFLICT (resource) DO UPDATE SET next_link = NULL, resync_round = excluded.resync_round, updated_at = excluded.updated_at")
            .bind(resource)
            .bind(&round)
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(q("begin resync"))?;
        Ok(round)
    }

    /// Applies managers read outside delta (Entra id -> manager id): users
    /// whose recorded manager differs get the new one and are marked
    /// dirty. Returns how many changed.
    pub async fn refresh_managers(
        &self,
        managers: &HashMap<String, Option<String>>,
    ) -> Result<usize, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, data FROM entra_users WHERE removed IS NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read users"))?;
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let mut changed = 0;
        for (id, data) in rows {
            let Some(manager) = managers.get(&id) else {
                continue;
            };
            let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                table: "entra_users",
                id: id.clone(),
                detail: e.to_string(),
            };
            let mut user: EntraUser = serde_json::from_str(&data).map_err(corrupt)?;
            if &user.manager_id == manager {
                continue;
            }
            user.manager_id = manager.clone();
            sqlx::query("UPDATE entra_users SET data = ?, dirty = 1, attempts = 0, updated_at = ? WHERE id = ?")
                .bind(serde_json::to_string(&user).map_err(corrupt)?)
                .bind(now())
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(q("update manager"))?;
            changed += 1;
        }
        tx.commit().await.map_err(q("commit managers"))?;
        Ok(changed)
    }

    /// Gives up a resync round (its checkpoint and round marker); the old
    /// deltaLink, kept during the round, is what the next read follows.
    pub async fn abandon_resync(&self, resource: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sync_state SET next_link = NULL, resync_round = NULL, updated_at = ? WHERE resource = ?")
            .bind(now())
            .bind(resource)
            .execute(&self.pool)
            .await
            .map_err(q("abandon resync"))?;
        Ok(())
    }

    /// Journals one `users/delta` page and the link after it, atomically.
    /// In a resync round, the page that completes it also sweeps: users
    /// not listed in the round become deleted. Returns how many were swept.
    pub async fn apply_user_page(
        &self,
        changes: &[UserChange],
        next: Option<&str>,
        delta: Option<&str>,
        request_id: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let round: Option<String> =
            sqlx::query_scalar("SELECT resync_round FROM sync_state WHERE resource = 'users'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("read round"))?
                .flatten();
        let at = now();
        // Current rows for the whole page in one query: pages hold up to 999
        // users, and one statement per user would dominate a large read.
        let ids: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                UserChange::Upsert(u) => u.id.as_str(),
                UserChange::Removed { id, .. } => id.as_str(),
            })
            .collect();
        let mut before: HashMap<String, (String, Option<String>)> = HashMap::new();
        for chunk in ids.chunks(500) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT id, data, removed FROM entra_users WHERE id IN (",
            );
            push_in_list(&mut qb, chunk);
            let rows: Vec<(String, String, Option<String>)> = qb
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(q("read page users"))?;
            before.extend(rows.into_iter().map(|(id, d, r)| (id, (d, r))));
        }
        let mut upserts: Vec<(&str, String)> = Vec::new();
        let mut seen_only: Vec<&str> = Vec::new();
        let mut changed: Vec<&str> = Vec::new();
        for c in changes {
            match c {
                UserChange::Upsert(u) => {
                    let data = serde_json::to_string(u).map_err(|e| StoreError::Corrupt {
                        table: "entra_users",
                        id: u.id.clone(),
                        detail: e.to_string(),
                    })?;
                    // Graph replays items; an identical one is no change
                    // (and must not re-arm a parked user).
                    if before
                        .get(&u.id)
                        .is_some_and(|(d, r)| *d == data && r.is_none())
                    {
                        seen_only.push(&u.id);
                        continue;
                    }
                    changed.push(&u.id);
                    upserts.push((&u.id, data));
                }
                UserChange::Removed { id, removal } => {
                    let tag = match removal {
                        Removal::SoftDeleted => "softDeleted",
                        Removal::HardDeleted => "hardDeleted",
                    };
                    if before
                        .get(id)
                        .is_some_and(|(_, r)| r.as_deref() == Some(tag))
                    {
                        continue;
                    }
                    changed.push(id);
                    let stub = serde_json::json!({"id": id}).to_string();
                    sqlx::query("INSERT INTO entra_users (id, data, removed, dirty, attempts, last_error, request_id, updated_at) VALUES (?, ?, ?, 1, 0, NULL, ?, ?) ON CONFLICT (id) DO UPDATE SET removed = excluded.removed, dirty = 1, attempts = 0, last_error = NULL, request_id = excluded.request_id, updated_at = excluded.updated_at")
                        .bind(id)
                        .bind(stub)
                        .bind(tag)
                        .bind(request_id)
                        .bind(&at)
                        .execute(&mut *tx)
                        .await
                        .map_err(q("remove user"))?;
                    if *removal == Removal::HardDeleted {
                        // Graph may not report the membership removal itself.
                        sqlx::query("DELETE FROM memberships WHERE member_id = ?")
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .map_err(q("drop memberships"))?;
                    }
                }
            }
        }
        for chunk in upserts.chunks(500) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO entra_users (id, data, removed, dirty, attempts, last_error, request_id, updated_at, seen_round) ",
            );
            qb.push_values(chunk, |mut b, (id, data)| {
                b.push_bind(*id)
                    .push_bind(data.as_str())
                    .push("NULL, 1, 0, NULL")
                    .push_bind(request_id)
                    .push_bind(&at)
                    .push_bind(&round);
            });
            // A real change re-arms a parked user.
            qb.push(" ON CONFLICT (id) DO UPDATE SET data = excluded.data, removed = NULL, dirty = 1, attempts = 0, last_error = NULL, request_id = excluded.request_id, updated_at = excluded.updated_at, seen_round = COALESCE(excluded.seen_round, entra_users.seen_round)");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("upsert users"))?;
        }
        if round.is_some() {
            for chunk in seen_only.chunks(500) {
                let mut qb =
                    sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE entra_users SET seen_round = ");
                qb.push_bind(&round).push(" WHERE id IN (");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *tx).await.map_err(q("mark seen"))?;
            }
        }
        let parked: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dead_letters)")
            .fetch_one(&mut *tx)
            .await
            .map_err(q("read dead letters"))?;
        if parked {
            for chunk in changed.chunks(500) {
                let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "DELETE FROM dead_letters WHERE entra_id IN (",
                );
                push_in_list(&mut qb, chunk);
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(q("re-arm users"))?;
            }
        }
        let mut swept = 0;
        if let (Some(r), Some(_)) = (&round, delta) {
            // The enumeration is complete: whoever it did not list is gone.
            // Never earlier: a partial read must not deprovision anybody.
            let res = sqlx::query("UPDATE entra_users SET removed = 'softDeleted', dirty = 1, attempts = 0, updated_at = ? WHERE removed IS NULL AND (seen_round IS NULL OR seen_round <> ?)")
                .bind(&at)
                .bind(r)
                .execute(&mut *tx)
                .await
                .map_err(q("sweep users"))?;
            swept = res.rows_affected();
            sqlx::query("UPDATE sync_state SET resync_round = NULL WHERE resource = 'users'")
                .execute(&mut *tx)
                .await
                .map_err(q("end resync"))?;
        }
        Self::save_links(&mut tx, "users", next, delta).await?;
        tx.commit().await.map_err(q("commit user page"))?;
        Ok(swept)
    }

    /// Marks users dirty, by id.
    async fn mark_users_dirty(
        tx: &mut sqlx::SqliteConnection,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE entra_users SET dirty = 1 WHERE id IN (");
        push_in_list(&mut qb, ids);
        qb.build()
            .execute(&mut *tx)
            .await
            .map_err(q("mark members"))?;
        Ok(())
    }

    /// Marks every user under `group` (nested groups included) dirty.
    async fn mark_group_dirty(
        tx: &mut sqlx::SqliteConnection,
        group: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "WITH RECURSIVE sub(id) AS (SELECT ? UNION SELECT m.member_id FROM memberships m JOIN sub ON m.group_id = sub.id WHERE m.member_type = 'group') \
             UPDATE entra_users SET dirty = 1 WHERE id IN (SELECT member_id FROM memberships WHERE member_type = 'user' AND group_id IN (SELECT id FROM sub))",
        )
        .bind(group)
        .execute(&mut *tx)
        .await
        .map_err(q("mark group members"))?;
        Ok(())
    }

    /// Journals one `groups/delta` page and the link after it, atomically;
    /// users whose (possibly nested) memberships change become dirty. A
    /// completed resync round sweeps groups and memberships it did not list.
    pub async fn apply_group_page(
        &self,
        changes: &[GroupChange],
        next: Option<&str>,
        delta: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let round: Option<String> =
            sqlx::query_scalar("SELECT resync_round FROM sync_state WHERE resource = 'groups'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("read round"))?
                .flatten();
        let at = now();
        for g in changes {
            let old: Option<(Option<String>, i64)> =
                sqlx::query_as("SELECT display_name, removed FROM entra_groups WHERE id = ?")
                    .bind(&g.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(q("read group"))?;
            let renamed = matches!((&old, &g.display_name), (Some((Some(before), _)), Some(now)) if before != now);
            sqlx::query("INSERT INTO entra_groups (id, display_name, removed, updated_at, seen_round) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET display_name = COALESCE(excluded.display_name, entra_groups.display_name), removed = excluded.removed, updated_at = excluded.updated_at, seen_round = COALESCE(excluded.seen_round, entra_groups.seen_round)")
                .bind(&g.id)
                .bind(&g.display_name)
                .bind(g.removed as i64)
                .bind(&at)
                .bind(&round)
                .execute(&mut *tx)
                .await
                .map_err(q("upsert group"))?;
            if g.removed || renamed {
                // Removal or rename changes what every member maps to.
                Self::mark_group_dirty(&mut tx, &g.id).await?;
            }
            if g.removed {
                sqlx::query("DELETE FROM memberships WHERE group_id = ?")
                    .bind(&g.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("drop group members"))?;
                continue;
            }
            // Users join in multi-row statements (a big group arrives in
            // slices of hundreds); nested groups one by one, as each is
            // walked for its own members.
            for chunk in g.members_added.chunks(ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO memberships (group_id, member_id, member_type, seen_round) ",
                );
                qb.push_values(chunk, |mut b, m| {
                    b.push_bind(&g.id)
                        .push_bind(m)
                        .push_bind("user")
                        .push_bind(&round);
                });
                qb.push("ON CONFLICT (group_id, member_id) DO UPDATE SET seen_round = COALESCE(excluded.seen_round, memberships.seen_round), member_type = excluded.member_type");
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(q("add members"))?;
                Self::mark_users_dirty(&mut tx, chunk).await?;
            }
            for m in &g.groups_added {
                sqlx::query("INSERT INTO memberships (group_id, member_id, member_type, seen_round) VALUES (?, ?, 'group', ?) ON CONFLICT (group_id, member_id) DO UPDATE SET seen_round = COALESCE(excluded.seen_round, memberships.seen_round), member_type = excluded.member_type")
                    .bind(&g.id)
                    .bind(m)
                    .bind(&round)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("add member"))?;
                Self::mark_group_dirty(&mut tx, m).await?;
            }
            for chunk in g.members_removed.chunks(ROWS_PER_STATEMENT) {
                let mut qb =
                    QueryBuilder::<Sqlite>::new("DELETE FROM memberships WHERE group_id = ");
                qb.push_bind(&g.id);
                qb.push(" AND member_id IN (");
                push_in_list(&mut qb, chunk);
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(q("remove members"))?;
                Self::mark_users_dirty(&mut tx, chunk).await?;
            }
            for m in &g.groups_removed {
                // Mark before the edge goes, while the CTE still reaches them.
                Self::mark_group_dirty(&mut tx, m).await?;
                sqlx::query("DELETE FROM memberships WHERE group_id = ? AND member_id = ?")
                    .bind(&g.id)
                    .bind(m)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("remove member"))?;
            }
        }
        let mut swept = 0;
        if let (Some(r), Some(_)) = (&round, delta) {
            // Memberships a full enumeration did not list are gone.
            sqlx::query("UPDATE entra_users SET dirty = 1 WHERE id IN (SELECT member_id FROM memberships WHERE seen_round IS NULL OR seen_round <> ?)").bind(r).execute(&mut *tx).await.map_err(q("mark swept members"))?;
            let gone: Vec<String> = sqlx::query_scalar("SELECT id FROM entra_groups WHERE removed = 0 AND (seen_round IS NULL OR seen_round <> ?)").bind(r).fetch_all(&mut *tx).await.map_err(q("find swept groups"))?;
            for gid in &gone {
                Self::mark_group_dirty(&mut tx, gid).await?;
                sqlx::query("UPDATE entra_groups SET removed = 1, updated_at = ? WHERE id = ?")
                    .bind(&at)
                    .bind(gid)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("sweep group"))?;
                sqlx::query("DELETE FROM memberships WHERE group_id = ?")
                    .bind(gid)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("sweep group members"))?;
            }
            let res =
                sqlx::query("DELETE FROM memberships WHERE seen_round IS NULL OR seen_round <> ?")
                    .bind(r)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("sweep memberships"))?;
            swept = res.rows_affected() + gone.len() as u64;
            sqlx::query("UPDATE sync_state SET resync_round = NULL WHERE resource = 'groups'")
                .execute(&mut *tx)
                .await
                .map_err(q("end resync"))?;
        }
        Self::save_links(&mut tx, "groups", next, delta).await?;
        tx.commit().await.map_err(q("commit group page"))?;
        Ok(swept)
    }

    /// Group display names per user, nested membership flattened.
    pub(crate) async fn groups_by_user(
        &self,
    ) -> Result<HashMap<String, Vec<(String, String)>>, StoreError> {
        self.groups_of(None).await
    }

    /// [`Self::groups_by_user`] for `only` these users when given (nested
    /// group edges are always read: they are few).
    async fn groups_of(
        &self,
        only: Option<&[String]>,
    ) -> Result<HashMap<String, Vec<(String, String)>>, StoreError> {
        let names: HashMap<String, String> = sqlx::query_as::<_, (String, String)>("SELECT id, display_name FROM entra_groups WHERE removed = 0 AND display_name IS NOT NULL").fetch_all(&self.pool).await.map_err(q("read groups"))?.into_iter().collect();
        let edges: Vec<(String, String, String)> = match only {
            None => sqlx::query_as("SELECT group_id, member_id, member_type FROM memberships")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read memberships"))?,
            Some(users) => {
                let mut edges: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT group_id, member_id, member_type FROM memberships WHERE member_type = 'group'",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(q("read memberships"))?;
                for chunk in users.chunks(ROWS_PER_STATEMENT) {
                    let mut qb = QueryBuilder::<Sqlite>::new(
                        "SELECT group_id, member_id, member_type FROM memberships WHERE member_type <> 'group' AND member_id IN (",
                    );
                    push_in_list(&mut qb, chunk);
                    edges.extend(
                        qb.build_query_as::<(String, String, String)>()
                            .fetch_all(&self.pool)
                            .await
                            .map_err(q("read memberships"))?,
                    );
                }
                edges
            }
        };
        // parents[g] = groups that g is a direct member of.
        let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut direct: HashMap<&str, Vec<&str>> = HashMap::new();
        for (g, m, kind) in &edges {
            if !names.contains_key(g) {
                continue;
            }
            if kind == "group" {
                parents.entry(m.as_str()).or_default().push(g.as_str());
            } else {
                direct.entry(m.as_str()).or_default().push(g.as_str());
            }
        }
        let mut out = HashMap::new();
        for (user, groups) in direct {
            let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
            let mut stack: Vec<&str> = groups;
            while let Some(g) = stack.pop() {
                if seen.insert(g) {
                    stack.extend(parents.get(g).into_iter().flatten().copied());
                }
            }
            let mut list: Vec<(String, String)> = seen
                .iter()
                .filter_map(|g| Some((g.to_string(), names.get(*g)?.clone())))
                .collect();
            list.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
            out.insert(user.to_string(), list);
        }
        Ok(out)
    }

    /// Every user with work owed, with group names (nested flattened).
    pub async fn dirty_users(&self) -> Result<Vec<DirtyUser>, StoreError> {
        self.users_where("dirty = 1").await
    }

    /// Ids of the users with work owed, in id order (a large cycle loads
    /// them a chunk at a time with [`Self::users_in`]).
    pub async fn dirty_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT id FROM entra_users WHERE dirty = 1 ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(q("read dirty ids"))
    }

    /// These users (any that still exist), with their groups, in id order.
    pub async fn users_in(&self, ids: &[String]) -> Result<Vec<DirtyUser>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT id, data, removed, attempts FROM entra_users WHERE id IN (",
            );
            push_in_list(&mut qb, chunk);
            qb.push(" ORDER BY id");
            rows.extend(
                qb.build()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(q("read users"))?,
            );
        }
        self.dirty_from_rows(rows, Some(ids)).await
    }

    /// Every user provisor manages (linked to a Salesforce user), whether
    /// or not work is owed (for reconciliation).
    pub async fn managed_users(&self) -> Result<Vec<DirtyUser>, StoreError> {
        self.users_where("id IN (SELECT entra_id FROM links)").await
    }

    /// Marks every managed user for planning (a scheduled reconcile).
    pub async fn mark_managed_dirty(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE entra_users SET dirty = 1 WHERE dirty = 0 AND id IN (SELECT entra_id FROM links) AND id NOT IN (SELECT entra_id FROM dead_letters)",
        )
        .execute(&self.pool)
        .await
        .map_err(q("mark managed dirty"))?;
        Ok(r.rows_affected())
    }

    async fn users_where(&self, condition: &'static str) -> Result<Vec<DirtyUser>, StoreError> {
        // `condition` is one of this module's constants, never input.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, data, removed, attempts FROM entra_users WHERE {condition} ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(q("read users"))?;
        self.dirty_from_rows(rows, None).await
    }

    async fn dirty_from_rows(
        &self,
        rows: Vec<sqlx::sqlite::SqliteRow>,
        only: Option<&[String]>,
    ) -> Result<Vec<DirtyUser>, StoreError> {
        let mut groups = if rows.is_empty() {
            HashMap::new()
        } else {
            self.groups_of(only).await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0);
            let data: String = r.get(1);
            let removed: Option<String> = r.get(2);
            let attempts: i64 = r.get(3);
            let mut user: EntraUser =
                serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
                    table: "entra_users",
                    id: id.clone(),
                    detail: e.to_string(),
                })?;
            user.removed = match removed.as_deref() {
                Some("hardDeleted") => Some(Removal::HardDeleted),
                Some(_) => Some(Removal::SoftDeleted),
                None => None,
            };
            let refs = groups.remove(&id).unwrap_or_default();
            let mut names: Vec<String> = refs.iter().map(|(_, n)| n.clone()).collect();
            names.dedup();
            out.push(DirtyUser {
                user,
                groups: names,
                group_refs: refs,
                attempts: attempts.max(0) as u32,
            });
        }
        Ok(out)
    }

    /// Groups in the mirror that are not removed: (id, display name), sorted.
    pub async fn mirror_groups(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        sqlx::query_as("SELECT id, display_name FROM entra_groups WHERE removed = 0 ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(q("read groups"))
    }

    /// The mirror: every user not removed, and direct memberships as
    /// (group id, member id, member type), sorted (for checks and tests).
    pub async fn mirror(
        &self,
    ) -> Result<(Vec<EntraUser>, Vec<(String, String, String)>), StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, data FROM entra_users WHERE removed IS NULL ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read mirror"))?;
        let mut users = Vec::with_capacity(rows.len());
        for (id, data) in rows {
            users.push(
                serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
                    table: "entra_users",
                    id,
                    detail: e.to_string(),
                })?,
            );
        }
        // As Graph lists members: deleted users are not members (a restore
        // brings their memberships back), groups are.
        let members = sqlx::query_as(
            "SELECT m.group_id, m.member_id, m.member_type FROM memberships m LEFT JOIN entra_users u ON u.id = m.member_id WHERE m.member_type = 'group' OR (u.id IS NOT NULL AND u.removed IS NULL) ORDER BY m.group_id, m.member_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read memberships"))?;
        Ok((users, members))
    }

    /// Number of users still owed work.
    pub async fn dirty_count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM entra_users WHERE dirty = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(q("count dirty"))
    }

    /// All links, Entra id → Salesforce id.
    pub async fn links(&self) -> Result<HashMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT entra_id, sf_id FROM links")
            .fetch_all(&self.pool)
            .await
            .map_err(q("read links"))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records the last known Salesforce state of users: (Salesforce id,
    /// Entra id, record as JSON).
    pub async fn remember_sf_users(
        &self,
        rows: &[(String, String, String)],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO sf_users (sf_id, entra_id, data, seen_at) ",
            );
            qb.push_values(chunk, |mut b, (sf, entra, data)| {
                b.push_bind(sf)
                    .push_bind(entra)
                    .push_bind(data)
                    .push_bind(&at);
            });
            qb.push("ON CONFLICT (sf_id) DO UPDATE SET entra_id = excluded.entra_id, data = excluded.data, seen_at = excluded.seen_at");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("save Salesforce state"))?;
        }
        tx.commit().await.map_err(q("commit Salesforce state"))?;
        Ok(())
    }

    /// The last known Salesforce state of an Entra user's account:
    /// (Salesforce id, record, when it was seen).
    pub async fn sf_user_of(
        &self,
        entra_id: &str,
    ) -> Result<Option<(String, serde_json::Value, String)>, StoreError> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT sf_id, data, seen_at FROM sf_users WHERE entra_id = ? ORDER BY seen_at DESC LIMIT 1",
        )
        .bind(entra_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("read Salesforce state"))?;
        row.map(|(sf, data, at)| {
            let v = serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
                table: "sf_users",
                id: sf.clone(),
                detail: e.to_string(),
            })?;
            Ok((sf, v, at))
        })
        .transpose()
    }

    /// How many Entra users are linked (managed).
    pub async fn link_count(&self) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links")
            .fetch_one(&self.pool)
            .await
            .map_err(q("count links"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Links of these Entra users (Entra id -> Salesforce id).
    pub async fn links_of(
        &self,
        entra_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        self.pairs_where(
            "SELECT entra_id, sf_id FROM links WHERE entra_id IN (",
            entra_ids,
        )
        .await
    }

    /// Which Entra users these Salesforce users are linked to (Salesforce
    /// id -> Entra id).
    pub async fn linked_to(
        &self,
        sf_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        self.pairs_where("SELECT sf_id, entra_id FROM links WHERE sf_id IN (", sf_ids)
            .await
    }

    /// Two-column rows of `head` + an `IN` list of `values` + `)`.
    async fn pairs_where(
        &self,
        head: &'static str,
        values: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let mut out = HashMap::new();
        for chunk in values.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(head);
            push_in_list(&mut qb, chunk);
            let rows: Vec<(String, String)> = qb
                .build_query_as()
                .fetch_all(&self.pool)
                .await
                .map_err(q("read links"))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Records a confirmed link.
    pub async fn set_link(
        &self,
        entra_id: &str,
        sf_id: &str,
        matched_by: &str,
    ) -> Result<(), StoreError> {
        self.set_links(&[(entra_id, sf_id, matched_by)]).await
    }

    /// Records confirmed links (Entra id, Salesforce id, matched by) in one
    /// transaction.
    pub async fn set_links(&self, links: &[(&str, &str, &str)]) -> Result<(), StoreError> {
        if links.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        insert_links(&mut tx, links, &now()).await?;
        tx.commit().await.map_err(q("commit links"))?;
        Ok(())
    }

    /// Records that a user waits (for a licence seat); it stays dirty and
    /// spends no attempt. Returns true when it was not waiting before.
    pub async fn mark_waiting(&self, entra_id: &str, reason: &str) -> Result<bool, StoreError> {
        let before: Option<Option<String>> =
            sqlx::query_scalar("SELECT waiting FROM entra_users WHERE id = ?")
                .bind(entra_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("read waiting"))?;
        sqlx::query("UPDATE entra_users SET waiting = ? WHERE id = ?")
            .bind(reason)
            .bind(entra_id)
            .execute(&self.pool)
            .await
            .map_err(q("mark waiting"))?;
        Ok(before.flatten().is_none())
    }

    /// Access provisor granted, per Entra user: (kind, name) -> assignment id.
    pub async fn managed_grants(&self) -> Result<HashMap<String, ManagedGrants>, StoreError> {
        let rows: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT entra_id, access, name, assignment_id FROM managed_grants")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read managed grants"))?;
        Ok(Self::grants_from(rows))
    }

    /// [`Self::managed_grants`] of these Entra users only.
    pub async fn managed_grants_of(
        &self,
        entra_ids: &[String],
    ) -> Result<HashMap<String, ManagedGrants>, StoreError> {
        let mut rows: Vec<(String, String, String, String)> = Vec::new();
        for chunk in entra_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT entra_id, access, name, assignment_id FROM managed_grants WHERE entra_id IN (",
            );
            push_in_list(&mut qb, chunk);
            rows.extend(
                qb.build_query_as::<(String, String, String, String)>()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(q("read managed grants"))?,
            );
        }
        Ok(Self::grants_from(rows))
    }

    fn grants_from(rows: Vec<(String, String, String, String)>) -> HashMap<String, ManagedGrants> {
        let mut out: HashMap<String, ManagedGrants> = HashMap::new();
        for (e, access, name, id) in rows {
            // A kind this build does not know (written by a newer one) is
            // left alone rather than guessed at.
            if let Some(access) = Access::from_key(&access) {
                out.entry(e).or_default().insert((access, name), id);
            }
        }
        out
    }

    /// Records grants provisor made, of one kind, in one transaction:
    /// (Entra id, name, assignment id).
    pub async fn add_managed_grants(
        &self,
        access: Access,
        grants: &[(&str, &str, &str)],
    ) -> Result<(), StoreError> {
        if grants.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        for chunk in grants.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO managed_grants (entra_id, access, name, assignment_id, granted_at) ",
            );
            qb.push_values(chunk, |mut b, (entra_id, name, assignment_id)| {
                b.push_bind(*entra_id)
                    .push_bind(access.key())
                    .push_bind(*name)
                    .push_bind(*assignment_id)
                    .push_bind(&at);
            });
            qb.push("ON CONFLICT (entra_id, access, name) DO UPDATE SET assignment_id = excluded.assignment_id, granted_at = excluded.granted_at");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("save managed grant"))?;
        }
        tx.commit().await.map_err(q("commit managed grants"))?;
        Ok(())
    }

    /// Forgets a grant provisor revoked.
    pub async fn remove_managed_grant(
        &self,
        entra_id: &str,
        access: Access,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM managed_grants WHERE entra_id = ? AND access = ? AND name = ?")
            .bind(entra_id)
            .bind(access.key())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(q("forget managed grant"))?;
        Ok(())
    }

    /// Counts a failed attempt; after `max_attempts` the user is parked in
    /// the dead-letter list (and stops being retried). Returns true if parked.
    pub async fn mark_failed(
        &self,
        entra_id: &str,
        error: &str,
        max_attempts: u32,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let attempts: i64 = sqlx::query_scalar("UPDATE entra_users SET attempts = attempts + 1, last_error = ? WHERE id = ? RETURNING attempts").bind(error).bind(entra_id).fetch_optional(&mut *tx).await.map_err(q("count failure"))?.unwrap_or(1);
        let parked = attempts >= i64::from(max_attempts);
        if parked {
            sqlx::query("UPDATE entra_users SET dirty = 0 WHERE id = ?")
                .bind(entra_id)
                .execute(&mut *tx)
                .await
                .map_err(q("park user"))?;
            sqlx::query("INSERT INTO dead_letters (entra_id, reason, attempts, parked_at) VALUES (?, ?, ?, ?) ON CONFLICT (entra_id) DO UPDATE SET reason = excluded.reason, attempts = excluded.attempts, parked_at = excluded.parked_at")
                .bind(entra_id)
                .bind(error)
                .bind(attempts)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(q("dead-letter user"))?;
        }
        tx.commit().await.map_err(q("commit failure"))?;
        Ok(parked)
    }

    /// The dead-letter list.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rows =
            sqlx::query("SELECT entra_id, reason, attempts FROM dead_letters ORDER BY entra_id")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read dead letters"))?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetter {
                entra_id: r.get(0),
                reason: r.get(1),
                attempts: r.get::<i64, _>(2).max(0) as u32,
            })
            .collect())
    }

    /// Takes a user off the dead-letter list: with `retry` it is planned
    /// again on the next cycle with fresh attempts; without, it stays as it
    /// is until Entra changes it. An unknown user is an error naming it.
    pub async fn release_dead_letter(&self, entra_id: &str, retry: bool) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM dead_letters WHERE entra_id = ?")
            .bind(entra_id)
            .execute(&self.pool)
            .await
            .map_err(q("release dead letter"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Unknown {
                what: "dead-lettered user",
                id: entra_id.to_string(),
            });
        }
        if retry {
            sqlx::query("UPDATE entra_users SET dirty = 1, attempts = 0 WHERE id = ?")
                .bind(entra_id)
                .execute(&self.pool)
                .await
                .map_err(q("re-arm user"))?;
        }
        Ok(())
    }

    /// Journals a batch of actions before it is sent, in one transaction:
    /// (Entra id, action kind, action). Returns the outbox ids in order.
    pub async fn journal_many(
        &self,
        cycle: &str,
        entries: &[(&str, &str, serde_json::Value)],
    ) -> Result<Vec<i64>, StoreError> {
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let mut ids = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outbox (cycle, entra_id, kind, payload, status, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, (entra_id, kind, payload)| {
                b.push_bind(cycle)
                    .push_bind(*entra_id)
                    .push_bind(*kind)
                    .push_bind(payload.to_string())
                    .push_bind("pending")
                    .push_bind(&at)
                    .push_bind(&at);
            });
            qb.push("RETURNING id");
            let mut got: Vec<i64> = qb
                .build_query_scalar()
                .fetch_all(&mut *tx)
                .await
                .map_err(q("journal action"))?;
            // One INSERT gives its rows ascending rowids in VALUES order;
            // RETURNING does not promise to list them in that order.
            got.sort_unstable();
            if got.len() != chunk.len() {
                return Err(StoreError::Corrupt {
                    table: "outbox",
                    id: cycle.to_string(),
                    detail: format!("journaled {} actions, got {} ids", chunk.len(), got.len()),
                });
            }
            ids.extend(got);
        }
        tx.commit().await.map_err(q("commit journal"))?;
        Ok(ids)
    }

    /// Records what happened to a batch of journaled actions (outbox id,
    /// status, result), the links their creations made (Entra id,
    /// Salesforce id) and the email changes now pending (Entra id, email),
    /// in one transaction: a crash keeps all of it or none, and none means
    /// the actions stay pending and are looked up again after recovery.
    pub async fn settle_many(
        &self,
        settled: &[(i64, &str, String)],
        links: &[(&str, String)],
        pending_emails: &[(&str, String)],
    ) -> Result<(), StoreError> {
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        for chunk in settled.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "UPDATE outbox SET status = v.column2, result = v.column3, updated_at = ",
            );
            qb.push_bind(&at);
            qb.push(" FROM (");
            qb.push_values(chunk, |mut b, (id, status, result)| {
                b.push_bind(*id).push_bind(*status).push_bind(result);
            });
            qb.push(") AS v WHERE outbox.id = v.column1");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("settle action"))?;
        }
        let created: Vec<(&str, &str, &str)> = links
            .iter()
            .map(|(entra_id, sf_id)| (*entra_id, sf_id.as_str(), "created"))
            .collect();
        insert_links(&mut tx, &created, &at).await?;
        for chunk in pending_emails.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO pending_emails (entra_id, email, requested_at) ",
            );
            qb.push_values(chunk, |mut b, (entra_id, email)| {
                b.push_bind(*entra_id).push_bind(email).push_bind(&at);
            });
            qb.push("ON CONFLICT (entra_id) DO UPDATE SET email = excluded.email, requested_at = excluded.requested_at");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("save pending email"))?;
        }
        tx.commit().await.map_err(q("commit settlement"))?;
        Ok(())
    }

    /// Marks users clean (converged) in one transaction.
    pub async fn mark_clean_many(&self, entra_ids: &[&str]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        for chunk in entra_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "UPDATE entra_users SET dirty = 0, attempts = 0, last_error = NULL, waiting = NULL WHERE id IN (",
            );
            push_in_list(&mut qb, chunk);
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("mark clean"))?;
        }
        tx.commit().await.map_err(q("commit mark clean"))?;
        Ok(())
    }

    /// After a crash: actions journaled but never settled may or may not
    /// have reached Salesforce. They become `unknown`; their users are
    /// still dirty, so the next plan looks them up by key before acting.
    pub async fn recover_outbox(&self) -> Result<u64, StoreError> {
        let r = sqlx::query("UPDATE outbox SET status = 'unknown', result = 'interrupted before its result was recorded', updated_at = ? WHERE status = 'pending'").bind(now()).execute(&self.pool).await.map_err(q("recover outbox"))?;
        Ok(r.rows_affected())
    }

    /// Deactivations applied since `since` (RFC 3339), from the outbox: the
    /// sliding windows of the deletion threshold count these.
    pub async fn deactivations_since(&self, since: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'deactivate' AND status = 'done' AND updated_at >= ?",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(q("count deactivations"))
    }

    /// Stages deactivations in batch `batch`; users already staged keep
    /// their batch and status. Returns how many were new.
    pub async fn stage_deactivations(
        &self,
        batch: &str,
        rows: &[(String, Option<String>)],
        reason: &str,
    ) -> Result<usize, StoreError> {
        let at = now();
        let mut new = 0;
        for (entra_id, sf_id) in rows {
            let r = sqlx::query("INSERT INTO staged_deactivations (entra_id, sf_id, batch, reason, status, staged_at) VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT (entra_id) DO NOTHING")
                .bind(entra_id)
                .bind(sf_id)
                .bind(batch)
                .bind(reason)
                .bind(&at)
                .execute(&self.pool)
                .await
                .map_err(q("stage deactivation"))?;
            new += r.rows_affected() as usize;
        }
        Ok(new)
    }

    /// Staged deactivations: (entra id, sf id, batch, reason, status, staged at).
    pub async fn staged_deactivations(&self) -> Result<Vec<StagedDeactivation>, StoreError> {
        let rows: Vec<(String, Option<String>, String, String, String, String)> = sqlx::query_as(
            "SELECT entra_id, sf_id, batch, reason, status, staged_at FROM staged_deactivations ORDER BY batch, entra_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read staged deactivations"))?;
        Ok(rows
            .into_iter()
            .map(
                |(entra_id, sf_id, batch, reason, status, staged_at)| StagedDeactivation {
                    entra_id,
                    sf_id,
                    batch,
                    reason,
                    status,
                    staged_at,
                },
            )
            .collect())
    }

    /// Approves or rejects the pending deactivations of `batch` (all
    /// batches when `None`); returns how many. An unknown batch is an error
    /// naming it.
    pub async fn decide_staged(
        &self,
        batch: Option<&str>,
        approve: bool,
    ) -> Result<usize, StoreError> {
        let status = if approve { "approved" } else { "rejected" };
        let r = match batch {
            Some(b) => {
                let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM staged_deactivations WHERE batch = ?")
                    .bind(b)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(q("read staged batch"))?;
                if known == 0 {
                    return Err(StoreError::Unknown {
                        what: "staged deactivation batch",
                        id: b.to_string(),
                    });
                }
                sqlx::query("UPDATE staged_deactivations SET status = ?, decided_at = ? WHERE batch = ? AND status = 'pending'")
                    .bind(status)
                    .bind(now())
                    .bind(b)
                    .execute(&self.pool)
                    .await
            }
            None => {
                sqlx::query("UPDATE staged_deactivations SET status = ?, decided_at = ? WHERE status = 'pending'")
                    .bind(status)
                    .bind(now())
                    .execute(&self.pool)
                    .await
            }
        }
        .map_err(q("decide staged deactivations"))?;
        Ok(r.rows_affected() as usize)
    }

    /// Forgets staged deactivations that were carried out or no longer apply.
    pub async fn clear_staged(&self, entra_ids: &[String]) -> Result<(), StoreError> {
        for id in entra_ids {
            sqlx::query("DELETE FROM staged_deactivations WHERE entra_id = ?")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(q("clear staged deactivation"))?;
        }
        Ok(())
    }

    /// Opens (or refreshes) the review of a user's match. A decided
    /// review is left as decided.
    pub async fn open_review(
        &self,
        entra_id: &str,
        reason: &str,
        candidates: &[String],
    ) -> Result<(), StoreError> {
        let c = serde_json::to_string(candidates).unwrap_or_else(|_| "[]".into());
        sqlx::query("INSERT INTO reviews (entra_id, reason, candidates, status, created_at) VALUES (?, ?, ?, 'open', ?) ON CONFLICT (entra_id) DO UPDATE SET reason = excluded.reason, candidates = excluded.candidates WHERE reviews.status = 'open'")
            .bind(entra_id)
            .bind(reason)
            .bind(&c)
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(q("open review"))?;
        Ok(())
    }

    /// Every review, oldest first.
    pub async fn reviews(&self) -> Result<Vec<Review>, StoreError> {
        let rows: Vec<(String, String, String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT entra_id, reason, candidates, status, sf_id, created_at FROM reviews ORDER BY created_at, entra_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read reviews"))?;
        Ok(rows
            .into_iter()
            .map(
                |(entra_id, reason, candidates, status, sf_id, created_at)| Review {
                    candidates: serde_json::from_str(&candidates).unwrap_or_default(),
                    entra_id,
                    reason,
                    status,
                    sf_id,
                    created_at,
                },
            )
            .collect())
    }

    /// One review; an unknown user is an error naming it.
    pub async fn review(&self, entra_id: &str) -> Result<Review, StoreError> {
        self.reviews()
            .await?
            .into_iter()
            .find(|r| r.entra_id == entra_id)
            .ok_or_else(|| StoreError::Unknown {
                what: "review for Entra user",
                id: entra_id.to_string(),
            })
    }

    /// Resolves a review: `Some(sf_id)` links the user to that account,
    /// `None` rejects the candidates (the user is created anew). The user
    /// is planned again on the next cycle.
    pub async fn decide_review(
        &self,
        entra_id: &str,
        link: Option<&str>,
    ) -> Result<(), StoreError> {
        self.review(entra_id).await?;
        let status = if link.is_some() { "linked" } else { "rejected" };
        sqlx::query("UPDATE reviews SET status = ?, sf_id = ?, decided_at = ? WHERE entra_id = ?")
            .bind(status)
            .bind(link)
            .bind(now())
            .bind(entra_id)
            .execute(&self.pool)
            .await
            .map_err(q("decide review"))?;
        if let Some(sf) = link {
            self.set_link(entra_id, sf, "review").await?;
        }
        sqlx::query("UPDATE entra_users SET dirty = 1, waiting = NULL WHERE id = ?")
            .bind(entra_id)
            .execute(&self.pool)
            .await
            .map_err(q("re-plan reviewed user"))?;
        Ok(())
    }

    /// The id of a mirrored user, by object id or (case-insensitive) UPN.
    pub async fn find_user(&self, who: &str) -> Result<Option<String>, StoreError> {
        let by_id: Option<String> = sqlx::query_scalar("SELECT id FROM entra_users WHERE id = ?")
            .bind(who)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("find user"))?;
        if by_id.is_some() {
            return Ok(by_id);
        }
        sqlx::query_scalar(
            "SELECT id FROM entra_users WHERE lower(json_extract(data, '$.userPrincipalName')) = lower(?)",
        )
        .bind(who)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("find user by UPN"))
    }

    /// Marks one user for planning.
    pub async fn mark_dirty(&self, entra_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE entra_users SET dirty = 1 WHERE id = ?")
            .bind(entra_id)
            .execute(&self.pool)
            .await
            .map_err(q("mark dirty"))?;
        Ok(())
    }

    /// Email changes sent and waiting for confirmation: user -> (address,
    /// when it was requested, RFC 3339).
    pub async fn pending_emails(&self) -> Result<HashMap<String, (String, String)>, StoreError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT entra_id, email, requested_at FROM pending_emails")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read pending emails"))?;
        Ok(rows.into_iter().map(|(e, m, at)| (e, (m, at))).collect())
    }

    /// A remembered value.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read setting"))
    }

    /// Remembers a value.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
            .bind(key)
            .bind(value)
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(q("save setting"))?;
        Ok(())
    }

    /// Marks every user in the mirror for planning (a new rule pack version
    /// re-plans everyone, as Entra does a full sync after a mapping
    /// change); parked users get fresh attempts. Returns how many.
    pub async fn mark_all_dirty(&self) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM dead_letters")
            .execute(&self.pool)
            .await
            .map_err(q("re-arm parked users"))?;
        let r = sqlx::query(
            "UPDATE entra_users SET dirty = 1, attempts = 0 WHERE dirty = 0 OR attempts > 0",
        )
        .execute(&self.pool)
        .await
        .map_err(q("mark all dirty"))?;
        Ok(r.rows_affected())
    }

    /// Outbox rows by status (for reports and tests).
    pub async fn outbox_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM outbox GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(q("count outbox"))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Appends audit events, chaining each to the previous row's hash.
    pub async fn append_audit(&self, cycle: &str, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let mut prev: String =
            sqlx::query_scalar("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("read audit head"))?
                .unwrap_or_else(|| audit::GENESIS.to_string());
        // (at, prev_hash, hash) per event: the chain is computed first,
        // then written in multi-row statements (in order, so seq follows it).
        let mut chained = Vec::with_capacity(events.len());
        for ev in events {
            let at = now();
            let hash = audit::chain_hash(&prev, &at, cycle, ev);
            chained.push((ev, at, std::mem::replace(&mut prev, hash.clone()), hash));
        }
        for chunk in chained.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO audit (at, cycle, event, entra_id, sf_id, detail, prev_hash, hash) ",
            );
            qb.push_values(chunk, |mut b, (ev, at, prev, hash)| {
                b.push_bind(at)
                    .push_bind(cycle)
                    .push_bind(&ev.event)
                    .push_bind(&ev.entra_id)
                    .push_bind(&ev.sf_id)
                    .push_bind(ev.detail.to_string())
                    .push_bind(prev)
                    .push_bind(hash);
            });
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("append audit"))?;
        }
        tx.commit().await.map_err(q("commit audit"))?;
        Ok(())
    }

    /// The last `n` audit rows, oldest first (all rows when `n` is None).
    pub async fn audit_rows(&self, n: Option<i64>) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query("SELECT seq, at, cycle, event, entra_id, sf_id, detail, prev_hash, hash FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?) ORDER BY seq")
            .bind(n.unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(q("read audit"))?;
        rows.into_iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let detail: String = r.get(6);
                Ok(AuditRow {
                    seq,
                    at: r.get(1),
                    cycle: r.get(2),
                    event: r.get(3),
                    entra_id: r.get(4),
                    sf_id: r.get(5),
                    detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt {
                        table: "audit",
                        id: seq.to_string(),
                        detail: e.to_string(),
                    })?,
                    prev_hash: r.get(7),
                    hash: r.get(8),
                })
            })
            .collect()
    }
}
