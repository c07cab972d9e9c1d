//! Reads for `provisor status`: how the last cycle ended and who waits.

use sqlx::Row;

use super::{Store, StoreError, q};

/// How the last cycle ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastCycle {
    pub cycle: String,
    pub at: String,
    /// `cycle.completed` or `cycle.stopped`.
    pub event: String,
    pub detail: serde_json::Value,
}

/// A user held back (a licence seat, a review, a blocked deactivation).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Waiting {
    pub entra_id: String,
    pub upn: Option<String>,
    pub reason: String,
}

impl Store {
    /// The last cycle's end, if any cycle ended.
    pub async fn last_cycle(&self) -> Result<Option<LastCycle>, StoreError> {
        let row = sqlx::query(
            "SELECT cycle, at, event, detail FROM audit WHERE event IN ('cycle.completed', 'cycle.stopped') \
             ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(q("read last cycle"))?;
        Ok(row.map(|r| LastCycle {
            cycle: r.get(0),
            at: r.get(1),
            event: r.get(2),
            detail: serde_json::from_str(&r.get::<String, _>(3)).unwrap_or(serde_json::Value::Null),
        }))
    }

    /// Users waiting, with why.
    pub async fn waiting_users(&self) -> Result<Vec<Waiting>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, json_extract(data, '$.userPrincipalName'), waiting FROM entra_users \
             WHERE waiting IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read waiting users"))?;
        Ok(rows
            .into_iter()
            .map(|r| Waiting {
                entra_id: r.get(0),
                upn: r.get(1),
                reason: r.get(2),
            })
            .collect())
    }
}
