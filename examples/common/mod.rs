//! Helpers the examples share (included by each with `mod common;`): the
//! flags every example that talks to registries takes, a registry client
//! as docker and podman configure one, logs, exit codes, files for
//! pipelines, and a clean stop on `SIGINT`/`SIGTERM`. Command-line
//! concerns, kept out of the library.
//!
//! Exit codes: 0 done, 1 failed, 2 a usage error (clap's), `128 + N`
//! stopped by signal `N`.
#![allow(dead_code)] // each example uses its part

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln::registry_client::{Client, ClientBuilder, DockerConfig};

pub mod display;

/// The registry flags every example shares.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryFlags {
    /// Allow plain HTTP to this registry host (loopback always is), repeatable.
    #[arg(long = "insecure", visible_alias = "insecure-host", value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Read credentials from this file (docker's `config.json` format) instead
    /// of `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, as podman's
    /// and skopeo's `--authfile`.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl RegistryFlags {
    /// A client builder with these credentials and insecure hosts.
    ///
    /// # Errors
    /// An unreadable credentials file.
    pub fn builder(&self) -> Result<ClientBuilder, Box<dyn std::error::Error>> {
        let credentials = match &self.authfile {
            // named by the user: it must be there (skopeo refuses it too)
            Some(f) => {
                std::fs::metadata(f).map_err(|e| format!("--authfile {}: {e}", f.display()))?;
                DockerConfig::from_paths(std::slice::from_ref(f))?
            }
            None => DockerConfig::from_env()?,
        };
        Ok(self.builder_without_credentials().credentials(credentials))
    }

    /// A client builder with these insecure hosts, and no credentials yet.
    pub fn builder_without_credentials(&self) -> ClientBuilder {
        let mut builder = Client::builder();
        for host in &self.insecure {
            builder = builder.insecure_host(host.clone());
        }
        builder
    }

    /// A client with these credentials and insecure hosts.
    ///
    /// # Errors
    /// An unreadable credentials file, or a client that cannot be built.
    pub fn client(&self) -> Result<Client, Box<dyn std::error::Error>> {
        Ok(self.builder()?.build()?)
    }
}

/// An example's `main`: its arguments parsed (a usage error exits 2),
/// logs set up, `work` run to the end on a tokio runtime, and its result
/// made an exit code ([`exit_code`]).
pub fn main<A: clap::Parser, F>(work: impl FnOnce(A) -> F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let args = A::parse();
    init_logs();
    match tokio::runtime::Runtime::new() {
        Ok(rt) => exit_code(rt.block_on(work(args))),
        Err(e) => exit_code(Err(e.into())),
    }
}

/// The registry host `name` means for requests: Docker Hub's names
/// (`index.docker.io`, `https://index.docker.io/v1/`) are `docker.io`.
pub fn registry_host(name: &str) -> String {
    let key = kiln::registry_client::config_key(name);
    if key == "https://index.docker.io/v1/" { kiln::oci_image::DOCKER_HUB.to_owned() } else { key }
}

/// The config file `login` and `logout` write: `--authfile`, else docker's.
///
/// # Errors
/// Without `--authfile`, `DOCKER_CONFIG` or `HOME`.
pub fn config_path(flags: &RegistryFlags) -> Result<PathBuf, Box<dyn std::error::Error>> {
    match &flags.authfile {
        Some(f) => Ok(f.clone()),
        None => kiln::registry_client::docker_config_path()
            .ok_or_else(|| "no place for credentials: set DOCKER_CONFIG or HOME, or give --authfile".into()),
    }
}

/// Logs on stderr as `RUST_LOG` asks (`kiln=debug`, `trace`, ...; nothing
/// by default): the library's spans and events, requests with their
/// method, URL (no query), status and retries. Credentials never appear.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Writes `text` to `file` for a pipeline's next step (`--iidfile`,
/// `--digestfile`, `--metadata-file`): whole, or not at all.
///
/// # Errors
/// When the file cannot be written.
pub fn write_for_pipeline(file: &Path, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// The exit code of a command's result, printing the error chain on
/// failure: `128 + N` for a command stopped by signal `N`
/// ([`Interrupted`]), else 1.
pub fn exit_code(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", kiln::error_chain(e.as_ref()));
            match e.downcast_ref::<Interrupted>() {
                Some(i) => ExitCode::from(128u8.saturating_add(u8::try_from(i.signal).unwrap_or(0))),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// A command stopped by a signal (after cleaning up), with the error
/// its work ended with.
#[derive(Debug, thiserror::Error)]
#[error("stopped by signal {signal}")]
pub struct Interrupted {
    /// The signal's number (2 for `SIGINT`, 15 for `SIGTERM`).
    pub signal: i32,
    /// How the work ended once stopped.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Awaits `work`; on `SIGINT` or `SIGTERM` fires `cancel` and goes on
/// awaiting it, so that the work stops and cleans up before the command
/// exits. Returns the work's result and the signal that stopped it.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub async fn until_signalled<T>(
    cancel: &kiln::build::Cancel,
    work: impl std::future::Future<Output = T>,
) -> std::io::Result<(T, Option<i32>)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut work = std::pin::pin!(work);
    let mut stopped_by = None;
    loop {
        tokio::select! {
            out = &mut work => return Ok((out, stopped_by)),
            _ = term.recv() => {
                stopped_by.get_or_insert(15);
                cancel.cancel();
            }
            _ = int.recv() => {
                stopped_by.get_or_insert(2);
                cancel.cancel();
            }
        }
    }
}
