pub mod fake_broker;
pub mod fake_realm;
