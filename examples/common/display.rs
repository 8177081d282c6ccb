//! How the examples show progress: `--progress auto|tty|plain|json` and
//! `--quiet`, shared, and the terminal display (`tty`, and `auto` when
//! stderr is a terminal) in BuildKit's manner: each step with its state
//! (running with a spinner, done, `CACHED`), its duration and the size of
//! the layer it made; the last lines of a running `RUN`'s output; and a
//! byte bar for every blob pulled or pushed. A finished step is printed
//! once, above the live part, so a long build scrolls as BuildKit's does
//! and the final screen lists every step.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use kiln::build::{Progress, StepId};
use kiln::registry_client::Progress as Transfer;

/// How an example shows its progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// The live display when stderr is a terminal (and `RUST_LOG` asks
    /// for no logs), else plain lines.
    #[default]
    Auto,
    /// The live display (stderr must be a terminal).
    Tty,
    /// One line per event on stderr.
    Plain,
    /// The library's events as JSON, one per line on stdout, then one
    /// closing event: for machines.
    Json,
}

/// `--progress` and `--quiet`, as every example that moves images takes them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProgressFlags {
    /// How to show progress: `auto` (a live display on a terminal, else
    /// plain lines), `tty`, `plain` (a line per event on stderr) or `json`
    /// (the library's events, one JSON object per line on stdout).
    #[arg(long, value_enum, default_value_t)]
    pub progress: ProgressMode,
    /// Print only the digest.
    #[arg(long, short, conflicts_with = "progress")]
    pub quiet: bool,
}

/// What a run shows, the flags and the terminal taken together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// Only the digest.
    Quiet,
    /// The live display on stderr.
    Tty,
    /// Lines on stderr.
    Plain,
    /// JSON events on stdout.
    Json,
}

impl ProgressFlags {
    /// What this run shows: `auto` is the live display when stderr is a
    /// terminal (and `TERM` is not `dumb`) and no logs are asked for
    /// (`RUST_LOG`: log lines would tear the display), else plain lines.
    ///
    /// # Errors
    /// `--progress tty` when stderr is not a terminal (as buildx refuses it).
    pub fn shown(&self) -> Result<Shown, String> {
        if self.quiet {
            return Ok(Shown::Quiet);
        }
        let terminal = std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let logging = std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty() && v != "off");
        match self.progress {
            ProgressMode::Auto if terminal && !logging => Ok(Shown::Tty),
            ProgressMode::Tty if terminal => Ok(Shown::Tty),
            ProgressMode::Tty => Err("--progress tty: stderr is not a terminal (use auto, plain or json)".into()),
            ProgressMode::Auto | ProgressMode::Plain => Ok(Shown::Plain),
            ProgressMode::Json => Ok(Shown::Json),
        }
    }
}

/// Lines of a running step's output shown under it.
const TAIL: usize = 6;
/// Lines of a failed step's output printed with its error.
const ERROR_TAIL: usize = 20;

/// A step, or a transfer (an output being written, a copy), on screen.
struct Task {
    /// The step it is (`None`: a transfer).
    step: Option<StepId>,
    /// `[stage] INSTRUCTION`, or what the transfer does.
    label: String,
    bar: ProgressBar,
    started: Instant,
    /// The bars under it, in screen order: output lines, notes, blobs.
    children: Vec<ProgressBar>,
    /// The bars of its output's last lines (a subset of `children`).
    tail: Vec<ProgressBar>,
    /// Its output's last lines, and the line still being written.
    lines: VecDeque<String>,
    partial: String,
    /// Its blobs: digest and bar.
    blobs: Vec<(String, ProgressBar)>,
    /// What happened besides bytes (a pull, a skipped or mounted blob).
    notes: Vec<String>,
}

#[derive(Default)]
struct State {
    tasks: Vec<Task>,
    steps: usize,
    cached: usize,
}

impl State {
    /// The task of `step`, while it runs.
    fn step(&mut self, step: &StepId) -> Option<&mut Task> {
        self.tasks.iter_mut().find(|t| t.step.as_ref() == Some(step))
    }

    /// The transfer opened last.
    fn transfer(&mut self) -> Option<&mut Task> {
        self.tasks.iter_mut().rev().find(|t| t.step.is_none())
    }
}

/// A step's stage as the displays name it: its name, else its index.
fn stage(step: &StepId) -> String {
    step.name.clone().unwrap_or_else(|| step.stage.to_string())
}

/// The live terminal display of a build, a copy or a promotion.
pub struct Tty {
    bars: MultiProgress,
    started: Instant,
    state: Mutex<State>,
}

fn secs(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.1}s", state.elapsed().as_secs_f64());
}

fn sizes(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let total = state.len().map_or_else(|| "?".to_owned(), kiln::human_size);
    let _ = write!(w, "{} / {total}", kiln::human_size(state.pos()));
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("secs", secs)
        .with_key("sizes", sizes)
        .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✔"])
        .progress_chars("=> ")
}

/// The width of the terminal on stderr.
fn width() -> usize {
    usize::from(console::Term::stderr().size().1).max(20)
}

/// `left` and `right` on one line of the terminal's width, `left` cut to fit.
fn line(left: &str, right: &str) -> String {
    let room = width().saturating_sub(console::measure_text_width(right) + 1);
    let left = console::truncate_str(left, room, "…");
    let pad = room.saturating_sub(console::measure_text_width(&left));
    format!("{left}{} {right}", " ".repeat(pad))
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

impl Tty {
    /// A display drawing on stderr.
    pub fn new() -> Self {
        Tty {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// Opens a task (a step, or a transfer when `step` is `None`) with its spinner.
    fn open(&self, st: &mut State, step: Option<StepId>, label: String) {
        let bar = self.bars.add(ProgressBar::new_spinner().with_style(style(" {spinner:.cyan} {wide_msg} {secs}")));
        bar.set_message(label.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
        st.tasks.push(Task::new(step, label, bar));
    }

    /// Prints a line above the live part.
    fn print(&self, text: &str) {
        let _ = self.bars.println(text);
    }

    /// A build's event.
    pub fn build_event(&self, p: &Progress<'_>) {
        let Ok(mut st) = self.state.lock() else { return };
        match p {
            Progress::StepStarted { step, instruction } => {
                self.open(&mut st, Some((*step).clone()), format!("[{}] {instruction}", stage(step)));
            }
            Progress::Output { step, bytes } => {
                if let Some(t) = st.step(step) {
                    t.output(&self.bars, &String::from_utf8_lossy(bytes));
                }
            }
            Progress::Pulling { step, image } => {
                if let Some(t) = st.step(step) {
                    t.note(&self.bars, &format!("pulling {image}"));
                }
            }
            Progress::Blob { step, digest, done, total } => {
                let task = match step {
                    Some(s) => st.step(s),
                    None => st.transfer(),
                };
                if let Some(t) = task {
                    t.blob(&self.bars, &digest.to_string(), *done, *total);
                }
            }
            Progress::StepFinished { step, cached, duration, layer, .. } => {
                st.steps += 1;
                st.cached += usize::from(*cached);
                if let Some(i) = st.tasks.iter().position(|t| t.step.as_ref() == Some(*step)) {
                    let t = st.tasks.remove(i);
                    let (left, right) = if *cached {
                        (format!(" => CACHED {}", t.label), String::new())
                    } else {
                        let size = layer.map_or_else(String::new, |l| format!("{} layer  ", kiln::human_size(l.size)));
                        (format!(" => {}", t.label), format!("{size}{:.1}s", duration.as_secs_f64()))
                    };
                    self.close(&t, &left, &right);
                }
            }
            Progress::Writing { target } => {
                self.close_transfers(&mut st);
                self.open(&mut st, None, format!("writing {target}"));
            }
            Progress::Corrupt { digest } => {
                self.print(&format!(" !! cached blob {digest} did not match its digest: dropped, building again"));
            }
            _ => {}
        }
    }

    /// Starts a transfer (a copy, a promotion) that [`Tty::transfer_event`]s
    /// then report on.
    pub fn transfer(&self, label: &str) {
        if let Ok(mut st) = self.state.lock() {
            self.open(&mut st, None, label.to_owned());
        }
    }

    /// A registry transfer's event (a copy's, a promotion's).
    pub fn transfer_event(&self, p: &Transfer) {
        let Ok(mut st) = self.state.lock() else { return };
        let bars = &self.bars;
        let Some(t) = st.transfer() else { return };
        match p {
            Transfer::Bytes { digest, done, total } => t.blob(bars, &digest.to_string(), *done, *total),
            Transfer::BlobSkipped { digest } => t.note(bars, &format!("{} already there", short(&digest.to_string()))),
            Transfer::BlobMounted { digest, from } => {
                t.note(bars, &format!("{} mounted from {from}", short(&digest.to_string())));
            }
            Transfer::BlobUploaded { digest, size } | Transfer::BlobDownloaded { digest, size } => {
                t.blob(bars, &digest.to_string(), *size, *size);
            }
            Transfer::RetryWaiting { url, attempt, delay } => {
                let text = format!(" !! attempt {attempt} of {url} failed: retrying in {:.1}s", delay.as_secs_f64());
                let _ = bars.println(text);
            }
            _ => {}
        }
    }

    /// Prints a finished task: its line, then its blobs' final state.
    fn close(&self, t: &Task, left: &str, right: &str) {
        // off the live part first (the bars stop drawing), then finished
        for b in t.children.iter().chain([&t.bar]) {
            self.bars.remove(b);
            b.finish();
        }
        self.print(&line(left, right));
        for n in &t.notes {
            self.print(&format!(" => => {n}"));
        }
        for (digest, b) in &t.blobs {
            let total = b.length().unwrap_or(0);
            let state = if b.position() >= total { "done" } else { "stopped" };
            let sizes = format!("{} / {}", kiln::human_size(b.position()), kiln::human_size(total));
            self.print(&line(&format!(" => => {}", short(digest)), &format!("{sizes}  {state}")));
        }
    }

    fn close_transfers(&self, st: &mut State) {
        while let Some(i) = st.tasks.iter().position(|t| t.step.is_none()) {
            let t = st.tasks.remove(i);
            self.close(&t, &format!(" => {}", t.label), &t.took());
        }
    }

    /// Ends the display: transfers still open are done, and `summary`
    /// closes it (`{steps}`, `{cached}` and `{secs}` filled in).
    pub fn finish(&self, summary: &str) {
        let Ok(mut st) = self.state.lock() else { return };
        self.close_transfers(&mut st);
        let text = summary
            .replace("{steps}", &st.steps.to_string())
            .replace("{cached}", &st.cached.to_string())
            .replace("{secs}", &format!("{:.1}", self.started.elapsed().as_secs_f64()));
        self.print(&text);
    }

    /// Ends the display of a run that failed: the steps still running are
    /// marked `ERROR`, with the last lines of their output.
    pub fn fail(&self) {
        let Ok(mut st) = self.state.lock() else { return };
        let steps: Vec<Task> = st.tasks.drain(..).collect();
        for t in steps {
            self.close(&t, &format!(" => ERROR {}", t.label), &t.took());
            for l in t.last_lines(ERROR_TAIL) {
                self.print(&format!(" => => # {l}"));
            }
        }
    }

    /// Ends the display: [`Tty::finish`] with `summary` when the run
    /// succeeded, else [`Tty::fail`].
    pub fn end(&self, succeeded: bool, summary: &str) {
        if succeeded { self.finish(summary) } else { self.fail() }
    }
}

impl Task {
    fn new(step: Option<StepId>, label: String, bar: ProgressBar) -> Self {
        Task {
            step,
            label,
            bar,
            started: Instant::now(),
            children: Vec::new(),
            tail: Vec::new(),
            lines: VecDeque::new(),
            partial: String::new(),
            blobs: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A bar under this task's others.
    fn child(&mut self, bars: &MultiProgress, style: ProgressStyle) -> ProgressBar {
        let after = self.children.last().unwrap_or(&self.bar);
        let bar = bars.insert_after(after, ProgressBar::new(0).with_style(style));
        self.children.push(bar.clone());
        bar
    }

    /// `RUN` output: its last lines shown under the step.
    fn output(&mut self, bars: &MultiProgress, text: &str) {
        for c in text.chars() {
            match c {
                '\n' => {
                    let done = std::mem::take(&mut self.partial);
                    self.lines.push_back(done);
                    if self.lines.len() > ERROR_TAIL {
                        self.lines.pop_front();
                    }
                }
                // a progress line redrawn in place: keep its last state
                '\r' => self.partial.clear(),
                c if c.is_control() && c != '\t' => {}
                c => self.partial.push(c),
            }
        }
        let shown = self.last_lines(TAIL);
        while self.tail.len() < shown.len() {
            // output lines go right under the step (and its earlier lines)
            let after = self.tail.last().unwrap_or(&self.bar).clone();
            let bar = bars.insert_after(&after, ProgressBar::new(0).with_style(style("   {wide_msg:.dim}")));
            self.children.push(bar.clone());
            self.tail.push(bar);
        }
        for (bar, l) in self.tail.iter().zip(&shown) {
            bar.set_message(format!("=> # {l}"));
        }
    }

    /// The last `n` lines of its output, the one still being written included.
    fn last_lines(&self, n: usize) -> Vec<String> {
        let mut all: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            all.push(self.partial.clone());
        }
        all.split_off(all.len().saturating_sub(n))
    }

    /// How long it has run, as the display shows it.
    fn took(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    /// A blob's bytes: its bar made on first sight, then moved.
    fn blob(&mut self, bars: &MultiProgress, digest: &str, done: u64, total: u64) {
        if let Some((_, b)) = self.blobs.iter().find(|(d, _)| d == digest) {
            b.set_length(total);
            b.set_position(done);
            return;
        }
        let b = self.child(bars, style("   => {prefix} [{bar:24}] {sizes}  {secs}"));
        b.set_prefix(short(digest));
        b.set_length(total);
        b.set_position(done);
        self.blobs.push((digest.to_owned(), b));
    }

    /// A line under the task (a pull, a blob skipped or mounted), kept
    /// for its final state.
    fn note(&mut self, bars: &MultiProgress, text: &str) {
        let b = self.child(bars, style("   {wide_msg}"));
        b.set_message(format!("=> {text}"));
        self.notes.push(text.to_owned());
    }
}

/// A build's event as a plain line on stderr; `RUN` output as it comes.
pub fn plain_build(p: &Progress<'_>) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let at = |s: &StepId| format!("[{}] line {}", stage(s), s.line);
    let _ = match p {
        Progress::StepStarted { step, instruction } => writeln!(err, "{}: {instruction}", at(step)),
        Progress::CacheMiss { step, reason } => writeln!(err, "{}: running ({reason})", at(step)),
        Progress::StepFinished { step, cached, duration, layer, .. } => writeln!(
            err,
            "{}: {} in {:.2}s{}",
            at(step),
            if *cached { "cached" } else { "done" },
            duration.as_secs_f64(),
            layer.map_or_else(String::new, |l| format!(", layer {} ({} bytes)", l.digest, l.size))
        ),
        Progress::Output { bytes, .. } => err.write_all(bytes),
        Progress::Pulling { step, image } => writeln!(err, "{}: pulling {image}", at(step)),
        Progress::Writing { target } => writeln!(err, "writing {target}"),
        Progress::Corrupt { digest } => {
            writeln!(err, "cached blob {digest} did not match its digest: dropped, building again")
        }
        _ => Ok(()),
    };
}

/// A client builder reporting a transfer's progress as `shown` asks, and
/// the live display when that is shown (its transfer, `label`, opened).
pub fn transfer_progress(
    builder: kiln::registry_client::ClientBuilder,
    shown: Shown,
    label: &str,
) -> (kiln::registry_client::ClientBuilder, Option<std::sync::Arc<Tty>>) {
    match shown {
        Shown::Json => (builder.progress(json_line), None),
        Shown::Plain => (builder.progress(plain_transfer), None),
        Shown::Tty => {
            let tty = std::sync::Arc::new(Tty::new());
            tty.transfer(label);
            let events = std::sync::Arc::clone(&tty);
            (builder.progress(move |p| events.transfer_event(p)), Some(tty))
        }
        Shown::Quiet => (builder, None),
    }
}

/// A transfer's event as a plain line on stderr (blobs skipped, mounted,
/// uploaded, downloaded; retries).
pub fn plain_transfer(p: &Transfer) {
    match p {
        Transfer::BlobSkipped { digest } => eprintln!("skipped  {digest}"),
        Transfer::BlobMounted { digest, from } => eprintln!("mounted  {digest} from {from}"),
        Transfer::BlobUploaded { digest, size } => eprintln!("uploaded {digest} ({size} bytes)"),
        Transfer::BlobDownloaded { digest, size } => eprintln!("fetched  {digest} ({size} bytes)"),
        Transfer::RetryWaiting { url, attempt, delay } => eprintln!("retry {attempt} of {url} in {delay:?}"),
        _ => {}
    }
}

/// An event as one line of JSON on stdout.
pub fn json_line<T: serde::Serialize + ?Sized>(event: &T) {
    use std::io::Write as _;
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}
