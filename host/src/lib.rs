//! provisor keeps Salesforce users in lockstep with Microsoft Entra ID.
//!
//! The crate reads like its pipeline:
//! [`entra`] (source: Graph delta) → [`rules`] (rule packs: Rhai or WASM) →
//! [`engine`] (match, plan, apply) → [`salesforce`] (sink: REST) → [`audit`],
//! with [`store`] keeping the mirror, links, outbox and sync state, and
//! [`sim`] carrying faithful emulators of both clouds for tests and the demo.

pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod connection;
pub mod demo;
pub mod engine;
pub mod entra;
pub mod http;
pub mod metrics;
pub mod model;
pub mod rules;
pub mod salesforce;
pub mod sim;
pub mod status;
pub mod store;
