//! kiln embedded the way a tool embeds it: a Dockerfile the tool made (as
//! text, no file), its own executor wrapped around runc (recording what
//! runs), an event sink, and cancellation through the build's token.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln::build::{Build, BuildError, Cancel, ExecError, Executor, Exit, Output, Process, Progress, RunEnv, Runc};

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

/// What an event sink saw: one line per event.
fn sink() -> (Arc<Mutex<Vec<String>>>, impl Fn(&Progress<'_>) + Send + Sync + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let f = move |p: &Progress<'_>| {
        let line = match p {
            Progress::Step { line, instruction, cached, .. } => format!("step {line} {instruction} cached={cached}"),
            Progress::Output { bytes, .. } => format!("output {}", String::from_utf8_lossy(bytes).trim_end()),
            Progress::Writing { .. } => "writing".to_owned(),
            _ => return,
        };
        seen2.lock().unwrap().push(line);
    };
    (seen, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_builds_from_dockerfile_text_with_its_executor_and_event_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("f.txt"), "from the context\n");
    // the context holds no Dockerfile: the tool passes its own
    let dockerfile = "FROM kiln-base\nRUN echo made && echo made > /made\nCOPY f.txt /f.txt\nCMD [\"/bin/true\"]\n";
    let cache = tmp.path().join("cache");
    let exec = Arc::new(Recording::default());
    let (seen, f) = sink();
    let out = tmp.path().join("out");
    Build::new(&ctx)
        .dockerfile_text(dockerfile)
        .cache_dir(&cache)
        .client(client())
        .with_base(&base)
        .executor(exec.clone())
        .progress(f)
        .output(Output::Layout(out.clone()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    assert_eq!(*exec.ran.lock().unwrap(), vec![vec!["/bin/sh", "-c", "echo made && echo made > /made"]]);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "step 2 RUN echo made && echo made > /made cached=false",
            "output made",
            "step 3 COPY f.txt /f.txt cached=false",
            "step 4 CMD [\"/bin/true\"] cached=false",
            "writing",
        ]
    );
    assert_eq!(config_of(&out, "latest").config.unwrap().cmd.unwrap(), ["/bin/true"]);

    // the same text again: every layer step from the cache, nothing runs
    let exec2 = Arc::new(Recording::default());
    let (seen2, f2) = sink();
    Build::new(&ctx)
        .dockerfile_text(dockerfile)
        .cache_dir(&cache)
        .client(client())
        .with_base(&base)
        .executor(exec2.clone())
        .progress(f2)
        .build()
        .await
        .unwrap();
    assert!(exec2.ran.lock().unwrap().is_empty());
    assert!(seen2.lock().unwrap().iter().take(2).all(|l| l.ends_with("cached=true")), "{:?}", seen2.lock().unwrap());

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
            while !seen.lock().unwrap().iter().any(|l| l.starts_with("output started")) {
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
        .output(Output::Layout(out.clone()))
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
