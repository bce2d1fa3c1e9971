//! `mtor-harness`: the MTOR/1 certification harness behind the `mtor-cert` binary.
//!
//! The harness never links realm code: it speaks to a realm only over the wire, and the contract
//! (the JSON Schemas in `fixtures/schemas`, embedded at build time) is its only agreement with one.

pub mod bundle;
pub mod case;
pub mod checker;
pub mod contract;
pub mod generate;
pub mod journal;
pub mod lint;
pub mod plan;
pub mod report;
pub mod run;
pub mod target;
pub mod verdict;
pub mod wire;
