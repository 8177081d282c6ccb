//! Helpers the examples share (included by each with `mod common;`): a
//! registry client as docker and podman configure one, exit codes, and a
//! clean stop on `SIGINT`/`SIGTERM`. Command-line concerns, kept out of
//! the library.
#![allow(dead_code)] // each example uses its part

use std::process::ExitCode;

use kiln::registry_client::{Client, DockerConfig};

/// A client that reads credentials the way docker and podman do and
/// allows plain HTTP to the given non-loopback hosts.
///
/// # Errors
/// An unreadable credentials file, or a client that cannot be built.
pub fn client(insecure_hosts: &[String]) -> Result<Client, Box<dyn std::error::Error>> {
    let mut builder = Client::builder().credentials(DockerConfig::from_env()?);
    for host in insecure_hosts {
        builder = builder.insecure_host(host.clone());
    }
    Ok(builder.build()?)
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
