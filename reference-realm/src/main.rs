//! `mtor-realm`: the MTOR/1 reference realm.
//!
//! The store, ledger, audit log, SafeQueue, leases and worker registry are in place as a library;
//! the server that ties them to the wire is still being built, so this binary only identifies
//! itself for now.

use clap::Parser;

/// The MTOR/1 reference realm.
#[derive(Parser)]
#[command(
    name = "mtor-realm",
    version,
    about = "The MTOR/1 reference realm (server under construction)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("mtor-realm: the server is not built yet; see docs/ARCHITECTURE.md")
}
