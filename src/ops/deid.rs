//! `kastell deidentify`: DICOM files de-identified by the Basic Application
//! Level Confidentiality Profile and the options chosen (`crate::dicom::deid`),
//! written as new files. The project's secret keys the UID mapping and the
//! pseudonyms, so two runs with one secret give the same UIDs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::dicom::deid::{Outcome, Profile};

/// De-identifies `input` into `output` (the hostile-input guard first, as for
/// every stored object); the file meta group follows the new SOP Instance UID.
pub fn deidentify_file(input: &Path, output: &Path, profile: &Profile) -> anyhow::Result<Outcome> {
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let (deidentified, outcome) = crate::dicom::deid::deidentify_file_bytes(&bytes, profile)?;
    std::fs::write(output, deidentified)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(outcome)
}

/// Every file under `input` (a file or a directory), de-identified into the
/// same relative place under `output`. Returns the files done and those that
/// failed, with why.
pub fn deidentify_tree(
    input: &Path,
    output: &Path,
    profile: &Profile,
) -> anyhow::Result<(usize, Vec<(PathBuf, String)>)> {
    let mut done = 0;
    let mut failed = Vec::new();
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
            Ok(_) => done += 1,
            Err(error) => failed.push((file, format!("{error:#}"))),
        }
    }
    Ok((done, failed))
}
