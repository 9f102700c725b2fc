//! The import's progress on standard error: an `indicatif` bar (files done,
//! instances per second, ETA, the running counts) on a terminal; elsewhere (a
//! cron job's mail, a container's log) a plain line every so often, since a bar
//! redrawn with carriage returns makes an unreadable log.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::import::{FileOutcome, Observer};

/// How often the plain form prints a line.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    stored: AtomicU64,
    present: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn summary(&self) -> String {
        format!(
            "stored {}, already present {}, skipped {}, failed {}",
            self.stored.load(Ordering::Relaxed),
            self.present.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

struct Plain {
    started: Instant,
    last: Instant,
    total: u64,
}

pub struct TerminalProgress {
    /// Drawn only on a terminal.
    bar: Option<ProgressBar>,
    plain: Option<Mutex<Plain>>,
    counts: Counts,
}

impl TerminalProgress {
    /// A bar when standard error is a terminal, plain lines otherwise.
    // The template is a constant of this file, checked by the first run.
    #[allow(clippy::expect_used)]
    pub fn stderr() -> Self {
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(
                // Two lines: the counts would leave no room for the bar on one.
                "{elapsed_precise} [{wide_bar}] {pos}/{len} files\n{rate} · ETA {eta} · {msg}",
            )
            .expect("a valid template")
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} instances/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(style);
            Self {
                bar: Some(bar),
                plain: None,
                counts: Counts::default(),
            }
        } else {
            let now = Instant::now();
            Self {
                bar: None,
                plain: Some(Mutex::new(Plain {
                    started: now,
                    last: now,
                    total: 0,
                })),
                counts: Counts::default(),
            }
        }
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn plain_line(&self, plain: &Plain) {
        let done = self.counts.done.load(Ordering::Relaxed);
        let elapsed = plain.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed;
        let eta = if rate > 0.0 {
            HumanDuration(Duration::from_secs_f64(
                plain.total.saturating_sub(done) as f64 / rate,
            ))
            .to_string()
        } else {
            "unknown".into()
        };
        eprintln!(
            "import: {done} of {} files, {rate:.1} instances/s, ETA {eta}; {}",
            plain.total,
            self.counts.summary()
        );
    }
}

impl Observer for TerminalProgress {
    fn started(&self, files: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(files);
            bar.set_message(self.counts.summary());
        }
        if let Some(plain) = &self.plain {
            let mut plain = plain.lock().unwrap_or_else(|e| e.into_inner());
            plain.total = files;
            plain.started = Instant::now();
            plain.last = plain.started;
            eprintln!("import: {files} files, {} to read", HumanBytes(bytes));
        }
    }

    fn file_done(&self, _bytes: u64, outcome: &FileOutcome) {
        self.counts.done.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome {
            FileOutcome::Stored => &self.counts.stored,
            FileOutcome::AlreadyPresent => &self.counts.present,
            FileOutcome::Skipped(_) => &self.counts.skipped,
            FileOutcome::Failed(_) => &self.counts.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(self.counts.summary());
        }
        if let Some(plain) = &self.plain {
            let mut plain = plain.lock().unwrap_or_else(|e| e.into_inner());
            if plain.last.elapsed() >= PLAIN_EVERY {
                plain.last = Instant::now();
                self.plain_line(&plain);
            }
        }
    }
}
