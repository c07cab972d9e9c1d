//! Source: Microsoft Entra ID through Microsoft Graph delta queries.
//!
//! The client obtains an app-only token (client credentials), follows
//! `users/delta` and `groups/delta` pages verbatim and turns each page into
//! typed changes. Persisting pages and links is the store's job, so the
//! deltaLink is never ahead of what has been journaled.

mod client;
pub mod notify;

pub use client::{
    Credential, DELTA_UNTRACKABLE, EntraClient, EntraError, GroupChange, Page, RawPage,
    USER_SELECT, UserChange, untrackable, users_select,
};
