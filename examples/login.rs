//! Logs in to a registry as `docker login` does: the credentials are
//! checked against the registry (its token server included), then stored
//! where docker keeps them. When the token server returns an identity
//! token (asked with `offline_token=true`), that token is kept instead of
//! the password.
//!
//! `cargo run --example login -- REGISTRY [-u USER] [--password-stdin] [--authfile FILE]`
//!
//! Without `-u` or `--password-stdin`, on a terminal, kiln asks (the
//! password without echo). The credential goes to the helper the config
//! file names for the registry (`credHelpers`, else `credsStore`), else
//! into its `auths` (base64, the file rewritten atomically with mode 0600,
//! every other key kept): `--authfile FILE`, else `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`. Docker Hub is `docker.io`,
//! `index.docker.io` or `https://index.docker.io/v1/`. No secret is ever
//! printed or logged.

use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

use clap::Parser;
use kiln::registry_client::{Credential, DockerConfig, StaticCredentials, Stored};

mod common;

#[derive(Parser)]
#[command(about = "Log in to a registry")]
struct Args {
    /// The registry (`localhost:5000`, `docker.io`, ...).
    registry: String,
    /// The user name.
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    registry_flags: common::RegistryFlags,
}

fn main() -> ExitCode {
    common::main(|args: Args| async move { run(&args).await })
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let host = common::registry_host(&args.registry);
    let terminal = std::io::stdin().is_terminal();
    let username = match &args.username {
        Some(u) => u.clone(),
        None if terminal && !args.password_stdin => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
        None => return Err("no user name: give -u USER".into()),
    };
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else if terminal {
        rpassword::prompt_password("Password: ")?
    } else {
        return Err("no password: give --password-stdin, or run on a terminal".into());
    };
    if username.is_empty() || password.is_empty() {
        return Err("a user name and a password are needed".into());
    }
    let credential = Credential::basic(username.clone(), password);
    // checked against the registry first: nothing is stored for a refusal
    let client = args
        .registry_flags
        .builder_without_credentials()
        .credentials(StaticCredentials::new().with(host.clone(), credential.clone()))
        .build()?;
    let login = client.check_login(&host).await?;
    let path = common::config_path(&args.registry_flags)?;
    // a token server's identity token is kept instead of the password, as docker does
    let stored = match login.identity_token() {
        Some(token) => DockerConfig::default().store_identity_token(&path, &host, &username, token)?,
        None => DockerConfig::default().store(&path, &host, &credential)?,
    };
    match stored {
        Stored::Helper(h) => eprintln!("credentials stored by docker-credential-{h}"),
        Stored::File(f) => eprintln!("credentials stored in {}", f.display()),
        _ => {}
    }
    println!("Login Succeeded");
    Ok(())
}
