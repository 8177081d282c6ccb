//! Builds that must stop, and say why: cancelled through the library (an
//! awaited stop, or a dropped future), hostile Dockerfiles that would
//! exhaust memory or block, a `RUN` that cannot start, and the paths and
//! secrets a `RUN` is given.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::ImageLocation;
use kiln::build::{BuildError, Cancel, ExecError};
use testkit::{run, shared_tempdir, test_user};

use crate::build::{
    WithBase, base_layout, build, example_binary, failing, inner, processes_with_arg, umoci_unpack, write,
};

async fn until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The build scratch directories left in a cache.
fn scratch_dirs(cache: &Path) -> Vec<PathBuf> {
    fs::read_dir(cache.join("tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_build_kills_its_run_and_removes_its_state_before_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nRUN sleep 42.4242\n"));
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let cancel = Cancel::new();
    let task = tokio::spawn(
        build(&ctx, &cache).with_base(&base).cancel(cancel.clone()).output(ImageLocation::layout(out.clone())).build(),
    );
    until("the RUN never started", Duration::from_secs(60), || !processes_with_arg("42.4242").is_empty()).await;
    let asked = Instant::now();
    cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(asked.elapsed() < Duration::from_secs(10), "the stop took {:?}", asked.elapsed());
    assert!(matches!(&err, BuildError::Cancelled { problems } if problems.is_empty()), "{err:?}");
    // by the time it returned: no process, no mount, no scratch, no output
    assert!(processes_with_arg("42.4242").is_empty(), "{:?}", processes_with_arg("42.4242"));
    assert!(scratch_dirs(&cache).is_empty(), "{:?}", scratch_dirs(&cache));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&cache.display().to_string()), "a mount under the cache is left");
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_build_stops_in_the_background_and_the_next_build_reclaims_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nRUN sleep 43.4343\n"));
    let cache = tmp.path().join("cache");
    let task = tokio::spawn(build(&ctx, &cache).with_base(&base).build());
    until("the RUN never started", Duration::from_secs(60), || !processes_with_arg("43.4343").is_empty()).await;
    // dropping the future (here, by aborting its task) cancels the build
    task.abort();
    until("the RUN outlived its dropped build", Duration::from_secs(10), || processes_with_arg("43.4343").is_empty())
        .await;
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nRUN true\n"));
    build(&ctx, &cache).with_base(&base).build().await.unwrap();
    // the next build reclaimed whatever the dropped one had not removed yet,
    // and left nothing of its own
    until("scratch left behind", Duration::from_secs(10), || scratch_dirs(&cache).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_callback_that_panics_on_output_stops_the_run_and_fails_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nRUN echo started && sleep 44.4444\n"));
    let cache = tmp.path().join("cache");
    let panicking = build(&ctx, &cache).with_base(&base).progress(|p| {
        if matches!(p, kiln::build::Progress::Output { .. }) {
            panic!("a progress callback that panics");
        }
    });
    let task = tokio::spawn(panicking.build());
    let joined = tokio::time::timeout(Duration::from_secs(30), task).await.expect("the build hung");
    // the step's task carries the panic out as the build's error
    let err = joined.expect("the build itself panicked").expect_err("a build whose callback panicked succeeded");
    assert!(matches!(&err, BuildError::Task(msg) if msg.contains("a progress callback that panics")), "{err:?}");
    // the RUN did not outlive it, nor its state
    assert!(processes_with_arg("44.4444").is_empty(), "{:?}", processes_with_arg("44.4444"));
    until("scratch left behind", Duration::from_secs(10), || scratch_dirs(&cache).is_empty()).await;
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&cache.display().to_string()), "a mount under the cache is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_dockerfiles_are_refused_before_they_exhaust_memory_or_block() {
    // forty lines of doubling: 2^40 bytes if expanded
    let mut df = String::from("FROM scratch\nENV V0=0123456789abcdef\n");
    for i in 1..=40 {
        let _ = writeln!(df, "ENV V{i}=${{V{}}}${{V{}}}", i - 1, i - 1);
    }
    let started = Instant::now();
    let e = failing(&df, &[]).await;
    let text = kiln::error_chain(&e);
    assert!(matches!(e, BuildError::Plan { .. }) && text.contains("expansions grow past"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());

    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("a"), "a");
    let fifo = tmp.path().join("fifo");
    run(Command::new("mkfifo").arg(&fifo)).unwrap();
    let big = tmp.path().join("big.Dockerfile");
    fs::write(&big, format!("FROM scratch\n{}", "# padding\n".repeat(2 << 20))).unwrap();
    for (file, what) in [(PathBuf::from("/dev/zero"), "a device"), (fifo, "a FIFO"), (big, "a huge file")] {
        let attempt = build(&ctx, &tmp.path().join("cache")).dockerfile(&file).build();
        let e = tokio::time::timeout(Duration::from_secs(20), attempt)
            .await
            .unwrap_or_else(|_| panic!("{what} as -f: the build hung"))
            .unwrap_err();
        assert!(
            matches!(e, BuildError::NotAFile { .. } | BuildError::TooLarge { .. }),
            "{what}: {}",
            kiln::error_chain(&e)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_env_is_set_and_no_mount_point_leaves_a_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let secret = tmp.path().join("token");
    fs::write(&secret, "s3cr3t-token").unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\n\
             RUN --mount=type=secret,id=tok,env=TOKEN sh -c 'test ! -e /run/secrets/tok && printf %s \"$TOKEN\" | sha256sum | cut -d\" \" -f1 > /env-sum'\n\
             RUN --mount=type=secret,id=tok,target=/etc/app/token cat /etc/app/token > /dev/null\n\
             RUN --mount=type=tmpfs,target=/var/lib/junk/deep/er true\n\
             RUN --mount=type=secret,id=tok,env=BOTH,target=/root/both sh -c 'test \"$BOTH\" = \"$(cat /root/both)\"'\n"
        ),
    );
    for overlay in [true, false] {
        let out = tmp.path().join(format!("out-{overlay}"));
        let built = build(&ctx, &tmp.path().join(format!("cache-{overlay}")))
            .with_base(&base)
            .overlayfs(overlay)
            .secret("tok", &secret)
            .output(ImageLocation::layout(out.clone()))
            .build()
            .await
            .unwrap_or_else(|e| panic!("overlay {overlay}: {}", kiln::error_chain(&e)));
        // the base's layer and the first RUN's: the others changed nothing
        assert_eq!(built.layers.len(), 2, "overlay {overlay}: a mount point left a layer");
        let root = umoci_unpack(&out, "latest", &tmp.path().join(format!("unpack-{overlay}"))).join("rootfs");
        let sum = kiln::oci_image::Digest::sha256(b"s3cr3t-token").encoded().to_owned();
        assert_eq!(fs::read_to_string(root.join("env-sum")).unwrap().trim(), sum, "the secret's env");
        assert!(!root.join("etc/app").exists() && !root.join("var/lib/junk/deep").exists());
        let history = crate::build::config_of(&out, "latest").history.unwrap();
        assert!(history.iter().all(|h| !h.created_by.as_deref().unwrap_or_default().contains("s3cr3t")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_runtime_cannot_start_is_not_reported_as_an_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let df = format!("FROM {base}\nRUN [\"/no/such/program\"]\n");
    let e = crate::build::failing_with(&df, &[], |b| b.with_base(&base)).await;
    let text = kiln::error_chain(&e);
    assert!(matches!(inner(&e), BuildError::Exec(ExecError::Start { .. })), "{text}");
    assert!(text.contains("could not be started") && text.contains("/no/such/program"), "{text}");
    assert!(!text.contains("exited with code"), "{text}");
}

#[test]
fn a_non_root_run_says_why_it_could_not_start() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let (Some(user), Some(bin)) = (test_user(), example_binary()) else { return };
    let shared = shared_tempdir().unwrap();
    let Some(base) = base_layout(shared.path()) else { return };
    // what the user runs, where the user can reach it
    let tool = shared.path().join("build");
    fs::copy(&bin, &tool).unwrap();
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(shared.path())).unwrap();
    let ctx = shared.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM kiln-base\nRUN true\n");
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(&ctx)).unwrap();
    let home = shared.path().join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    let out = user
        .command(&tool)
        .arg(&ctx)
        .arg("--build-context")
        .arg(format!("kiln-base={}", base.context()))
        .arg("--output")
        .arg(format!("oci:{}", home.join("out").display()))
        .env("HOME", &home)
        .current_dir(&home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("could not be started"), "{stderr}");
    assert!(!stderr.contains("exited with code"), "{stderr}");
}

#[test]
fn build_dot_with_a_relative_secret_gives_run_mounts_absolute_paths() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(bin) = example_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("f.txt"), "bound\n");
    write(&ctx.join("secret.txt"), "hush\n");
    write(&ctx.join(".dockerignore"), "secret.txt\n");
    write(
        &ctx.join("Dockerfile"),
        "FROM kiln-base\nRUN --mount=type=bind,source=f.txt,target=/f --mount=type=secret,id=s cat /f /run/secrets/s > /seen\n",
    );
    let out = Command::new(&bin)
        .arg(".")
        .arg("--build-context")
        .arg(format!("kiln-base={}", base.context()))
        .args(["--secret", "id=s,src=secret.txt", "--output", "oci:../out", "--cache-dir", "../cache"])
        .current_dir(&ctx)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = umoci_unpack(&tmp.path().join("out"), "latest", tmp.path()).join("rootfs");
    assert_eq!(fs::read_to_string(root.join("seen")).unwrap(), "bound\nhush\n");
}

/// How the test server for `ADD <url>` misbehaves.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Reads the request and never answers.
    StallHeaders,
    /// Answers a head and part of the body, then nothing more.
    StallBody,
    /// Sends a body that never ends.
    EndlessBody,
}

/// A web server on loopback that misbehaves with every request; its
/// threads give up after a minute.
fn bad_server(how: Misbehaviour) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                match how {
                    Misbehaviour::StallHeaders => {}
                    Misbehaviour::StallBody => {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
                        let _ = conn.write_all(&[b'x'; 1000]);
                    }
                    Misbehaviour::EndlessBody => {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                        let block = vec![b'y'; 64 * 1024];
                        while Instant::now() < deadline && conn.write_all(&block).is_ok() {}
                        return;
                    }
                }
                // silence, until the client hangs up
                conn.set_read_timeout(Some(Duration::from_millis(100))).ok();
                let mut one = [0u8; 1];
                while Instant::now() < deadline {
                    if matches!(std::io::Read::read(&mut conn, &mut one), Ok(0)) {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_url_downloads_that_stall_or_never_end_stop_with_a_clear_error_and_leave_nothing() {
    let idle = Duration::from_secs(1);
    let client =
        kiln::registry_client::Client::builder().idle_timeout(idle).max_download_size(8 << 20).build().unwrap();
    for (how, expect) in [
        (Misbehaviour::StallHeaders, "timed out"),
        (Misbehaviour::StallBody, "timed out"),
        (Misbehaviour::EndlessBody, "limit"),
    ] {
        let url = bad_server(how);
        let tmp = tempfile::tempdir().unwrap();
        let ctx = tmp.path().join("ctx");
        write(&ctx.join("Dockerfile"), &format!("FROM scratch\nADD {url}/file.bin /file.bin\n"));
        let cache = tmp.path().join("cache");
        let started = Instant::now();
        let attempt = build(&ctx, &cache).client(client.clone()).build();
        let e = tokio::time::timeout(Duration::from_secs(30), attempt)
            .await
            .unwrap_or_else(|_| panic!("{how:?}: the build hung"))
            .unwrap_err();
        let text = kiln::error_chain(&e);
        assert!(text.contains(expect), "{how:?}: {text}");
        assert!(started.elapsed() < Duration::from_secs(15), "{how:?}: took {:?}", started.elapsed());
        // nothing of the download is left in the cache
        assert!(scratch_dirs(&cache).is_empty(), "{how:?}: {:?}", scratch_dirs(&cache));
        let big: Vec<_> = walk_files(&cache).into_iter().filter(|(_, size)| *size > 1 << 20).collect();
        assert!(big.is_empty(), "{how:?}: {big:?}");
    }
}

/// Every file under `dir` with its size.
fn walk_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out
}
