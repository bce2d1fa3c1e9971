pub mod fake_realm;
