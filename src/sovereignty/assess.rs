//! Assessing the configuration: each backend's place and effective jurisdiction
//! (declared, inherited from the host, or undeclared), assembled into the report.

use super::{chain, judge, place, Backend, BackendKind, Environment, Jurisdiction, Notice};
use super::{display_url, Report, Source};
use crate::config::{BlobStorePolicy, Config, Location, MasterKeySource};

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
        }
    };
    let backends = vec![
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

    let (violations, mut warnings) = judge(policy, &backends);
    if !index_place.local && index_place.tls_required == Some(false) {
        warnings.push(Notice {
            backend: backends[1].name.clone(),
            message: "personal metadata travels to a remote database whose URL does not \
                      require TLS; add sslmode=verify-full (or require) to index.url"
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
