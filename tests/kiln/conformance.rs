//! The BuildKit-derived conformance corpus (`tests/conformance/buildkit/`,
//! its format in `FORMAT.md` there): every case is built with kiln and
//! checked the way BuildKit's own test checks it. Prints `N passed, N
//! failed, N skipped`; any failure fails the test. A case may be skipped
//! only as `network: …`, `not-linux: …` or `unsupported: FEATURE` with
//! FEATURE a row of README.md's "Not supported" table.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::ImageLocation;
use kiln::build::{Build, BuildContext};
use serde::Deserialize;
use testkit::run;

use crate::build::{base_layout, client, config_of};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    source: String,
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    test: String,
    #[serde(default)]
    skip: Option<String>,
    #[serde(default)]
    note: Option<String>,
    dockerfile: String,
    #[serde(default)]
    dockerfile_path: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    ssh: bool,
    #[serde(default)]
    http: BTreeMap<String, String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<CaseFile>,
    #[serde(default)]
    fails: bool,
    #[serde(default)]
    error_contains: Vec<String>,
    #[serde(default)]
    expect: Vec<Expect>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    image: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    path: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    dir: bool,
    #[serde(default)]
    symlink: Option<String>,
    #[serde(default)]
    mtime: Option<i64>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    path: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    absent: bool,
    #[serde(default)]
    dir: bool,
    #[serde(default)]
    symlink: Option<String>,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    mtime: Option<i64>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/buildkit")
}

/// The features README.md's "Not supported" table lists (its first column).
fn not_supported() -> Vec<String> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let Some(start) = readme.find("## Not supported") else { return Vec::new() };
    let section = &readme[start..];
    let section = section[3..].find("\n## ").map_or(section, |end| &section[..end + 3]);
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|-") && !l.starts_with("| Feature"))
        .filter_map(|l| l.split('|').nth(1).map(|f| f.trim().trim_matches('`').to_owned()))
        .collect()
}

/// Why `skip` is not an allowed reason (`None` when it is).
fn bad_skip(skip: &str, features: &[String]) -> Option<String> {
    if skip.starts_with("network:") || skip.starts_with("not-linux:") {
        return None;
    }
    match skip.strip_prefix("unsupported:") {
        Some(f) if features.iter().any(|x| x == f.trim()) => None,
        Some(f) => Some(format!("unsupported feature {:?} is not in README.md's \"Not supported\" table", f.trim())),
        None => Some(format!("skip reason {skip:?} is not network:, not-linux: or unsupported:")),
    }
}

/// Names the busybox base answers to in a case (BuildKit matches
/// `busybox` to `docker.io/library/busybox:latest`; tags are kept).
fn busybox_names(text: &str) -> Vec<String> {
    let mut names = vec!["busybox".to_owned()];
    for word in text.split(|c: char| c.is_whitespace() || c == '=' || c == ',' || c == '"') {
        let w = word.trim_start_matches("docker.io/library/").trim_start_matches("docker.io/");
        if let Some(rest) = w.strip_prefix("busybox")
            && (rest.is_empty() || rest.starts_with(':') || rest.starts_with('@'))
            && !rest.contains('$')
            && !names.contains(&word.to_owned())
        {
            names.push(word.to_owned());
        }
    }
    names
}

fn write_files(root: &Path, files: &[CaseFile]) {
    for f in files {
        let p = root.join(&f.path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        if let Some(target) = &f.symlink {
            std::os::unix::fs::symlink(target, &p).unwrap();
            continue;
        }
        if f.dir {
            fs::create_dir_all(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(f.mode.unwrap_or(0o755))).unwrap();
        } else {
            fs::write(&p, f.content.as_deref().unwrap_or_default()).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(f.mode.unwrap_or(0o644))).unwrap();
        }
        if f.uid.is_some() || f.gid.is_some() {
            std::os::unix::fs::chown(&p, f.uid, f.gid).unwrap();
        }
    }
    // times last: writing a file changes its directory's time
    for f in files.iter().filter(|f| f.mtime.is_some() && f.symlink.is_none()) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(f.mtime.unwrap().unsigned_abs());
        let file = fs::File::open(root.join(&f.path)).unwrap();
        file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
    }
}

/// A local HTTP server for a case (`http = { "/path" = "content" }`): each
/// path's content (with a fixed `Last-Modified`), 404 for others. Returns
/// its base URL; the thread ends with the test process.
fn http_server(files: &BTreeMap<String, String>) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files = files.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let head_only = request.starts_with("HEAD ");
            let (status, body) = match files.get(&path) {
                Some(b) => ("200 OK", b.as_bytes()),
                None => ("404 Not Found", &b""[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            if !head_only {
                let _ = conn.write_all(body);
            }
        }
    });
    format!("http://{addr}")
}

/// The build with a fresh ssh agent as `default` when the case asks for
/// one (`ssh = true`); the agent lives as long as the returned guard.
fn with_agent(b: Build, ssh: bool, dir: &Path) -> Result<(Build, Option<testkit::SshAgent>), String> {
    if !ssh {
        return Ok((b, None));
    }
    let Some(agent) = testkit::SshAgent::start(dir).map_err(|e| e.to_string())? else {
        return Err("openssh-client is missing".into());
    };
    Ok((b.ssh("default", &agent.socket), Some(agent)))
}

/// Runs one case; `Err` says what did not hold.
async fn run_case(case: &Case, busybox: &Path) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let server = if case.http.is_empty() { None } else { Some(http_server(&case.http)) };
    let with_server = |t: &str| match &server {
        Some(url) => t.replace("{{SERVER}}", url),
        None => t.to_owned(),
    };
    let dockerfile_text = with_server(&case.dockerfile);
    let root = tmp.path().join("case");
    fs::create_dir_all(&root).unwrap();
    let ctx = case.context.as_ref().map_or_else(|| root.clone(), |c| root.join(c));
    fs::create_dir_all(&ctx).unwrap();
    let df_rel = case.dockerfile_path.clone().unwrap_or_else(|| "Dockerfile".into());
    let df = ctx.join(&df_rel);
    fs::create_dir_all(df.parent().unwrap()).unwrap();
    fs::write(&df, &dockerfile_text).unwrap();
    write_files(&root, &case.files);
    let out = tmp.path().join("out");
    let mut b = Build::new(&ctx)
        .cache_dir(tmp.path().join("cache"))
        .client(client())
        .output(ImageLocation::layout(out.clone()));
    if let Some(e) = case.epoch {
        b = b.epoch(Some(e));
    }
    if case.dockerfile_path.is_some() {
        b = b.dockerfile(&df);
    }
    let base = BuildContext::oci_layout(busybox, Some("1".parse().unwrap()));
    let mut args_text = dockerfile_text.clone();
    for v in case.build_args.values() {
        args_text.push(' ');
        args_text.push_str(v);
    }
    for name in busybox_names(&args_text) {
        if !case.contexts.contains_key(&name) {
            b = b.build_context(name, base.clone());
        }
    }
    for (name, what) in &case.contexts {
        let c = if let Some(dir) = what.strip_prefix("local:") {
            BuildContext::Dir(root.join(dir))
        } else if what == "image:busybox" {
            base.clone()
        } else {
            return Err(format!("unknown context {what:?}"));
        };
        b = b.build_context(name.clone(), c);
    }
    for (k, v) in &case.build_args {
        b = b.build_arg(k.clone(), with_server(v));
    }
    if let Some(t) = &case.target {
        b = b.target(t.clone());
    }
    if let Some(p) = &case.platform {
        b = b.platform(p.parse().map_err(|e| format!("platform {p}: {e:?}"))?);
    }
    for (id, text) in &case.secrets {
        let file = tmp.path().join(format!("secret-{id}"));
        fs::write(&file, text).unwrap();
        b = b.secret(id.clone(), file);
    }
    let (b, agent) = with_agent(b, case.ssh, tmp.path())?;
    let result = b.build().await;
    drop(agent);
    if case.fails {
        let Err(e) = result else { return Err("the build succeeded; it must fail".into()) };
        let text = kiln::error_chain(&e);
        for want in &case.error_contains {
            if !text.contains(want.as_str()) {
                return Err(format!("the error does not name {want:?}: {text}"));
            }
        }
        return Ok(());
    }
    if let Err(e) = result {
        return Err(format!("the build failed: {}", kiln::error_chain(&e)));
    }
    let mut problems = Vec::new();
    if !case.expect.is_empty() {
        let rootfs = tmp.path().join("rootfs");
        run(Command::new("umoci")
            .args(["raw", "unpack", "--image", &format!("{}:latest", out.display())])
            .arg(&rootfs))
        .map_err(|e| e.to_string())?;
        for e in &case.expect {
            check_path(&rootfs, e, &mut problems);
        }
    }
    if !case.config.is_empty() || !case.image.is_empty() {
        check_config(case, &out, &mut problems);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// The case's checks of the image config.
fn check_config(case: &Case, out: &Path, problems: &mut Vec<String>) {
    let config = config_of(out, "latest");
    let full = serde_json::to_value(&config).unwrap();
    let cc = full.get("config").cloned().unwrap_or_default();
    for (k, want) in &case.config {
        let want = serde_json::to_value(want).unwrap();
        if k == "env_contains" {
            let env: Vec<String> =
                cc.get("Env").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
            for w in want.as_array().into_iter().flatten() {
                if !env.iter().any(|e| Some(e.as_str()) == w.as_str()) {
                    problems.push(format!("Env {env:?} lacks {w}"));
                }
            }
            continue;
        }
        let got = cc.get(k).cloned().unwrap_or_default();
        if got != want {
            problems.push(format!("config {k}: got {got}, want {want}"));
        }
    }
    for (k, want) in &case.image {
        match k.as_str() {
            "history_len" => {
                let n = full.get("history").and_then(|h| h.as_array()).map_or(0, Vec::len);
                if i64::try_from(n).ok() != want.as_integer() {
                    problems.push(format!("history has {n} entries, want {want}"));
                }
            }
            "created" => {
                let got = full.get("created").cloned().unwrap_or_default();
                if got.as_str() != want.as_str() {
                    problems.push(format!("created {got}, want {want}"));
                }
            }
            other => problems.push(format!("unknown image check {other}")),
        }
    }
}

fn check_path(rootfs: &Path, e: &Expect, problems: &mut Vec<String>) {
    let p = rootfs.join(e.path.trim_start_matches('/'));
    let meta = fs::symlink_metadata(&p);
    if e.absent {
        if meta.is_ok() {
            problems.push(format!("{} exists", e.path));
        }
        return;
    }
    let Ok(meta) = meta else {
        problems.push(format!("{} is missing", e.path));
        return;
    };
    if e.dir && !meta.is_dir() {
        problems.push(format!("{} is not a directory", e.path));
    }
    if let Some(target) = &e.symlink {
        match fs::read_link(&p) {
            Ok(t) if t == Path::new(target) => {}
            other => problems.push(format!("{}: link {other:?}, want {target}", e.path)),
        }
    }
    if e.content.is_some() || e.contains.is_some() {
        match fs::read(&p) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                if let Some(want) = &e.content
                    && text != want.as_str()
                {
                    problems.push(format!("{}: content {text:?}, want {want:?}", e.path));
                }
                if let Some(want) = &e.contains
                    && !text.contains(want.as_str())
                {
                    problems.push(format!("{}: content {text:?} lacks {want:?}", e.path));
                }
            }
            Err(err) => problems.push(format!("{}: {err}", e.path)),
        }
    }
    if let Some(mode) = e.mode
        && meta.mode() & 0o7777 != mode
    {
        problems.push(format!("{}: mode {:o}, want {mode:o}", e.path, meta.mode() & 0o7777));
    }
    if let Some(uid) = e.uid
        && meta.uid() != uid
    {
        problems.push(format!("{}: uid {}, want {uid}", e.path, meta.uid()));
    }
    if let Some(gid) = e.gid
        && meta.gid() != gid
    {
        problems.push(format!("{}: gid {}, want {gid}", e.path, meta.gid()));
    }
    if let Some(mtime) = e.mtime
        && meta.mtime() != mtime
    {
        problems.push(format!("{}: mtime {}, want {mtime}", e.path, meta.mtime()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkit_conformance_corpus() {
    let features = not_supported();
    let mut files: Vec<PathBuf> = fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for f in &files {
        let file: CorpusFile =
            toml::from_str(&fs::read_to_string(f).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for c in file.case {
            assert!(names.insert(c.name.clone()), "case {} twice", c.name);
            // a case without checks asserts what its Go test asserts: that
            // the build succeeds (with its RUN checks)
            cases.push((file.source.clone(), c));
        }
    }
    let only = std::env::var("KILN_CONFORMANCE_CASE").ok();
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    for (source, case) in &cases {
        if only.as_ref().is_some_and(|o| !case.name.contains(o.as_str())) {
            continue;
        }
        if let Some(skip) = &case.skip {
            if let Some(why) = bad_skip(skip, &features) {
                failed.push(format!("{} ({source} {}): {why}", case.name, case.test));
            } else {
                let reason = match skip.split_once(':') {
                    Some((kind, _)) if kind != "unsupported" => kind,
                    _ => skip.as_str(),
                };
                *skipped.entry(reason.trim().to_owned()).or_default() += 1;
            }
            continue;
        }
        let _ = &case.note;
        match run_case(case, &base.layout).await {
            Ok(()) => passed += 1,
            Err(why) => failed.push(format!("{} ({source} {}): {why}", case.name, case.test)),
        }
    }
    let n_skipped: usize = skipped.values().sum();
    eprintln!("BuildKit conformance corpus: {passed} passed, {} failed, {n_skipped} skipped", failed.len());
    for (reason, n) in &skipped {
        eprintln!("  skipped {n}: {reason}");
    }
    for f in &failed {
        eprintln!("FAILED {f}");
    }
    assert!(failed.is_empty(), "{} of {} cases failed", failed.len(), cases.len());
    if only.is_none() {
        assert!(cases.len() >= 150 && passed >= 120, "{} cases, {passed} executed", cases.len());
    }
}
