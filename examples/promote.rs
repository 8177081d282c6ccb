//! Promotes an image, pinned by digest, to a tag (usually in another
//! registry), moving the exact bytes.
//!
//! `cargo run --example promote -- SRC@DIGEST DST:TAG [--overwrite] [--dry-run] [--json | --progress auto|tty|plain|json | -q] [--digestfile FILE] [--insecure HOST]... [--authfile FILE]`
//!
//! Refuses when DST:TAG already points at another digest unless
//! `--overwrite`. Prints the promotion record (as JSON with `--json`, for
//! pipelines to log); otherwise the last line is the digest. The blobs
//! moved show as they go: on a terminal a byte bar each, else plain lines
//! (`--progress`); `--progress json` gives the events as JSON lines, then
//! a `promoted` event with the record; `-q` prints the digest alone.

use std::process::ExitCode;

use clap::Parser;
use kiln::PromoteOptions;
use kiln::oci_image::Reference;

mod common;
use common::display::{ProgressFlags, Shown};

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
    #[arg(long, conflicts_with_all = ["quiet", "progress"])]
    json: bool,
    #[command(flatten)]
    progress: ProgressFlags,
    #[command(flatten)]
    registry: common::RegistryFlags,
}

fn main() -> ExitCode {
    common::main(|args: Args| async move { run(&args).await })
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let shown = if args.json { Shown::Quiet } else { args.progress.shown()? };
    let label = format!("promoting {} to {}", args.src, args.dst);
    // a dry run moves nothing: no live display
    let live = if shown == Shown::Tty && args.dry_run { Shown::Quiet } else { shown };
    let (builder, tty) = common::display::transfer_progress(args.registry.builder()?, live, &label);
    let client = builder.build()?;
    let options = PromoteOptions { overwrite: args.overwrite, dry_run: args.dry_run };
    let record = kiln::promote(&client, &args.src, &args.dst, options).await;
    if let Some(tty) = &tty {
        tty.end(record.is_ok(), "[+] Promoted in {secs}s");
    }
    let record = record?;
    if let Some(f) = &args.digestfile
        && !record.dry_run
    {
        common::write_for_pipeline(f, &record.digest.to_string())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    match shown {
        Shown::Quiet => {}
        Shown::Json => {
            let mut done = serde_json::to_value(&record)?;
            if let Some(o) = done.as_object_mut() {
                o.insert("event".into(), "promoted".into());
            }
            println!("{done}");
            return Ok(());
        }
        Shown::Plain | Shown::Tty => {
            let verb = if record.dry_run { "would promote" } else { "promoted" };
            println!("{verb} {} -> {} at {}", record.source, record.destination, record.time);
            println!(
                "blobs: {} skipped, {} mounted, {} uploaded ({} bytes)",
                record.plan.skip.len(),
                record.plan.mount.len(),
                record.plan.upload.len(),
                record.plan.upload_bytes
            );
        }
    }
    println!("{}", record.digest);
    Ok(())
}
