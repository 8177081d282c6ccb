//! Differential test: the same Dockerfiles built by kiln and by
//! `buildah bud --isolation=chroot --format docker` (vfs storage, a store
//! per run) give the same config fields and the same root file system.
//!
//! Known differences the Dockerfiles here stay clear of (buildah 1.28):
//! shell-form `ENTRYPOINT`/`CMD` after `SHELL` (buildah ignores `SHELL`
//! there; kiln follows Docker), `VOLUME` mixing words and JSON, and port
//! ranges in `EXPOSE` (Docker and kiln give one key per port, buildah keeps
//! `8000-8001/tcp`). Buildah also leaves the empty mount points of its `RUN`
//! containers in the image (`/dev`, `/proc`, `/sys`, `/run`,
//! `/etc/{hostname,hosts,resolv.conf}`); BuildKit removes them and so does
//! kiln, so those stubs alone are not counted as differences.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::build::{Build, Output};
use kiln::oci_image::ContainerConfig;
use testkit::{run, tool};

use crate::build::{base_layout, umoci_unpack};

/// One file system entry, everything but times.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    link: Option<PathBuf>,
    content: Option<String>,
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            'o'
        };
        let content = ft.is_file().then(|| {
            let bytes = fs::read(&p).unwrap();
            kiln::oci_image::Digest::sha256(&bytes).to_string()
        });
        out.insert(
            p.strip_prefix(root).unwrap().to_owned(),
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.len() } else { 0 },
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                content,
            },
        );
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The config fields compared, with empty and absent counting as equal.
fn fields(c: &ContainerConfig) -> BTreeMap<&'static str, String> {
    let nonempty = |s: String| if s == "[]" || s == "{}" || s == "null" || s == "\"\"" { String::new() } else { s };
    let j = |v: serde_json::Value| nonempty(v.to_string());
    let mut labels = c.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !k.starts_with("io.buildah."));
    BTreeMap::from([
        ("Env", j(serde_json::json!(c.env))),
        ("Cmd", j(serde_json::json!(c.cmd))),
        ("Entrypoint", j(serde_json::json!(c.entrypoint))),
        ("WorkingDir", j(serde_json::json!(c.working_dir))),
        ("User", j(serde_json::json!(c.user))),
        ("ExposedPorts", j(serde_json::json!(c.exposed_ports))),
        ("Volumes", j(serde_json::json!(c.volumes))),
        ("StopSignal", j(serde_json::json!(c.stop_signal))),
        ("Healthcheck", j(serde_json::json!(c.healthcheck))),
        ("Labels", j(serde_json::json!(labels))),
    ])
}

/// Mount points buildah's `RUN` leaves behind (empty).
const BUILDAH_STUBS: &[&str] = &["dev", "proc", "sys", "run", "etc/hostname", "etc/hosts", "etc/resolv.conf"];

struct Buildah {
    bin: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).arg("--runroot").arg(&self.runroot).args(["--storage-driver", "vfs"]);
        c
    }

    /// Builds `ctx` and returns the image's config and root file system tree.
    fn build(&self, ctx: &Path, name: &str, work: &Path) -> (ContainerConfig, BTreeMap<PathBuf, Node>) {
        run(self
            .cmd()
            .args(["bud", "--isolation=chroot", "--format", "docker", "--tls-verify=false", "-t", name, "-f"])
            .arg(ctx.join("Dockerfile"))
            .arg(ctx))
        .unwrap();
        let inspect = run(self.cmd().args(["inspect", "--type", "image", name])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        let config: ContainerConfig = serde_json::from_value(v["Docker"]["config"].clone()).unwrap();
        let layout = work.join("buildah-oci");
        run(self.cmd().args(["push", name]).arg(format!("oci:{}:b", layout.display()))).unwrap();
        let bundle = umoci_unpack(&layout, "b", &work.join("buildah-unpack"));
        (config, tree(&bundle.join("rootfs")))
    }
}

/// A case: name, Dockerfile, context files.
type Case = (&'static str, String, Vec<(&'static str, &'static str)>);

fn dockerfiles(base: &str) -> Vec<Case> {
    vec![
        (
            "config",
            format!(
                "FROM {base}\nENV A=1 B=\"two words\"\nENV C=$A-$B\nARG V=argv\nENV D=$V\nLABEL org.example.a=b \"c d\"=e\n\
                 WORKDIR /srv/app\nWORKDIR sub\nUSER app\nEXPOSE 80 443/udp 8000\nVOLUME /data /cache\n\
                 STOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD wget -q localhost\n\
                 ENTRYPOINT [\"/bin/sh\", \"-c\"]\nCMD echo $A\n"
            ),
            vec![],
        ),
        (
            "files",
            format!(
                "FROM {base}\nCOPY f.txt /single.txt\nCOPY dir /tree/\nCOPY f.txt dir/sub/g.txt /many/\n\
                 COPY --chown=app:staff f.txt /home/app/\nCOPY --chown=1000 dir /owned\nCOPY --chmod=600 f.txt /secret\n\
                 WORKDIR /rel\nCOPY f.txt .\nCOPY f.txt renamed\nCOPY *.md /docs/\nCOPY link /followed\n"
            ),
            vec![
                ("f.txt", "f\n"),
                ("dir/sub/g.txt", "g\n"),
                ("dir/h.sh", "#!/bin/sh\n"),
                ("a.md", "a\n"),
                ("b.md", "b\n"),
            ],
        ),
        (
            "run",
            format!(
                "FROM {base}\nRUN mkdir -p /opt/x/y && echo one > /opt/x/y/f && chmod 750 /opt/x && \
                 ln -s /opt/x/y/f /opt/link && ln /opt/x/y/f /opt/hard && chown 1000:50 /opt/x/y/f\n\
                 RUN rm -rf /var/lib/junk/a /home/app && echo changed > /etc/motd && mkdir /empty\n\
                 RUN rm -rf /var/lib/junk && mkdir -p /var/lib/junk && echo fresh > /var/lib/junk/new\n\
                 USER app\nRUN echo mine > /tmp/mine\nUSER root\nRUN chmod 4755 /tmp/mine\n"
            ),
            vec![],
        ),
        (
            "stages",
            format!(
                "FROM {base} AS one\nRUN mkdir /out && echo made > /out/a && echo second > /out/b\n\
                 FROM scratch AS two\nCOPY --from=one /out/a /a\nCOPY --from=one /out /all/\n\
                 FROM {base}\nCOPY --from=two /all /from-two/\nCOPY --from=one /bin/busybox /usr/local/bin/bb\n\
                 CMD [\"/usr/local/bin/bb\", \"true\"]\n"
            ),
            vec![],
        ),
        (
            "scratch",
            "FROM scratch\nCOPY f.txt /\nCOPY dir /d/\nENV X=y\nCMD [\"/f.txt\"]\n".to_owned(),
            vec![("f.txt", "f\n"), ("dir/sub/g.txt", "g\n")],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_and_buildah_agree_on_config_and_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let (Some(bin), Some(skopeo)) = (tool("buildah"), tool("skopeo")) else { return };
    // both builders pull the base from a real registry
    let registry = testkit::Registry::start().unwrap();
    let image = format!("{}/busybox:1", registry.host());
    run(Command::new(&skopeo)
        .args(["copy", "--dest-tls-verify=false", &base.location()])
        .arg(format!("docker://{image}")))
    .unwrap();
    let base = image;
    let mut failures = Vec::new();
    for (name, dockerfile, files) in dockerfiles(&base) {
        let work = tmp.path().join(name);
        let ctx = work.join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
        for (p, text) in &files {
            let path = ctx.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        if name == "files" {
            std::os::unix::fs::symlink("f.txt", ctx.join("link")).unwrap();
        }
        let buildah = Buildah { bin: bin.clone(), root: work.join("b-root"), runroot: work.join("b-runroot") };
        let (b_config, b_tree) = buildah.build(&ctx, &format!("localhost/diff-{name}:1"), &work);

        let out = work.join("kiln-oci");
        Build::new(&ctx)
            .cache_dir(work.join("kiln-cache"))
            .build_arg("V", "argv")
            .output(Output::Layout(out.clone()))
            .tag("kiln/diff:k".parse().unwrap())
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", kiln::error_chain(&e)));
        let k_config = crate::build::config_of(&out, "k").config.unwrap_or_default();
        let k_tree = tree(&umoci_unpack(&out, "k", &work.join("kiln-unpack")).join("rootfs"));

        let (kf, bf) = (fields(&k_config), fields(&b_config));
        for (field, k) in &kf {
            if bf.get(field) != Some(k) {
                failures
                    .push(format!("{name}: {field}: kiln {k} buildah {}", bf.get(field).cloned().unwrap_or_default()));
            }
        }
        for (path, node) in &b_tree {
            let stub = BUILDAH_STUBS.iter().any(|s| path == Path::new(s))
                && node.size == 0
                && (node.kind == 'f' || (node.kind == 'd' && !b_tree.keys().any(|p| p != path && p.starts_with(path))));
            if stub && !k_tree.contains_key(path) {
                continue;
            }
            match k_tree.get(path) {
                None => failures.push(format!("{name}: {} only in buildah's tree: {node:?}", path.display())),
                Some(k) if k != node => {
                    failures.push(format!("{name}: {}: kiln {k:?} buildah {node:?}", path.display()));
                }
                Some(_) => {}
            }
        }
        for (path, node) in &k_tree {
            if !b_tree.contains_key(path) {
                failures.push(format!("{name}: {} only in kiln's tree: {node:?}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "kiln and buildah differ:\n{}", failures.join("\n"));
}
