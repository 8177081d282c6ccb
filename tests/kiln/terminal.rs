//! The examples in a real terminal: each runs in a `tmux` pane (a private
//! server, stopped by its PID) whose raw output and final screen are
//! checked: progress frames were drawn (spinners, redrawn lines, `RUN`
//! output under its step), the final screen lists every step with its
//! state, the blobs moved and, last, the digest. Off a terminal the same
//! runs print plain lines, and `--progress json` stays JSON on a terminal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{Registry, Tmux};

use crate::build::{base_layout, example, write};

const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;

/// Runs `program args` in a pane until it ends; its exit code, screen and
/// raw output.
fn in_terminal(program: &Path, args: &[&str]) -> Option<(i32, String, String)> {
    in_terminal_with(program, args, &[])
}

/// [`in_terminal`] with more environment.
fn in_terminal_with(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Option<(i32, String, String)> {
    let pane = Tmux::run(program, args, env, WIDTH, HEIGHT).unwrap()?;
    let code = pane.wait(Duration::from_secs(300)).unwrap();
    let raw = String::from_utf8_lossy(&pane.raw().unwrap()).into_owned();
    Some((code, pane.screen().unwrap(), raw))
}

/// The screen's last line.
fn last_line(screen: &str) -> &str {
    screen.lines().last().unwrap_or_default().trim_end()
}

/// The screen line that starts (after blanks) with `start`.
fn screen_line<'a>(screen: &'a str, start: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} on the screen:\n{screen}"))
}

/// A spinner frame of the display.
fn spun(raw: &str) -> bool {
    ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"].iter().any(|s| raw.contains(s))
}

/// A build on a terminal: steps with their state, duration and layer
/// size; `RUN` output drawn under its step while it runs; the pushed
/// blobs; the digest last. Built again: every layer step `CACHED`. Off a
/// terminal: plain lines, no control sequence, the same digest.
#[test]
fn build_on_a_terminal_draws_its_steps_output_and_blobs() {
    let Some(build) = example("build") else { return };
    let Ok(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM kiln-base\nCOPY a.txt /a.txt\nRUN for i in 1 2 3 4 5 6 7 8; do echo \"tick $i\" | tee -a /ticks; sleep 0.1; done\nENV A=1\n",
    );
    write(&ctx.join("a.txt"), "a\n");
    let name = format!("{}/kiln/terminal:v1", registry.host());
    let base_context = format!("kiln-base=oci-layout://{}:1", base.layout.display());
    let cache = tmp.path().join("cache");
    let args = [
        ctx.to_str().unwrap(),
        "--build-context",
        &base_context,
        "--output",
        &name,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let Some((code, screen, raw)) = in_terminal(&build, &args) else { return };
    assert_eq!(code, 0, "{screen}");

    // frames were drawn: spinners, lines cleared and redrawn, RUN output under its step
    assert!(spun(&raw), "no spinner frame:\n{raw:?}");
    assert!(raw.contains("\x1b[2K") && raw.contains("\x1b[1A"), "no redrawn lines:\n{raw:?}");
    assert!(raw.contains("=> # tick 1"), "RUN output was not drawn under its step:\n{raw:?}");

    // the final screen: every step, its state, the layer it made, the blobs pushed, the digest
    let copy = screen_line(&screen, "=> [0] COPY a.txt /a.txt");
    assert!(copy.contains("B layer") && copy.ends_with('s'), "{copy:?}");
    let run = screen_line(&screen, "=> [0] RUN for i in");
    assert!(run.contains("layer"), "{run:?}");
    screen_line(&screen, "=> [0] ENV A=1");
    screen_line(&screen, &format!("=> writing docker://{name}"));
    let pushed = screen.lines().filter(|l| l.contains("=> => sha256:") && l.ends_with("done")).count();
    assert!(pushed >= 3, "the config and two layers pushed, each shown done:\n{screen}");
    assert!(screen_line(&screen, "[+] Built in").contains("3 steps, 0 cached"), "{screen}");
    assert!(!screen.contains("=> # tick"), "RUN output is shown only while the step runs:\n{screen}");
    let digest = last_line(&screen).to_owned();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "the digest last:\n{screen}");

    // again: from the cache
    let Some((code, screen, _)) = in_terminal(&build, &args) else { return };
    assert_eq!(code, 0, "{screen}");
    screen_line(&screen, "=> CACHED [0] COPY a.txt /a.txt");
    screen_line(&screen, "=> CACHED [0] RUN for i in");
    assert!(screen_line(&screen, "[+] Built in").contains("3 steps, 2 cached"), "{screen}");
    assert_eq!(last_line(&screen), digest);

    // logs asked for: log lines would tear a live display, so plain lines
    let Some((code, screen, raw)) = in_terminal_with(&build, &args, &[("RUST_LOG", "debug")]) else { return };
    assert_eq!(code, 0, "{screen}");
    assert!(!spun(&raw), "a live display under RUST_LOG:\n{raw:?}");
    assert!(raw.contains("[0] line 2: cached in") && raw.contains("DEBUG"), "{raw:?}");
    assert_eq!(last_line(&screen), digest);

    // off a terminal: plain lines, no control sequences, the same digest
    let out = Command::new(&build).args(args).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[0] line 3: RUN for i in") && err.contains("[0] line 3: cached in"), "{err}");
    assert!(!err.contains('\x1b'), "control sequences off a terminal:\n{err:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last(), Some(digest.as_str()));
    // --progress tty needs a terminal
    let refused = Command::new(&build).args(args).args(["--progress", "tty"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--progress tty: stderr is not a terminal"));

    // --progress json on a terminal: still one JSON event per line
    let mut json_args = args.to_vec();
    json_args.extend(["--progress", "json"]);
    let Some((code, _, raw)) = in_terminal(&build, &json_args) else { return };
    assert_eq!(code, 0);
    let lines: Vec<&str> = raw.split("\r\n").filter(|l| !l.is_empty()).collect();
    for l in &lines {
        let event: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
        assert!(event["event"].is_string(), "{l}");
    }
    assert_eq!(serde_json::from_str::<serde_json::Value>(lines.last().unwrap()).unwrap()["event"], "built");
}

/// `copy` and `promote` on a terminal: the transfer, each blob with its
/// bytes and state, the summary, and the digest last; `promote -q` prints
/// the digest alone.
#[test]
fn copy_and_promote_on_a_terminal_show_every_blob() {
    let (Some(build), Some(copy), Some(promote)) = (example("build"), example("copy"), example("promote")) else {
        return;
    };
    let (Ok(dev), Ok(prod)) = (Registry::start(), Registry::start()) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY big.bin /\n");
    // a layer big enough to show its size in megabytes
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(ctx.join("big.bin"), noise).unwrap();
    let layout = format!("oci:{}:v1", tmp.path().join("out").display());
    let built = Command::new(&build)
        .arg(&ctx)
        .args(["-q", "--output", &layout, "--cache-dir"])
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let digest = String::from_utf8_lossy(&built.stdout).trim().to_owned();

    let dev_name = format!("{}/team/app:v1", dev.host());
    let Some((code, screen, raw)) = in_terminal(&copy, &[&layout, &dev_name]) else { return };
    assert_eq!(code, 0, "{screen}");
    assert!(spun(&raw), "no spinner frame:\n{raw:?}");
    screen_line(&screen, &format!("=> copying {layout} to docker://{dev_name}"));
    let layer = screen
        .lines()
        .find(|l| l.contains("=> => sha256:") && l.contains("MB / 3"))
        .unwrap_or_else(|| panic!("no line for the 3 MB layer:\n{screen}"));
    assert!(layer.ends_with("done"), "{layer:?}");
    screen_line(&screen, "[+] Copied in");
    assert_eq!(last_line(&screen), digest);

    let prod_name = format!("{}/prod/app:v1", prod.host());
    let pinned = format!("{}/team/app@{digest}", dev.host());
    let Some((code, screen, _)) = in_terminal(&promote, &[&pinned, &prod_name]) else { return };
    assert_eq!(code, 0, "{screen}");
    // (cut to the terminal's width)
    screen_line(&screen, &format!("=> promoting {pinned} to"));
    assert!(screen.lines().filter(|l| l.contains("=> => sha256:") && l.ends_with("done")).count() >= 2, "{screen}");
    screen_line(&screen, "[+] Promoted in");
    screen_line(&screen, &format!("promoted {pinned} -> "));
    assert_eq!(last_line(&screen), digest);

    // promoted again: nothing to move, and -q prints the digest alone
    let quiet = Command::new(&promote).args([&pinned, &prod_name, "-q"]).output().unwrap();
    assert!(quiet.status.success(), "{}", String::from_utf8_lossy(&quiet.stderr));
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).trim_end(), digest);
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
}

/// A base image pulled from a registry on a terminal: the step that
/// needed its layers shows the pull and a bar per layer, each done.
#[test]
fn a_pulled_base_shows_its_layers_under_the_step_that_needed_them() {
    let (Some(build), Some(copy)) = (example("build"), example("copy")) else { return };
    let Ok(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let remote = format!("{}/kiln/base:1", registry.host());
    let pushed = Command::new(&copy).args([&base.location(), &remote, "-q"]).output().unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM {remote}\nRUN echo pulled > /pulled\n"));
    let out = format!("oci:{}", tmp.path().join("out").display());
    let cache = tmp.path().join("cache");
    let args = [ctx.to_str().unwrap(), "--output", &out, "--cache-dir", cache.to_str().unwrap()];
    let Some((code, screen, _)) = in_terminal(&build, &args) else { return };
    assert_eq!(code, 0, "{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    let run = lines.iter().position(|l| l.contains("=> [0] RUN echo pulled")).unwrap_or_else(|| panic!("{screen}"));
    let under: Vec<&&str> = lines[run + 1..].iter().take_while(|l| l.contains("=> => ")).collect();
    assert!(under.iter().any(|l| l.contains(&format!("pulling {remote}"))), "{screen}");
    assert!(under.iter().any(|l| l.contains("=> => sha256:") && l.ends_with("done")), "{screen}");
}
