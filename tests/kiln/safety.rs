//! Build safety: what a hostile Dockerfile, context or local user tries,
//! and what kiln must never let happen. Host files outside the build's own
//! directories never change (a manifest of a victim directory, inode for
//! inode, before and after); the cache is the invoking user's alone (the
//! unprivileged `kiln-test` user plays the attacker); a Dockerfile reads
//! only what the invoker gave the build; every step's cache key covers
//! what can change its result; outputs are as readable as skopeo's.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::ImageLocation;
use kiln::build::{Build, BuildContext, BuildError, CacheError};
use kiln::oci_image::{Compression, Layout};
use testkit::{TestUser, run, shared_tempdir, test_user, tool, tree_manifest};

use crate::build::{WithBase, base_layout, build, example_binary, failing_with, inner, umoci_unpack, write};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A victim directory outside every build directory: an empty directory,
/// an empty file and a file with content, which a build must never touch.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    fs::create_dir_all(v.join("b")).unwrap();
    fs::create_dir_all(v.join("keep")).unwrap();
    fs::write(v.join("d"), "").unwrap();
    fs::write(v.join("keep/file"), "precious\n").unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cannot_make_kiln_delete_host_files_through_a_planted_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let v = victim(tmp.path());
    let before = tree_manifest(&v).unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, "s").unwrap();
    // the mount points /a/b (a directory) and /c/d (a file) are made by
    // the runtime; the command moves their parents away and plants symlinks
    // to the victim in their place, so "remove the still-empty mount
    // points" would land on the victim's empty directory and empty file
    let ctx = tmp.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN --mount=type=tmpfs,target=/a/b --mount=type=secret,id=s,target=/c/d \
             sh -c 'mv /a /a-moved && ln -s {v} /a && mv /c /c-moved && ln -s {v} /c'\n",
            v = v.display()
        ),
    );
    for overlay in [true, false] {
        let out = tmp.path().join(format!("out-{overlay}"));
        let result = build(&ctx, &tmp.path().join(format!("cache-{overlay}")))
            .with_base(&base)
            .overlayfs(overlay)
            .secret("s", &secret)
            .output(ImageLocation::layout(out.clone()))
            .build()
            .await;
        assert_eq!(tree_manifest(&v).unwrap(), before, "overlay {overlay}: the victim changed ({result:?})");
        result.unwrap_or_else(|e| panic!("overlay {overlay}: {}", kiln::error_chain(&e)));
        // the planted links are the command's own doing, and stay in its layer
        let root = umoci_unpack(&out, "latest", &tmp.path().join(format!("unpack-{overlay}"))).join("rootfs");
        assert_eq!(fs::read_link(root.join("a")).unwrap(), v);
        assert!(root.join("a-moved").is_dir() && root.join("c-moved").is_dir());
    }
}

#[test]
fn without_home_or_xdg_cache_home_kiln_refuses_rather_than_use_a_shared_directory() {
    if !is_root() {
        return;
    }
    let (Some(user), Some(bin)) = (test_user(), example_binary()) else { return };
    let shared = shared_tempdir().unwrap();
    // a world-writable temporary directory, where the attacker squats the
    // old fallback location first
    let tmpdir = shared.path().join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    fs::set_permissions(&tmpdir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let squat = tmpdir.join("kiln-cache");
    let made = user.sh(&format!("mkdir -p {s}/oci {s}/l && chmod -R 777 {s}", s = squat.display())).unwrap();
    assert!(made.status.success(), "{made:?}");
    let before = tree_manifest(&squat).unwrap();
    let ctx = shared.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY hello.txt /\n");
    write(&ctx.join("hello.txt"), "hello\n");
    let out = Command::new(&bin)
        .arg(&ctx)
        .arg("--output")
        .arg(format!("oci:{}", shared.path().join("out").display()))
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("KILN_CACHE_DIR")
        .env("TMPDIR", &tmpdir)
        .current_dir(shared.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built without a cache directory of its own: {stderr}");
    assert!(stderr.contains("HOME") && stderr.contains("XDG_CACHE_HOME"), "{stderr}");
    assert_eq!(tree_manifest(&squat).unwrap(), before, "kiln used the squatted directory");
    assert!(!shared.path().join("out").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_another_user_made_or_left_open_is_refused_naming_path_owner_and_mode() {
    if !is_root() {
        return;
    }
    let Some(user) = test_user() else { return };
    let shared = shared_tempdir().unwrap();
    let ctx = shared.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY hello.txt /\n");
    write(&ctx.join("hello.txt"), "hello\n");
    // the attacker prepares a cache directory where root's build will look,
    // in a directory anyone may create entries in (as /tmp)
    let sticky = shared.path().join("tmp");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let theirs = sticky.join("their-cache");
    let made = user.sh(&format!("mkdir -m 700 {}", theirs.display())).unwrap();
    assert!(made.status.success(), "{made:?}");
    let err = Build::new(&ctx).cache_dir(&theirs).build().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, BuildError::Cache(CacheError::Unsafe { owner, .. }) if *owner == user.uid), "{msg}");
    assert!(msg.contains(&theirs.display().to_string()) && msg.contains(&format!("owner uid {}", user.uid)), "{msg}");
    assert!(msg.contains("mode 0700"), "{msg}");
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0, "kiln wrote into another user's directory");
    // root's own cache, opened to others: refused until closed again
    let mine = shared.path().join("my-cache");
    Build::new(&ctx).cache_dir(&mine).build().await.unwrap();
    for dir in [mine.clone(), mine.join("l"), mine.join("cache"), mine.join("tmp")] {
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let err = Build::new(&ctx).cache_dir(&mine).build().await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()) && msg.contains("mode 0755"), "{msg}");
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    Build::new(&ctx).cache_dir(&mine).build().await.unwrap();
}

/// Every path under `dir` whose mode has the setuid bit.
fn setuid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (path, line) in tree_manifest(dir).unwrap() {
        let mode = line.split(" mode=").nth(1).and_then(|m| m.split(' ').next()).unwrap();
        if u32::from_str_radix(mode, 8).unwrap() & 0o4000 != 0 && line.starts_with("file") {
            out.push(dir.join(path));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_cannot_read_or_run_anything_in_the_cache() {
    if !is_root() {
        return;
    }
    let Some(user) = test_user() else { return };
    let shared = shared_tempdir().unwrap();
    let Some(base) = base_layout(shared.path()) else { return };
    let ctx = shared.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nRUN cp /bin/busybox /bin/suid-box && chmod 4755 /bin/suid-box\n"),
    );
    // the cache sits in a directory everyone can enter (not a 0700 home)
    let cache = shared.path().join("cache");
    build(&ctx, &cache).with_base(&base).build().await.unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let suid = setuid_files(&cache.join("l"));
    assert!(!suid.is_empty(), "the RUN's layer with its setuid file is in the cache");
    let blob = fs::read_dir(cache.join("oci/blobs/sha256")).unwrap().next().unwrap().unwrap().path();
    for (what, script) in [
        ("list the cache", format!("ls {}", cache.display())),
        ("list the layers", format!("ls {}", cache.join("l").display())),
        ("read a blob", format!("cat {} > /dev/null", blob.display())),
        ("run a setuid-root file", format!("{} id -u", suid[0].display())),
    ] {
        let out = user.sh(&script).unwrap();
        assert!(!out.status.success(), "{} could {what}: {}", testkit::TEST_USER, String::from_utf8_lossy(&out.stdout));
    }
    // a layer's own files keep the image's modes: the cache hides them, nothing rewrites them
    assert_eq!(fs::metadata(&suid[0]).unwrap().mode() & 0o7777, 0o4755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_cannot_name_host_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let Some(git) = tool("git") else { return };
    let layout = base.location();
    let repo = tmp.path().join("host-repo.git");
    run(Command::new(&git).args(["init", "-q", "--bare"]).arg(&repo)).unwrap();
    let git_url = format!("file://{}", repo.display());
    let before = (tree_manifest(&base.layout).unwrap(), tree_manifest(&repo).unwrap());
    for (df, name) in [
        (format!("FROM {layout}\n"), &layout),
        (format!("FROM scratch\nCOPY --from={layout} /etc/passwd /\n"), &layout),
        (format!("FROM {base}\nRUN --mount=from={layout},target=/m cat /m/etc/passwd\n"), &layout),
        (format!("FROM scratch\nADD {git_url} /src/\n"), &git_url),
    ] {
        let e = failing_with(&df, &[], |b| b.with_base(&base)).await;
        assert!(matches!(inner(&e), BuildError::HostPath { name: n } if n == name), "{df}: {e:?}");
        assert!(kiln::error_chain(&e).contains("--build-context"), "{}", kiln::error_chain(&e));
    }
    assert_eq!((tree_manifest(&base.layout).unwrap(), tree_manifest(&repo).unwrap()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_contexts_bring_in_layouts_images_and_directories_the_invoker_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let deps = tmp.path().join("deps");
    write(&deps.join("lib/a.txt"), "dep a\n");
    write(&deps.join("lib/b.secret"), "hidden\n");
    write(&deps.join(".dockerignore"), "**/*.secret\n");
    let ctx = tmp.path().join("ctx");
    // `tools` is a stage the named context replaces: its unreachable base is never pulled
    write(
        &ctx.join("Dockerfile"),
        "FROM 127.0.0.1:1/never/pulled:1 AS tools\nRUN false\n\
         FROM busybox AS runner\n\
         COPY --from=deps /lib /deps/\n\
         RUN --mount=from=deps,source=lib,target=/m ls /m > /mounted\n\
         COPY --from=tools /bin/busybox /from-tools\n\
         FROM runner\nRUN cat /deps/a.txt > /copied\n",
    );
    let root_dir = tmp.path().join("root");
    let out = tmp.path().join("out");
    build(&ctx, &tmp.path().join("cache"))
        .build_context("docker.io/library/busybox:latest", base.context())
        .build_context("tools", BuildContext::oci_layout(&base.layout, Some("1".parse().unwrap())))
        .build_context("deps", deps.display().to_string().parse().unwrap())
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let root = umoci_unpack(&out, "latest", &root_dir).join("rootfs");
    assert_eq!(fs::read_to_string(root.join("copied")).unwrap(), "dep a\n");
    assert_eq!(fs::read_to_string(root.join("mounted")).unwrap(), "a.txt\n", "the context's .dockerignore");
    assert!(!root.join("deps/b.secret").exists());
    assert!(root.join("from-tools").is_file());
    // a directory as a FROM: one layer of its files
    write(&ctx.join("Dockerfile"), "FROM deps\n");
    let out2 = tmp.path().join("out2");
    let built = build(&ctx, &tmp.path().join("cache"))
        .build_context("deps", BuildContext::Dir(deps.clone()))
        .output(ImageLocation::layout(out2.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    assert_eq!(built.layers.len(), 1);
    let root = umoci_unpack(&out2, "latest", &tmp.path().join("root2")).join("rootfs");
    assert_eq!(fs::read_to_string(root.join("lib/a.txt")).unwrap(), "dep a\n");
    assert!(!root.join("lib/b.secret").exists());
    // docker-image://scratch is the empty image
    write(&ctx.join("Dockerfile"), "FROM base\nCOPY Dockerfile /\n");
    let built = build(&ctx, &tmp.path().join("cache"))
        .build_context("base", "docker-image://scratch".parse().unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(built.layers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_bind_mounts_of_the_context_hide_what_dockerignore_hides() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join(".env"), "API_TOKEN=leaked-value\n");
    write(&ctx.join("app.txt"), "app\n");
    write(&ctx.join("sub/keep.txt"), "keep\n");
    write(&ctx.join("sub/key.pem"), "leaked-value\n");
    write(&ctx.join(".dockerignore"), ".env\n**/*.pem\n");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\n\
             RUN --mount=type=bind,target=/ctx ls -A /ctx > /listing && (cat /ctx/.env > /leak 2>/dev/null || true)\n\
             RUN --mount=type=bind,source=sub,target=/sub ls -A /sub > /sub-listing\n"
        ),
    );
    let before = tree_manifest(&ctx).unwrap();
    let root = crate::build::build_rootfs(&ctx, tmp.path(), Some(&base)).await;
    assert_eq!(tree_manifest(&ctx).unwrap(), before, "the context changed");
    assert_eq!(fs::read_to_string(root.join("listing")).unwrap(), ".dockerignore\nDockerfile\napp.txt\nsub\n");
    assert_eq!(fs::read_to_string(root.join("sub-listing")).unwrap(), "keep.txt\n");
    let leak = fs::read_to_string(root.join("leak")).unwrap_or_default();
    assert!(!leak.contains("leaked-value"), "an ignored file reached the RUN");
    // naming an ignored file is naming a file that is not there, as in BuildKit
    let files = [(".env", "API_TOKEN=leaked-value\n"), (".dockerignore", ".env\n")];
    let df = format!("FROM {base}\nRUN --mount=type=bind,source=.env,target=/env cat /env\n");
    let e = failing_with(&df, &files, |b| b.with_base(&base)).await;
    assert!(matches!(inner(&e), BuildError::MissingSource { path } if path == ".env"), "{e:?}");
    assert!(!kiln::error_chain(&e).contains("leaked-value"));
}

/// A tmpfs mounted at a path for the test's duration.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(path: &Path) -> TmpfsMount {
        fs::create_dir_all(path).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "kiln-test", &path.display().to_string()])).unwrap();
        TmpfsMount(path.to_owned())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_mounted_below_the_context_stays_unwritable_from_run() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("app.txt"), "app\n");
    let mnt = TmpfsMount::new(&ctx.join("mnt"));
    fs::write(mnt.0.join("f"), "original\n").unwrap();
    let before = tree_manifest(&mnt.0).unwrap();
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN --mount=type=bind,target=/ctx sh -c \
             'echo pwned > /ctx/mnt/f; echo pwned > /ctx/mnt/new; rm -f /ctx/mnt/f; true'\n"
        ),
    );
    let result = build(&ctx, &tmp.path().join("cache")).with_base(&base).build().await;
    assert_eq!(tree_manifest(&mnt.0).unwrap(), before, "a RUN wrote through the context bind ({result:?})");
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_bind_never_writes_into_the_context_or_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("f.txt"), "original\n");
    write(&ctx.join(".dockerignore"), "ignored\n");
    write(&ctx.join("ignored"), "x\n");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch AS empty\n\
             FROM {base}\n\
             RUN --mount=type=bind,target=/ctx,rw sh -c 'echo changed > /ctx/f.txt && echo new > /ctx/new && cat /ctx/f.txt > /seen'\n\
             RUN --mount=type=bind,from=empty,target=/e,rw touch /e/poison\n\
             RUN --mount=type=bind,from={base},source=/etc,target=/etc2,rw sh -c 'echo x >> /etc2/passwd'\n\
             RUN ls / > /root-listing\n"
        ),
    );
    let before = tree_manifest(&ctx).unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    build(&ctx, &cache)
        .with_base(&base)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    assert_eq!(tree_manifest(&ctx).unwrap(), before, "a read-write bind wrote into the context");
    let root = umoci_unpack(&out, "latest", tmp.path()).join("rootfs");
    assert_eq!(fs::read_to_string(root.join("seen")).unwrap(), "changed\n", "rw binds are writable");
    assert!(!fs::read_to_string(root.join("root-listing")).unwrap().contains("poison"));
    let empty = cache.join("empty");
    assert!(!empty.exists() || fs::read_dir(&empty).unwrap().next().is_none(), "the cache's empty root changed");
    // the base image's files in the cache are as they were
    for dir in fs::read_dir(cache.join("l")).unwrap() {
        let passwd = dir.unwrap().path().join("etc/passwd");
        if passwd.is_file() {
            assert_eq!(fs::read_to_string(&passwd).unwrap(), testkit::PASSWD);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_dockerfile_or_dockerignore_leading_out_of_the_context_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    write(&outside.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n# TOP-SECRET-LINE\n");
    write(&outside.join("ignore"), "a.txt\n");
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("a.txt"), "a\n");
    std::os::unix::fs::symlink(outside.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
    let before = tree_manifest(&outside).unwrap();
    let cache = tmp.path().join("cache");
    let err = Build::new(&ctx).cache_dir(&cache).build().await.unwrap_err();
    let text = kiln::error_chain(&err);
    assert!(matches!(err, BuildError::LeavesContext { .. }), "{text}");
    assert!(text.contains("outside the build context") && !text.contains("TOP-SECRET"), "{text}");
    // named with -f, it is the invoker's choice and followed
    Build::new(&ctx).dockerfile(ctx.join("Dockerfile")).cache_dir(&cache).build().await.unwrap();
    // a link inside the context is fine
    fs::remove_file(ctx.join("Dockerfile")).unwrap();
    write(&ctx.join("real/Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    std::os::unix::fs::symlink("real/Dockerfile", ctx.join("Dockerfile")).unwrap();
    Build::new(&ctx).cache_dir(&cache).build().await.unwrap();
    // .dockerignore, and Dockerfile.dockerignore beside the default Dockerfile
    for name in [".dockerignore", "Dockerfile.dockerignore"] {
        std::os::unix::fs::symlink(outside.join("ignore"), ctx.join(name)).unwrap();
        let err = Build::new(&ctx).cache_dir(&cache).build().await.unwrap_err();
        assert!(matches!(err, BuildError::LeavesContext { .. }), "{name}: {}", kiln::error_chain(&err));
        fs::remove_file(ctx.join(name)).unwrap();
    }
    assert_eq!(tree_manifest(&outside).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reruns_when_what_it_mounts_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    let cache = tmp.path().join("cache");
    let df = |tool_version: &str| {
        format!(
            "FROM {base} AS tool\nRUN echo {tool_version} > /v\n\
             FROM {base}\nRUN --mount=type=bind,source=f.txt,target=/f --mount=type=bind,from=tool,source=/v,target=/v \
             cat /f /v > /out\n"
        )
    };
    let out_of = |n: &str| {
        let ctx = ctx.clone();
        let cache = cache.clone();
        let tmp = tmp.path().to_owned();
        let base_ctx = base.context();
        let n = n.to_owned();
        async move {
            let out = tmp.join(format!("out-{n}"));
            build(&ctx, &cache)
                .build_context("kiln-base", base_ctx)
                .output(ImageLocation::layout(out.clone()))
                .build()
                .await
                .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
            let root = umoci_unpack(&out, "latest", &tmp.join(format!("unpack-{n}"))).join("rootfs");
            fs::read_to_string(root.join("out")).unwrap()
        }
    };
    write(&ctx.join("Dockerfile"), &df("tool-1"));
    write(&ctx.join("f.txt"), "context-1\n");
    assert_eq!(out_of("1").await, "context-1\ntool-1\n");
    write(&ctx.join("f.txt"), "context-2\n");
    assert_eq!(out_of("2").await, "context-2\ntool-1\n", "a changed bound file gave the cached result");
    write(&ctx.join("Dockerfile"), &df("tool-2"));
    assert_eq!(out_of("3").await, "context-2\ntool-2\n", "a changed from= stage gave the cached result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_key_covers_the_epoch_the_compression_and_its_level() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\nWORKDIR /w\n");
    write(&ctx.join("a.txt"), &"kiln ".repeat(1000));
    let shared_cache = tmp.path().join("cache");
    let variants: [(&str, Option<u64>, Compression, Option<i32>); 5] = [
        ("first", Some(1), Compression::Gzip, None),
        ("epoch", Some(2_000_000_000), Compression::Gzip, None),
        ("zstd", Some(1), Compression::Zstd, None),
        ("level", Some(1), Compression::Gzip, Some(1)),
        ("none", Some(1), Compression::None, None),
    ];
    for (n, (name, epoch, compression, level)) in variants.into_iter().enumerate() {
        let make = |cache: PathBuf| {
            Build::new(&ctx)
                .cache_dir(cache)
                .client(crate::build::client())
                .epoch(epoch)
                .compression(compression, level)
        };
        let warm = make(shared_cache.clone()).build().await.unwrap();
        let fresh = make(tmp.path().join(format!("fresh-{n}"))).build().await.unwrap();
        assert_eq!(warm.layers, fresh.layers, "{name}: a step reused a layer made with other settings");
        assert_eq!(warm.manifest.digest, fresh.manifest.digest, "{name}");
    }
}

/// Every path under `root` (relative) with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out: Vec<(PathBuf, u32)> = tree_manifest(root)
        .unwrap()
        .keys()
        .map(|p| {
            // blobs by kind, not by name: skopeo may re-encode a document
            let name = if p.starts_with("blobs/sha256") && p != Path::new("blobs/sha256") {
                PathBuf::from("blobs/sha256/BLOB")
            } else {
                p.clone()
            };
            (name, fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_as_readable_as_the_ones_skopeo_writes() {
    let Some(skopeo) = tool("skopeo") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    write(&ctx.join("a.txt"), "a\n");
    let (ours, archive) = (tmp.path().join("ours"), tmp.path().join("ours.tar"));
    build(&ctx, &tmp.path().join("cache"))
        .tag("kiln/modes:v1".parse().unwrap())
        .output(ImageLocation::layout(ours.clone()))
        .output(ImageLocation::docker_archive(archive.clone()))
        .build()
        .await
        .unwrap();
    let (theirs, their_archive) = (tmp.path().join("theirs"), tmp.path().join("theirs.tar"));
    let copy = |to: String| {
        run(Command::new(&skopeo).arg("copy").arg(format!("oci:{}:v1", ours.display())).arg(to)).unwrap();
    };
    copy(format!("oci:{}:v1", theirs.display()));
    copy(format!("docker-archive:{}:kiln/modes:v1", their_archive.display()));
    // (kiln's index lock file aside, which skopeo does not make)
    let kiln: Vec<_> = modes(&ours).into_iter().filter(|(p, _)| p != Path::new("index.json.lock")).collect();
    assert_eq!(kiln, modes(&theirs), "the output layout's modes differ from skopeo's");
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&archive), mode(&their_archive), "the docker-archive's mode differs from skopeo's");
    Layout::open(&ours).unwrap().verify().unwrap();
}

#[test]
fn the_test_user_cannot_enter_a_private_directory() {
    // the attacker the tests above rely on is really unprivileged
    if !is_root() {
        return;
    }
    let Some(user) = test_user() else { return };
    let private =
        tempfile::Builder::new().permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700)).tempdir().unwrap();
    let out: std::process::Output = TestUser::sh(&user, &format!("ls {}", private.path().display())).unwrap();
    assert!(!out.status.success(), "{out:?}");
    let out = user.sh("id -u").unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user.uid.to_string());
    assert_ne!(user.uid, 0);
}
