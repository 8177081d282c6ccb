//! `kiln::build` end to end: a busybox base image made by umoci (not by
//! kiln), pushed to a real registry with skopeo; Dockerfiles using every
//! instruction; the result pulled back by skopeo, unpacked by umoci and run
//! by runc.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::ImageLocation;
use kiln::build::{Build, BuildContext, BuildError};
use kiln::oci_image::{ImageConfiguration, Layout};
use kiln::registry_client::Client;
use testkit::{Registry, busybox_image, run, tool};

/// The busybox base of the build tests: an OCI layout made by umoci,
/// which builds get as the named context `kiln-base` ([`WithBase`]): a
/// Dockerfile says `FROM kiln-base` (it cannot name a host layout itself).
pub struct Base {
    /// The layout (the image is tagged `1`).
    pub layout: PathBuf,
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("kiln-base")
    }
}

impl Base {
    /// `oci:DIR:1`, for skopeo and umoci.
    pub fn location(&self) -> String {
        format!("oci:{}:1", self.layout.display())
    }

    /// The named context that brings it into a build.
    pub fn context(&self) -> BuildContext {
        BuildContext::oci_layout(&self.layout, Some("1".parse().unwrap()))
    }
}

/// Gives a build the busybox base.
pub trait WithBase {
    /// Adds `base` as the named context `kiln-base`.
    #[must_use]
    fn with_base(self, base: &Base) -> Self;
}

impl WithBase for Build {
    fn with_base(self, base: &Base) -> Build {
        self.build_context(base.to_string(), base.context())
    }
}

/// A busybox base in an OCI layout at `dir/base`, or `None` without the tools.
pub fn base_layout(dir: &Path) -> Option<Base> {
    tool("runc")?;
    let layout = dir.join("base");
    busybox_image(&layout, "1").unwrap()?;
    Some(Base { layout })
}

/// The build example, as `cargo test` builds it beside the test binary
/// (`None` outside CI when it is not there).
pub fn example_binary() -> Option<PathBuf> {
    example("build")
}

/// The example `name`, as `cargo test` builds it beside the test binary
/// (`None` outside CI when it is not there).
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join(name);
    if !bin.is_file() {
        assert!(!testkit::in_ci(), "{} not built (cargo test builds the examples)", bin.display());
        eprintln!("note: {} not built; skipping", bin.display());
        return None;
    }
    Some(bin)
}

/// The processes with `arg` as one of their arguments (their command lines).
pub fn processes_with_arg(arg: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            out.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    out
}

pub fn client() -> Client {
    Client::builder().build().unwrap()
}

pub fn build(context: &Path, cache: &Path) -> Build {
    Build::new(context).cache_dir(cache).client(client()).epoch(Some(1_700_000_000))
}

pub fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Unpacks `oci:LAYOUT:TAG` with umoci and returns the bundle directory.
pub fn umoci_unpack(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    let bundle = into.join("bundle");
    run(Command::new("umoci").args(["unpack", "--image", &format!("{}:{tag}", layout.display())]).arg(&bundle))
        .unwrap();
    bundle
}

pub fn config_of(layout: &Path, tag: &str) -> ImageConfiguration {
    let l = Layout::open(layout).unwrap();
    let desc = l.resolve(tag).unwrap();
    let kiln::oci_image::AnyManifest::Image(m) = l.read_manifest(&desc).unwrap() else { panic!("not an image") };
    serde_json::from_slice(&l.read_blob(&m.value().config).unwrap()).unwrap()
}

const FULL: &str = r#"ARG BASE
FROM ${BASE} AS build
ARG GREETING=hello
RUN mkdir -p /out && echo "$GREETING from build" > /out/greeting.txt
FROM ${BASE}
LABEL org.example.kind=test
MAINTAINER kiln tests
ENV APP_HOME=/opt/app MODE=prod
WORKDIR $APP_HOME
COPY --from=build /out/greeting.txt ./
COPY f.txt dir ./files/
COPY --chown=app:staff --chmod=640 f.txt /home/app/owned.txt
ADD app.tar.gz /opt/unpacked/
COPY <<EOF /etc/motd
welcome to $MODE
EOF
RUN rm -rf /var/lib/junk && echo installed > /opt/app/installed.txt
USER app
RUN id -u > /tmp/uid.txt && echo "$HOME" > /tmp/home.txt
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --retries=2 CMD ["/bin/true"]
SHELL ["/bin/sh", "-ec"]
ONBUILD RUN echo triggered > /tmp/onbuild.txt
ENTRYPOINT ["/bin/cat"]
CMD ["/opt/app/greeting.txt"]
"#;

fn full_context(dir: &Path) {
    write(&dir.join("Dockerfile"), FULL);
    write(&dir.join("f.txt"), "file f\n");
    write(&dir.join("dir/sub/g.txt"), "file g\n");
    write(&dir.join("dir/secret.txt"), "do not ship\n");
    write(&dir.join(".dockerignore"), "dir/secret.txt\n");
    let src = dir.join("archive-src");
    write(&src.join("pkg/readme"), "from the archive\n");
    run(Command::new("tar").arg("czf").arg(dir.join("app.tar.gz")).arg("-C").arg(&src).arg("pkg")).unwrap();
    fs::remove_dir_all(&src).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instruction_from_a_registry_base_round_trips_through_the_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let Some(skopeo) = tool("skopeo") else { return };
    let registry = Registry::start().unwrap();
    let host = registry.host();
    run(Command::new(&skopeo)
        .args(["copy", "--dest-tls-verify=false"])
        .arg(base.location())
        .arg(format!("docker://{host}/busybox:1")))
    .unwrap();

    let ctx = tmp.path().join("ctx");
    full_context(&ctx);
    let out = tmp.path().join("out");
    let built = build(&ctx, &tmp.path().join("cache"))
        .build_arg("BASE", format!("{host}/busybox:1"))
        .tag(format!("{host}/app:1").parse().unwrap())
        .push(true)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap();

    // pulled back by skopeo, unpacked by umoci
    let pulled = tmp.path().join("pulled");
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/app:1"))
        .arg(format!("oci:{}:1", pulled.display())))
    .unwrap();
    assert_eq!(Layout::open(&pulled).unwrap().resolve("1").unwrap().digest, built.manifest.digest);
    assert_eq!(Layout::open(&out).unwrap().resolve("1").unwrap().digest, built.manifest.digest);
    let bundle = umoci_unpack(&pulled, "1", tmp.path());
    let root = bundle.join("rootfs");
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("opt/app/greeting.txt"), "hello from build\n");
    assert_eq!(read("opt/app/files/f.txt"), "file f\n");
    assert_eq!(read("opt/app/files/sub/g.txt"), "file g\n");
    assert!(!root.join("opt/app/files/secret.txt").exists(), ".dockerignore was not applied");
    assert_eq!(read("opt/unpacked/pkg/readme"), "from the archive\n");
    assert_eq!(read("etc/motd"), "welcome to prod\n");
    assert_eq!(read("opt/app/installed.txt"), "installed\n");
    assert_eq!(read("tmp/uid.txt"), "1000\n");
    assert_eq!(read("tmp/home.txt"), "/home/app\n");
    assert!(!root.join("var/lib/junk").exists(), "the deleted directory came back");
    assert!(root.join("var/lib").is_dir());
    assert!(!root.join("tmp/onbuild.txt").exists(), "ONBUILD ran in the image that declared it");
    assert!(!root.join("proc").exists() && !root.join("sys").exists(), "mount points leaked into a layer");
    let owned = fs::metadata(root.join("home/app/owned.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.permissions().mode() & 0o7777), (1000, 50, 0o640));
    let f = fs::metadata(root.join("opt/app/files/f.txt")).unwrap();
    assert_eq!((f.uid(), f.gid()), (0, 0));

    // the config, field by field
    let config = config_of(&pulled, "1");
    let c = config.config.clone().unwrap();
    let env = c.env.clone().unwrap();
    assert!(env.contains(&"APP_HOME=/opt/app".to_owned()) && env.contains(&"MODE=prod".to_owned()), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=")));
    assert!(!env.iter().any(|e| e.starts_with("GREETING")), "ARG leaked into the config");
    assert_eq!(c.working_dir.as_deref(), Some("/opt/app"));
    assert_eq!(c.user.as_deref(), Some("app"));
    assert_eq!(c.exposed_ports.unwrap().into_iter().collect::<Vec<_>>(), vec!["53/udp", "8080/tcp"]);
    assert_eq!(c.volumes.unwrap().into_iter().collect::<Vec<_>>(), vec!["/data"]);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    let hc = c.healthcheck.unwrap();
    assert_eq!(hc.test, Some(vec!["CMD".to_owned(), "/bin/true".to_owned()]));
    assert_eq!((hc.interval, hc.retries), (Some(30_000_000_000), Some(2)));
    assert_eq!(c.labels.unwrap().get("org.example.kind").map(String::as_str), Some("test"));
    assert_eq!(c.shell, Some(vec!["/bin/sh".to_owned(), "-ec".to_owned()]));
    assert_eq!(c.on_build, Some(vec!["RUN echo triggered > /tmp/onbuild.txt".to_owned()]));
    assert_eq!(c.entrypoint, Some(vec!["/bin/cat".to_owned()]));
    assert_eq!(c.cmd, Some(vec!["/opt/app/greeting.txt".to_owned()]));
    assert_eq!(config.author.as_deref(), Some("kiln tests"));
    // one history entry per instruction of the final stage, after the base's
    let history = config.history.unwrap();
    let base_history = 2; // umoci new + repack
    assert_eq!(history.len(), base_history + 20, "{history:#?}");
    let layers = history.iter().filter(|h| h.empty_layer != Some(true)).count();
    assert_eq!(layers, config.rootfs.diff_ids.len());
    assert_eq!(history.last().unwrap().created_by.as_deref(), Some(r#"CMD ["/opt/app/greeting.txt"]"#));

    // runc runs the entrypoint
    let cfg_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    spec["process"]["terminal"] = serde_json::Value::Bool(false);
    fs::write(&cfg_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let state = tmp.path().join("runc-state");
    let id = format!("kiln-test-{}", std::process::id());
    let out = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "runc: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from build\n");

    // ONBUILD fires in a build FROM the image
    let child = tmp.path().join("child");
    write(&child.join("Dockerfile"), &format!("FROM {host}/app:1\nUSER root\nRUN cat /tmp/onbuild.txt\n"));
    let child_out = tmp.path().join("child-out");
    build(&child, &tmp.path().join("cache")).output(ImageLocation::layout(child_out.clone())).build().await.unwrap();
    let cb = umoci_unpack(&child_out, "latest", &tmp.path().join("child-unpack"));
    assert_eq!(fs::read_to_string(cb.join("rootfs/tmp/onbuild.txt")).unwrap(), "triggered\n");
    let cc = config_of(&child_out, "latest").config.unwrap();
    assert_eq!(cc.on_build, None, "triggers are consumed by the child");
}

/// Builds `ctx` (cache and output under `tmp`) and returns the root file
/// system umoci unpacks from the result.
pub async fn build_rootfs(ctx: &Path, tmp: &Path, base: Option<&Base>) -> PathBuf {
    let out = tmp.join("out");
    let b = build(ctx, &tmp.join("cache"));
    base.map_or(b.clone(), |base| b.with_base(base))
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    umoci_unpack(&out, "latest", tmp).join("rootfs")
}

/// Runs a build expected to fail and returns its error; checks the output was not written.
pub async fn failing(dockerfile: &str, files: &[(&str, &str)]) -> BuildError {
    failing_with(dockerfile, files, |b| b).await
}

/// [`failing`] with the build set up by `with` too.
pub async fn failing_with(dockerfile: &str, files: &[(&str, &str)], with: impl FnOnce(Build) -> Build) -> BuildError {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), dockerfile);
    for (p, text) in files {
        write(&ctx.join(p), text);
    }
    let out = tmp.path().join("out");
    let archive = tmp.path().join("out.tar");
    let err = with(build(&ctx, &tmp.path().join("cache")))
        .output(ImageLocation::layout(out.clone()))
        .output(ImageLocation::docker_archive(archive.clone()))
        .build()
        .await
        .unwrap_err();
    assert!(!out.exists() && !archive.exists(), "output written for a failed build");
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ctx" && n != "cache")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    err
}

/// The Dockerfile line an error names: steps are wrapped in `At`; parse
/// and plan errors carry the instruction's span in their message.
fn line_of(e: &BuildError) -> usize {
    match e {
        BuildError::At { line, .. } => *line,
        other => {
            let text = kiln::error_chain(other);
            let at = text.find("(at line ").unwrap_or_else(|| panic!("no line in {text}"));
            text[at + 9..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        }
    }
}

pub fn inner(e: &BuildError) -> &BuildError {
    match e {
        BuildError::At { source, .. } => source,
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_names_its_line_code_and_output() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let df = format!("FROM {base}\nRUN echo fine\nRUN echo boom >&2; exit 3\nRUN echo never\n");
    let e = failing_with(&df, &[], |b| b.with_base(&base)).await;
    assert_eq!(line_of(&e), 3);
    let BuildError::RunFailed { code, output } = inner(&e) else { panic!("{e:?}") };
    assert_eq!(*code, 3);
    assert!(String::from_utf8_lossy(output).contains("boom"));
    let text = kiln::error_chain(&e);
    assert!(text.contains("Dockerfile:3") && text.contains("exited with code 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_with_the_line() {
    let e = failing("FROM scratch\nCOPY --from=nosuchstage /a /a\n", &[]).await;
    assert_eq!(line_of(&e), 2);
    assert!(matches!(inner(&e), BuildError::UnknownStage { name } if name == "nosuchstage"), "{e:?}");

    let e = failing("FROM scratch\nCOPY present.txt /\nCOPY missing.txt /\n", &[("present.txt", "x")]).await;
    assert_eq!(line_of(&e), 3);
    assert!(matches!(inner(&e), BuildError::MissingSource { path } if path == "missing.txt"), "{e:?}");

    let e = failing("FROM scratch\nCOPY ../../etc/passwd /\n", &[]).await;
    assert!(matches!(inner(&e), BuildError::OutsideContext { .. }), "{e:?}");
    assert_eq!(line_of(&e), 2);

    let e = failing("FROM scratch\nCOPY a.txt b.txt /dest\n", &[("a.txt", "a"), ("b.txt", "b")]).await;
    assert!(matches!(inner(&e), BuildError::DestNotDir { .. }), "{e:?}");

    // nothing listens on port 1
    let e = failing("FROM 127.0.0.1:1/nothing:1\nCOPY a /\n", &[("a", "a")]).await;
    assert_eq!(line_of(&e), 1);
    assert!(matches!(inner(&e), BuildError::Base { image, .. } if image == "127.0.0.1:1/nothing:1"), "{e:?}");

    let e = failing("FROM scratch\nRUN --network=bogus true\n", &[]).await;
    assert_eq!(line_of(&e), 2);

    let e = failing("FROM scratch AS a\nFROM scratch\nCOPY --from=a /missing /x\n", &[]).await;
    assert_eq!(line_of(&e), 3);

    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("ctx/Dockerfile"), "FROM scratch\n");
    let err = build(&tmp.path().join("ctx"), &tmp.path().join("cache")).push(true).build().await.unwrap_err();
    assert!(matches!(err, BuildError::Flag { flag: "--output", .. }), "{err:?}");
    let err = build(tmp.path(), &tmp.path().join("cache")).target("nope").build().await.unwrap_err();
    assert!(matches!(err, BuildError::Io { .. }), "{err:?}");
    write(&tmp.path().join("Dockerfile"), "FROM scratch\n");
    let err = build(tmp.path(), &tmp.path().join("cache")).target("nope").build().await.unwrap_err();
    assert!(kiln::error_chain(&err).contains("nope"), "{err:?}");
}

fn reproducible_context(dir: &Path) {
    write(&dir.join("a/b.txt"), "content\n");
    write(&dir.join("run.sh"), "#!/bin/sh\necho script\n");
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_dockerfile_same_digest_from_clean_state_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let df = format!(
        "FROM {base} AS b\nRUN echo x > /x && mkdir /made\nFROM b\nCOPY . /ctx/\nRUN /ctx/run.sh > /out.txt\n\
         ENV K=v\nWORKDIR /w\nCMD [\"/bin/sh\"]\n"
    );
    let mut digests = Vec::new();
    for n in 0..2 {
        let ctx = tmp.path().join(format!("ctx{n}"));
        reproducible_context(&ctx);
        write(&ctx.join("Dockerfile"), &df);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = tmp.path().join(format!("out{n}"));
        let built = build(&ctx, &tmp.path().join(format!("cache{n}")))
            .with_base(&base)
            .output(ImageLocation::layout(out))
            .build()
            .await
            .unwrap();
        assert_eq!(built.cached_steps, 0);
        digests.push(built.manifest.digest);
    }
    assert_eq!(digests[0], digests[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_takes_every_step_from_the_cache_and_no_cache_runs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    reproducible_context(&ctx);
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nCOPY a /a\nRUN echo ran >> /log\nWORKDIR /w\nENV X=1\n"));
    let cache = tmp.path().join("cache");
    let first = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!((first.cached_steps, first.steps), (0, 3));
    let again = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!(again.cached_steps, 3);
    assert_eq!(again.steps, 0);
    assert_eq!(again.manifest.digest, first.manifest.digest);
    // a changed file invalidates its COPY and everything after it
    write(&ctx.join("a/b.txt"), "changed\n");
    let changed = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!((changed.cached_steps, changed.steps), (0, 3));
    assert_ne!(changed.manifest.digest, first.manifest.digest);
    let forced = build(&ctx, &cache).with_base(&base).no_cache(true).build().await.unwrap();
    assert_eq!((forced.cached_steps, forced.steps), (0, 3));
    assert_eq!(forced.manifest.digest, changed.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heredocs_moved_to_other_lines_keep_their_cache_and_changed_bodies_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    let steps = "RUN <<EOF\necho ran >> /log\nEOF\nCOPY <<EOF /note\nhello\nEOF\n";
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\n{steps}"));
    let cache = tmp.path().join("cache");
    let first = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!((first.cached_steps, first.steps), (0, 2));
    // the same steps two lines further down: the same inputs
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\n# a comment\n# another\n{steps}"));
    let moved = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!((moved.cached_steps, moved.steps), (2, 0));
    // another body is another step
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\n{}", steps.replace("echo ran", "echo ran again")));
    let changed = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!((changed.cached_steps, changed.steps), (0, 2));
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\n{}", steps.replace("hello", "bye")));
    let copied = build(&ctx, &cache).with_base(&base).build().await.unwrap();
    assert_eq!((copied.cached_steps, copied.steps), (1, 1));
    assert_ne!(copied.manifest.digest, first.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_output_reads_back_with_skopeo() {
    let Some(skopeo) = tool("skopeo") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY hello.txt /\nCMD [\"/hello.txt\"]\n");
    write(&ctx.join("hello.txt"), "hi\n");
    let archive = tmp.path().join("image.tar");
    build(&ctx, &tmp.path().join("cache"))
        .tag("kiln/archived:v1".parse().unwrap())
        .output(ImageLocation::docker_archive(archive.clone()))
        .build()
        .await
        .unwrap();
    let inspect =
        run(Command::new(&skopeo).arg("inspect").arg(format!("docker-archive:{}", archive.display()))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(v["Env"][0], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    // `docker load` names the image from manifest.json's RepoTags
    let manifest = run(Command::new("tar").arg("-xOf").arg(&archive).arg("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(m[0]["RepoTags"][0], "kiln/archived:v1", "{m}");
    let oci = tmp.path().join("oci");
    run(Command::new(&skopeo)
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:v1", oci.display())))
    .unwrap();
    let bundle = umoci_unpack(&oci, "v1", tmp.path());
    assert_eq!(fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(), "hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_mounts_network_platform_args_git_and_excludes() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let Some(git) = tool("git") else { return };
    // a git repository to ADD
    let repo = tmp.path().join("src-repo");
    fs::create_dir_all(&repo).unwrap();
    let g = |args: &[&str]| {
        run(Command::new(&git).arg("-C").arg(&repo).args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args))
            .unwrap()
    };
    g(&["init", "-q", "-b", "main"]);
    write(&repo.join("README"), "from git\n");
    g(&["add", "README"]);
    g(&["commit", "-q", "-m", "one"]);
    let served = tmp.path().join("served");
    let bare = served.join("repo.git");
    run(Command::new(&git).args(["clone", "-q", "--bare"]).arg(&repo).arg(&bare)).unwrap();
    let Some(daemon) = testkit::GitDaemon::start(&served).unwrap() else { return };

    let ctx = tmp.path().join("ctx");
    write(&ctx.join("f.txt"), "bound\n");
    write(&ctx.join("tree/keep.txt"), "keep\n");
    write(&ctx.join("tree/skip.log"), "skip\n");
    write(&ctx.join("tree/deep/more.log"), "skip\n");
    write(&ctx.join("a/b/c.txt"), "parents\n");
    let secret = tmp.path().join("token");
    fs::write(&secret, "s3cr3t-value\n").unwrap();
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\n\
             ARG TARGETARCH\n\
             RUN echo \"$TARGETARCH\" > /arch\n\
             RUN --mount=type=bind,source=f.txt,target=/mnt/f cat /mnt/f > /from-bind\n\
             RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/log && cp /var/cache/app/log /cache-log\n\
             RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && ls /scratch > /tmpfs-list\n\
             RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-size\n\
             RUN --network=none cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > /ifaces\n\
             COPY --exclude=*.log --exclude=deep tree /tree/\n\
             COPY --parents a/b/c.txt /p/\n\
             ADD {} /git/\n",
            daemon.url("repo.git")
        ),
    );
    let out = tmp.path().join("out");
    let steps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&steps);
    build(&ctx, &tmp.path().join("cache"))
        .with_base(&base)
        .secret("token", &secret)
        .output(ImageLocation::layout(out.clone()))
        .progress(move |p| {
            if matches!(p, kiln::build::Progress::StepStarted { .. }) {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    assert_eq!(steps.load(std::sync::atomic::Ordering::Relaxed), 10);
    let bundle = umoci_unpack(&out, "latest", tmp.path());
    let root = bundle.join("rootfs");
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("arch").trim(), kiln::oci_image::Platform::host().architecture);
    assert_eq!(read("from-bind"), "bound\n");
    assert_eq!(read("cache-log"), "run\n");
    assert_eq!(read("tmpfs-list"), "x\n");
    assert_eq!(read("secret-size").trim(), "13");
    assert_eq!(read("ifaces"), "lo\n", "RUN --network=none saw more than loopback");
    for leaked in ["mnt/f", "var/cache/app", "scratch", "run/secrets/token", "run/secrets"] {
        assert!(!root.join(leaked).exists(), "{leaked} leaked into the image");
    }
    let tree = tree_paths(&root.join("tree"));
    assert_eq!(tree, vec!["keep.txt"], "--exclude was not applied");
    assert_eq!(read("p/a/b/c.txt"), "parents\n");
    assert_eq!(read("git/README"), "from git\n");
    assert!(!root.join("git/.git").exists());
    // the secret's value is in no blob of the image
    for entry in fs::read_dir(out.join("blobs/sha256")).unwrap() {
        let blob = entry.unwrap().path();
        let mut text = Vec::new();
        let f = fs::File::open(&blob).unwrap();
        let mut dec = flate2_read(f);
        std::io::Read::read_to_end(&mut dec, &mut text).ok();
        assert!(!String::from_utf8_lossy(&text).contains("s3cr3t-value"), "secret in {}", blob.display());
    }
}

fn tree_paths(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        out.push(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

/// A reader that gunzips gzip blobs and passes others through.
fn flate2_read(f: fs::File) -> Box<dyn std::io::Read> {
    let mut f = std::io::BufReader::new(f);
    let gzip = std::io::BufRead::fill_buf(&mut f).is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]));
    if gzip {
        Box::new(kiln::layer_diff::Decompressor::new(f, Some(kiln::oci_image::Compression::Gzip)).unwrap())
    } else {
        Box::new(f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_diffs_without_overlayfs_give_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN mkdir -p /opt/a && echo one > /opt/a/f && rm -rf /var/lib/junk/a && chmod 700 /root\n\
             RUN rm -rf /var/lib/junk && echo two > /opt/a/g && ln -s /opt/a/f /opt/link\nUSER app\n\
             RUN echo mine > /tmp/mine\n"
        ),
    );
    let mut trees = Vec::new();
    for (n, overlay) in [(0, true), (1, false)] {
        let out = tmp.path().join(format!("out{n}"));
        build(&ctx, &tmp.path().join(format!("cache{n}")))
            .with_base(&base)
            .overlayfs(overlay)
            .output(ImageLocation::layout(out.clone()))
            .build()
            .await
            .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
        let bundle = umoci_unpack(&out, "latest", &tmp.path().join(format!("unpack{n}")));
        let root = bundle.join("rootfs");
        let mut listing = Vec::new();
        for p in ["opt/a/f", "opt/a/g", "tmp/mine"] {
            let m = fs::metadata(root.join(p)).unwrap();
            listing.push(format!(
                "{p} {} {}:{} {}",
                fs::read_to_string(root.join(p)).unwrap().trim(),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            ));
        }
        listing.push(format!("link {}", fs::read_link(root.join("opt/link")).unwrap().display()));
        listing.push(format!("junk {}", root.join("var/lib/junk").exists()));
        listing.push(format!("root {:o}", fs::metadata(root.join("root")).unwrap().mode() & 0o7777));
        listing.push(format!("proc {}", root.join("proc").exists()));
        trees.push(listing);
    }
    assert_eq!(trees[0], trees[1]);
    assert!(trees[0].contains(&"junk false".to_owned()) && trees[0].contains(&"root 700".to_owned()), "{:?}", trees[0]);
}

/// A web server on loopback that answers every GET with `body` (and a
/// `Last-Modified`), until the test ends: what `ADD URL` fetches from.
fn web_server(body: &'static [u8]) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body));
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_downloads_urls_with_checksums() {
    let url = web_server(b"downloaded\n");
    let good = kiln::oci_image::Digest::sha256(b"downloaded\n");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM scratch\nADD {url}/files/tool.txt /opt/\nADD --checksum={good} {url}/x/y.txt /checked.txt\n"),
    );
    let root = build_rootfs(&ctx, tmp.path(), None).await;
    assert_eq!(fs::read_to_string(root.join("opt/tool.txt")).unwrap(), "downloaded\n");
    assert_eq!(fs::read_to_string(root.join("checked.txt")).unwrap(), "downloaded\n");
    let m = fs::metadata(root.join("opt/tool.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    // a download is an input: dated by the epoch (here 1_700_000_000) ...
    assert_eq!(m.mtime(), 1_700_000_000, "a download is dated by the epoch");
    // ... and by its Last-Modified with docker's times
    let out = tmp.path().join("docker-times");
    build(&ctx, &tmp.path().join("cache"))
        .epoch(None)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let root = umoci_unpack(&out, "latest", &tmp.path().join("u2")).join("rootfs");
    assert_eq!(fs::metadata(root.join("opt/tool.txt")).unwrap().mtime(), 1_445_412_480, "Last-Modified was not kept");

    let bad = kiln::oci_image::Digest::sha256(b"other");
    let e = failing(&format!("FROM scratch\nADD --checksum={bad} {url}/f.txt /f.txt\n"), &[]).await;
    assert_eq!(line_of(&e), 2);
    assert!(matches!(inner(&e), BuildError::Checksum { .. }), "{e:?}");
    let e = failing(&format!("FROM scratch\nCOPY {url}/f.txt /f.txt\n"), &[]).await;
    assert!(matches!(inner(&e), BuildError::Unsupported { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_symlinks_in_the_image_never_lead_to_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN ln -s {v} /w && ln -s {v} /c\nWORKDIR /w/made-by-workdir\n\
             RUN --mount=type=cache,target=/c/cache-mount pwd > /pwd.txt\nWORKDIR /c/run-cwd\nRUN true\n",
            v = victim.display()
        ),
    );
    let out = tmp.path().join("out");
    build(&ctx, &tmp.path().join("cache"))
        .with_base(&base)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap();
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "the build wrote into the host's directory");
    let root = umoci_unpack(&out, "latest", tmp.path()).join("rootfs");
    let inner = root.join(victim.strip_prefix("/").unwrap());
    assert!(inner.join("made-by-workdir").is_dir() && inner.join("run-cwd").is_dir());
    assert!(!inner.join("cache-mount").exists(), "the cache mount point leaked into the image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_stages_run_at_the_same_time() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    // each stage signals through a shared cache mount and waits for the
    // other's signal: run one after the other, the first would give up
    let wait = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id=rendezvous,target=/sync touch /sync/{me} && i=0 && \
             while [ ! -e /sync/{other} ]; do sleep 0.1; i=$((i+1)); [ $i -lt 300 ] || exit 7; done && echo {me} > /{me}\n"
        )
    };
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base} AS left\n{}FROM {base} AS right\n{}FROM scratch\nCOPY --from=left /left /\nCOPY --from=right /right /\n",
            wait("left", "right"),
            wait("right", "left")
        ),
    );
    let root = build_rootfs(&ctx, tmp.path(), Some(&base)).await;
    assert_eq!(fs::read_to_string(root.join("left")).unwrap(), "left\n");
    assert_eq!(fs::read_to_string(root.join("right")).unwrap(), "right\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_index_picks_the_target_platform() {
    use kiln::oci_image::{ConfigBuilder, IndexBuilder, ManifestBuilder, Platform, Raw};
    let tmp = tempfile::tempdir().unwrap();
    // an index with an amd64 and an arm64 image, each marked by a label
    let dir = tmp.path().join("multi");
    let layout = Layout::create(&dir).unwrap();
    let mut index = IndexBuilder::new();
    for arch in ["amd64", "arm64"] {
        let platform: Platform = format!("linux/{arch}").parse().unwrap();
        let cfg = kiln::oci_image::ContainerConfig {
            labels: Some([("arch".to_owned(), arch.to_owned())].into()),
            ..Default::default()
        };
        let config = Raw::new(ConfigBuilder::new(&platform).config(cfg).build());
        layout.write_blob_bytes(config.bytes()).unwrap();
        let manifest = Raw::new(ManifestBuilder::new(config.descriptor()).build());
        layout.write_blob_bytes(manifest.bytes()).unwrap();
        index = index.manifest(manifest.descriptor().with_platform(platform));
    }
    let index = Raw::new(index.build());
    layout.write_blob_bytes(index.bytes()).unwrap();
    layout.set_tag(&"multi/base:1".parse().unwrap(), index.descriptor()).unwrap();

    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM multi\nARG TARGETARCH\nLABEL built-for=$TARGETARCH\n");
    let multi = BuildContext::oci_layout(&dir, Some("1".parse().unwrap()));
    for arch in ["amd64", "arm64"] {
        let out = tmp.path().join(format!("out-{arch}"));
        let built = build(&ctx, &tmp.path().join("cache"))
            .build_context("multi", multi.clone())
            .platform(format!("linux/{arch}").parse().unwrap())
            .output(ImageLocation::layout(out.clone()))
            .build()
            .await
            .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
        assert_eq!(built.image.architecture, arch);
        let labels = built.image.config.clone().unwrap().labels.unwrap();
        assert_eq!(labels.get("arch").map(String::as_str), Some(arch), "took the wrong platform's image");
        assert_eq!(labels.get("built-for").map(String::as_str), Some(arch));
    }
    let e = failing_with("FROM --platform=linux/s390x multi\n", &[], |b| b.build_context("multi", multi)).await;
    assert_eq!(line_of(&e), 1);
    assert!(kiln::error_chain(&e).contains("s390x"), "{}", kiln::error_chain(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onbuild_triggers_of_a_stage_run_in_each_child_stage_once() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base} AS parent\nONBUILD RUN echo trigger >> /log\n\
             FROM parent AS one\nRUN echo one >> /log\n\
             FROM parent AS two\nRUN echo two >> /log\n\
             FROM one AS grandchild\nRUN echo grandchild >> /log\n\
             FROM scratch\nCOPY --from=two /log /two.log\nCOPY --from=grandchild /log /grandchild.log\n"
        ),
    );
    let root = build_rootfs(&ctx, tmp.path(), Some(&base)).await;
    assert_eq!(fs::read_to_string(root.join("two.log")).unwrap(), "trigger\ntwo\n");
    assert_eq!(fs::read_to_string(root.join("grandchild.log")).unwrap(), "trigger\none\ngrandchild\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_extracts_tar_archives_in_every_compression_and_copies_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let src = tmp.path().join("src");
    write(&src.join("pkg/readme"), "inside\n");
    // archives made by tar and the compressors' own command-line tools
    for (name, flag) in [
        ("a.tar", None),
        ("b.tar.gz", Some("--gzip")),
        ("c.tar.bz2", Some("--bzip2")),
        ("d.tar.xz", Some("--xz")),
        ("e.tar.zst", Some("--zstd")),
    ] {
        let mut cmd = Command::new("tar");
        cmd.arg("-cf").arg(ctx.join(name)).args(flag).arg("-C").arg(&src).arg("pkg");
        fs::create_dir_all(&ctx).unwrap();
        run(&mut cmd).unwrap();
    }
    // compressed files that are not tar archives are copied as they are
    write(&ctx.join("notes.txt"), "just text\n");
    run(Command::new("gzip").arg("-k").arg(ctx.join("notes.txt"))).unwrap();
    run(Command::new("xz").arg("-k").arg(ctx.join("notes.txt"))).unwrap();
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nADD a.tar /a/\nADD b.tar.gz /b/\nADD c.tar.bz2 /c/\nADD d.tar.xz /d/\nADD e.tar.zst /e/\n\
         ADD notes.txt.gz notes.txt.xz /files/\nCOPY b.tar.gz /copied/\n",
    );
    let root = build_rootfs(&ctx, tmp.path(), None).await;
    for d in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            fs::read_to_string(root.join(d).join("pkg/readme")).unwrap(),
            "inside\n",
            "ADD did not extract /{d}"
        );
    }
    assert_eq!(fs::read(root.join("files/notes.txt.gz")).unwrap(), fs::read(ctx.join("notes.txt.gz")).unwrap());
    assert_eq!(fs::read(root.join("files/notes.txt.xz")).unwrap(), fs::read(ctx.join("notes.txt.xz")).unwrap());
    assert!(root.join("copied/b.tar.gz").is_file(), "COPY must not extract");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_heredocs_are_scripts_or_shell_input() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN <<EOF\necho one > /h1\necho two >> /h1\nEOF\n\
             RUN cat <<EOT > /h2\ntext $HOME\nEOT\n\
             RUN <<'EOF' sh\necho \"$0 quoted $HOME\" > /h3\nEOF\n"
        ),
    );
    let root = build_rootfs(&ctx, tmp.path(), Some(&base)).await;
    assert_eq!(fs::read_to_string(root.join("h1")).unwrap(), "one\ntwo\n");
    assert_eq!(fs::read_to_string(root.join("h2")).unwrap(), "text /root\n");
    assert!(fs::read_to_string(root.join("h3")).unwrap().contains("quoted /root"));
}
