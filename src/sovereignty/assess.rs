//! Assessing the configuration: each backend's place and effective jurisdiction
//! (declared, inherited from the host, or undeclared), assembled into the report.

use super::{chain, judge, place, Backend, BackendKind, Environment, Jurisdiction, Notice};
use super::{display_url, Report, Source};
use crate::config::{BlobStorePolicy, Config, EventDestinationPolicy, Location, MasterKeySource};

/// The full report, violations included, with the backends' endpoints as the
/// environment snapshot `env` sets them.
pub fn assess(config: &Config, env: &Environment) -> Report {
    let policy = &config.sovereignty;
    let host = config.server.location.as_ref();
    let index_url = config.effective_index_url();
    let blob_url = config.effective_blob_url();
    let index_place = place::index(&index_url, env);
    let blob_place = place::blob_store(&blob_url, &config.storage.blob_options, env);
    let key_source = config.master_key_source();

    let backend = |kind: BackendKind,
                   name: String,
                   placement: String,
                   local: bool,
                   own: Option<&Location>| {
        let inherits = kind != BackendKind::Server && local && own.is_none();
        let jurisdiction = match (own, inherits.then_some(host).flatten()) {
            (Some(own), _) => Jurisdiction::from_location(own, Source::Declared),
            (None, Some(host)) => Jurisdiction::from_location(host, Source::InheritedFromServer),
            (None, None) => Jurisdiction::undeclared(),
        };
        Backend {
            kind,
            name,
            placement,
            local,
            inherits_from_server: inherits,
            personal_data_rules: kind != BackendKind::BlobStore
                || policy.blob_stores == BlobStorePolicy::SameAsPersonalData,
            jurisdiction,
            section: kind.section().to_string(),
            receives: None,
            patient_data: false,
        }
    };
    let mut backends = vec![
        backend(
            BackendKind::Server,
            "server (the host running Kastell)".into(),
            "the machine running the kastell process".into(),
            true,
            host,
        ),
        backend(
            BackendKind::Index,
            format!("index ({})", display_url(&index_url)),
            index_place.description.clone(),
            index_place.local,
            config.index.location.as_ref(),
        ),
        backend(
            BackendKind::BlobStore,
            format!("blob store ({})", display_url(&blob_url)),
            blob_place.description.clone(),
            blob_place.local,
            config.storage.location.as_ref(),
        ),
        backend(
            BackendKind::Keys,
            format!("keys ({})", describe_key_source(&key_source)),
            "read from a file or the environment of the host".into(),
            true,
            config.keys.location.as_ref(),
        ),
    ];
    // Named master keys (issue 16): each holder under the rules for keys.
    for (name, master) in &config.keys.masters {
        let place = place::master_key(&master.url);
        let mut b = backend(
            BackendKind::Keys,
            format!("master key {name} ({})", provider_kind(&master.url)),
            place.description.clone(),
            place.local,
            master.location.as_ref(),
        );
        b.section = format!("[keys.masters.{name}]");
        backends.push(b);
    }
    // Named stores (issue 15) hold ciphertext as the primary store does, under
    // the same rules, each at its own declared place.
    for (name, store) in &config.storage.stores {
        let place = place::blob_store(&store.url, &store.options, env);
        let class = if store.storage_class.is_empty() {
            String::new()
        } else {
            format!(", storage class {}", store.storage_class)
        };
        let mut b = backend(
            BackendKind::BlobStore,
            format!("blob store {name} ({}{class})", display_url(&store.url)),
            place.description.clone(),
            place.local,
            store.location.as_ref(),
        );
        b.section = format!("[storage.stores.{name}]");
        backends.push(b);
    }
    // Export stores (issue 17) receive de-identified (pseudonymised) data in
    // the clear. They never inherit the host's place: an export is meant to
    // leave, so each must say where it goes (`kastell export` refuses one that
    // does not).
    for (name, export) in &config.exports {
        let place = place::blob_store(&export.url, &Default::default(), env);
        let mut b = backend(
            BackendKind::ExportStore,
            format!("export store {name} ({})", display_url(&export.url)),
            place.description.clone(),
            false,
            export.location.as_ref(),
        );
        b.personal_data_rules = policy.export_destinations
            == crate::config::ExportDestinationPolicy::SameAsPersonalData;
        b.section = format!("[exports.{name}]");
        b.receives = Some("de-identified exports (kastell export)".into());
        backends.push(b);
    }
    let mut unencrypted_events = Vec::new();
    for destination in event_destinations(config) {
        let mut b = backend(
            destination.kind,
            destination.name,
            destination.place.description.clone(),
            destination.place.local,
            destination.location,
        );
        b.personal_data_rules = destination.patient_data
            || policy.event_destinations == EventDestinationPolicy::SameAsPersonalData;
        b.section = destination.section;
        b.receives = Some(destination.receives);
        b.patient_data = destination.patient_data;
        if !destination.place.local && destination.place.tls_required == Some(false) {
            unencrypted_events.push(b.name.clone());
        }
        backends.push(b);
    }

    let (violations, mut warnings) = judge(policy, &backends);
    if !index_place.local && index_place.tls_required == Some(false) {
        warnings.push(Notice {
            backend: backends[1].name.clone(),
            message: "personal metadata travels to a remote database whose URL does not \
                      require TLS; add sslmode=verify-full (or require) to index.url"
                .into(),
        });
    }
    for name in unencrypted_events {
        warnings.push(Notice {
            backend: name,
            message: "events travel to a remote broker whose URL does not require TLS; use \
                      tls:// in events.nats.url"
                .into(),
        });
    }
    let chain = chain(policy, &backends, &index_url, &index_place, &key_source);
    Report {
        policy: policy.clone(),
        backends,
        chain,
        warnings,
        violations,
        tenant_keys: Vec::new(),
    }
}

/// The kind of provider a `keys.masters` URL names.
pub(super) fn provider_kind(url: &str) -> &'static str {
    if url.starts_with("pkcs11:") {
        "pkcs11"
    } else if url.starts_with("transit+") {
        "transit"
    } else {
        "file"
    }
}

pub(super) fn describe_key_source(source: &MasterKeySource) -> String {
    match source {
        MasterKeySource::Configured => {
            "master key from keys.master_key, i.e. the configuration or KASTELL__KEYS__MASTER_KEY"
                .into()
        }
        MasterKeySource::File(path) => format!("master key from file {}", path.display()),
        MasterKeySource::Development(path) => {
            format!("generated development master key {}", path.display())
        }
        MasterKeySource::Missing => "no master key configured".into(),
    }
}

/// A place events go, before its jurisdiction is known.
struct EventDestination<'a> {
    kind: BackendKind,
    name: String,
    section: String,
    place: place::Place,
    location: Option<&'a Location>,
    receives: String,
    patient_data: bool,
}

/// The NATS broker (when configured) and every webhook, with what each gets.
fn event_destinations(config: &Config) -> Vec<EventDestination<'_>> {
    const EVENT: &str = "CloudEvents of the changes: tenant, action, feed number, study, \
                         series and instance UIDs, SOP class";
    const PATIENT: &str = "; the patient's name, ID and birth date (include_patient = true)";
    let mut destinations = Vec::new();
    let nats = &config.events.nats;
    if !nats.url.is_empty() {
        let jobs = if config.events.jobs.precompute_on_stable {
            ", and the jobs that follow them (study UIDs)"
        } else {
            ""
        };
        destinations.push(EventDestination {
            kind: BackendKind::EventBroker,
            name: format!("event broker ({})", display_urls(&nats.url)),
            section: BackendKind::EventBroker.section().to_string(),
            place: place::event_destination("NATS server", &nats.url),
            location: nats.location.as_ref(),
            receives: format!(
                "every tenant's {EVENT}{jobs}{}",
                if nats.include_patient { PATIENT } else { "" }
            ),
            patient_data: nats.include_patient,
        });
    }
    for hook in &config.events.webhooks {
        let tenants = if hook.tenants.iter().any(|t| t == "*") {
            "every tenant's".to_string()
        } else {
            format!("tenant {}:", hook.tenants.join(", "))
        };
        let actions = if hook.actions.is_empty() {
            String::new()
        } else {
            format!(" ({} only)", hook.actions.join(", "))
        };
        destinations.push(EventDestination {
            kind: BackendKind::Webhook,
            name: format!("webhook {} ({})", hook.name, origin(&hook.url)),
            section: format!("the [[events.webhooks]] entry named {:?}", hook.name),
            place: place::event_destination("webhook receiver", &hook.url),
            location: hook.location.as_ref(),
            receives: format!(
                "{tenants} {EVENT}{actions}{}",
                if hook.include_patient { PATIENT } else { "" }
            ),
            patient_data: hook.include_patient,
        });
    }
    destinations
}

/// A comma-separated list of URLs, each as `display_url` shows it.
fn display_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| display_url(u.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a webhook goes, without its path or query: those often carry a token.
fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let path = if parsed.path().len() > 1 { "/…" } else { "" };
            format!(
                "{}://{}{port}{path}",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            )
        }
        Err(_) => display_url(url),
    }
}
