//! What an import did: the counts, the reasons files were skipped or failed (with
//! a few examples), the rates, as text or JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::FileOutcome;

/// How many example files a failure reason lists.
const EXAMPLES: usize = 3;

/// Files that failed for one reason.
#[derive(Debug, Default, Clone)]
pub struct FailureGroup {
    pub count: u64,
    /// The first few, relative to the imported directory.
    pub examples: Vec<PathBuf>,
}

/// What an import did.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    /// Entries seen: files, links and whatever could not be read.
    pub files: u64,
    /// Bytes of the files read.
    pub bytes: u64,
    pub stored: u64,
    pub already_present: u64,
    pub skipped: u64,
    pub failed: u64,
    /// How many files were skipped for each reason.
    pub skipped_reasons: BTreeMap<String, u64>,
    pub failed_reasons: BTreeMap<String, FailureGroup>,
    pub elapsed: Duration,
}

impl ImportReport {
    pub(super) fn record(&mut self, path: &Path, bytes: u64, outcome: &FileOutcome) {
        self.files += 1;
        self.bytes += bytes;
        match outcome {
            FileOutcome::Stored => self.stored += 1,
            FileOutcome::AlreadyPresent => self.already_present += 1,
            FileOutcome::Skipped(reason) => {
                self.skipped += 1;
                *self.skipped_reasons.entry(reason.clone()).or_default() += 1;
            }
            FileOutcome::Failed(reason) => {
                self.failed += 1;
                let group = self.failed_reasons.entry(reason.clone()).or_default();
                group.count += 1;
                if group.examples.len() < EXAMPLES {
                    group.examples.push(path.to_path_buf());
                }
            }
        }
    }

    /// Instances stored or found present, per second.
    pub fn instances_per_sec(&self) -> f64 {
        (self.stored + self.already_present) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// File bytes read, in MB (10⁶ bytes) per second.
    pub fn megabytes_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl ImportReport {
    /// The summary as JSON, for scripts (`kastell import --format json`): the
    /// counts, the reasons with their counts (and example paths for failures),
    /// the time taken and the rates.
    pub fn to_json(&self) -> serde_json::Value {
        let failed_reasons: serde_json::Map<String, serde_json::Value> = self
            .failed_reasons
            .iter()
            .map(|(reason, group)| {
                let examples: Vec<String> = group
                    .examples
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                (
                    reason.clone(),
                    serde_json::json!({"count": group.count, "examples": examples}),
                )
            })
            .collect();
        serde_json::json!({
            "files": self.files,
            "bytes": self.bytes,
            "stored": self.stored,
            "already_present": self.already_present,
            "skipped": self.skipped,
            "failed": self.failed,
            "skipped_reasons": self.skipped_reasons,
            "failed_reasons": failed_reasons,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "instances_per_sec": self.instances_per_sec(),
            "megabytes_per_sec": self.megabytes_per_sec(),
        })
    }
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} files, {:.1} MB in {:.1} s ({:.1} instances/s, {:.1} MB/s)",
            self.files,
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.instances_per_sec(),
            self.megabytes_per_sec()
        )?;
        writeln!(f, "  stored           {:>8}", self.stored)?;
        writeln!(f, "  already present  {:>8}", self.already_present)?;
        writeln!(f, "  skipped          {:>8}", self.skipped)?;
        for (reason, count) in &self.skipped_reasons {
            writeln!(f, "    {count} × {reason}")?;
        }
        writeln!(f, "  failed           {:>8}", self.failed)?;
        for (reason, group) in &self.failed_reasons {
            writeln!(f, "    {} × {reason}", group.count)?;
            for example in &group.examples {
                writeln!(f, "        {}", example.display())?;
            }
            if group.count > group.examples.len() as u64 {
                writeln!(f, "        …")?;
            }
        }
        Ok(())
    }
}
