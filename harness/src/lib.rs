//! `mtor-harness`: the MTOR/1 certification harness behind the `mtor-cert` binary.
//!
//! The harness never links realm code: it speaks to a realm only over the wire, and the contract
//! (the JSON Schemas in `fixtures/schemas`, embedded at build time) is its only agreement with one.

pub mod audit;
pub mod bundle;
pub mod case;
pub mod checker;
pub mod container;
pub mod contract;
pub mod generate;
pub mod history;
pub mod injection;
pub mod journal;
pub mod lint;
pub mod load;
pub mod metrics;
pub mod plan;
pub mod recovery;
pub mod report;
pub mod run;
pub mod scripted;
pub mod security;
pub mod stateless;
pub mod target;
pub mod tokens;
pub mod verdict;
pub mod wire;
pub mod worker_faults;
