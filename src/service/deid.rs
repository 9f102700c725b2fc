//! De-identification projects of a tenant, and what is served through them: a
//! de-identified instance (WADO-URI `anonymize=yes`, research retrieval),
//! de-identified JSON (research QIDO and metadata), and the originals of the
//! identifiers a project handed out (research retrieval by them; the audited
//! re-identification lookup).
//!
//! A project's secret keys its UID mapping, pseudonyms and date offsets. It is
//! made here, wrapped by the tenant's key like a data key and stored only so
//! (`deid_projects`): shredding the tenant makes it unreadable; `kastell keys
//! rotate` re-wraps it under the new tenant key version.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value as Json;

use super::wado::Representation;
use super::{Scope, ServiceError, Services};
use crate::crypto::{keys, KeyId, SecretKey};
use crate::dicom::deid::{
    deidentify_file_bytes, parse_safe_private, Deidentified, MappedValue, PixelRegion, Profile,
    ProfileOption,
};
use crate::dicom::header::parse_file_meta;
use crate::dicom::DicomError;
use crate::index::deid::{MappedIdentifier, StoredProject};
use crate::index::StoredInstance;
use crate::store::StoreError;

/// The project WADO-URI `anonymize=yes` uses when the tenant chose no research
/// project: made on first use, re-identification impossible.
pub const WADO_URI_PROJECT: &str = "wado-uri";

/// Whether a project's de-identified identifiers can be traced back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reidentification {
    /// What it hands out is recorded; an administrator can look it up, audited.
    Audited,
    /// Nothing is recorded and no lookup exists.
    Impossible,
}

impl Reidentification {
    pub fn as_str(self) -> &'static str {
        match self {
            Reidentification::Audited => "audited",
            Reidentification::Impossible => "impossible",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "audited" => Some(Reidentification::Audited),
            "impossible" => Some(Reidentification::Impossible),
            _ => None,
        }
    }
}

/// What a new project is.
#[derive(Debug, Clone)]
pub struct ProjectSpec {
    pub name: String,
    pub options: BTreeSet<ProfileOption>,
    pub safe_private: Vec<(String, u8)>,
    pub blank_regions: Vec<PixelRegion>,
    pub reidentification: Reidentification,
    /// Serves callers with only the research permission.
    pub research: bool,
}

/// An open project: its profile, keyed by its secret.
#[derive(Debug)]
pub struct Project {
    pub name: String,
    pub profile: Profile,
    pub reidentification: Reidentification,
}

impl Project {
    /// The UID this project hands out for `original` (itself under Retain UIDs).
    pub fn uid(&self, original: &str) -> String {
        if self.profile.options.contains(&ProfileOption::RetainUids) {
            original.to_string()
        } else {
            self.profile.map_uid(original)
        }
    }
}

/// Project names: 1–64 letters, digits, `.`, `_`, `-`.
pub fn valid_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn wrapping_context(tenant: &str, project: &str, version: i64) -> Vec<u8> {
    format!("kastell/deid-project/v1/{tenant}/{project}/{version}").into_bytes()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
}

/// Makes a project: a new secret, wrapped under the tenant's active key.
pub async fn create_project(
    services: &Services,
    spec: &ProjectSpec,
    created_by: &str,
) -> Result<(), ServiceError> {
    if !valid_project_name(&spec.name) {
        return Err(ServiceError::Invalid(format!(
            "{:?} is not a project name (1–64 letters, digits, '.', '_', '-')",
            spec.name
        )));
    }
    if spec.research && spec.reidentification != Reidentification::Audited {
        return Err(ServiceError::Invalid(
            "the research project must be 'audited': research retrieval finds the originals \
             of the identifiers it handed out"
                .into(),
        ));
    }
    let ring = services.store.keys().clone();
    let tenant = services.store.tenant().to_string();
    let name = spec.name.clone();
    let (version, wrapped_secret) = blocking(move || {
        ring.ensure_tenant(&tenant).map_err(StoreError::from)?;
        let (id, tenant_key) = ring.active(&tenant).map_err(StoreError::from)?;
        let secret = SecretKey::generate().map_err(StoreError::from)?;
        let version = i64::from(id.version);
        let wrapped = keys::wrap(
            &tenant_key,
            &secret,
            &wrapping_context(&tenant, &name, version),
        )
        .map_err(StoreError::from)?;
        Ok((version, wrapped))
    })
    .await?;
    let stored = StoredProject {
        name: spec.name.clone(),
        key_version: version,
        wrapped_secret,
        options: spec
            .options
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
            .join(","),
        safe_private: spec
            .safe_private
            .iter()
            .map(|(creator, element)| format!("{creator}:{element:02X}"))
            .collect::<Vec<_>>()
            .join(","),
        blank_regions: spec
            .blank_regions
            .iter()
            .map(PixelRegion::to_string)
            .collect::<Vec<_>>()
            .join(";"),
        reidentification: spec.reidentification.as_str().to_string(),
        research: 0,
        created_at: String::new(),
        created_by: created_by.to_string(),
    };
    let research = spec.research;
    let name = spec.name.clone();
    let added = services
        .with_index(move |index| {
            let added = index.add_deid_project(&stored)?;
            if added && research {
                index.set_research_project(&name)?;
            }
            Ok(added)
        })
        .await?;
    if !added {
        return Err(ServiceError::Invalid(format!(
            "a project named {} exists",
            spec.name
        )));
    }
    Ok(())
}

/// Opens a stored project: its secret unwrapped under the tenant key it names.
async fn open_stored(services: &Services, stored: StoredProject) -> Result<Project, ServiceError> {
    let ring = services.store.keys().clone();
    let tenant = services.store.tenant().to_string();
    let version = u32::try_from(stored.key_version)
        .map_err(|_| ServiceError::Invalid("a project names an invalid key version".into()))?;
    let context = wrapping_context(&tenant, &stored.name, stored.key_version);
    let wrapped = stored.wrapped_secret.clone();
    let secret = blocking(move || {
        let tenant_key = ring
            .key(&KeyId { tenant, version })
            .map_err(StoreError::from)?;
        Ok(keys::unwrap(&tenant_key, &wrapped, &context).map_err(StoreError::from)?)
    })
    .await?;
    let options = stored
        .options
        .split(',')
        .filter(|o| !o.is_empty())
        .filter_map(ProfileOption::parse)
        .collect();
    let mut profile = Profile::new(secret.expose(), options);
    profile.safe_private = stored
        .safe_private
        .split(',')
        .filter_map(parse_safe_private)
        .collect();
    profile.blank_regions = stored
        .blank_regions
        .split(';')
        .filter_map(PixelRegion::parse)
        .collect();
    Ok(Project {
        name: stored.name,
        profile,
        reidentification: Reidentification::parse(&stored.reidentification)
            .unwrap_or(Reidentification::Impossible),
    })
}

/// The project named `name`, opened.
pub async fn open_project(services: &Services, name: &str) -> Result<Arc<Project>, ServiceError> {
    let lookup = name.to_string();
    let stored = services
        .with_index(move |index| index.deid_project(&lookup))
        .await?
        .ok_or(ServiceError::NotFound("de-identification project"))?;
    Ok(Arc::new(open_stored(services, stored).await?))
}

/// The project research callers are served through, if the tenant chose one.
pub async fn research_project(services: &Services) -> Result<Option<Arc<Project>>, ServiceError> {
    let Some(stored) = services
        .with_index(|index| index.research_project())
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Arc::new(open_stored(services, stored).await?)))
}

/// The project of WADO-URI `anonymize=yes`: the research project, else
/// [`WADO_URI_PROJECT`], made on first use.
pub async fn wado_uri_project(services: &Services) -> Result<Arc<Project>, ServiceError> {
    if let Some(project) = research_project(services).await? {
        return Ok(project);
    }
    match open_project(services, WADO_URI_PROJECT).await {
        Err(ServiceError::NotFound(_)) => {}
        other => return other,
    }
    let spec = ProjectSpec {
        name: WADO_URI_PROJECT.into(),
        options: BTreeSet::new(),
        safe_private: Vec::new(),
        blank_regions: Vec::new(),
        reidentification: Reidentification::Impossible,
        research: false,
    };
    match create_project(services, &spec, "wado-uri").await {
        // Two first requests at once: one made it.
        Ok(()) | Err(ServiceError::Invalid(_)) => open_project(services, WADO_URI_PROJECT).await,
        Err(error) => Err(error),
    }
}

/// Records what the identifiers handed out stand for (audited projects only).
pub async fn record_mapped(
    services: &Services,
    project: &Project,
    mapped: Vec<MappedValue>,
) -> Result<(), ServiceError> {
    if project.reidentification != Reidentification::Audited || mapped.is_empty() {
        return Ok(());
    }
    let name = project.name.clone();
    let entries: Vec<MappedIdentifier> = mapped
        .into_iter()
        .filter(|m| !m.original.is_empty())
        .map(|m| MappedIdentifier {
            mapped: m.mapped,
            original: m.original,
            level: m.level.to_string(),
        })
        .collect();
    services
        .with_index(move |index| index.record_deid_map(&name, &entries))
        .await
}

/// The original of a de-identified UID of `level` this project handed out.
async fn original_uid(
    services: &Services,
    project: &Project,
    mapped: &str,
    level: &'static str,
) -> Result<String, ServiceError> {
    if project.profile.options.contains(&ProfileOption::RetainUids) {
        return Ok(mapped.to_string());
    }
    let (name, lookup) = (project.name.clone(), mapped.to_string());
    let found = services
        .with_index(move |index| index.deid_original(&name, &lookup))
        .await?;
    match found {
        Some(entry) if entry.level == level => Ok(entry.original),
        _ => Err(ServiceError::NotFound(level)),
    }
}

/// The scope of originals a de-identified scope stands for. A UID this project
/// never handed out (an original one included) is not found.
pub async fn original_scope(
    services: &Services,
    project: &Project,
    scope: Scope,
) -> Result<Scope, ServiceError> {
    Ok(match scope {
        Scope::Study { study } => Scope::Study {
            study: original_uid(services, project, &study, "study").await?,
        },
        Scope::Series { study, series } => Scope::Series {
            study: original_uid(services, project, &study, "study").await?,
            series: original_uid(services, project, &series, "series").await?,
        },
        Scope::Instance {
            study,
            series,
            instance,
        } => Scope::Instance {
            study: original_uid(services, project, &study, "study").await?,
            series: original_uid(services, project, &series, "series").await?,
            instance: original_uid(services, project, &instance, "instance").await?,
        },
    })
}

/// The original of a de-identified UID at any level (QIDO match keys).
pub async fn original_of(
    services: &Services,
    project: &Project,
    mapped: &str,
    level: &'static str,
) -> Result<Option<String>, ServiceError> {
    match original_uid(services, project, mapped, level).await {
        Ok(original) => Ok(Some(original)),
        Err(ServiceError::NotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// One stored instance, de-identified whole and then written in the chosen
/// representation (in memory: it is parsed and written again; its cost is
/// taken from the decoding budget), or why it is excluded.
pub async fn deidentified_instance(
    services: &Services,
    project: &Arc<Project>,
    instance: &StoredInstance,
    representation: Representation,
) -> Result<Deidentified, ServiceError> {
    let _permit = services
        .settings
        .decoding
        .take((instance.blob_size.max(0) as u64).saturating_mul(4))?;
    let key = crate::store::BlobKey::parse(&instance.blob_key)?;
    let file = services.store.read_all(&key).await?;
    let worker = project.clone();
    let result = blocking(move || {
        let result = deidentify_file_bytes(&file, &worker.profile)?;
        let Deidentified::File { bytes, outcome } = result else {
            return Ok(result);
        };
        let bytes = match representation {
            Representation::AsStored => bytes,
            other => {
                let meta = parse_file_meta(&bytes)?.ok_or(DicomError::Truncated)?;
                match other {
                    Representation::Transcoded(target) => {
                        crate::dicom::pixels::transcode(&bytes, &meta, target)?
                    }
                    _ => crate::dicom::instance::reencode_explicit_le(&bytes, &meta)?,
                }
            }
        };
        Ok(Deidentified::File { bytes, outcome })
    })
    .await?;
    if let Deidentified::File { .. } = &result {
        let mapped = [
            (&instance.study_instance_uid, "study"),
            (&instance.series_instance_uid, "series"),
            (&instance.sop_instance_uid, "instance"),
        ]
        .into_iter()
        .map(|(uid, level)| MappedValue {
            original: uid.clone(),
            mapped: project.uid(uid),
            level,
        })
        .collect();
        record_mapped(services, project, mapped).await?;
    }
    Ok(result)
}

/// The URL of a de-identified instance under `base_url`: its project's UIDs.
pub fn deidentified_url(base_url: &str, project: &Project, instance: &StoredInstance) -> String {
    let map = |uid: &str| project.uid(uid);
    format!(
        "{base_url}/studies/{}/series/{}/instances/{}",
        map(&instance.study_instance_uid),
        map(&instance.series_instance_uid),
        map(&instance.sop_instance_uid)
    )
}

/// De-identifies DICOM JSON data sets (search results, metadata) and records
/// what their identifiers stand for.
pub async fn deidentify_json(
    services: &Services,
    project: &Project,
    datasets: &mut [Json],
) -> Result<(), ServiceError> {
    let mut mapped = Vec::new();
    for dataset in datasets.iter_mut() {
        match dataset.as_object_mut() {
            Some(object) => mapped.extend(project.profile.deidentify_json(object)),
            None => *dataset = Json::Object(Default::default()),
        }
    }
    record_mapped(services, project, mapped).await
}

/// Re-wraps every project secret not under `new` (after `kastell keys rotate`).
/// Returns how many were re-wrapped.
pub async fn rewrap_projects(services: &Services, new: &KeyId) -> Result<usize, ServiceError> {
    let projects = services.with_index(|index| index.deid_projects()).await?;
    let mut rewrapped = 0;
    for stored in projects {
        if stored.key_version == i64::from(new.version) {
            continue;
        }
        let ring = services.store.keys().clone();
        let tenant = services.store.tenant().to_string();
        let new_version = i64::from(new.version);
        let new = new.clone();
        let old_version = stored.key_version;
        let name = stored.name.clone();
        let wrapped = stored.wrapped_secret.clone();
        let rewrapped_secret = blocking(move || {
            let old = KeyId {
                tenant: tenant.clone(),
                version: u32::try_from(old_version).unwrap_or(0),
            };
            let old_key = ring.key(&old).map_err(StoreError::from)?;
            let secret = keys::unwrap(
                &old_key,
                &wrapped,
                &wrapping_context(&tenant, &name, old_version),
            )
            .map_err(StoreError::from)?;
            let new_key = ring.key(&new).map_err(StoreError::from)?;
            Ok(keys::wrap(
                &new_key,
                &secret,
                &wrapping_context(&tenant, &name, i64::from(new.version)),
            )
            .map_err(StoreError::from)?)
        })
        .await?;
        let (name, version) = (stored.name.clone(), new_version);
        if services
            .with_index(move |index| {
                index.rewrap_deid_secret(&name, old_version, version, &rewrapped_secret)
            })
            .await?
        {
            rewrapped += 1;
        }
    }
    Ok(rewrapped)
}
