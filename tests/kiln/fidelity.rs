//! `kiln build` gives the image `docker build` (BuildKit) gives: one test
//! per fidelity defect found against buildah and BuildKit's documented
//! behaviour (issue 18), each seen to fail before its fix.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::ImageLocation;
use kiln::build::Build;
use kiln::oci_image::ImageConfiguration;
use testkit::run;

use crate::build::{WithBase, base_layout, build, config_of, failing_with, umoci_unpack, write};

/// A finished build: its unpacked root and its config.
struct Built {
    root: PathBuf,
    config: ImageConfiguration,
    _tmp: tempfile::TempDir,
}

impl Built {
    fn env(&self) -> Vec<String> {
        self.config.config.as_ref().and_then(|c| c.env.clone()).unwrap_or_default()
    }

    fn owner(&self, path: &str) -> (u32, u32) {
        let m = fs::symlink_metadata(self.root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        (m.uid(), m.gid())
    }

    fn read(&self, path: &str) -> String {
        fs::read_to_string(self.root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

/// Builds `dockerfile` with `files` in the context (on the busybox base
/// `kiln-base`, or `base` when given) and unpacks the result with umoci.
async fn built_on(dockerfile: &str, files: &[(&str, &str)], base: Option<(&Path, &str)>) -> Option<Built> {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = base_layout(tmp.path())?;
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), dockerfile);
    for (p, text) in files {
        write(&ctx.join(p), text);
    }
    let out = tmp.path().join("out");
    let mut b = build(&ctx, &tmp.path().join("cache")).with_base(&busybox).output(ImageLocation::layout(out.clone()));
    if let Some((layout, name)) = base {
        b = b.build_context(name, kiln::build::BuildContext::oci_layout(layout, Some("1".parse().unwrap())));
    }
    b.build().await.unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let root = umoci_unpack(&out, "latest", tmp.path()).join("rootfs");
    let config = config_of(&out, "latest");
    Some(Built { root, config, _tmp: tmp })
}

async fn built(dockerfile: &str, files: &[(&str, &str)]) -> Option<Built> {
    built_on(dockerfile, files, None).await
}

// 1. A layer byte-identical to one below it (every time is the epoch) is
// stacked twice: overlayfs refuses the same lower directory twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_layers_in_one_chain_build() {
    let Some(b) = built(
        "FROM kiln-base AS s\nRUN mkdir /a\nRUN touch /a\nRUN true\n\
         RUN echo x > /f\nRUN echo y > /f\nRUN echo x > /f\nRUN cat /f > /g\n\
         FROM kiln-base\nCOPY --from=s /g /f /a /copied/\n",
        &[],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("copied/g"), "x\n", "A, B, A must apply A again over B");
    assert_eq!(b.read("copied/f"), "x\n");
}

/// The busybox base with no `Env` at all (as umoci or other tools make images).
fn base_without_path(dir: &Path) -> Option<PathBuf> {
    let layout = dir.join("nopath");
    testkit::busybox_image(&layout, "1").unwrap()?;
    run(Command::new("umoci").args(["config", "--image", &format!("{}:1", layout.display()), "--clear=config.env"]))
        .unwrap();
    Some(layout)
}

const DEFAULT: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// 2. BuildKit puts the default PATH into every stage whose image has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_without_path_gets_the_default_path() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(layout) = base_without_path(tmp.path()) else { return };
    let Some(b) = built_on("FROM nopath\nENV PATH=/opt/bin:$PATH\n", &[], Some((&layout, "nopath"))).await else {
        return;
    };
    assert_eq!(b.env(), vec![format!("PATH=/opt/bin:{DEFAULT}")]);
    let Some(b) = built_on("FROM nopath\nLABEL a=b\n", &[], Some((&layout, "nopath"))).await else { return };
    assert_eq!(b.env(), vec![format!("PATH={DEFAULT}")]);
}

// 3. WORKDIR under a user the image does not know creates the directory as
// root; RUN under that user still fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workdir_under_an_unknown_user_is_made_by_root() {
    // (umoci cannot unpack an image whose USER it cannot find)
    let Some(b) = built("FROM kiln-base\nUSER docker\nWORKDIR /w/x\nUSER root\n", &[]).await else { return };
    assert_eq!(b.owner("w"), (0, 0));
    assert_eq!(b.owner("w/x"), (0, 0));
    let tmp = tempfile::tempdir().unwrap();
    let base = base_layout(tmp.path()).unwrap();
    let err = failing_with("FROM kiln-base\nUSER docker\nRUN true\n", &[], |b| b.with_base(&base)).await;
    assert!(kiln::error_chain(&err).contains("docker"), "{}", kiln::error_chain(&err));
}

// 4. Every directory WORKDIR creates belongs to the current user (a numeric
// user without a group: gid = uid, as BuildKit's mkdir does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workdir_gives_every_directory_it_creates_to_the_user() {
    let Some(b) = built("FROM kiln-base\nUSER 1\nWORKDIR /a/b/c\nUSER app\nWORKDIR /home/app/d/e\n", &[]).await else {
        return;
    };
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(b.owner(d), (1, 1), "{d}");
    }
    for d in ["home/app/d", "home/app/d/e"] {
        assert_eq!(b.owner(d), (1000, 1000), "{d}");
    }
}

// 5. An absolute WORKDIR is kept as written in the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workdir_keeps_a_trailing_slash() {
    let Some(b) = built("FROM kiln-base\nWORKDIR /tmp/\n", &[]).await else { return };
    assert_eq!(b.config.config.as_ref().unwrap().working_dir.as_deref(), Some("/tmp/"));
    let Some(b) = built("FROM kiln-base\nWORKDIR /tmp/\nWORKDIR sub/../x/\n", &[]).await else { return };
    assert_eq!(b.config.config.as_ref().unwrap().working_dir.as_deref(), Some("/tmp/x"));
}

// 6. COPY --from keeps the source's owners; context files become 0:0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_a_stage_keeps_owners() {
    let Some(b) = built(
        "FROM kiln-base AS s\nRUN mkdir -p /x/sub && echo hi > /x/sub/f && chown -R 1000:50 /x && chown 7:8 /x/sub/f\n\
         FROM kiln-base\nCOPY --from=s /x /y\nCOPY --from=s /x/sub/f /one\nCOPY f.txt /ctx.txt\n",
        &[("f.txt", "context\n")],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.owner("y/sub"), (1000, 50));
    assert_eq!(b.owner("y/sub/f"), (7, 8));
    assert_eq!(b.owner("one"), (7, 8));
    assert_eq!(b.owner("ctx.txt"), (0, 0));
}

// 7. A wildcard may match nothing when it is one source of several; when
// nothing matches at all the step copies nothing (BuildKit's
// AllowEmptyWildcard); a plain missing name is still an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_that_match_nothing() {
    let Some(b) = built(
        "FROM kiln-base\nCOPY file-a.txt subdir-* missing* subdir/\nCOPY nomatch* /none/\n",
        &[("file-a.txt", "a\n"), ("subdir-1/b.txt", "b\n")],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("subdir/file-a.txt"), "a\n");
    assert_eq!(b.read("subdir/b.txt"), "b\n");
    assert!(!b.root.join("none").exists());
    let err = failing_with("FROM scratch\nCOPY file-a.txt missing.txt /d/\n", &[("file-a.txt", "a\n")], |b| b).await;
    assert!(kiln::error_chain(&err).contains("missing.txt"), "{}", kiln::error_chain(&err));
}

// 8. `.dockerignore` re-includes keep their parents, with their own modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_of_two_sources_wins_where_they_overlap() {
    // BuildKit copies the sources in order: a path both hold ends up as the
    // later one's, and the directories both hold are in the layer once
    let Some(b) = built(
        "FROM kiln-base\nCOPY one/ two/ /merged/\nCOPY two/ one/ /reversed/\n",
        &[("one/same.txt", "one\n"), ("one/d/only-one", "1\n"), ("two/same.txt", "two\n"), ("two/d/only-two", "2\n")],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("merged/same.txt"), "two\n");
    assert_eq!(b.read("reversed/same.txt"), "one\n");
    for dir in ["merged", "reversed"] {
        assert_eq!(b.read(&format!("{dir}/d/only-one")), "1\n");
        assert_eq!(b.read(&format!("{dir}/d/only-two")), "2\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerignore_reincludes_keep_their_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    // a bind mount of the context shows what COPY sees
    write(
        &ctx.join("Dockerfile"),
        "FROM kiln-base\nADD folder1 /f1\nCOPY . /all/\n\
         RUN --mount=type=bind,source=folder1,target=/m stat -c '%a' /m/sub > /bindmode && cat /m/sub/file1 > /bindfile\n",
    );
    write(&ctx.join(".dockerignore"), "**\n!folder1/sub/file1\n");
    write(&ctx.join("folder1/sub/file1"), "one\n");
    write(&ctx.join("folder1/file2"), "two\n");
    for d in ["folder1", "folder1/sub"] {
        fs::set_permissions(ctx.join(d), fs::Permissions::from_mode(0o775)).unwrap();
    }
    let out = tmp.path().join("out");
    build(&ctx, &tmp.path().join("cache"))
        .with_base(&busybox)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let root = umoci_unpack(&out, "latest", tmp.path()).join("rootfs");
    assert_eq!(fs::read_to_string(root.join("f1/sub/file1")).unwrap(), "one\n");
    assert!(!root.join("f1/file2").exists());
    assert!(!root.join("all/Dockerfile").exists());
    // the parents of what is re-included keep their own modes; the
    // destination a step creates is 0755 (BuildKit's copier makes it first)
    for d in ["f1/sub", "all/folder1", "all/folder1/sub"] {
        assert_eq!(fs::metadata(root.join(d)).unwrap().mode() & 0o7777, 0o775, "{d}");
    }
    for d in ["f1", "all"] {
        assert_eq!(fs::metadata(root.join(d)).unwrap().mode() & 0o7777, 0o755, "{d}");
    }
    assert_eq!(fs::read_to_string(root.join("bindmode")).unwrap(), "775\n");
    assert_eq!(fs::read_to_string(root.join("bindfile")).unwrap(), "one\n");
}

// 9. An escaped glob character in a source: the Dockerfile's word rules
// take the escape away (as BuildKit's do), and the `?` then matches the
// directory whose name holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_glob_characters_match_literally() {
    let Some(b) = built(
        "FROM kiln-base\nCOPY ./app/n\\?pe/file.txt /app4/file.txt\n",
        &[("app/n?pe/file.txt", "literal\n"), ("app/nope/file.txt", "other\n")],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("app4/file.txt"), "literal\n");
}

// 10. A `rw` bind mount is writable; what is written is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_bind_mounts_are_writable_and_discarded() {
    let Some(b) = built(
        "FROM kiln-base AS s\nRUN mkdir /src && echo s > /src/f\n\
         FROM kiln-base\n\
         RUN --mount=type=bind,target=/ctx,rw echo new > /ctx/new && cat /ctx/new > /ctxnew && echo w >> /ctx/c.txt\n\
         RUN --mount=type=bind,from=s,source=/src,target=/m,rw echo changed > /m/f && cat /m/f > /mf\n\
         RUN --mount=type=bind,target=/ctx test ! -e /ctx/new && cat /ctx/c.txt > /after\n",
        &[("c.txt", "c\n")],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("ctxnew"), "new\n");
    assert_eq!(b.read("mf"), "changed\n");
    assert_eq!(b.read("after"), "c\n");
    assert!(!b.root.join("ctx/new").exists());
}

// 11. `RUN --mount=type=cache` honours uid, gid and mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_mounts_get_their_owner_and_mode() {
    let Some(b) = built(
        "FROM kiln-base\nRUN --mount=type=cache,target=/c,uid=10,gid=20,mode=0750 stat -c '%u %g %a' /c > /out\n\
         RUN --mount=type=cache,target=/d,id=other stat -c '%u %g %a' /d > /out2\n",
        &[],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("out"), "10 20 750\n");
    assert_eq!(b.read("out2"), "0 0 755\n");
}

// 12. `COPY --parents` keeps the path after a `/./` pivot only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_parents_honours_the_pivot() {
    let Some(b) = built(
        "FROM scratch\nCOPY --parents ./x/y/./*.txt /parents/\nCOPY --parents x/./y/a.txt /p2/\nCOPY --parents x/y/a.txt /p3/\n",
        &[("x/y/a.txt", "a\n"), ("x/y/b.txt", "b\n")],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.read("parents/a.txt"), "a\n");
    assert_eq!(b.read("parents/b.txt"), "b\n");
    assert!(!b.root.join("parents/x").exists());
    assert_eq!(b.read("p2/y/a.txt"), "a\n");
    assert_eq!(b.read("p3/x/y/a.txt"), "a\n");
}

// 13. A digest-pinned base missing from the registry is an error, never a
// panic: the failing stage ends the build while another stage is still
// pulling its base (the build example, as a user runs it; before the
// build awaited every task, the runtime shut down under that pull and
// tokio panicked after the error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pinned_base_is_an_error_not_a_panic() {
    let Some(bin) = crate::build::example_binary() else { return };
    let (Ok(reg), Some(skopeo)) = (testkit::Registry::start(), testkit::tool("skopeo")) else {
        assert!(!testkit::in_ci(), "no registry or skopeo");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // a base with one large layer, still being pulled when the other stage fails
    let big = tmp.path().join("big");
    write(&big.join("Dockerfile"), "FROM scratch\nCOPY big /big\n");
    let mut data = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(big.join("big"), &data).unwrap();
    let layout = tmp.path().join("big-oci");
    build(&big, &tmp.path().join("cache-big"))
        .compression(kiln::oci_image::Compression::None, None)
        .output(ImageLocation::layout(layout.clone()))
        .build()
        .await
        .unwrap();
    run(Command::new(skopeo)
        .args(["copy", "--dest-tls-verify=false", &format!("oci:{}:latest", layout.display())])
        .arg(format!("docker://{}/big:1", reg.host())))
    .unwrap();
    let ctx = tmp.path().join("ctx");
    let digest = format!("sha256:{}", "0".repeat(64));
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {h}/nothing/here@{digest} AS a\nRUN true\nFROM {h}/big:1 AS b\nRUN true\n\
             FROM scratch\nCOPY --from=a / /a\nCOPY --from=b /big /b\n",
            h = reg.host()
        ),
    );
    let out = Command::new(&bin)
        .arg(&ctx)
        .arg(format!("--output=oci:{}", tmp.path().join("out").display()))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("nothing/here"), "{stderr}");
}

/// Sets the modification time of `path` (a file) to `secs`.
fn set_mtime(path: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

fn mtime(root: &Path, path: &str) -> i64 {
    fs::symlink_metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}")).mtime()
}

// 14. Times: the epoch (SOURCE_DATE_EPOCH, else 0) is the time of every
// input (context files, heredocs) and of what a step makes; files taken
// from images, stages and archives keep their times, clamped to the epoch;
// `created` is the epoch. Docker's times (no epoch) keep every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_follow_the_epoch_rule_and_dockers_times_on_request() {
    const EPOCH: u64 = 1_700_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM kiln-base AS s\nRUN touch -d @1000 /old && touch -d @1800000000 /new\n\
         FROM kiln-base\nCOPY ctx.txt /ctx.txt\nCOPY ctx.txt /made/a/b/\nCOPY --from=s /old /new /from-stage/\n\
         ADD a.tar /unpacked/\nCOPY <<EOF /heredoc.txt\nhi\nEOF\nWORKDIR /w/x\n",
    );
    write(&ctx.join("ctx.txt"), "context\n");
    set_mtime(&ctx.join("ctx.txt"), 1_000_000);
    let src = tmp.path().join("src");
    write(&src.join("in-tar.txt"), "tar\n");
    set_mtime(&src.join("in-tar.txt"), 2_000);
    run(Command::new("tar").arg("-cf").arg(ctx.join("a.tar")).arg("-C").arg(&src).arg("in-tar.txt")).unwrap();
    let epoch = i64::try_from(EPOCH).unwrap();
    for docker_times in [false, true] {
        let out = tmp.path().join(format!("out-{docker_times}"));
        let b = Build::new(&ctx).cache_dir(tmp.path().join("cache")).client(crate::build::client()).with_base(&busybox);
        let b = if docker_times { b.epoch(None) } else { b.epoch(Some(EPOCH)) };
        b.output(ImageLocation::layout(out.clone()))
            .build()
            .await
            .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
        let root = umoci_unpack(&out, "latest", &tmp.path().join(format!("u-{docker_times}"))).join("rootfs");
        let created = config_of(&out, "latest").created.unwrap();
        if docker_times {
            assert_eq!(mtime(&root, "ctx.txt"), 1_000_000, "docker's times keep the context's");
            assert_eq!(mtime(&root, "from-stage/new"), 1_800_000_000);
            assert!(mtime(&root, "made/a") > epoch, "a directory made now");
            assert_ne!(created, kiln::rfc3339_utc(EPOCH));
        } else {
            for p in ["ctx.txt", "made/a", "made/a/b", "made/a/b/ctx.txt", "heredoc.txt", "w", "w/x"] {
                assert_eq!(mtime(&root, p), epoch, "{p}: inputs and what steps make are dated by the epoch");
            }
            assert_eq!(mtime(&root, "from-stage/new"), epoch, "newer than the epoch: clamped");
            assert_eq!(created, kiln::rfc3339_utc(EPOCH));
        }
        assert_eq!(mtime(&root, "from-stage/old"), 1000, "a stage's file keeps its older time");
        assert_eq!(mtime(&root, "unpacked/in-tar.txt"), 2000, "an archive's entry keeps its older time");
    }
}

/// A git repository at `dir` with `files`, committed at `when`.
fn git_repo(dir: &Path, files: &[(&str, &str)], when: u64) {
    for (p, text) in files {
        write(&dir.join(p), text);
    }
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_DATE", format!("@{when} +0000"))
            .env("GIT_COMMITTER_DATE", format!("@{when} +0000"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com"))
        .unwrap()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
}

// Reproducibility: two fresh checkouts of one commit (other directories,
// times and inodes) give the same digest by default and with the epoch
// taken from git, where `created` is the commit time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_checkouts_build_the_same_image_by_default_and_from_git_time() {
    const COMMITTED: u64 = 1_650_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = base_layout(tmp.path()) else { return };
    let origin = tmp.path().join("origin");
    git_repo(
        &origin,
        &[
            ("Dockerfile", "FROM kiln-base\nCOPY . /src/\nRUN cat /src/app.txt > /copy && mkdir -p /made/dir\n"),
            ("app.txt", "app\n"),
            ("sub/b.txt", "b\n"),
            (".dockerignore", ".git\n"),
        ],
        COMMITTED,
    );
    let mut digests: Vec<(bool, String, String)> = Vec::new();
    for (i, from_git) in [(0, false), (1, false), (2, true), (3, true)] {
        let checkout = tmp.path().join(format!("checkout-{i}"));
        run(Command::new("git").args(["clone", "-q"]).arg(&origin).arg(&checkout)).unwrap();
        // another checkout made later: other times and inodes
        set_mtime(&checkout.join("app.txt"), 1_000_000 + i);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = tmp.path().join(format!("out-{i}"));
        let b = Build::new(&checkout)
            .cache_dir(tmp.path().join(format!("cache-{i}")))
            .client(crate::build::client())
            .with_base(&busybox)
            .output(ImageLocation::layout(out.clone()));
        let b = if from_git { b.epoch_from_git() } else { b };
        let built = b.build().await.unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
        let created = config_of(&out, "latest").created.unwrap();
        digests.push((from_git, built.manifest.digest.to_string(), created));
    }
    assert_eq!(digests[0].1, digests[1].1, "default epoch: {digests:?}");
    assert_eq!(digests[2].1, digests[3].1, "git epoch: {digests:?}");
    assert_ne!(digests[0].1, digests[2].1);
    assert_eq!(digests[2].2, kiln::rfc3339_utc(COMMITTED));
    // a context that is no git work tree is a clear error
    let plain = tmp.path().join("plain");
    write(&plain.join("Dockerfile"), "FROM scratch\n");
    let err = Build::new(&plain)
        .cache_dir(tmp.path().join("cache-plain"))
        .epoch_from_git()
        .output(ImageLocation::layout(tmp.path().join("out-plain")))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, kiln::build::BuildError::GitEpoch { .. }), "{}", kiln::error_chain(&err));
}

/// The host's `ssh-add` with its libraries and loader in one directory, to
/// run inside a busybox container (`/t/ld.so --library-path /t /t/ssh-add`).
fn ssh_add_tools(dir: &Path) -> PathBuf {
    let add = testkit::tool("ssh-add").unwrap();
    fs::create_dir_all(dir).unwrap();
    fs::copy(&add, dir.join("ssh-add")).unwrap();
    for line in run(Command::new("ldd").arg(&add)).unwrap().lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
        let Some(path) = path else { continue };
        let name = if line.contains("ld-linux") { "ld.so".into() } else { path.file_name().unwrap().to_owned() };
        fs::copy(&path, dir.join(name)).unwrap();
    }
    dir.to_owned()
}

/// Every Unix socket under `root`.
fn sockets(root: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_socket() {
                out.push(e.path());
            } else if ft.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

// 15. `RUN --mount=type=ssh` forwards the build's ssh agent: a real
// ssh-agent's key is listed by a real ssh-add inside the step; the socket
// honours target, uid, gid and mode; a required agent not given is an
// error; neither the socket nor anything of the agent reaches the image or
// the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_mounts_forward_the_agent_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = base_layout(tmp.path()) else { return };
    let Some(agent) = testkit::SshAgent::start(tmp.path()).unwrap() else {
        assert!(!testkit::in_ci(), "openssh-client missing");
        return;
    };
    let tools = ssh_add_tools(&tmp.path().join("tools"));
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM kiln-base\n\
         RUN --mount=type=bind,from=tools,target=/t --mount=type=ssh /t/ld.so --library-path /t /t/ssh-add -l > /keys && echo \"$SSH_AUTH_SOCK\" > /sock\n\
         RUN --mount=type=ssh,id=other,mode=0741,uid=100,gid=102,target=/agent stat -c '%u %g %a %F' /agent > /stat\n\
         RUN --mount=type=ssh,id=absent test -z \"$SSH_AUTH_SOCK\" && touch /optional\n",
    );
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    Build::new(&ctx)
        .cache_dir(&cache)
        .client(crate::build::client())
        .with_base(&busybox)
        .build_context("tools", kiln::build::BuildContext::Dir(tools))
        .ssh("default", &agent.socket)
        .ssh("other", &agent.socket)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let root = umoci_unpack(&out, "latest", tmp.path()).join("rootfs");
    let keys = fs::read_to_string(root.join("keys")).unwrap();
    assert!(keys.contains(&agent.fingerprint), "{keys}");
    assert_eq!(fs::read_to_string(root.join("sock")).unwrap(), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(fs::read_to_string(root.join("stat")).unwrap(), "100 102 741 socket\n");
    assert!(root.join("optional").exists());
    assert!(!root.join("run/buildkit").exists() && !root.join("agent").exists(), "mount points left in the image");
    assert_eq!(sockets(&root), Vec::<PathBuf>::new());
    assert_eq!(sockets(&cache), Vec::<PathBuf>::new());
    // a required agent that was not given
    let tmp2 = tempfile::tempdir().unwrap();
    let base2 = base_layout(tmp2.path()).unwrap();
    let err = crate::build::failing_with("FROM kiln-base\nRUN --mount=type=ssh,id=nothere,required true\n", &[], |b| {
        b.with_base(&base2)
    })
    .await;
    assert!(kiln::error_chain(&err).contains("nothere"), "{}", kiln::error_chain(&err));
}
