//! `kastell export`: a selection of a tenant's studies (a list, or a QIDO
//! query) de-identified through one of its projects into another tenant or into
//! an export store (`[exports.<name>]`, judged by the jurisdiction policy first),
//! as a job recorded in the index: every instance it covers, in order, and what
//! became of it, so an interrupted export resumes where it stopped (`kastell
//! export resume`). An export store gets DICOM files under
//! `export-<job>/DICOM/STnnnnnn/SEnnnnnn/IMnnnnnn`, a DICOMDIR and a
//! `manifest.json` of what went and what was excluded, and why. Audited: the
//! job, and each study that went, with the project and its profile.

use std::sync::Arc;

use anyhow::Context;
use object_store::ObjectStore;
use serde_json::json;

use crate::app::build_tenants;
use crate::audit::{Action, AuditEvent, Outcome};
use crate::config::Config;
use crate::dicom::deid::{Deidentified, PixelVerdict};
use crate::dicom::dicomdir::{write_dicomdir, DirectoryEntry};
use crate::index::exports::{ExportItem, ExportJob, NewExportItem, StateCount};
use crate::service::deid::{self, Project};
use crate::service::stow::{PartOutcome, StowSession};
use crate::service::tenants::Tenants;
use crate::service::wado::Representation;
use crate::service::{MatchKey, Resource, Scope, SearchRequest, Services};

use super::audit::audit_cli;

/// Items read from the index at a time.
const PAGE: i64 = 200;
/// Instances one job may cover.
pub const MAX_INSTANCES: usize = 1_000_000;

/// Where an export goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Another tenant of this installation, through its STOW pipeline.
    Tenant(String),
    /// An export store of `[exports]`.
    Store(String),
}

impl Target {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text.split_once(':') {
            Some(("tenant", name)) if !name.is_empty() => Ok(Target::Tenant(name.to_string())),
            Some(("export", name)) if !name.is_empty() => Ok(Target::Store(name.to_string())),
            _ => anyhow::bail!("--to is tenant:<name> or export:<name of [exports.<name>]>"),
        }
    }

    pub fn as_text(&self) -> String {
        match self {
            Target::Tenant(name) => format!("tenant:{name}"),
            Target::Store(name) => format!("export:{name}"),
        }
    }
}

/// What an export covers: studies by UID, or those a QIDO query at study
/// level matches (`ModalitiesInStudy=CT&StudyDate=20240101-20241231`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub studies: Vec<String>,
    pub query: Option<String>,
}

/// Where a job stands.
#[derive(Debug, Clone)]
pub struct ExportStatus {
    pub job: ExportJob,
    pub counts: Vec<StateCount>,
}

impl ExportStatus {
    pub fn count(&self, state: &str) -> i64 {
        self.counts
            .iter()
            .find(|c| c.state == state)
            .map_or(0, |c| c.n)
    }
}

/// The next page of a job's items after position `after` (every state), empty
/// at the end.
async fn items_after(services: &Services, job: i64, after: i64) -> anyhow::Result<Vec<ExportItem>> {
    Ok(services
        .with_index(move |index| index.export_items(job, None, after, PAGE))
        .await?)
}

async fn status_of(services: &Services, job: i64) -> anyhow::Result<ExportStatus> {
    let (job_row, counts) = services
        .with_index(move |index| Ok((index.export_job(job)?, index.export_counts(job)?)))
        .await?;
    let job = job_row.ok_or_else(|| anyhow::anyhow!("there is no export job {job}"))?;
    Ok(ExportStatus { job, counts })
}

/// The export store of `[exports.<name>]`, if the jurisdiction policy lets
/// de-identified data go there.
fn export_store(config: &Config, name: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let store = config
        .exports
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("there is no [exports.{name}] in the configuration"))?;
    crate::sovereignty::export_allowed(&config.sovereignty, name, store.location.as_ref())?;
    Ok(crate::store::backend_from_url(
        &store.url,
        &[],
        crate::app::blob_retries(config),
    )?)
}

/// Checks that the target may receive the export now.
async fn check_target(
    config: &Config,
    tenants: &Tenants,
    tenant: &str,
    target: &Target,
) -> anyhow::Result<()> {
    match target {
        Target::Tenant(name) if name == tenant => {
            anyhow::bail!("an export goes to another tenant than its source")
        }
        Target::Tenant(name) => {
            tenants
                .get(name)
                .await
                .with_context(|| format!("tenant {name}"))?;
        }
        Target::Store(name) => {
            export_store(config, name)?;
        }
    }
    Ok(())
}

/// The study UIDs of a selection.
async fn studies_of(services: &Services, selection: &Selection) -> anyhow::Result<Vec<String>> {
    let mut studies = selection.studies.clone();
    let Some(query) = &selection.query else {
        return Ok(studies);
    };
    let mut request = SearchRequest::new(Resource::Studies);
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let path = crate::dicom::attributes::resolve_path(&name)
            .ok_or_else(|| anyhow::anyhow!("--query: {name} is not an attribute"))?;
        request.matches.push(MatchKey {
            name: name.to_string(),
            path,
            value: value.to_string(),
        });
    }
    loop {
        let page = crate::service::qido::search(services, request.clone(), "").await?;
        let found = page.results.len() as u64;
        studies.extend(
            page.results
                .iter()
                .filter_map(|study| study["0020000D"]["Value"][0].as_str().map(str::to_string)),
        );
        if !page.more || found == 0 {
            break;
        }
        request.offset += found;
    }
    studies.dedup();
    Ok(studies)
}

/// Files a job: resolves the selection to instances, each with its place in
/// the file-set. Audited. Returns the job's id.
pub async fn create(
    config: &Config,
    tenant: &str,
    project: &str,
    selection: &Selection,
    target: &Target,
) -> anyhow::Result<i64> {
    let tenants = build_tenants(config)?;
    let services = tenants.get(tenant).await?;
    let opened = deid::open_project(&services, project).await?;
    check_target(config, &tenants, tenant, target).await?;
    let mut items = Vec::new();
    for (s, study) in studies_of(&services, selection).await?.iter().enumerate() {
        let scope = Scope::Study {
            study: study.clone(),
        };
        let instances = crate::service::wado::locate(&services, scope)
            .await
            .with_context(|| format!("study {study}"))?;
        let mut series_numbers: Vec<String> = Vec::new();
        for (i, instance) in instances.into_iter().enumerate() {
            let series = match series_numbers
                .iter()
                .position(|uid| *uid == instance.series_instance_uid)
            {
                Some(n) => n,
                None => {
                    series_numbers.push(instance.series_instance_uid.clone());
                    series_numbers.len() - 1
                }
            };
            items.push(NewExportItem {
                file_id: format!("DICOM/ST{:06}/SE{:06}/IM{:06}", s + 1, series + 1, i + 1),
                study: instance.study_instance_uid,
                series: instance.series_instance_uid,
                instance: instance.sop_instance_uid,
            });
        }
        if items.len() > MAX_INSTANCES {
            anyhow::bail!(
                "an export covers at most {MAX_INSTANCES} instances: select fewer studies"
            );
        }
    }
    if items.is_empty() {
        anyhow::bail!("the selection matches no study");
    }
    let (project_name, target_text) = (project.to_string(), target.as_text());
    let selection_text = match &selection.query {
        Some(query) => format!("query {query}; {} studies listed", selection.studies.len()),
        None => format!("{} studies listed", selection.studies.len()),
    };
    let count = items.len();
    let creator = crate::audit::cli_user();
    let result = services
        .with_index(move |index| {
            index.create_export_job(
                &project_name,
                &target_text,
                &selection_text,
                &creator,
                &items,
            )
        })
        .await
        .map_err(anyhow::Error::from);
    let event = match &result {
        Ok(job) => AuditEvent::cli(tenant, Action::Export, Outcome::Success).detail(format!(
            "export job {job} made: {count} instances, project {project} ({}), to {}",
            opened.profile.description(),
            target.as_text()
        )),
        Err(error) => AuditEvent::cli(tenant, Action::Export, Outcome::Failure)
            .detail(format!("export to {}: {error:#}", target.as_text())),
    };
    audit_cli(config, &tenants.default_services().index, event, result)
}

/// Where a job stands.
pub async fn status(config: &Config, tenant: &str, job: i64) -> anyhow::Result<ExportStatus> {
    status_of(&build_tenants(config)?.get(tenant).await?, job).await
}

/// The tenant's export jobs.
pub async fn list(config: &Config, tenant: &str) -> anyhow::Result<Vec<ExportStatus>> {
    let services = build_tenants(config)?.get(tenant).await?;
    let jobs = services.with_index(|index| index.export_jobs()).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        out.push(status_of(&services, job.job_id).await?);
    }
    Ok(out)
}

/// The de-identified keys of an exported file's directory records.
fn directory_keys(bytes: &[u8]) -> serde_json::Value {
    let Ok(object) = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Auto)
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .from_reader(bytes)
    else {
        return json!({});
    };
    let text = |tag| {
        object
            .get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    use dicom_dictionary_std::tags as t;
    json!({
        "patient_id": text(t::PATIENT_ID), "patient_name": text(t::PATIENT_NAME),
        "study": text(t::STUDY_INSTANCE_UID), "study_date": text(t::STUDY_DATE),
        "study_time": text(t::STUDY_TIME), "study_id": text(t::STUDY_ID),
        "accession": text(t::ACCESSION_NUMBER), "series": text(t::SERIES_INSTANCE_UID),
        "modality": text(t::MODALITY), "series_number": text(t::SERIES_NUMBER),
        "sop_class": text(t::SOP_CLASS_UID), "sop_instance": text(t::SOP_INSTANCE_UID),
        "transfer_syntax": object.meta().transfer_syntax().trim_end_matches('\0'),
        "instance_number": text(t::INSTANCE_NUMBER),
    })
}

/// Writes one de-identified file to the target. `Ok(Err(why))`: the target
/// refused it.
async fn deliver(
    target: &Target,
    to_tenant: Option<&Services>,
    store: Option<&Arc<dyn ObjectStore>>,
    prefix: &str,
    item: &ExportItem,
    bytes: Vec<u8>,
) -> anyhow::Result<Result<(), String>> {
    match (target, to_tenant, store) {
        (Target::Tenant(_), Some(services), _) => {
            let mut session = StowSession::new(services.clone(), None);
            let mut part = session.begin_part(true).await?;
            part.write(bytes::Bytes::from(bytes)).await?;
            session.finish_part(part).await?;
            let outcome = session.commit().await?;
            Ok(match outcome.parts().first() {
                Some(PartOutcome::Failed { detail, .. }) => Err(detail.clone()),
                Some(_) => Ok(()),
                None => Err("nothing stored".into()),
            })
        }
        (Target::Store(_), _, Some(store)) => {
            let path = object_store::path::Path::from(format!("{prefix}/{}", item.file_id));
            store.put(&path, bytes.into()).await?;
            Ok(Ok(()))
        }
        _ => anyhow::bail!("the export target is not open"),
    }
}

/// Carries out the items of job `job` still pending, then writes the
/// DICOMDIR and manifest of an export store and closes the job. Resumable:
/// run it again after an interruption. `progress` is told (done, total).
pub async fn run(
    config: &Config,
    tenant: &str,
    job: i64,
    progress: &dyn Fn(i64, i64),
) -> anyhow::Result<ExportStatus> {
    let tenants = build_tenants(config)?;
    let services = tenants.get(tenant).await?;
    let started = status_of(&services, job).await?;
    if started.job.state == "done" {
        return Ok(started);
    }
    let target = Target::parse(&started.job.target)?;
    check_target(config, &tenants, tenant, &target).await?;
    let project = deid::open_project(&services, &started.job.project).await?;
    let to_tenant = match &target {
        Target::Tenant(name) => Some(tenants.get(name).await?),
        Target::Store(_) => None,
    };
    let store = match &target {
        Target::Store(name) => Some(export_store(config, name)?),
        Target::Tenant(_) => None,
    };
    let prefix = format!("export-{job}");
    let total: i64 = started.counts.iter().map(|c| c.n).sum();
    let mut settled = total - started.count("pending");
    let mut after = -1;
    loop {
        let page = services
            .with_index(move |index| index.export_items(job, Some("pending"), after, PAGE))
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for item in page {
            let (state, detail) = export_one(
                &services,
                &project,
                &target,
                to_tenant.as_ref(),
                store.as_ref(),
                &prefix,
                &item,
            )
            .await?;
            let position = item.position;
            services
                .with_index(move |index| index.finish_export_item(job, position, state, &detail))
                .await?;
            settled += 1;
            progress(settled, total);
        }
    }
    if let Some(store) = &store {
        write_file_set(&services, &project, store, &prefix, job, &started.job).await?;
    }
    services
        .with_index(move |index| index.finish_export_job(job))
        .await?;
    let finished = status_of(&services, job).await?;
    audit_studies(
        config,
        tenants.default_services(),
        &services,
        &project,
        &finished,
    )
    .await?;
    Ok(finished)
}

/// One item: de-identified and delivered, excluded, or failed. A backend
/// outage stops the run (the item stays pending for the resume).
async fn export_one(
    services: &Services,
    project: &Arc<Project>,
    target: &Target,
    to_tenant: Option<&Services>,
    store: Option<&Arc<dyn ObjectStore>>,
    prefix: &str,
    item: &ExportItem,
) -> anyhow::Result<(&'static str, String)> {
    let scope = Scope::Instance {
        study: item.study_instance_uid.clone(),
        series: item.series_instance_uid.clone(),
        instance: item.sop_instance_uid.clone(),
    };
    let instance = match crate::service::wado::locate_one_for_reading(services, scope).await {
        Ok(instance) => instance,
        Err(error) if error.outage().is_some() => return Err(error.into()),
        Err(error) => return Ok(("failed", error.public_message())),
    };
    let result =
        deid::deidentified_instance(services, project, &instance, Representation::AsStored).await;
    match result {
        Ok(Deidentified::File { bytes, outcome }) => {
            let mut keys = directory_keys(&bytes);
            // The report says which images had regions blanked.
            if let PixelVerdict::Blanked { regions } = outcome.pixels {
                keys["blanked_regions"] = json!(regions);
            }
            match deliver(target, to_tenant, store, prefix, item, bytes).await? {
                Ok(()) => Ok(("done", keys.to_string())),
                Err(why) => Ok(("failed", why)),
            }
        }
        Ok(Deidentified::Excluded { reason }) => Ok(("excluded", reason)),
        Err(error) if error.outage().is_some() => Err(error.into()),
        Err(error) => Ok(("failed", error.public_message())),
    }
}

/// The DICOMDIR and manifest of an export store's file-set.
async fn write_file_set(
    services: &Services,
    project: &Project,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    job: i64,
    row: &ExportJob,
) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut manifest_items = Vec::new();
    let mut after = -1;
    loop {
        let page = items_after(services, job, after).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for item in page {
            let detail = item.detail.clone().unwrap_or_default();
            let mut entry = json!({
                "study": project.uid(&item.study_instance_uid),
                "series": project.uid(&item.series_instance_uid),
                "instance": project.uid(&item.sop_instance_uid),
                "state": item.state,
            });
            if item.state == "done" {
                let keys: serde_json::Value = serde_json::from_str(&detail).unwrap_or_default();
                let key = |name: &str| keys[name].as_str().unwrap_or_default().to_string();
                entry["file"] = json!(item.file_id);
                if let Some(regions) = keys.get("blanked_regions") {
                    entry["pixels"] = json!(format!(
                        "may carry burned-in text: {regions} region(s) blanked in every frame"
                    ));
                }
                entries.push(DirectoryEntry {
                    file_id: item.file_id.split('/').map(str::to_string).collect(),
                    patient_id: key("patient_id"),
                    patient_name: key("patient_name"),
                    study_instance_uid: key("study"),
                    study_date: key("study_date"),
                    study_time: key("study_time"),
                    study_id: key("study_id"),
                    accession_number: key("accession"),
                    series_instance_uid: key("series"),
                    modality: key("modality"),
                    series_number: key("series_number"),
                    sop_class_uid: key("sop_class"),
                    sop_instance_uid: key("sop_instance"),
                    transfer_syntax_uid: key("transfer_syntax"),
                    instance_number: key("instance_number"),
                });
            } else {
                entry["reason"] = json!(detail);
            }
            manifest_items.push(entry);
        }
    }
    let file_set_uid = project.uid(&format!("kastell-export-{job}-{}", row.created_at));
    let dicomdir = write_dicomdir(&entries, &format!("KASTELL{job}"), &file_set_uid);
    store
        .put(
            &object_store::path::Path::from(format!("{prefix}/DICOMDIR")),
            dicomdir.into(),
        )
        .await?;
    let manifest = json!({
        "job": job,
        "project": project.name,
        "profile": project.profile.description(),
        "created": row.created_at,
        "selection": row.selection,
        "instances": manifest_items,
    });
    store
        .put(
            &object_store::path::Path::from(format!("{prefix}/manifest.json")),
            serde_json::to_vec_pretty(&manifest)?.into(),
        )
        .await?;
    Ok(())
}

/// One audit record per study that went (or was left out), with the project.
async fn audit_studies(
    config: &Config,
    control: &Services,
    services: &Services,
    project: &Project,
    finished: &ExportStatus,
) -> anyhow::Result<()> {
    let job = finished.job.job_id;
    let mut studies: Vec<(String, i64, i64)> = Vec::new();
    let mut after = -1;
    loop {
        let page = items_after(services, job, after).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for item in page {
            // Items are in the order of their studies: one entry per run.
            match studies
                .last_mut()
                .filter(|s| s.0 == item.study_instance_uid)
            {
                Some(study) => {
                    study.1 += i64::from(item.state == "done");
                    study.2 += i64::from(item.state != "done");
                }
                None => studies.push((
                    item.study_instance_uid.clone(),
                    i64::from(item.state == "done"),
                    i64::from(item.state != "done"),
                )),
            }
        }
    }
    let tenant = services.store.tenant().to_string();
    let events: Vec<AuditEvent> = studies
        .into_iter()
        .map(|(study, done, left)| {
            AuditEvent::cli(&tenant, Action::Export, Outcome::Success)
                .study(study)
                .detail(format!(
                    "export job {job}: {done} instances de-identified by project {} ({}) to {}, {left} left out",
                    project.name,
                    project.profile.description(),
                    finished.job.target
                ))
        })
        .collect();
    super::audit::append_audit(config, &control.index, &events)?;
    Ok(())
}
