//! Packs a tree, a diff of two trees, or an overlayfs upper directory into one
//! layer blob and prints its `{"digest","diff_id","size","media_type"}`.
//!
//! ```text
//! cargo run --release --example layer -- --upper DIR [--lower DIR | --overlay] --out FILE \
//!     [--compression gzip|zstd|none] [--level N] [--threads N]
//! ```

use std::path::PathBuf;

use clap::Parser;
use layer_diff::PackOptions;
use oci_image::Compression;

#[derive(Parser)]
struct Args {
    /// The tree to pack (the upper tree of a diff, or an overlayfs upper directory).
    #[arg(long)]
    upper: PathBuf,
    /// Pack the difference from this tree.
    #[arg(long, conflicts_with = "overlay")]
    lower: Option<PathBuf>,
    /// `--upper` is an overlayfs upper directory.
    #[arg(long)]
    overlay: bool,
    /// Where the blob goes.
    #[arg(long)]
    out: PathBuf,
    /// gzip, zstd or none.
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Compression level.
    #[arg(long)]
    level: Option<i32>,
    /// Compression threads (the output is the same for any count).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let compression = match args.compression.as_str() {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        "none" => Compression::None,
        other => return Err(format!("unknown compression {other:?}: gzip, zstd or none").into()),
    };
    let defaults = PackOptions::default();
    let opts =
        PackOptions { compression, level: args.level, threads: args.threads.unwrap_or(defaults.threads), ..defaults };
    let out = std::fs::File::create(&args.out)?;
    let (out, info) = if args.overlay {
        layer_diff::pack_overlay(&args.upper, out, &opts)?
    } else if let Some(lower) = &args.lower {
        layer_diff::pack_diff(lower, &args.upper, out, &opts)?
    } else {
        layer_diff::pack_dir(&args.upper, out, &opts)?
    };
    // not fsynced, like the peers it is measured against (pigz, zstd and
    // `umoci repack` leave that to the caller); OCI layouts do sync
    drop(out);
    let line = serde_json::json!({
        "digest": info.digest.to_string(),
        "diff_id": info.diff_id.to_string(),
        "size": info.size,
        "media_type": info.media_type.as_str(),
    });
    println!("{line}");
    Ok(())
}
