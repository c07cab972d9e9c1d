//! The audit trail: one row per applied, failed, parked or linked thing,
//! chained by SHA-256 so that a removed or edited row is detectable.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One audit event before it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// Dotted event name, e.g. `user.created`, `user.deactivated`, `user.failed`.
    pub event: String,
    pub entra_id: Option<String>,
    pub sf_id: Option<String>,
    /// Structured detail (fields changed, error, reason...).
    pub detail: serde_json::Value,
}

/// A stored audit row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub cycle: String,
    pub event: String,
    pub entra_id: Option<String>,
    pub sf_id: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Hash of the row content chained to the previous hash.
pub fn chain_hash(prev: &str, at: &str, cycle: &str, ev: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update([0]);
    h.update(at.as_bytes());
    h.update([0]);
    h.update(cycle.as_bytes());
    h.update([0]);
    h.update(ev.event.as_bytes());
    h.update([0]);
    h.update(ev.entra_id.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    h.update(ev.sf_id.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    h.update(ev.detail.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Checks the chain; returns the first broken sequence number.
pub fn verify(rows: &[AuditRow]) -> Result<(), i64> {
    let mut prev = String::from(GENESIS);
    for r in rows {
        let ev = AuditEvent {
            event: r.event.clone(),
            entra_id: r.entra_id.clone(),
            sf_id: r.sf_id.clone(),
            detail: r.detail.clone(),
        };
        if r.prev_hash != prev || chain_hash(&prev, &r.at, &r.cycle, &ev) != r.hash {
            return Err(r.seq);
        }
        prev = r.hash.clone();
    }
    Ok(())
}

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditRow {
    /// One line for people: `seq  time  event  who  detail`.
    pub fn render(&self) -> String {
        let who = match (&self.entra_id, &self.sf_id) {
            (Some(e), Some(s)) => format!("{e} -> {s}"),
            (Some(e), None) => e.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => "-".into(),
        };
        format!(
            "#{:<5} {} {:<20} {} {}",
            self.seq, self.at, self.event, who, self.detail
        )
    }
}
