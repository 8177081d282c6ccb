//! Logs out of a registry as `docker logout` does: its credential is
//! erased from the helper the config file names for it, else from the
//! file's `auths`.
//!
//! `cargo run --example logout -- REGISTRY [--authfile FILE]`

use std::process::ExitCode;

use clap::Parser;
use kiln::registry_client::DockerConfig;

mod common;

#[derive(Parser)]
#[command(about = "Log out of a registry")]
struct Args {
    /// The registry (`localhost:5000`, `docker.io`, ...).
    registry: String,
    #[command(flatten)]
    registry_flags: common::RegistryFlags,
}

fn main() -> ExitCode {
    common::main(|args: Args| async move { run(&args) })
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let host = common::registry_host(&args.registry);
    let path = common::config_path(&args.registry_flags)?;
    match DockerConfig::default().erase(&path, &host)? {
        Some(_) => println!("Removing login credentials for {}", kiln::registry_client::config_key(&host)),
        None => println!("Not logged in to {}", kiln::registry_client::config_key(&host)),
    }
    Ok(())
}
