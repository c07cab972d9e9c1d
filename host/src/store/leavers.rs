//! Leavers from their freeze to their deactivation: who is frozen but
//! still active (holding a seat), what blocks their deactivation and when
//! it is tried again, and the seats released once they are deactivated.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{ROWS_PER_STATEMENT, Store, StoreError, now, q};

/// Why a leaver's deactivation waits, as last seen.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BlockerState {
    pub kind: String,
    pub message: String,
    pub fix: Option<String>,
    pub detail: serde_json::Value,
    /// Org configuration: tried again on a back-off, not every cycle.
    pub org_config: bool,
    pub tries: u32,
    pub since: String,
    /// When it is tried again; `None`: at the next cycle.
    pub next_try: Option<String>,
}

/// A leaver provisor froze and has not deactivated yet.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpenLeaver {
    pub entra_id: String,
    pub sf_id: String,
    /// The Entra user's UPN, when the mirror still has it.
    pub upn: Option<String>,
    pub frozen_at: String,
    pub blocker: Option<BlockerState>,
}

/// A blocker to record for one leaver.
#[derive(Debug, Clone)]
pub struct NewBlocker<'a> {
    pub entra_id: &'a str,
    pub sf_id: &'a str,
    pub kind: &'a str,
    pub message: &'a str,
    pub fix: Option<&'a str>,
    pub detail: &'a serde_json::Value,
    pub org_config: bool,
}

impl Store {
    /// Leavers frozen (Entra id, Salesforce id); one already listed keeps
    /// its first freeze time.
    pub async fn leavers_frozen(&self, rows: &[(&str, &str)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO leavers (entra_id, sf_id, frozen_at) ");
            qb.push_values(chunk, |mut b, (e, s)| {
                b.push_bind(*e).push_bind(*s).push_bind(&at);
            });
            qb.push(" ON CONFLICT (entra_id) DO UPDATE SET sf_id = excluded.sf_id, deactivated_at = NULL");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("record frozen leavers"))?;
        }
        tx.commit().await.map_err(q("commit frozen leavers"))
    }

    /// Leavers deactivated: no longer holding a seat, nothing blocks them.
    pub async fn leavers_deactivated(&self, rows: &[(&str, &str)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO leavers (entra_id, sf_id, frozen_at, deactivated_at) ",
            );
            qb.push_values(chunk, |mut b, (e, s)| {
                b.push_bind(*e).push_bind(*s).push_bind(&at).push_bind(&at);
            });
            qb.push(
                " ON CONFLICT (entra_id) DO UPDATE SET deactivated_at = excluded.deactivated_at, \
                 blocker_kind = NULL, blocker_message = NULL, blocker_fix = NULL, \
                 blocker_detail = NULL, org_config = 0, tries = 0, blocked_since = NULL, next_try = NULL",
            );
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(q("record deactivated leavers"))?;
        }
        tx.commit().await.map_err(q("commit deactivated leavers"))
    }

    /// Leavers found deactivated (by someone else): closed as of now, if
    /// listed and open.
    pub async fn leavers_closed(&self, entra_ids: &[&str]) -> Result<(), StoreError> {
        self.stamp(
            "UPDATE leavers SET deactivated_at = ",
            ", blocker_kind = NULL, blocker_message = NULL, blocker_fix = NULL, blocker_detail = NULL, next_try = NULL WHERE deactivated_at IS NULL AND entra_id IN (",
            entra_ids,
            "close leavers",
        )
        .await
    }

    /// `head` now `tail` (ending in `entra_id IN (`) for these users, in
    /// one statement per [`ROWS_PER_STATEMENT`], all with the same time.
    async fn stamp(
        &self,
        head: &str,
        tail: &str,
        entra_ids: &[&str],
        what: &'static str,
    ) -> Result<(), StoreError> {
        let at = now();
        for chunk in entra_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(head);
            qb.push_bind(&at);
            qb.push(tail);
            super::push_in_list(&mut qb, chunk);
            qb.build().execute(&self.pool).await.map_err(q(what))?;
        }
        Ok(())
    }

    /// Users back (reactivated or unfrozen): no longer leavers.
    pub async fn leavers_returned(&self, entra_ids: &[&str]) -> Result<(), StoreError> {
        for chunk in entra_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM leavers WHERE entra_id IN (");
            super::push_in_list(&mut qb, chunk);
            qb.build()
                .execute(&self.pool)
                .await
                .map_err(q("forget returned leavers"))?;
        }
        Ok(())
    }

    /// Records a blocker; `next_try(tries)` says when to try again after
    /// this many refusals. Returns the tries so far and whether the
    /// blocker is new or changed (worth an audit event).
    pub async fn record_blocker(
        &self,
        b: &NewBlocker<'_>,
        next_try: impl FnOnce(u32) -> Option<String>,
    ) -> Result<(u32, bool), StoreError> {
        let at = now();
        let mut tx = self.write_tx().await.map_err(q("begin"))?;
        let before: Option<(Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT blocker_kind, blocker_detail, tries FROM leavers WHERE entra_id = ?",
        )
        .bind(b.entra_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("read blocker"))?;
        let detail = b.detail.to_string();
        let changed = before.as_ref().is_none_or(|(kind, d, _)| {
            kind.as_deref() != Some(b.kind) || d.as_deref() != Some(detail.as_str())
        });
        let tries = before
            .filter(|(kind, _, _)| kind.as_deref() == Some(b.kind))
            .map_or(0, |(_, _, t)| t.max(0) as u32)
            + 1;
        sqlx::query(
            "INSERT INTO leavers (entra_id, sf_id, frozen_at, blocker_kind, blocker_message, blocker_fix, \
             blocker_detail, org_config, tries, blocked_since, next_try) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (entra_id) DO UPDATE SET sf_id = excluded.sf_id, \
             blocked_since = CASE WHEN leavers.blocker_kind = excluded.blocker_kind THEN leavers.blocked_since ELSE excluded.blocked_since END, \
             blocker_kind = excluded.blocker_kind, blocker_message = excluded.blocker_message, \
             blocker_fix = excluded.blocker_fix, blocker_detail = excluded.blocker_detail, \
             org_config = excluded.org_config, tries = excluded.tries, next_try = excluded.next_try",
        )
        .bind(b.entra_id)
        .bind(b.sf_id)
        .bind(&at)
        .bind(b.kind)
        .bind(b.message)
        .bind(b.fix)
        .bind(&detail)
        .bind(b.org_config)
        .bind(i64::from(tries))
        .bind(&at)
        .bind(next_try(tries))
        .execute(&mut *tx)
        .await
        .map_err(q("record blocker"))?;
        tx.commit().await.map_err(q("commit blocker"))?;
        Ok((tries, changed))
    }

    /// The blockers of these leavers, by Entra id.
    pub async fn blockers_of(
        &self,
        entra_ids: &[String],
    ) -> Result<HashMap<String, BlockerState>, StoreError> {
        let mut out = HashMap::new();
        for chunk in entra_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT entra_id, blocker_kind, blocker_message, blocker_fix, blocker_detail, org_config, \
                 tries, blocked_since, next_try FROM leavers WHERE blocker_kind IS NOT NULL AND entra_id IN (",
            );
            super::push_in_list(&mut qb, chunk);
            for r in qb
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(q("read blockers"))?
            {
                out.insert(r.get::<String, _>(0), blocker_from(&r, 1));
            }
        }
        Ok(out)
    }

    /// Blocked deactivations are tried at the next cycle, whatever their
    /// back-off (an admin fixed the org): one leaver by Entra id, or all.
    /// Returns how many.
    pub async fn retry_blocked(&self, entra_id: Option<&str>) -> Result<u64, StoreError> {
        let r = match entra_id {
            Some(id) => sqlx::query(
                "UPDATE leavers SET next_try = NULL WHERE blocker_kind IS NOT NULL AND entra_id = ?",
            )
            .bind(id)
            .execute(&self.pool)
            .await,
            None => sqlx::query("UPDATE leavers SET next_try = NULL WHERE blocker_kind IS NOT NULL")
                .execute(&self.pool)
                .await,
        }
        .map_err(q("re-arm blocked leavers"))?;
        if let Some(id) = entra_id
            && r.rows_affected() == 0
        {
            return Err(StoreError::Unknown {
                what: "leaver with a blocked deactivation",
                id: id.to_string(),
            });
        }
        Ok(r.rows_affected())
    }

    /// Leavers frozen and not deactivated (they still hold a seat).
    pub async fn open_leavers(&self) -> Result<Vec<OpenLeaver>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.entra_id, l.sf_id, l.frozen_at, l.blocker_kind, l.blocker_message, l.blocker_fix, \
             l.blocker_detail, l.org_config, l.tries, l.blocked_since, l.next_try, \
             json_extract(u.data, '$.userPrincipalName') \
             FROM leavers l LEFT JOIN entra_users u ON u.id = l.entra_id \
             WHERE l.deactivated_at IS NULL ORDER BY l.frozen_at, l.entra_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read open leavers"))?;
        Ok(rows
            .iter()
            .map(|r| OpenLeaver {
                entra_id: r.get(0),
                sf_id: r.get(1),
                frozen_at: r.get(2),
                blocker: r
                    .get::<Option<String>, _>(3)
                    .is_some()
                    .then(|| blocker_from(r, 3)),
                upn: r.get(11),
            })
            .collect())
    }

    /// Leavers frozen and not deactivated whose sessions and tokens are
    /// not ended yet: (Entra id, Salesforce id).
    pub async fn sessions_to_end(&self) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT entra_id, sf_id FROM leavers WHERE deactivated_at IS NULL AND sessions_ended_at IS NULL ORDER BY entra_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read leavers with sessions"))
    }

    /// Leavers whose sessions and tokens are ended.
    pub async fn sessions_ended(&self, entra_ids: &[&str]) -> Result<(), StoreError> {
        self.stamp(
            "UPDATE leavers SET sessions_ended_at = ",
            " WHERE entra_id IN (",
            entra_ids,
            "record ended sessions",
        )
        .await
    }

    /// The Salesforce ids of leavers frozen and not deactivated.
    pub async fn open_leaver_sf_ids(
        &self,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT sf_id FROM leavers WHERE deactivated_at IS NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(q("read open leavers"))?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    /// Deactivated leavers with something left to release (Entra id,
    /// Salesforce id, whether their user licence seat is not yet counted):
    /// access provisor granted, or the seat of the last deactivation.
    pub async fn leavers_to_release(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT l.entra_id, l.sf_id, NOT EXISTS (SELECT 1 FROM released_seats r WHERE r.entra_id = l.entra_id \
             AND r.kind = 'user_licence' AND r.released_at >= l.deactivated_at) FROM leavers l \
             WHERE l.deactivated_at IS NOT NULL AND (EXISTS (SELECT 1 FROM managed_grants g WHERE g.entra_id = l.entra_id) \
             OR NOT EXISTS (SELECT 1 FROM released_seats r WHERE r.entra_id = l.entra_id \
             AND r.kind = 'user_licence' AND r.released_at >= l.deactivated_at)) ORDER BY l.entra_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read leavers to release"))?;
        Ok(rows.into_iter().map(|(e, s, n)| (e, s, n != 0)).collect())
    }

    /// Already-inactive users whose records are to be handed over
    /// (Entra id, Salesforce id); one already listed stays as it is.
    pub async fn handovers_started(&self, rows: &[(&str, &str)]) -> Result<(), StoreError> {
        let at = now();
        for (e, s) in rows {
            sqlx::query(
                "INSERT INTO handovers (entra_id, sf_id, pending, since) VALUES (?, ?, 1, ?) \
                 ON CONFLICT (entra_id) DO UPDATE SET sf_id = excluded.sf_id, pending = 1, done_at = NULL",
            )
            .bind(*e)
            .bind(*s)
            .bind(&at)
            .execute(&self.pool)
            .await
            .map_err(q("start handover"))?;
        }
        Ok(())
    }

    /// Handovers with nothing left to move.
    pub async fn handovers_done(&self, entra_ids: &[&str]) -> Result<(), StoreError> {
        self.stamp(
            "UPDATE handovers SET pending = 0, done_at = ",
            " WHERE entra_id IN (",
            entra_ids,
            "finish handovers",
        )
        .await
    }

    /// Which of these users still have records to hand over.
    pub async fn handovers_pending(
        &self,
        entra_ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for chunk in entra_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT entra_id FROM handovers WHERE pending = 1 AND entra_id IN (",
            );
            super::push_in_list(&mut qb, chunk);
            for r in qb
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(q("read handovers"))?
            {
                out.insert(r.get::<String, _>(0));
            }
        }
        Ok(out)
    }

    /// Seats released: (Entra id, Salesforce id, kind, licence name).
    pub async fn add_released_seats(
        &self,
        rows: &[(String, String, &str, String)],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let at = now();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO released_seats (entra_id, sf_id, kind, licence, released_at) ",
            );
            qb.push_values(chunk, |mut b, (e, s, k, l)| {
                b.push_bind(e)
                    .push_bind(s)
                    .push_bind(*k)
                    .push_bind(l)
                    .push_bind(&at);
            });
            qb.build()
                .execute(&self.pool)
                .await
                .map_err(q("record released seats"))?;
        }
        Ok(())
    }

    /// Seats released since `since` (RFC 3339): (kind, licence, count).
    pub async fn released_seats_since(
        &self,
        since: &str,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT kind, licence, COUNT(*) FROM released_seats WHERE released_at >= ? \
             GROUP BY kind, licence ORDER BY kind DESC, licence",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(q("read released seats"))
    }
}

fn blocker_from(r: &sqlx::sqlite::SqliteRow, at: usize) -> BlockerState {
    BlockerState {
        kind: r.get::<Option<String>, _>(at).unwrap_or_default(),
        message: r.get::<Option<String>, _>(at + 1).unwrap_or_default(),
        fix: r.get(at + 2),
        detail: r
            .get::<Option<String>, _>(at + 3)
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(serde_json::Value::Null),
        org_config: r.get::<i64, _>(at + 4) != 0,
        tries: r.get::<i64, _>(at + 5).max(0) as u32,
        since: r.get::<Option<String>, _>(at + 6).unwrap_or_default(),
        next_try: r.get(at + 7),
    }
}
