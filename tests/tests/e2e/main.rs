//! End-to-end tests: the real host against the emulators over loopback.
//! One binary (it links wasmtime once), a module per topic.

mod access;
mod bad_input;
mod bulk;
mod drift;
mod entra;
mod faults;
mod flow;
mod host_api;
mod leavers;
mod parity;
mod protocol;
mod review;
mod rules;
mod safety;
mod salesforce;
