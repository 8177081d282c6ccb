//! Builds the image for a context directory into an OCI layout.
//!
//! `cargo run --release --example build -- examples/hello [--out DIR] [--tag NAME]`
//!
//! Until kiln's Dockerfile build lands, this packs the files of the context
//! directory (its Dockerfile included) as one reproducible layer with a
//! config and manifest. No registry, no network.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Build an image from a context directory into an OCI layout")]
struct Args {
    /// The context directory.
    context: PathBuf,
    /// The OCI layout to write (created when missing).
    #[arg(long, default_value = "kiln-out")]
    out: PathBuf,
    /// The image name and tag.
    #[arg(long, default_value = "kiln/hello:latest")]
    tag: String,
}

fn main() -> ExitCode {
    kiln::cli::exit_code(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let name: kiln::oci_image::Reference = args.tag.parse()?;
    let opts = kiln::DirImageOptions::default();
    let image = kiln::image_from_dir(&args.context, &args.out, &name, &opts)?;
    println!("layout:   {}", args.out.display());
    println!("tag:      {}", name.tag().map_or("", |t| t.as_str()));
    println!(
        "layer:    {} ({} bytes)",
        image.layers.first().map_or(String::new(), |l| l.digest.to_string()),
        image.layers.first().map_or(0, |l| l.size)
    );
    println!("config:   {}", image.config.digest);
    println!("{}", image.manifest.digest);
    Ok(())
}
