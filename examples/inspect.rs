//! Shows an image: manifest, platforms, layers, config, history, referrers.
//!
//! `cargo run --example inspect -- REF [--config|--history [--no-trunc]|--json]`
//!
//! REF is a registry reference or `oci:DIR[:TAG]`. The last line printed is
//! the digest, except with `--json`, where the output is only JSON.

use std::process::ExitCode;

use clap::Parser;
use kiln::ImageLocation;

mod common;

#[derive(Parser)]
#[command(about = "Inspect an image")]
#[allow(clippy::struct_excessive_bools)] // command-line switches
struct Args {
    /// The image.
    image: ImageLocation,
    /// Print the config JSON.
    #[arg(long, conflicts_with_all = ["history", "json"])]
    config: bool,
    /// Print the history, like `docker image history`.
    #[arg(long, conflicts_with = "json")]
    history: bool,
    /// With `--history`: commands and the image id in full.
    #[arg(long, requires = "history")]
    no_trunc: bool,
    /// Print everything as JSON (and nothing else).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: common::RegistryFlags,
}

fn main() -> ExitCode {
    common::main(|args: Args| async move { run(&args).await })
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = args.registry.client()?;
    let info = kiln::inspect(&client, &args.image).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    if args.config {
        match &info.config {
            Some(c) => println!("{}", serde_json::to_string_pretty(c)?),
            None => println!("(an index has no config; name a platform's manifest)"),
        }
    } else if args.history {
        print!("{}", info.history_text(args.no_trunc));
    } else {
        print!("{}", info.to_text());
    }
    println!("{}", info.digest);
    Ok(())
}
