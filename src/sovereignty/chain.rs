//! The control chain: for each kind of data, where it sits, whether and how it is
//! encrypted, and who holds the keys that open it.

use super::{describe_key_source, place, Backend, BackendKind, Custody, DataKind, Holding};
use crate::config::{BlobStorePolicy, EventDestinationPolicy, MasterKeySource, SovereigntyConfig};

/// The control chain, one link per kind of data.
// `assess` builds one backend of each kind: a missing one is a bug of this
// module, at start-up or in the report command, never in a request.
#[allow(clippy::expect_used)]
pub(super) fn chain(
    policy: &SovereigntyConfig,
    backends: &[Backend],
    index_url: &str,
    index_place: &place::Place,
    key_source: &MasterKeySource,
) -> Vec<Custody> {
    let find = |kind| {
        backends
            .iter()
            .find(|b| b.kind == kind)
            .expect("all four backends are built")
    };
    let (server, index, blobs, keys) = (
        find(BackendKind::Server),
        find(BackendKind::Index),
        find(BackendKind::BlobStore),
        find(BackendKind::Keys),
    );
    let held = |b: &Backend, what: &str, encrypted| Holding {
        what: what.into(),
        backend: b.kind,
        name: b.name.clone(),
        encrypted,
        jurisdiction: b.jurisdiction.clone(),
    };
    // The countries are listed once, under the policy; each link names the rule.
    let personal_rule = format!(
        "personal-data rules: sovereignty.personal_data_countries, operators subject to \
         foreign-access law {}",
        if policy.allow_foreign_access_law {
            "allowed"
        } else {
            "not allowed"
        }
    );
    let master = describe_key_source(key_source);
    let key_holders = format!(
        "the master key ({master}) is held by: {}; the kastell process holds it in memory on \
         the host ({})",
        keys.jurisdiction, server.jurisdiction
    );
    let development_warning = if matches!(key_source, MasterKeySource::Development(_)) {
        " This development key sits in the data directory next to the data it protects: \
         anyone with that directory can read every image."
    } else {
        ""
    };
    let index_at_rest = if index_url.starts_with("sqlite://") {
        format!(
            "not encrypted by Kastell: the index keeps them in plaintext ({}); encrypt the \
             host's disk if they must be encrypted at rest",
            index_place.description
        )
    } else {
        let transit = if index_place.local {
            "on the host (loopback or Unix socket)"
        } else if index_place.tls_required == Some(true) {
            "TLS, required by the URL's sslmode"
        } else {
            "TLS not required by the URL (add sslmode=verify-full)"
        };
        format!(
            "not encrypted by Kastell: rows are plaintext in {}; encryption at rest is up to \
             the database's operator (e.g. encrypted volumes). On the way: {transit}",
            index_place.description
        )
    };
    let index_readers = if index.local {
        "no key protects the index rows: whoever administers the host can read them"
    } else {
        "no key protects the index rows: whoever administers the database server can read them"
    };

    let destinations: Vec<&Backend> = backends
        .iter()
        .filter(|b| b.kind.is_event_destination())
        .collect();
    let mut links = vec![
        Custody {
            data: DataKind::Images,
            rule: match policy.blob_stores {
                BlobStorePolicy::CiphertextAnywhere => "sovereignty.blob_stores = \
                    \"ciphertext-anywhere\": the blob store may be anywhere, since it only ever \
                    holds ciphertext and the keys stay under the personal-data rules"
                    .into(),
                BlobStorePolicy::SameAsPersonalData => {
                    format!("sovereignty.blob_stores = \"same-as-personal-data\": {personal_rule}")
                }
            },
            held: vec![held(
                blobs,
                "DICOM instances, and derived objects (cached series metadata, thumbnails)",
                true,
            )],
            encryption: "encrypted on the host before upload: AES-256-GCM in 64 KiB \
                authenticated segments under a fresh data key per object; object names are \
                random ids carrying no patient data. The blob store's operator still sees \
                object sizes, counts and access times"
                .into(),
            keys: format!(
                "each object's data key is wrapped by its tenant's key (kept wrapped in the \
                 index), which is wrapped by the master key; {key_holders}. The blob store's \
                 operator holds no key"
            ),
        },
        Custody {
            data: DataKind::PersonalMetadata,
            rule: personal_rule.clone(),
            held: vec![
                held(
                    index,
                    "patient, study, series and instance attributes used for search",
                    false,
                ),
                held(
                    blobs,
                    "the same attributes inside the DICOM objects and the cached series metadata",
                    true,
                ),
            ],
            encryption: format!(
                "in the index, {index_at_rest}. The copies in the blob store are encrypted like \
                 the images"
            ),
            keys: format!("{index_readers}; the blob store copies open with the image keys"),
        },
        Custody {
            data: DataKind::Keys,
            rule: personal_rule.clone(),
            held: vec![
                held(keys, "the master key", false),
                held(
                    index,
                    "tenant keys, wrapped by the master key (AES-256-GCM under an \
                     HKDF-SHA256-derived key)",
                    true,
                ),
                held(
                    blobs,
                    "data keys, one per object, wrapped by a tenant key in the object's header",
                    true,
                ),
            ],
            encryption: format!(
                "the master key is plaintext to whoever holds it (a file or the process \
                 environment); every key below it is stored only wrapped.{development_warning}"
            ),
            keys: key_holders.clone(),
        },
        Custody {
            data: DataKind::AuditTrail,
            rule: personal_rule.clone(),
            held: vec![held(
                index,
                "audit records, in the index database, chained by HMAC-SHA256 under a chain \
                 key kept wrapped by the master key",
                false,
            )],
            encryption: format!(
                "like the rest of the index, {index_at_rest}; whoever can write the index but \
                 does not hold the master key cannot edit the trail undetected"
            ),
            keys: format!(
                "{index_readers}; the chain key opens with the master key ({key_holders})"
            ),
        },
        Custody {
            data: DataKind::Logs,
            rule: format!("with the host: {personal_rule}"),
            // An OTLP exporter, once telemetry has one, is a second holding here
            // with its endpoint's declaration.
            held: vec![held(server, "standard error of the kastell process", false)],
            encryption: "plaintext, but without patient data: the access log names route \
                patterns (/dicomweb/studies/{study}), never paths or query strings, and the \
                test command checks a trace-level log for every stored name, ID and UID. \
                Where standard error goes next (journald, a log collector) is outside \
                Kastell's view: name it in [server] location.note"
                .into(),
            keys: "none: whoever reads the host's logs reads them".into(),
        },
    ];
    // Patient data sent with events is personal metadata held there too.
    for b in destinations.iter().filter(|b| b.patient_data) {
        links[1].held.push(held(
            b,
            "the patient's name, ID and birth date in each event (include_patient = true)",
            false,
        ));
    }
    if !destinations.is_empty() {
        links.push(events_link(policy, &destinations, &personal_rule));
    }
    links
}

/// Where events go: the broker and the webhook receivers, each with what it gets.
fn events_link(
    policy: &SovereigntyConfig,
    destinations: &[&Backend],
    personal_rule: &str,
) -> Custody {
    Custody {
        data: DataKind::Events,
        rule: match policy.event_destinations {
            EventDestinationPolicy::SameAsPersonalData => format!(
                "sovereignty.event_destinations = \"same-as-personal-data\": the UIDs events \
                 carry are pseudonymous personal data; {personal_rule}"
            ),
            EventDestinationPolicy::AnywhereWithoutPatientData => format!(
                "sovereignty.event_destinations = \"anywhere-without-patient-data\": events \
                 without patient data may go anywhere; those with it (include_patient = true) \
                 follow the {personal_rule}"
            ),
        },
        held: destinations
            .iter()
            .map(|b| Holding {
                what: b.receives.clone().unwrap_or_default(),
                backend: b.kind,
                name: b.name.clone(),
                encrypted: false,
                jurisdiction: b.jurisdiction.clone(),
            })
            .collect(),
        encryption: "not encrypted by Kastell: each event is plain JSON. On the way: HTTPS to \
            webhook receivers (plain HTTP only to a loopback address), TLS to the broker when \
            its URL is tls://; at rest, whatever the broker or receiver does with it (a \
            JetStream stream keeps events on its disks)"
            .into(),
        keys: "no key protects an event: whoever runs the broker or a receiver reads them; \
            webhook deliveries are signed with HMAC-SHA256 under each subscription's secret, \
            which proves where they come from, not who may read them"
            .into(),
    }
}
