//! `provisor status`: where things stand, from the store alone. The last
//! cycle, who waits and why, what waits for an operator, leavers frozen
//! but still active (each still holds a licence seat) with what blocks
//! their deactivation, and the seats freed by deactivations.

use std::fmt::Write as _;

use serde::Serialize;

use crate::store::{LastCycle, OpenLeaver, Store, StoreError, Waiting};

/// Seats freed over a window, per licence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeatsFreed {
    /// `user_licence` or `permission_set_license`.
    pub kind: String,
    pub licence: String,
    pub seats: i64,
}

/// Everything `provisor status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub last_cycle: Option<LastCycle>,
    pub linked: usize,
    pub dirty: i64,
    /// Users held back, leavers included.
    pub waiting: Vec<Waiting>,
    pub dead_letters: usize,
    pub staged_deactivations: usize,
    pub open_reviews: usize,
    /// Frozen by provisor and not yet deactivated.
    pub frozen_but_active: Vec<OpenLeaver>,
    /// Over the last `seats_window_days`.
    pub seats_freed: Vec<SeatsFreed>,
    pub seats_window_days: u32,
}

impl Status {
    /// Reads the status; seats freed over the last `days` days.
    pub async fn read(store: &Store, days: u32) -> Result<Self, StoreError> {
        let since =
            crate::store::timestamp(chrono::Utc::now() - chrono::Duration::days(i64::from(days)));
        let leavers = store.open_leavers().await?;
        let waiting: Vec<Waiting> = store.waiting_users().await?;
        Ok(Self {
            last_cycle: store.last_cycle().await?,
            linked: store.link_count().await?,
            dirty: store.dirty_count().await?,
            waiting,
            dead_letters: store.dead_letters().await?.len(),
            staged_deactivations: store
                .staged_deactivations()
                .await?
                .iter()
                .filter(|s| s.status == "pending")
                .count(),
            open_reviews: store
                .reviews()
                .await?
                .iter()
                .filter(|r| r.status == "open")
                .count(),
            frozen_but_active: leavers,
            seats_freed: store
                .released_seats_since(&since)
                .await?
                .into_iter()
                .map(|(kind, licence, seats)| SeatsFreed {
                    kind,
                    licence,
                    seats,
                })
                .collect(),
            seats_window_days: days,
        })
    }

    /// The readable rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.last_cycle {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "last cycle:   {} at {} ({})",
                    c.cycle,
                    c.at,
                    if c.event == "cycle.completed" {
                        "completed".to_string()
                    } else {
                        format!(
                            "stopped: {}",
                            c.detail["error"].as_str().unwrap_or("see the audit trail")
                        )
                    }
                );
            }
            None => out.push_str("last cycle:   none yet\n"),
        }
        let _ = writeln!(
            out,
            "users:        {} linked, {} to plan, {} waiting, {} parked (provisor deadletter list)",
            self.linked,
            self.dirty,
            self.waiting.len(),
            self.dead_letters
        );
        let _ = writeln!(
            out,
            "operator:     {} staged deactivations (provisor staged), {} open reviews (provisor review list)",
            self.staged_deactivations, self.open_reviews
        );
        let leaver_ids: std::collections::HashSet<&str> = self
            .frozen_but_active
            .iter()
            .map(|l| l.entra_id.as_str())
            .collect();
        let others: Vec<&Waiting> = self
            .waiting
            .iter()
            .filter(|w| !leaver_ids.contains(w.entra_id.as_str()))
            .collect();
        if !others.is_empty() {
            out.push_str("\nwaiting:\n");
            for w in others {
                let _ = writeln!(
                    out,
                    "  {}  {}",
                    w.upn.as_deref().unwrap_or(&w.entra_id),
                    w.reason
                );
            }
        }
        let _ = writeln!(
            out,
            "\nfrozen but still active (each holds a licence seat): {}",
            self.frozen_but_active.len()
        );
        for l in &self.frozen_but_active {
            let _ = writeln!(
                out,
                "  {}  Salesforce {}  frozen {}",
                l.upn.as_deref().unwrap_or(&l.entra_id),
                l.sf_id,
                l.frozen_at
            );
            match &l.blocker {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "    blocked: {} since {}, {} time(s): {}",
                        b.kind, b.since, b.tries, b.message
                    );
                    if let Some(fix) = &b.fix {
                        let _ = writeln!(out, "    fix:     {fix}");
                    }
                    let _ = writeln!(
                        out,
                        "    retry:   {}",
                        match &b.next_try {
                            Some(t) => format!("after {t} (or now: provisor leavers retry)"),
                            None => "next cycle".to_string(),
                        }
                    );
                }
                None => {
                    let why = self
                        .waiting
                        .iter()
                        .find(|w| w.entra_id == l.entra_id)
                        .map_or("deactivation due next cycle", |w| w.reason.as_str());
                    let _ = writeln!(out, "    waiting: {why}");
                }
            }
        }
        let _ = writeln!(
            out,
            "\nseats freed by deactivations (last {} days):",
            self.seats_window_days
        );
        if self.seats_freed.is_empty() {
            out.push_str("  none\n");
        }
        for s in &self.seats_freed {
            let what = if s.kind == "user_licence" {
                "user licence"
            } else {
                "permission set licence"
            };
            let _ = writeln!(out, "  {:>5}  {}  ({what})", s.seats, s.licence);
        }
        out
    }
}
