//! kiln embedded the way a tool embeds it: a Dockerfile the tool made (as
//! text, no file), its own executor wrapped around runc (recording what
//! runs), its own step cache in memory, an event sink, and cancellation
//! through the build's token.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln::ImageLocation;
use kiln::build::{
    Build, BuildError, CacheKey, Cancel, ExecError, Executor, Exit, Process, Progress, RunEnv, Runc, StepCache,
    StepRecord,
};
use kiln::oci_image::Digest;

use crate::build::{WithBase, base_layout, client, config_of, write};

/// An executor that records every command, then lets runc run it.
#[derive(Debug, Default)]
struct Recording {
    runc: Runc,
    ran: Mutex<Vec<Vec<String>>>,
}

impl Executor for Recording {
    fn run(
        &self,
        rootfs: &Path,
        process: &Process,
        env: RunEnv<'_>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Exit, ExecError> {
        self.ran.lock().unwrap().push(process.args.clone());
        self.runc.run(rootfs, process, env, output)
    }
}

/// A step cache in memory, as a tool keeping results in its own database would.
#[derive(Debug, Default)]
struct Memory {
    records: Mutex<HashMap<Digest, (Vec<u8>, StepRecord)>>,
}

impl StepCache for Memory {
    fn get(&self, key: &CacheKey) -> Option<StepRecord> {
        self.records.lock().unwrap().get(key.digest()).map(|(_, r)| r.clone())
    }

    fn put(&self, key: &CacheKey, record: &StepRecord) {
        self.records.lock().unwrap().insert(key.digest().clone(), (key.encoding().to_vec(), record.clone()));
    }
}

/// Every event as JSON, as a tool emitting machine-readable progress would.
type Json = Arc<Mutex<Vec<serde_json::Value>>>;

/// What an event sink saw: one line per event.
fn sink() -> (Arc<Mutex<Vec<String>>>, impl Fn(&Progress<'_>) + Send + Sync + 'static) {
    let (seen, _, f) = json_sink();
    (seen, f)
}

/// [`sink`], and every event as JSON.
fn json_sink() -> (Arc<Mutex<Vec<String>>>, Json, impl Fn(&Progress<'_>) + Send + Sync + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let json: Json = Arc::default();
    let json2 = Arc::clone(&json);
    let f = move |p: &Progress<'_>| {
        json2.lock().unwrap().push(serde_json::to_value(p).unwrap());
        let line = match p {
            Progress::StepStarted { step, instruction } => format!("started {} {instruction}", step.line),
            Progress::CacheMiss { step, reason } => format!("miss {} {reason}", step.line),
            Progress::StepFinished { step, cached, layer, .. } => format!(
                "finished {} cached={cached} layer={}",
                step.line,
                layer.map_or_else(|| "none".to_owned(), |l| l.digest.to_string())
            ),
            Progress::Output { step, bytes } => {
                format!("output {} {}", step.line, String::from_utf8_lossy(bytes).trim_end())
            }
            Progress::Writing { .. } => "writing".to_owned(),
            _ => return,
        };
        seen2.lock().unwrap().push(line);
    };
    (seen, json, f)
}

/// The first build's events as JSON: named, with their step, reason,
/// output text, layer and duration.
fn check_json(json: &[serde_json::Value], miss: &str, run_layer: &str) {
    let named = |name: &str| json.iter().filter(|e| e["event"] == name).cloned().collect::<Vec<_>>();
    let started = named("step_started");
    assert_eq!(started[0]["step"], serde_json::json!({"stage": 0, "name": null, "line": 2}));
    assert_eq!(started[0]["instruction"], "RUN echo made && echo made > /made");
    assert_eq!(named("cache_miss")[0]["reason"], miss);
    assert_eq!(named("output")[0]["text"].as_str().map(str::trim_end), Some("made"));
    let finished = named("step_finished");
    assert_eq!(finished.len(), 3);
    assert_eq!(finished[0]["layer"]["digest"], run_layer);
    // durations are seconds, a number
    assert!(finished.iter().all(|f| f["duration"].is_f64()), "{finished:?}");
    assert_eq!(finished[2]["layer"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_builds_from_dockerfile_text_with_its_executor_step_cache_and_event_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("f.txt"), "from the context\n");
    // the context holds no Dockerfile: the tool passes its own
    let dockerfile = "FROM kiln-base\nRUN echo made && echo made > /made\nCOPY f.txt /f.txt\nCMD [\"/bin/true\"]\n";
    let cache = tmp.path().join("cache");
    let memory = Arc::new(Memory::default());
    let exec = Arc::new(Recording::default());
    let (seen, json, f) = json_sink();
    let out = tmp.path().join("out");
    let tool_build = |cache: &Path, exec: &Arc<Recording>| {
        Build::new(&ctx)
            .dockerfile_text(dockerfile)
            .cache_dir(cache)
            .step_cache(Arc::clone(&memory))
            .client(client())
            .with_base(&base)
            .executor(exec.clone())
    };
    let built = tool_build(&cache, &exec)
        .progress(f)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    assert_eq!(*exec.ran.lock().unwrap(), vec![vec!["/bin/sh", "-c", "echo made && echo made > /made"]]);
    let [.., run_layer, copy_layer] = built.layers.as_slice() else { panic!("{:?}", built.layers) };
    let (run_layer, copy_layer) = (run_layer.digest.to_string(), copy_layer.digest.to_string());
    let miss = "no result for these inputs";
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "started 2 RUN echo made && echo made > /made".to_owned(),
            format!("miss 2 {miss}"),
            "output 2 made".to_owned(),
            format!("finished 2 cached=false layer={run_layer}"),
            "started 3 COPY f.txt /f.txt".to_owned(),
            format!("miss 3 {miss}"),
            format!("finished 3 cached=false layer={copy_layer}"),
            "started 4 CMD [\"/bin/true\"]".to_owned(),
            "finished 4 cached=false layer=none".to_owned(),
            "writing".to_owned(),
        ]
    );
    assert_eq!(config_of(&out, "latest").config.unwrap().cmd.unwrap(), ["/bin/true"]);
    // the same events as JSON, for machines
    check_json(&json.lock().unwrap(), miss, &run_layer);
    // the tool's cache holds the two layer steps, with keys it can read
    // field by field; the store's own step cache was not used
    {
        let records = memory.records.lock().unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        let mut layers: Vec<String> =
            records.values().map(|(_, r)| r.layer.as_ref().expect("a layer").blob.digest.to_string()).collect();
        layers.sort();
        let mut want = vec![run_layer.clone(), copy_layer.clone()];
        want.sort();
        assert_eq!(layers, want);
        for (digest, (encoding, _)) in records.iter() {
            assert_eq!(&Digest::sha256(encoding), digest, "a key is the digest of its encoding");
            assert!(encoding.starts_with(b"kiln-cache-key\0"), "{encoding:?}");
        }
    }
    assert_eq!(fs::read_dir(cache.join("cache")).unwrap().count(), 0, "records in the store's cache");

    // the same text again: every layer step from the tool's cache, nothing runs
    let exec2 = Arc::new(Recording::default());
    let (seen2, f2) = sink();
    let again = tool_build(&cache, &exec2).progress(f2).build().await.unwrap();
    assert_eq!(again.manifest.digest, built.manifest.digest);
    assert!(exec2.ran.lock().unwrap().is_empty());
    assert_eq!(
        *seen2.lock().unwrap(),
        [
            "started 2 RUN echo made && echo made > /made".to_owned(),
            format!("finished 2 cached=true layer={run_layer}"),
            "started 3 COPY f.txt /f.txt".to_owned(),
            format!("finished 3 cached=true layer={copy_layer}"),
            "started 4 CMD [\"/bin/true\"]".to_owned(),
            "finished 4 cached=false layer=none".to_owned(),
        ]
    );

    // the records, but another content store without their layers: the
    // steps run again, and the event says why
    let exec3 = Arc::new(Recording::default());
    let (seen3, f3) = sink();
    let third = tool_build(&tmp.path().join("cache2"), &exec3).progress(f3).build().await.unwrap();
    assert_eq!(third.manifest.digest, built.manifest.digest, "the same inputs give the same image");
    assert_eq!(exec3.ran.lock().unwrap().len(), 1);
    let seen3 = seen3.lock().unwrap().clone();
    assert!(seen3.contains(&format!("miss 2 layer {run_layer} is gone from the store")), "{seen3:?}");
    assert!(seen3.contains(&format!("miss 3 layer {copy_layer} is gone from the store")), "{seen3:?}");

    // --no-cache: every step runs, and says so
    let (seen4, f4) = sink();
    tool_build(&cache, &Arc::new(Recording::default())).no_cache(true).progress(f4).build().await.unwrap();
    let seen4 = seen4.lock().unwrap().clone();
    assert!(seen4.contains(&"miss 2 the cache is disabled".to_owned()), "{seen4:?}");
    assert!(seen4.contains(&"miss 3 the cache is disabled".to_owned()), "{seen4:?}");

    // a bad Dockerfile text is named as such
    let err = Build::new(&ctx).dockerfile_text("FROM kiln-base\nFNTRYPOINT x\n").cache_dir(&cache).build().await;
    let text = kiln::error_chain(&err.unwrap_err());
    assert!(text.contains("<Dockerfile text>") && text.contains("FNTRYPOINT"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_cancels_a_build_through_its_token_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let cache = tmp.path().join("cache");
    let cancel = Cancel::new();
    let (seen, f) = sink();
    let canceller = {
        let (cancel, seen) = (cancel.clone(), Arc::clone(&seen));
        std::thread::spawn(move || {
            // once the RUN has started, the tool gives up
            while !seen.lock().unwrap().iter().any(|l| l.starts_with("output 2 started")) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            cancel.cancel();
        })
    };
    let out = tmp.path().join("out");
    let err = Build::new(&ctx)
        .dockerfile_text("FROM kiln-base\nRUN echo started && sleep 60\n")
        .cache_dir(&cache)
        .client(client())
        .with_base(&base)
        .cancel(cancel)
        .progress(f)
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_err();
    canceller.join().unwrap();
    assert!(matches!(err, BuildError::Cancelled { ref problems } if problems.is_empty()), "{err}");
    assert!(!out.exists(), "an output of a cancelled build");
    let scratch: Vec<_> = fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(scratch.is_empty(), "scratch state left: {scratch:?}");
    // no process of the cancelled RUN is left (`sh -c SCRIPT`)
    let left = crate::build::processes_with_arg("echo started && sleep 60");
    assert!(left.is_empty(), "RUN still running: {left:?}");
}

/// An embedder's executor error, as its own type.
#[derive(Debug, thiserror::Error)]
#[error("quota exceeded for tenant {tenant}")]
struct QuotaExceeded {
    tenant: String,
}

/// An executor that refuses every command with the tool's own error.
#[derive(Debug)]
struct Refusing;

impl Executor for Refusing {
    fn run(&self, _: &Path, _: &Process, _: RunEnv<'_>, _: &mut dyn FnMut(&[u8])) -> Result<Exit, ExecError> {
        Err(ExecError::Other(Box::new(QuotaExceeded { tenant: "acme".into() })))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executors_own_error_comes_back_as_its_type() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let err = Build::new(&ctx)
        .dockerfile_text("FROM kiln-base\nRUN true\n")
        .cache_dir(tmp.path().join("cache"))
        .client(client())
        .with_base(&base)
        .executor(Arc::new(Refusing))
        .build()
        .await
        .unwrap_err();
    // walk the chain to the tool's own error, typed
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut found = None;
    while let Some(e) = source {
        if let Some(q) = e.downcast_ref::<QuotaExceeded>() {
            found = Some(q.tenant.clone());
        }
        source = e.source();
    }
    assert_eq!(found.as_deref(), Some("acme"), "{}", kiln::error_chain(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_report_their_bytes_for_the_step_that_needs_them_and_for_the_push() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let Some(skopeo) = testkit::tool("skopeo") else { return };
    let registry = testkit::Registry::start().unwrap();
    let host = registry.host();
    let status = std::process::Command::new(&skopeo)
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(base.location())
        .arg(format!("docker://{host}/busybox:1"))
        .status()
        .unwrap();
    assert!(status.success());
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    // (stage line, digest, done, total) of every blob event
    let blobs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&blobs);
    let built = Build::new(&ctx)
        .dockerfile_text(format!("FROM {host}/busybox:1\nRUN echo hi > /hi\n"))
        .cache_dir(tmp.path().join("cache"))
        .client(client())
        .tag(format!("{host}/app:1").parse().unwrap())
        .push(true)
        .progress(move |p| {
            if let Progress::Blob { step, digest, done, total } = p {
                seen.lock().unwrap().push((step.map(|s| s.line), (*digest).clone(), *done, *total));
            }
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let blobs = blobs.lock().unwrap();
    let [base_layers @ .., run_layer] = built.layers.as_slice() else { panic!("{:?}", built.layers) };
    assert!(!base_layers.is_empty());
    // the base's layers were fetched for the RUN on line 2, to the last byte
    for l in base_layers {
        assert!(
            blobs.iter().any(|b| *b == (Some(2), l.digest.clone(), l.size, l.size)),
            "no complete fetch of {} for line 2: {blobs:?}",
            l.digest
        );
    }
    // the RUN's layer was sent by the push, which belongs to no step
    assert!(
        blobs.iter().any(|b| *b == (None, run_layer.digest.clone(), run_layer.size, run_layer.size)),
        "no complete upload of {}: {blobs:?}",
        run_layer.digest
    );
    // bytes only grow, blob by blob
    for w in blobs.windows(2) {
        if let [a, b] = w
            && a.1 == b.1
            && a.0 == b.0
        {
            assert!(b.2 >= a.2, "{a:?} then {b:?}");
        }
    }
}
