//! Builds an image from a Dockerfile, with no daemon.
//!
//! ```text
//! cargo run --release --example build -- CONTEXT [-f FILE] [-t REF]... [--build-arg K=V]...
//!     [--build-context NAME=oci-layout://DIR[:TAG] | NAME=docker-image://REF | NAME=DIR]... [--target STAGE] [--platform P] [--output oci:DIR[:TAG] | docker-archive:FILE[:NAME] | REF | registry]...
//!     [--label K=V]... [--secret id=ID,src=FILE]... [--ssh default|ID=SOCKET]... [--compression gzip|zstd|none] [--level N]
//!     [--source-date-epoch SECONDS|git | --docker-times]
//!     [--no-cache] [--overwrite] [--cache-dir DIR] [--iidfile FILE] [--metadata-file FILE]
//!     [--progress auto|tty|plain|json | --quiet] [--insecure HOST]... [--authfile FILE]
//! ```
//!
//! Without `--output` the image goes to the OCI layout `./kiln-out`. The
//! last line printed is the manifest digest (with `--progress json`, a
//! `built` event); the steps and `RUN` output are shown on stderr as they
//! happen: on a terminal a live display (each step with its state and
//! duration, the tail of `RUN` output, a bar per blob pulled or pushed),
//! else plain lines (`--progress`, `--quiet`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kiln::ImageLocation;
use kiln::build::{Build, BuildContext, Built, Cancel};

mod common;
use common::display::{ProgressFlags, Shown, Tty};

#[derive(Parser)]
#[command(about = "Build an image from a Dockerfile and a context directory")]
#[allow(clippy::struct_excessive_bools)] // command-line switches
struct Args {
    /// The build context.
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Names for the image (`name:tag`), repeatable.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Build arguments `NAME=value`, repeatable.
    #[arg(long = "build-arg")]
    build_arg: Vec<String>,
    /// Named contexts `NAME=VALUE` for `FROM NAME`, `COPY --from=NAME` and
    /// `RUN --mount=from=NAME` (VALUE: `oci-layout://DIR[:TAG][@DIGEST]`,
    /// `docker-image://REF` or a directory), repeatable.
    #[arg(long = "build-context")]
    build_contexts: Vec<String>,
    /// Labels `KEY=value` for the image, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// The target platform (`os/arch[/variant]`).
    #[arg(long)]
    platform: Option<String>,
    /// `oci:DIR[:TAG]`, `docker-archive:FILE[:NAME]`, a registry reference (pushed there) or `registry` (push to every -t), repeatable.
    #[arg(long = "output")]
    outputs: Vec<String>,
    /// ssh agents for `RUN --mount=type=ssh`: `default` (the agent of
    /// `SSH_AUTH_SOCK`) or `ID=SOCKET`, repeatable.
    #[arg(long = "ssh")]
    ssh: Vec<String>,
    /// Secrets for `RUN --mount=type=secret` (`id=ID,src=FILE`), repeatable.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Layer compression: gzip (default), zstd or none.
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Compression level (gzip 0-9, default 1: 1-3 are kiln's own fast deflate, 4-9 zlib; zstd 1-22, default 3).
    #[arg(long)]
    level: Option<i32>,
    /// The time of every input file and of the image (`created`): seconds
    /// since 1970, or `git` for the commit time of the context's `HEAD`
    /// (default: `SOURCE_DATE_EPOCH`, else 0).
    #[arg(long = "source-date-epoch")]
    source_date_epoch: Option<String>,
    /// Docker's times instead: files keep their own times, `created` is now
    /// (not reproducible).
    #[arg(long, conflicts_with = "source_date_epoch")]
    docker_times: bool,
    /// Run every step, ignoring the cache.
    #[arg(long)]
    no_cache: bool,
    /// Replace a docker-archive output file that exists.
    #[arg(long)]
    overwrite: bool,
    /// The content store and cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Write the image id (the config's digest, as docker writes it) to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write what was built as JSON to this file: manifest and config
    /// digests, the platform, every reference pushed (docker buildx's keys,
    /// and kiln's).
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    #[command(flatten)]
    progress: ProgressFlags,
    #[command(flatten)]
    registry: common::RegistryFlags,
}

/// `--iidfile` and `--metadata-file`.
fn files_for_pipelines(args: &Args, built: &Built) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(f) = &args.iidfile {
        common::write_for_pipeline(f, &built.config.digest.to_string())?;
    }
    let Some(f) = &args.metadata_file else { return Ok(()) };
    let pushed: Vec<String> = built.pushed.iter().map(ToString::to_string).collect();
    let digest = built.manifest.digest.to_string();
    let metadata = serde_json::json!({
        "containerimage.digest": digest,
        "containerimage.config.digest": built.config.digest.to_string(),
        "image.name": pushed.join(","),
        "kiln.platforms": [built.image.platform().to_string()],
        "kiln.pushed": pushed.iter().map(|r| serde_json::json!({"reference": r, "digest": digest})).collect::<Vec<_>>(),
    });
    common::write_for_pipeline(f, &serde_json::to_string_pretty(&metadata)?)
}

fn pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?}: expected KEY=value"))
}

/// `id=ID,src=FILE`.
/// The epoch (`--source-date-epoch`, `--docker-times`), ssh agents and secrets.
fn times_and_secrets(mut build: Build, args: &Args) -> Result<Build, Box<dyn std::error::Error>> {
    match args.source_date_epoch.as_deref() {
        Some("git") => build = build.epoch_from_git(),
        Some(n) => {
            let n = n.parse().map_err(|_| format!("--source-date-epoch {n:?}: expected seconds or git"))?;
            build = build.epoch(Some(n));
        }
        None if args.docker_times => build = build.epoch(None),
        None => {}
    }
    for s in &args.ssh {
        let (id, socket) = if let Some((id, socket)) = s.split_once('=') {
            (id.to_owned(), PathBuf::from(socket))
        } else {
            let socket = std::env::var_os("SSH_AUTH_SOCK")
                .ok_or_else(|| format!("--ssh {s}: SSH_AUTH_SOCK is not set (give ID=SOCKET)"))?;
            (s.clone(), PathBuf::from(socket))
        };
        build = build.ssh(id, socket);
    }
    for s in &args.secrets {
        let (id, src) = secret(s)?;
        build = build.secret(id, src);
    }
    Ok(build)
}

fn secret(s: &str) -> Result<(String, PathBuf), String> {
    let mut id = None;
    let mut src = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_owned()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            _ => return Err(format!("--secret {s:?}: expected id=ID,src=FILE")),
        }
    }
    match (id, src) {
        (Some(id), Some(src)) => Ok((id, src)),
        _ => Err(format!("--secret {s:?}: expected id=ID,src=FILE")),
    }
}

fn main() -> ExitCode {
    common::main(run)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut build = Build::new(&args.context).client(args.registry.client()?);
    if let Some(f) = &args.file {
        build = build.dockerfile(f);
    }
    for c in &args.build_contexts {
        let (name, value) = pair(c)?;
        build = build.build_context(name, value.parse::<BuildContext>()?);
    }
    for a in &args.build_arg {
        let (k, v) = pair(a)?;
        build = build.build_arg(k, v);
    }
    for l in &args.labels {
        let (k, v) = pair(l)?;
        build = build.label(k, v);
    }
    for t in &args.tags {
        build = build.tag(t.parse()?);
    }
    if let Some(t) = &args.target {
        build = build.target(t);
    }
    if let Some(p) = &args.platform {
        build = build.platform(p.parse()?);
    }
    if let Some(d) = &args.cache_dir {
        build = build.cache_dir(d);
    }
    build = times_and_secrets(build, &args)?;
    build = build.no_cache(args.no_cache).overwrite(args.overwrite);
    let compression = match args.compression.as_str() {
        "gzip" => kiln::oci_image::Compression::Gzip,
        "zstd" => kiln::oci_image::Compression::Zstd,
        "none" => kiln::oci_image::Compression::None,
        other => return Err(format!("--compression {other:?}: expected gzip, zstd or none").into()),
    };
    build = build.compression(compression, args.level);
    if args.outputs.is_empty() {
        build = build.output(ImageLocation::layout("kiln-out"));
    }
    for o in &args.outputs {
        // `registry`, as docker's `--output type=registry`: push to every -t
        build = if o == "registry" { build.push(true) } else { build.output(o.parse::<ImageLocation>()?) };
    }
    let shown = args.progress.shown()?;
    let tty = (shown == Shown::Tty).then(|| Arc::new(Tty::new()));
    build = match (shown, &tty) {
        (Shown::Json, _) => build.progress(|p| common::display::json_line(p)),
        (Shown::Plain, _) => build.progress(common::display::plain_build),
        (Shown::Tty, Some(tty)) => {
            let tty = Arc::clone(tty);
            build.progress(move |p| tty.build_event(p))
        }
        _ => build,
    };
    // SIGINT / SIGTERM stop the build: its RUN processes are killed and
    // its scratch state removed before the command exits (128 + signal)
    let cancel = Cancel::new();
    let (result, signal) = common::until_signalled(&cancel, build.cancel(cancel.clone()).build()).await?;
    if let Some(tty) = &tty {
        tty.end(result.is_ok() && signal.is_none(), "[+] Built in {secs}s: {steps} steps, {cached} cached");
    }
    if let Some(signal) = signal {
        let source: Box<dyn std::error::Error + Send + Sync> = match result {
            Err(e) => Box::new(e),
            Ok(_) => "the build had finished".into(),
        };
        return Err(Box::new(common::Interrupted { signal, source }));
    }
    let built = result?;
    files_for_pipelines(&args, &built)?;
    match shown {
        Shown::Quiet => {}
        Shown::Json => {
            let done = serde_json::json!({
                "event": "built",
                "manifest": built.manifest,
                "config": built.config,
                "cached_steps": built.cached_steps,
                "steps": built.steps,
            });
            println!("{done}");
            return Ok(());
        }
        Shown::Plain | Shown::Tty => {
            println!("config:   {}", built.config.digest);
            println!("layers:   {}", built.layers.len());
        }
    }
    println!("{}", built.manifest.digest);
    Ok(())
}
