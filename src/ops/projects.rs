//! `kastell projects`: a tenant's de-identification projects (their profile
//! and secret, see `service::deid`), the research project, and the audited
//! re-identification lookup — an administrator's, never a researcher's.

use std::sync::Arc;

use crate::app::build_tenants;
use crate::audit::{Action, ActorKind, AuditEvent, Outcome};
use crate::config::Config;
use crate::index::deid::{MappedIdentifier, StoredProject};
use crate::service::deid::{self, Project, ProjectSpec, Reidentification};
use crate::service::Services;

use super::audit::audit_cli;

async fn tenant_services(config: &Config, tenant: &str) -> anyhow::Result<(Services, Services)> {
    let tenants = build_tenants(config)?;
    let services = tenants.get(tenant).await?;
    Ok((services, tenants.default_services().clone()))
}

/// Makes a project. Audited.
pub async fn create(config: &Config, tenant: &str, spec: &ProjectSpec) -> anyhow::Result<()> {
    let (services, control) = tenant_services(config, tenant).await?;
    let result = deid::create_project(&services, spec, &crate::audit::cli_user())
        .await
        .map_err(anyhow::Error::from);
    let outcome = if result.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let mut detail = format!(
        "project {} made: PS3.15 Basic Profile{}; re-identification {}",
        spec.name,
        spec.options
            .iter()
            .map(|o| format!(" +{}", o.name()))
            .collect::<String>(),
        spec.reidentification.as_str()
    );
    if spec.research {
        detail.push_str("; the research project");
    }
    if let Err(error) = &result {
        detail = format!("project {}: {error:#}", spec.name);
    }
    let event = AuditEvent::cli(tenant, Action::DeidProject, outcome).detail(detail);
    audit_cli(config, &control.index, event, result)
}

/// The tenant's projects (their secrets stay wrapped).
pub async fn list(config: &Config, tenant: &str) -> anyhow::Result<Vec<StoredProject>> {
    let (services, _) = tenant_services(config, tenant).await?;
    Ok(services.with_index(|index| index.deid_projects()).await?)
}

/// Makes `name` the project research callers are served through. Audited.
pub async fn choose_research(config: &Config, tenant: &str, name: &str) -> anyhow::Result<()> {
    let (services, control) = tenant_services(config, tenant).await?;
    let lookup = name.to_string();
    let result = match services
        .with_index(move |index| index.set_research_project(&lookup))
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(anyhow::anyhow!(
            "there is no 'audited' project {name}: the research project must be one whose \
             identifiers can be traced back (research retrieval needs it)"
        )),
        Err(error) => Err(error.into()),
    };
    let outcome = if result.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let event = AuditEvent::cli(tenant, Action::DeidProject, outcome)
        .detail(format!("project {name} chosen as the research project"));
    audit_cli(config, &control.index, event, result)
}

/// Opens a project (its secret unwrapped), for de-identifying files with it.
pub async fn open(config: &Config, tenant: &str, name: &str) -> anyhow::Result<Arc<Project>> {
    let (services, _) = tenant_services(config, tenant).await?;
    Ok(deid::open_project(&services, name).await?)
}

/// What `value`, an identifier project `project` handed out (a UID or a
/// pseudonymous PatientID), stands for. Only for an administrator of the
/// tenant (`admin_key`), only in an 'audited' project; audited either way.
pub async fn reidentify(
    config: &Config,
    tenant: &str,
    project: &str,
    value: &str,
    admin_key: Option<&str>,
) -> anyhow::Result<MappedIdentifier> {
    let (services, control) = tenant_services(config, tenant).await?;
    let actor = match admin_key {
        Some(key) => crate::auth::administrator(&control.index, key.trim(), tenant)
            .map_err(anyhow::Error::from),
        None => Err(anyhow::anyhow!(
            "re-identification is an administrator's: identify yourself with an API key with \
             the admin permission (--admin-key-file, or KASTELL_ADMIN_KEY)"
        )),
    };
    let event = |actor: &str, kind, outcome| {
        AuditEvent::new(actor.to_string(), kind, tenant, Action::Reidentify, outcome)
    };
    let actor = match actor {
        Ok(actor) => actor,
        Err(error) => {
            let refused = event(&crate::audit::cli_user(), ActorKind::Cli, Outcome::Failure)
                .detail(format!("project {project}: refused, {error:#}"));
            return audit_cli(config, &control.index, refused, Err(error));
        }
    };
    let result = async {
        let name = project.to_string();
        let stored = services
            .with_index(move |index| index.deid_project(&name))
            .await?
            .ok_or_else(|| anyhow::anyhow!("there is no project {project}"))?;
        if Reidentification::parse(&stored.reidentification) != Some(Reidentification::Audited) {
            anyhow::bail!(
                "project {project} keeps nothing that could re-identify: re-identification is \
                 impossible by its setting"
            );
        }
        let (name, lookup) = (project.to_string(), value.to_string());
        services
            .with_index(move |index| index.deid_original(&name, &lookup))
            .await?
            .ok_or_else(|| anyhow::anyhow!("project {project} never handed out {value:?}"))
    }
    .await;
    let mut done = event(
        &actor,
        ActorKind::ApiKey,
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    );
    done = match &result {
        Ok(found) => {
            let detail = format!("project {project}: a {} identifier looked up", found.level);
            match found.level.as_str() {
                "study" => done.study(found.original.clone()).detail(detail),
                _ => done.detail(detail),
            }
        }
        Err(error) => done.detail(format!("project {project}: {error:#}")),
    };
    audit_cli(config, &control.index, done, result)
}
