//! A build killed (`SIGKILL`, or the `SIGTERM` of `timeout` and CI
//! cancellations) during a `RUN`, a large `COPY` and while writing its
//! outputs, through the build example as a user runs it: within 5 s no
//! process of the `RUN` is left; the next build on the same cache reclaims
//! every mount and temporary file, the output is absent or the previous
//! one, and the next build gives the digest a clean build gives.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::tool;

use crate::build::{Base, base_layout, example_binary, processes_with_arg, write};

/// The marker argument of the `RUN` to kill: no other process has it.
const MARKER: &str = "31.337";

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// Temporary leftovers under `dir`: kiln's staging names, and build
/// scratch directories (extracted layers, under `skip`, are the image's).
fn leftovers(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let in_tmp = d.file_name().is_some_and(|n| n == "tmp");
            if name.starts_with(".tmp") || name.starts_with(".kiln-out-") || (in_tmp && name.starts_with("build-")) {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) && e.path() != skip {
                todo.push(e.path());
            }
        }
    }
    out
}

struct Scene {
    bin: PathBuf,
    base: Base,
    ctx: PathBuf,
    cache: PathBuf,
    out: PathBuf,
    archive: PathBuf,
}

impl Scene {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(&self.ctx)
            .arg("--build-context")
            .arg(format!("kiln-base={}", self.base.context()))
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--output")
            .arg(format!("oci:{}", self.out.display()))
            .arg("--output")
            .arg(format!("docker-archive:{}", self.archive.display()))
            .arg("--overwrite")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// A build to the end: its digest.
    fn build(&self) -> String {
        let out = self.command().output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned()
    }

    /// Starts a build and kills it with `signal` once `ready` says so.
    fn kill_when(&self, signal: rustix::process::Signal, what: &str, ready: &dyn Fn() -> bool) -> Child {
        let mut child = self.command().spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what}: the build ended ({status}) before it could be killed");
            }
            assert!(Instant::now() < deadline, "{what}: never got there");
            std::thread::sleep(Duration::from_millis(2));
        }
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), signal).unwrap();
        child
    }

    /// After a kill: the next build reclaims everything and gives `clean`.
    fn next_build_is_clean(&self, what: &str, clean: &str, previous: Option<&str>) {
        // the output is absent or the previous one
        match previous {
            None => assert!(!self.out.exists(), "{what}: a partial output appeared"),
            Some(p) => {
                let layout = kiln::oci_image::Layout::open(&self.out).unwrap();
                layout.verify().unwrap();
                assert_eq!(layout.resolve("latest").unwrap().digest.to_string(), p, "{what}");
            }
        }
        assert_eq!(self.build(), clean, "{what}: the next build gave another image");
        assert!(mounts_under(&self.cache).is_empty(), "{what}: mounts left: {:?}", mounts_under(&self.cache));
        let parent = self.out.parent().unwrap();
        assert_eq!(leftovers(parent, &self.cache.join("l")), Vec::<PathBuf>::new(), "{what}: temporary files left");
        kiln::oci_image::Layout::open(&self.out).unwrap().verify().unwrap();
    }
}

#[test]
fn a_killed_build_leaves_nothing_running_and_the_next_build_reclaims_the_rest() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(bin) = example_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let Some(_) = tool("runc") else { return };
    let work = tmp.path().join("work");
    let scene = Scene {
        bin,
        base,
        ctx: work.join("ctx"),
        cache: work.join("cache"),
        out: work.join("out"),
        archive: work.join("out.tar"),
    };
    // the RUN sleeps as long as the context's `nap` file says: MARKER while
    // it is to be killed, 0 for the clean builds (a RUN that changes no file
    // makes the same image either way)
    write(
        &scene.ctx.join("Dockerfile"),
        "FROM kiln-base\nCOPY big /big\nRUN --mount=type=bind,source=nap,target=/nap sleep $(cat /nap)\n",
    );
    write(&scene.ctx.join("nap"), "0");
    let signals = [(rustix::process::Signal::KILL, "SIGKILL"), (rustix::process::Signal::TERM, "SIGTERM")];

    // during a large COPY: its layer is being written into the cache
    let blobs = scene.cache.join("oci/blobs");
    let copying = || {
        fs::read_dir(&blobs)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
    };
    let mut previous: Option<String> = None;
    let mut clean = String::new();
    for (n, (signal, name)) in signals.into_iter().enumerate() {
        fs::write(scene.ctx.join("big"), big(n as u64)).unwrap();
        clean = scene.reference(&work, n);
        let what = format!("{name} during COPY");
        let mut child = scene.kill_when(signal, &what, &copying);
        stopped(&mut child, signal, &what);
        scene.next_build_is_clean(&what, &clean, previous.as_deref());
        previous = Some(clean.clone());
    }

    // during a RUN
    write(&scene.ctx.join("nap"), MARKER);
    for (signal, name) in signals {
        let what = format!("{name} during RUN");
        let running = || !processes_with_arg(MARKER).is_empty();
        let mut child = scene.kill_when(signal, &what, &running);
        stopped(&mut child, signal, &what);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with_arg(MARKER).is_empty() {
            assert!(Instant::now() < deadline, "{what}: the RUN outlived the build: {:?}", processes_with_arg(MARKER));
            std::thread::sleep(Duration::from_millis(50));
        }
        write(&scene.ctx.join("nap"), "0");
        scene.next_build_is_clean(&what, &clean, Some(&clean));
        write(&scene.ctx.join("nap"), MARKER);
    }
    write(&scene.ctx.join("nap"), "0");

    // while writing the outputs: the docker-archive is being staged beside its place
    let staging = || {
        fs::read_dir(&work)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-kiln-archive-"))
    };
    for (signal, name) in signals {
        let what = format!("{name} while writing outputs");
        let archive_before = fs::read(&scene.archive).unwrap();
        let mut child = scene.kill_when(signal, &what, &staging);
        stopped(&mut child, signal, &what);
        assert_eq!(fs::read(&scene.archive).unwrap(), archive_before, "{what}: the archive changed");
        scene.next_build_is_clean(&what, &clean, Some(&clean));
    }
}

/// 48 MiB of noise from `seed`: each COPY to kill needs a COPY that runs.
fn big(seed: u64) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ seed;
    (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[5]
        })
        .collect()
}

/// Waits for a killed build: failed, and for `SIGTERM` stopped in order
/// (exit 128 + 15).
fn stopped(child: &mut Child, signal: rustix::process::Signal, what: &str) {
    let status = child.wait().unwrap();
    assert!(!status.success(), "{what}: the killed build succeeded");
    if signal == rustix::process::Signal::TERM {
        assert_eq!(status.code(), Some(143), "{what}: {status}");
    }
}

impl Scene {
    /// The digest a clean build of the context as it is gives (in a cache
    /// and outputs of its own under `work`, removed after).
    fn reference(&self, work: &Path, n: usize) -> String {
        let r = Scene {
            cache: work.join(format!("reference-cache-{n}")),
            out: work.join("reference"),
            archive: work.join("reference.tar"),
            ..self.clone()
        };
        let digest = r.build();
        fs::remove_dir_all(&r.out).unwrap();
        fs::remove_file(&r.archive).ok();
        fs::remove_dir_all(&r.cache).unwrap();
        digest
    }
}

impl Clone for Scene {
    fn clone(&self) -> Scene {
        Scene {
            bin: self.bin.clone(),
            base: Base { layout: self.base.layout.clone() },
            ctx: self.ctx.clone(),
            cache: self.cache.clone(),
            out: self.out.clone(),
            archive: self.archive.clone(),
        }
    }
}
