//! `kastell deidentify`: DICOM files de-identified by the Basic Application
//! Level Confidentiality Profile and the options chosen (`crate::dicom::deid`),
//! written as new files. The project's secret keys the UID mapping and the
//! pseudonyms, so two runs with one secret give the same UIDs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::dicom::deid::{Deidentified, Profile};

/// What `kastell deidentify` did with a tree of files.
#[derive(Debug, Default)]
pub struct TreeReport {
    pub done: usize,
    /// Files left out because their pixels may carry identifying text.
    pub excluded: Vec<(PathBuf, String)>,
    pub failed: Vec<(PathBuf, String)>,
}

/// De-identifies `input` into `output` (the hostile-input guard first, as for
/// every stored object); the file meta group follows the new SOP Instance UID.
/// An excluded file is not written.
pub fn deidentify_file(
    input: &Path,
    output: &Path,
    profile: &Profile,
) -> anyhow::Result<Deidentified> {
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let result = crate::dicom::deid::deidentify_file_bytes(&bytes, profile)?;
    if let Deidentified::File { bytes, .. } = &result {
        std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    }
    Ok(result)
}

/// Every file under `input` (a file or a directory), de-identified into the
/// same relative place under `output`.
pub fn deidentify_tree(
    input: &Path,
    output: &Path,
    profile: &Profile,
) -> anyhow::Result<TreeReport> {
    let mut report = TreeReport::default();
    let files: Vec<PathBuf> = if input.is_file() {
        vec![input.to_path_buf()]
    } else {
        walkdir::WalkDir::new(input)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_file())
            .map(|entry| entry.into_path())
            .collect()
    };
    for file in files {
        let relative = file.strip_prefix(input).unwrap_or(&file);
        let target = if input.is_file() {
            output.to_path_buf()
        } else {
            output.join(relative)
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match deidentify_file(&file, &target, profile) {
            Ok(Deidentified::File { .. }) => report.done += 1,
            Ok(Deidentified::Excluded { reason }) => report.excluded.push((file, reason)),
            Err(error) => report.failed.push((file, format!("{error:#}"))),
        }
    }
    Ok(report)
}
