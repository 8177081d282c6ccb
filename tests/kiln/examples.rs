//! The examples as a pipeline runs them: one set of registry flags
//! (`--insecure`, its alias `--insecure-host`, `--authfile`), files that pass
//! the exact digests on (`--iidfile`, `--metadata-file`, `--digestfile`),
//! and the documented exit codes.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kiln::oci_image::Layout;
use testkit::Registry;

use crate::build::{example, write};

/// Runs `cmd`, returning its output; panics with its stderr when it fails.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A context at `dir/ctx` whose Dockerfile copies one file from it onto
/// `scratch`, then runs `more` (more instructions, or nothing).
fn one_file_context(dir: &Path, more: &str) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM scratch\nCOPY a.txt /\n{more}"));
    write(&ctx.join("a.txt"), "a\n");
    ctx
}

/// Every line of `out`'s stdout as JSON (a line that is not panics).
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Builds the one-file context under `dir` into a layout, pushes it to
/// `name` with kiln's copy and the credentials in `authfile`, and has
/// skopeo read it back with the same file.
fn push_and_read_back(dir: &Path, name: &str, authfile: &Path, skopeo: &Path) {
    let ctx = one_file_context(dir, "");
    let out = format!("oci:{}:v1", dir.join("out").display());
    ok(Command::new(example("build").unwrap())
        .arg(&ctx)
        .args(["-q", "--output", &out, "--cache-dir"])
        .arg(dir.join("cache")));
    ok(Command::new(example("copy").unwrap()).args([out.as_str(), name, "--authfile"]).arg(authfile));
    ok(Command::new(skopeo)
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(authfile)
        .arg(format!("docker://{name}")));
}

/// Runs `cmd` with `input` on its stdin, returning its output.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_examples_pass_exact_digests_on_through_files() {
    let (Some(build), Some(copy)) = (example("build"), example("copy")) else { return };
    let Ok(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = one_file_context(tmp.path(), "");
    // an empty credentials file of our own: nothing of the user's is read
    let authfile = tmp.path().join("auth.json");
    write(&authfile, "{}");
    let name = format!("{}/kiln/piped:v1", registry.host());
    let (iid, meta, out) = (tmp.path().join("iid"), tmp.path().join("meta.json"), tmp.path().join("out"));
    let built = ok(Command::new(&build)
        .arg(&ctx)
        .args(["-t", &name, "--output", "registry", "--output"])
        .arg(format!("oci:{}", out.display()))
        .arg("--iidfile")
        .arg(&iid)
        .arg("--metadata-file")
        .arg(&meta)
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .args(["--insecure-host", "registry.invalid", "--authfile"])
        .arg(&authfile)
        .env("SOURCE_DATE_EPOCH", "0"));
    let digest = last_line(&built);
    let layout = Layout::open(&out).unwrap();
    let manifest = layout.resolve("v1").unwrap();
    assert_eq!(manifest.digest.to_string(), digest);
    let kiln::oci_image::AnyManifest::Image(m) = layout.read_manifest(&manifest).unwrap() else { panic!("an index") };
    // the image id, as docker writes it: the config's digest, no newline
    assert_eq!(read(&iid), m.value().config.digest.to_string());
    let meta: serde_json::Value = serde_json::from_str(&read(&meta)).unwrap();
    assert_eq!(meta["containerimage.digest"], digest.as_str());
    assert_eq!(meta["containerimage.config.digest"], m.value().config.digest.to_string());
    assert_eq!(meta["image.name"], name.as_str());
    assert_eq!(meta["kiln.pushed"], serde_json::json!([{"reference": name, "digest": digest}]));
    assert_eq!(meta["kiln.platforms"][0], kiln::oci_image::Platform::host().to_string());
    // its history, as docker image history prints it
    if let Some(inspect) = example("inspect") {
        let history = ok(Command::new(inspect).arg(format!("oci:{}:v1", out.display())).arg("--history"));
        let text = String::from_utf8_lossy(&history.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split("   ").map(str::trim).collect();
        assert_eq!(
            header.iter().filter(|h| !h.is_empty()).copied().collect::<Vec<_>>(),
            ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
        );
        let id: String = m.value().config.digest.encoded().chars().take(12).collect();
        let top = lines.next().unwrap_or_default();
        assert!(top.starts_with(&id) && top.contains("COPY a.txt /") && top.contains("ago"), "{text}");
        assert_eq!(last_line(&history), digest);
    }

    // copy passes the digest at the destination on, as skopeo's --digestfile
    let digestfile = tmp.path().join("digest");
    let copied = ok(Command::new(&copy)
        .arg(&name)
        .arg(format!("oci:{}:copied", tmp.path().join("copy").display()))
        .arg("--digestfile")
        .arg(&digestfile)
        .args(["--insecure", "registry.invalid", "--authfile"])
        .arg(&authfile));
    assert_eq!(read(&digestfile), digest);
    assert_eq!(last_line(&copied), digest);
}

#[test]
fn every_example_takes_the_same_registry_flags_and_exit_codes() {
    for name in ["build", "copy", "inspect", "promote", "release_tags", "login", "logout"] {
        let Some(bin) = example(name) else { return };
        let help = ok(Command::new(&bin).arg("--help"));
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in ["--insecure <HOST>", "--authfile <FILE>", "insecure-host"] {
            assert!(help.contains(flag), "{name} --help lacks {flag}:\n{help}");
        }
        // those that move images show their progress the same way
        if ["build", "copy", "promote"].contains(&name) {
            for flag in ["--progress <PROGRESS>", "- auto:", "- tty:", "- plain:", "- json:", "-q, --quiet"] {
                assert!(help.contains(flag), "{name} --help lacks {flag}:\n{help}");
            }
        }
        // a usage error is exit code 2, as clap and docker have it
        let bad = Command::new(&bin).arg("--no-such-flag").output().unwrap();
        assert_eq!(bad.status.code(), Some(2), "{name}: {}", String::from_utf8_lossy(&bad.stderr));
    }
    // a failure is 1: an unreadable credentials file, named
    let Some(inspect) = example("inspect") else { return };
    let failed =
        Command::new(inspect).args(["oci:/nonexistent", "--authfile", "/nonexistent/auth.json"]).output().unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("/nonexistent/auth.json"));
}

/// The examples at `RUST_LOG=trace` log their requests, and never a
/// credential: not the password, not the basic-auth header, not a token.
#[test]
fn the_examples_log_at_trace_without_a_credential() {
    let (Some(build), Some(copy), Some(_)) = (example("build"), example("copy"), testkit::tool("htpasswd")) else {
        return;
    };
    let password = "s3cret-pass-word";
    let auth = testkit::RegistryOptions {
        basic_auth: Some(("kiln-user".into(), password.into())),
        ..testkit::RegistryOptions::default()
    };
    let Ok(registry) = Registry::start_with(&auth) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = one_file_context(tmp.path(), "");
    let basic = base64_basic("kiln-user", password);
    let authfile = tmp.path().join("auth.json");
    write(&authfile, &format!(r#"{{"auths":{{"{}":{{"auth":"{basic}"}}}}}}"#, registry.host()));
    let name = format!("{}/kiln/logged:v1", registry.host());
    let login = example("login").map(|login| {
        let out = with_stdin(
            Command::new(login)
                .args([registry.host().as_str(), "-u", "kiln-user", "--password-stdin", "--authfile"])
                .arg(tmp.path().join("login.json"))
                .env("RUST_LOG", "trace"),
            password,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    });
    let runs = [
        ok(Command::new(&build)
            .arg(&ctx)
            .args(["-t", &name, "--output", "registry", "--authfile"])
            .arg(&authfile)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .env("RUST_LOG", "trace")),
        ok(Command::new(&copy)
            .arg(&name)
            .arg(format!("oci:{}", tmp.path().join("copy").display()))
            .arg("--authfile")
            .arg(&authfile)
            .env("RUST_LOG", "trace")),
    ];
    for out in runs.iter().chain(&login) {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // the logs are on: requests to the registry show
        assert!(text.contains(&registry.host()) && text.contains("TRACE"), "no trace logs:\n{text}");
        for secret in [password, basic.as_str()] {
            assert!(!text.contains(secret), "a credential in the output:\n{text}");
        }
    }
}

/// `user:password` as basic auth encodes it.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// `--progress json` is the library's event stream, one JSON object per
/// line; `--progress plain` lines on stderr; `--quiet` only the digest.
#[test]
fn build_progress_is_plain_lines_json_events_or_quiet() {
    let Some(build) = example("build") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = one_file_context(tmp.path(), "ENV A=1\n");
    let run = |extra: &[&str], cache: &str| {
        ok(Command::new(&build)
            .arg(&ctx)
            .arg("--output")
            .arg(format!("oci:{}", tmp.path().join("out").display()))
            .arg("--cache-dir")
            .arg(tmp.path().join(cache))
            .args(extra))
    };
    let json = run(&["--progress", "json"], "c1");
    let events = json_lines(&json);
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        names,
        ["step_started", "cache_miss", "step_finished", "step_started", "step_finished", "writing", "built"],
        "{events:?}"
    );
    let built = events.last().unwrap();
    let digest = built["manifest"]["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"));
    assert_eq!(events[0]["step"]["line"], 2);

    let plain = run(&["--progress", "plain"], "c1");
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(err.contains("[0] line 2: COPY a.txt /") && err.contains("[0] line 2: cached in"), "{err}");
    assert_eq!(last_line(&plain), digest);

    let quiet = run(&["--quiet"], "c2");
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).trim_end(), digest, "--quiet prints the digest alone");
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
}

/// `copy --progress json` is the transfer's event stream, one JSON object
/// per line, then a `copied` event; `--quiet` prints the digest alone.
#[test]
fn copy_progress_is_json_events_or_quiet() {
    let (Some(build), Some(copy)) = (example("build"), example("copy")) else { return };
    let Ok(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = one_file_context(tmp.path(), "");
    let out = format!("oci:{}:v1", tmp.path().join("out").display());
    let built = ok(Command::new(&build)
        .arg(&ctx)
        .args(["-q", "-t", "kiln/x:v1", "--output", &out, "--cache-dir"])
        .arg(tmp.path().join("cache")));
    let digest = last_line(&built);
    let json = ok(Command::new(&copy).args([&out, &format!("{}/kiln/json:v1", registry.host()), "--progress", "json"]));
    let events = json_lines(&json);
    let uploaded = events.iter().filter(|e| e["event"] == "blob_uploaded").count();
    assert_eq!(uploaded, 2, "a config and a layer: {events:?}");
    assert!(events.iter().any(|e| e["event"] == "bytes" && e["done"] == e["total"]), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!((last["event"].as_str(), last["digest"].as_str()), (Some("copied"), Some(digest.as_str())));
    let quiet = ok(Command::new(&copy).args([&out, &format!("{}/kiln/quiet:v1", registry.host()), "-q"]));
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).trim_end(), digest);
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
}

/// `login` checks the credentials against the registry and stores them as
/// docker does: a config skopeo reads and kiln's copy uses; through the
/// configured credential helper (the file untouched); nothing for a wrong
/// password; and `logout` takes them out again.
#[test]
fn login_stores_what_skopeo_and_copy_use_and_logout_erases_it() {
    use std::os::unix::fs::PermissionsExt;
    let (Some(login), Some(logout), Some(copy), Some(skopeo)) =
        (example("login"), example("logout"), example("copy"), testkit::tool("skopeo"))
    else {
        return;
    };
    let Some(_) = testkit::tool("htpasswd") else { return };
    let auth = testkit::RegistryOptions {
        basic_auth: Some(("kiln-user".into(), "right-password".into())),
        ..testkit::RegistryOptions::default()
    };
    let Ok(registry) = Registry::start_with(&auth) else { return };
    let host = registry.host();
    let tmp = tempfile::tempdir().unwrap();
    let login_with = |authfile: &Path, password: &str, path_dir: Option<&Path>| {
        let mut cmd = Command::new(&login);
        cmd.args([host.as_str(), "-u", "kiln-user", "--password-stdin", "--authfile"]).arg(authfile);
        if let Some(d) = path_dir {
            cmd.env("PATH", format!("{}:{}", d.display(), std::env::var("PATH").unwrap_or_default()));
        }
        with_stdin(&mut cmd, &format!("{password}\n"))
    };

    // a wrong password: a clear error, nothing stored
    let authfile = tmp.path().join("auth.json");
    let wrong = login_with(&authfile, "wrong-password", None);
    assert_eq!(wrong.status.code(), Some(1));
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains(&host) && !said.contains("wrong-password"), "{said}");
    assert!(!authfile.exists(), "a refused login stored something");

    // the right one: stored in auths, 0600, read by skopeo and by kiln's copy
    let right = login_with(&authfile, "right-password", None);
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    assert_eq!(last_line(&right), "Login Succeeded");
    assert_eq!(fs::metadata(&authfile).unwrap().permissions().mode() & 0o777, 0o600);
    let name = format!("{host}/kiln/login:v1");
    push_and_read_back(tmp.path(), &name, &authfile, &skopeo);

    // logout: gone, and copy is refused again
    let out_msg = ok(Command::new(&logout).arg(&host).arg("--authfile").arg(&authfile));
    assert!(last_line(&out_msg).starts_with("Removing login credentials"), "{out_msg:?}");
    let refused = Command::new(&copy)
        .args([name.as_str(), &format!("oci:{}", tmp.path().join("o2").display()), "--authfile"])
        .arg(&authfile)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));

    // with a credential helper configured for the registry: stored by it, auths untouched
    let helpers = tmp.path().join("helpers");
    fs::create_dir_all(&helpers).unwrap();
    let script = helpers.join("docker-credential-kilntest");
    fs::write(&script, "#!/bin/sh\ncat > \"$(dirname \"$0\")/$1.in\"\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let with_helper = tmp.path().join("helper.json");
    let config = format!(r#"{{"credHelpers": {{"{host}": "kilntest"}}, "auths": {{}}}}"#);
    fs::write(&with_helper, &config).unwrap();
    let stored = login_with(&with_helper, "right-password", Some(&helpers));
    assert!(stored.status.success(), "{}", String::from_utf8_lossy(&stored.stderr));
    let sent: serde_json::Value = serde_json::from_str(&read(&helpers.join("store.in"))).unwrap();
    assert_eq!(sent, serde_json::json!({"ServerURL": host, "Username": "kiln-user", "Secret": "right-password"}));
    assert_eq!(read(&with_helper), config, "auths untouched");
}

/// `login` to a registry behind a token server: the credentials are
/// checked through the token flow, and the identity token the server
/// returns is kept instead of the password (as docker keeps it), in a
/// config that skopeo and kiln's copy then use.
#[test]
fn login_through_a_token_server_keeps_its_identity_token() {
    let (Some(login), Some(_), Some(_), Some(skopeo)) =
        (example("login"), example("build"), example("copy"), testkit::tool("skopeo"))
    else {
        return;
    };
    let options = testkit::RegistryOptions {
        token_auth: Some(testkit::TokenAuth {
            user: "tok-user".into(),
            password: "tok-password".into(),
            refresh_token: Some("identity-refresh-token".into()),
            ttl_secs: 300,
        }),
        ..testkit::RegistryOptions::default()
    };
    let Ok(registry) = Registry::start_with(&options) else { return };
    let host = registry.host();
    let tmp = tempfile::tempdir().unwrap();
    let authfile = tmp.path().join("auth.json");
    let login_with = |password: &str| {
        let mut cmd = Command::new(&login);
        cmd.args([host.as_str(), "-u", "tok-user", "--password-stdin", "--authfile"]).arg(&authfile);
        with_stdin(&mut cmd, &format!("{password}\n"))
    };
    let wrong = login_with("wrong");
    assert_eq!(wrong.status.code(), Some(1), "{}", String::from_utf8_lossy(&wrong.stderr));
    assert!(!authfile.exists(), "a refused login stored something");
    let right = login_with("tok-password");
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    let config: serde_json::Value = serde_json::from_str(&read(&authfile)).unwrap();
    let entry = &config["auths"][host.as_str()];
    assert_eq!(entry["identitytoken"], "identity-refresh-token", "{config}");
    assert_eq!(entry["auth"], base64_basic("tok-user", ""), "the user without a password, as docker writes it");
    assert!(!read(&authfile).contains("tok-password"), "the password is not kept");

    push_and_read_back(tmp.path(), &format!("{host}/kiln/token-login:v1"), &authfile, &skopeo);
}
