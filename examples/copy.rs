//! Copies an image between registries, OCI layouts and docker-archive files.
//!
//! `cargo run --example copy -- SRC DST [--platform P]... [--referrers] [--dry-run] [--overwrite] [--digestfile FILE] [-v | --progress auto|tty|plain|json | -q] [--insecure HOST]... [--authfile FILE]`
//!
//! Each side is a registry reference (`localhost:5000/team/app:v1`, an
//! optional `docker://` prefix), `oci:DIR[:TAG]` or
//! `docker-archive:FILE[:NAME:TAG]`. Credentials are read the way docker
//! and podman read them. The last line printed is the manifest digest at
//! the destination (with `--progress json`, a `copied` event). On a
//! terminal a live display shows a byte bar for every blob.

use std::process::ExitCode;

use clap::Parser;
use kiln::{CopyOptions, ImageLocation};

mod common;
use common::display::{ProgressFlags, Shown};

#[derive(Parser)]
#[command(about = "Copy an image between registries, OCI layouts and docker-archive files")]
#[allow(clippy::struct_excessive_bools)] // command-line switches
struct Args {
    /// Where the image is.
    src: ImageLocation,
    /// Where it goes.
    dst: ImageLocation,
    /// Copy only this platform (repeat for a new index of several).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<kiln::oci_image::Platform>,
    /// Also copy signatures, SBOMs and other artifacts referring to the image.
    #[arg(long)]
    referrers: bool,
    /// Print what would be skipped, mounted and uploaded, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace a docker-archive destination that exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    registry: common::RegistryFlags,
    /// Write the digest of the manifest at the destination to this file, as
    /// skopeo's `--digestfile`.
    #[arg(long, value_name = "FILE")]
    digestfile: Option<std::path::PathBuf>,
    /// Print each blob as it is skipped, mounted or uploaded: `--progress plain`.
    #[arg(long, short, conflicts_with = "quiet")]
    verbose: bool,
    #[command(flatten)]
    progress: ProgressFlags,
}

fn main() -> ExitCode {
    common::main(|args: Args| async move { run(&args).await })
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let shown = if args.verbose { Shown::Plain } else { args.progress.shown()? };
    let label = format!("copying {} to {}", args.src, args.dst);
    // a dry run moves nothing: no live display
    let live = if shown == Shown::Tty && args.dry_run { Shown::Quiet } else { shown };
    let (builder, tty) = common::display::transfer_progress(args.registry.builder()?, live, &label);
    let client = builder.build()?;
    if args.dry_run {
        let (ImageLocation::Registry(src), ImageLocation::Registry(dst)) = (&args.src, &args.dst) else {
            return Err("--dry-run plans registry-to-registry copies".into());
        };
        let plan = kiln::plan_copy(&client, src, dst).await?;
        for d in &plan.skip {
            println!("skip   {} {:>12}", d.digest, d.size);
        }
        for d in &plan.mount {
            println!("mount  {} {:>12}", d.digest, d.size);
        }
        for d in &plan.upload {
            println!("upload {} {:>12}", d.digest, d.size);
        }
        println!("{} bytes to upload; nothing written", plan.upload_bytes);
        let top = plan.manifests.last().map_or_else(String::new, |d| d.digest.to_string());
        println!("{top}");
        return Ok(());
    }
    let opts = CopyOptions { platforms: args.platforms.clone(), referrers: args.referrers, overwrite: args.overwrite };
    let report = kiln::copy_with(&client, &args.src, &args.dst, &opts).await;
    if let Some(tty) = &tty {
        tty.end(report.is_ok(), "[+] Copied in {secs}s");
    }
    let report = report?;
    if let Some(f) = &args.digestfile {
        common::write_for_pipeline(f, &report.digest.to_string())?;
    }
    if shown == Shown::Json {
        let done = serde_json::json!({
            "event": "copied",
            "digest": report.digest,
            "uploaded": report.uploaded,
            "mounted": report.mounted,
            "skipped": report.skipped,
            "referrers": report.referrers,
            "new_index": report.new_index,
        });
        println!("{done}");
        return Ok(());
    }
    if shown == Shown::Quiet {
        println!("{}", report.digest);
        return Ok(());
    }
    eprintln!(
        "copied {} -> {} (uploaded {}, mounted {}, skipped {}, referrers {})",
        args.src, args.dst, report.uploaded, report.mounted, report.skipped, report.referrers
    );
    if report.new_index {
        eprintln!("wrote a new index of {} platforms: the digest differs from the source's", args.platforms.len());
    }
    println!("{}", report.digest);
    Ok(())
}
