//! `mtor-realm`: the MTOR/1 reference realm, as a library so that its parts are testable alone.
//!
//! The realm never links harness code; it agrees with the harness only through the wire contract
//! in `fixtures/schemas`.

pub mod audit;
pub mod broker;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod defect;
pub mod identity;
pub mod intents;
pub mod lease;
pub mod ledger;
pub mod probe;
pub mod queue;
pub mod registry;
pub mod server;
pub mod signal;
pub mod store;
pub mod wire;
pub mod worker;
