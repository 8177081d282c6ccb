//! Copies an image between registries, OCI layouts and docker-archive files.
//!
//! `cargo run --example copy -- SRC DST [--insecure HOST]...`
//!
//! Each side is a registry reference (`localhost:5000/team/app:v1`, an
//! optional `docker://` prefix), `oci:DIR[:TAG]` or
//! `docker-archive:FILE[:NAME:TAG]`. Credentials are read the way docker
//! and podman read them. The last line printed is the manifest digest at
//! the destination.

use std::process::ExitCode;

use clap::Parser;
use kiln::ImageLocation;
use kiln::registry_client::{Client, DockerConfig, Progress};

#[derive(Parser)]
#[command(about = "Copy an image between registries, OCI layouts and docker-archive files")]
struct Args {
    /// Where the image is.
    src: ImageLocation,
    /// Where it goes.
    dst: ImageLocation,
    /// Allow plain HTTP to this (non-loopback) registry host.
    #[arg(long = "insecure", value_name = "HOST")]
    insecure: Vec<String>,
    /// Print each blob as it is skipped, mounted or uploaded.
    #[arg(long, short)]
    verbose: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Client::builder().credentials(DockerConfig::from_env()?);
    for host in &args.insecure {
        builder = builder.insecure_host(host.clone());
    }
    if args.verbose {
        builder = builder.progress(|p| match p {
            Progress::BlobSkipped { digest } => eprintln!("skipped  {digest}"),
            Progress::BlobMounted { digest, from } => eprintln!("mounted  {digest} from {from}"),
            Progress::BlobUploaded { digest, size } => eprintln!("uploaded {digest} ({size} bytes)"),
            Progress::RetryWaiting { url, attempt, delay } => eprintln!("retry {attempt} of {url} in {delay:?}"),
            _ => {}
        });
    }
    let client = builder.build()?;
    let report = kiln::copy(&client, &args.src, &args.dst).await?;
    eprintln!(
        "copied {} -> {} (uploaded {}, mounted {}, skipped {})",
        args.src, args.dst, report.uploaded, report.mounted, report.skipped
    );
    println!("{}", report.digest);
    Ok(())
}
