//! Tags a release: `vX.Y.Z`, `vX.Y`, `vX` and `latest` (only the version
//! itself for a pre-release), never moving a tag to an older release.
//!
//! `cargo run --example release_tags -- REPO@DIGEST vX.Y.Z [-q] [--insecure HOST]... [--authfile FILE]`
//!
//! The last line printed is the digest the tags point at.

use std::process::ExitCode;

use clap::Parser;
use kiln::oci_image::Reference;

mod common;

#[derive(Parser)]
#[command(about = "Set the release tags of a version on a digest")]
struct Args {
    /// The image, pinned: REPO@sha256:...
    image: Reference,
    /// The release version, like v1.2.3 or v2.0.0-rc.1.
    version: String,
    /// Print only the digest.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    registry: common::RegistryFlags,
}

fn main() -> ExitCode {
    common::main(|args: Args| async move { run(&args).await })
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = args.registry.client()?;
    let tags = kiln::release_tags(&client, &args.image, &args.version).await?;
    for t in tags.iter().filter(|_| !args.quiet) {
        println!("tagged {}", args.image.repository_only().with_tag(t.clone()));
    }
    if let Some(d) = args.image.digest() {
        println!("{d}");
    }
    Ok(())
}
