//! Promotes an image, pinned by digest, to a tag (usually in another
//! registry), moving the exact bytes.
//!
//! `cargo run --example promote -- SRC@DIGEST DST:TAG [--overwrite] [--dry-run] [--json] [--digestfile FILE] [--insecure HOST]... [--authfile FILE]`
//!
//! Refuses when DST:TAG already points at another digest unless
//! `--overwrite`. Prints the promotion record (as JSON with `--json`, for
//! pipelines to log); otherwise the last line is the digest.

use std::process::ExitCode;

use clap::Parser;
use kiln::PromoteOptions;
use kiln::oci_image::Reference;

mod common;

#[derive(Parser)]
#[command(about = "Promote a digest-pinned image to a tag")]
struct Args {
    /// The image, pinned: NAME@sha256:...
    src: Reference,
    /// The destination NAME:TAG.
    dst: Reference,
    /// Move the tag even when it points at another digest.
    #[arg(long)]
    overwrite: bool,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the promoted digest to this file, as skopeo's `--digestfile`.
    #[arg(long, value_name = "FILE")]
    digestfile: Option<std::path::PathBuf>,
    /// Print only the record, as JSON.
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
    let record = kiln::promote(
        &client,
        &args.src,
        &args.dst,
        PromoteOptions { overwrite: args.overwrite, dry_run: args.dry_run },
    )
    .await?;
    if let Some(f) = &args.digestfile
        && !record.dry_run
    {
        common::write_for_pipeline(f, &record.digest.to_string())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    let verb = if record.dry_run { "would promote" } else { "promoted" };
    println!("{verb} {} -> {} at {}", record.source, record.destination, record.time);
    println!(
        "blobs: {} skipped, {} mounted, {} uploaded ({} bytes)",
        record.plan.skip.len(),
        record.plan.mount.len(),
        record.plan.upload.len(),
        record.plan.upload_bytes
    );
    println!("{}", record.digest);
    Ok(())
}
