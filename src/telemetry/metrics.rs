//! Every metric Kastell records: its name (a documented constant, listed for
//! operators in the README, "Operating Kastell → Telemetry"), unit and labels,
//! and the instruments behind them.
//!
//! Labels are limited to bounded, non-personal values: the endpoint name from the
//! route table, the HTTP method (unknown methods folded into `_OTHER`), the status,
//! the tenant (a registered tenant's name, never one merely asked for), the
//! operation and the backend. Never a UID, a name or a path: metrics leave the
//! host (OTLP, `/metrics`) and are kept far longer than requests.
//!
//! Names follow OpenTelemetry's dotted style; the Prometheus endpoint spells them
//! with underscores, the unit and, for counters, `_total`
//! (`kastell.http.requests` → `kastell_http_requests_total`).

use std::sync::LazyLock;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

/// HTTP requests answered. Unit `{request}`; labels `endpoint`, `method`,
/// `status`, `status_class`, `tenant`.
pub const HTTP_REQUESTS: &str = "kastell.http.requests";
/// Time from receiving a request to the last byte of its answer (a streamed
/// study included). Unit `s`; labels as [`HTTP_REQUESTS`].
pub const HTTP_REQUEST_DURATION: &str = "kastell.http.request.duration";
/// Request body bytes read (STOW uploads). Unit `By`; labels `endpoint`, `method`,
/// `tenant`.
pub const HTTP_RECEIVED: &str = "kastell.http.received";
/// Response body bytes sent. Unit `By`; labels `endpoint`, `method`, `tenant`.
pub const HTTP_SENT: &str = "kastell.http.sent";
/// Instances accepted by STOW. Unit `{instance}`; labels `tenant`, `outcome`
/// (`stored`, `replaced`, `already_stored`: the same bytes sent again).
pub const INSTANCES_STORED: &str = "kastell.instances.stored";
/// Duration of one blob store call (a whole upload for `write`). Unit `s`; labels
/// `operation` (`write`, `read_range`, `read_stream`, `read_small_objects`,
/// `read_all`, `size`, `key_id_of`, `rewrap`, `delete`, `list`, `probe`),
/// `backend` (`file`, `s3`, `az`, `gs`, `memory`).
pub const STORE_DURATION: &str = "kastell.store.duration";
/// Duration of one index call, waiting for a pooled connection included. Unit
/// `s`; labels `operation` (the `Index` method: `search`, `store_instances`,
/// `instances`, …), `db_system` (`sqlite`, `postgresql`).
pub const INDEX_DURATION: &str = "kastell.index.duration";
/// Connections of each index pool, sampled at every collection. Unit
/// `{connection}`; labels `pool` (`main`: the configured index, or a tenant's
/// name), `state` (`in_use`, `idle`).
pub const INDEX_POOL_CONNECTIONS: &str = "kastell.index.pool.connections";
/// Plaintext bytes encrypted on their way to the blob store. Unit `By`; label
/// `backend`.
pub const CRYPTO_SEALED: &str = "kastell.crypto.sealed";
/// Plaintext bytes decrypted (and authenticated) on their way out of the blob
/// store. Unit `By`; label `backend`.
pub const CRYPTO_OPENED: &str = "kastell.crypto.opened";

/// Changes of the feed a sink has not delivered yet (the outbox backlog),
/// sampled at every collection. Unit `{change}`; labels `tenant`, `sink`
/// (`nats`, `jobs`, `webhook.<name>`).
pub const EVENTS_BACKLOG: &str = "kastell.events.backlog";
/// Events handed to a sink. Unit `{event}`; labels `sink`, `outcome`
/// (`delivered`, `failed`: an attempt that will be retried, `dead_lettered`).
pub const EVENTS_DELIVERIES: &str = "kastell.events.deliveries";
/// Jobs run by this process. Unit `{job}`; labels `kind` (`precompute`,
/// `lifecycle-pass`, `restore-poll`),
/// `outcome` (`done`, `failed`, `skipped`: done before, redelivered;
/// `invalid`: a queue message that is not a job, dropped).
pub const JOBS: &str = "kastell.jobs";
/// Objects lifecycle passes of this process handled (issue 15). Unit
/// `{object}`; labels `tenant`, `store` (where they went), `outcome` (`moved`,
/// `failed`, `recovered`: a dead process's move undone or finished).
pub const LIFECYCLE_MOVES: &str = "kastell.lifecycle.moves";
/// Restores from offline tiers this process asked for (issue 15). Unit
/// `{object}`; label `tenant`.
pub const LIFECYCLE_RESTORES: &str = "kastell.lifecycle.restores";
/// Objects whose restore from an offline tier is not finished, as the last
/// poll saw them. Unit `{object}`; label `tenant`.
pub const LIFECYCLE_RESTORES_WAITING: &str = "kastell.lifecycle.restores.waiting";
/// Instance objects per store, as the last lifecycle poll counted them in the
/// index. Unit `{object}`; labels `tenant`, `store` (`primary` or a
/// `storage.stores` name), `class` (its storage class; empty: the default).
pub const STORE_OBJECTS: &str = "kastell.store.objects";
/// Bytes of those objects (as stored, before encryption). Unit `By`; labels
/// as [`STORE_OBJECTS`].
pub const STORE_BYTES: &str = "kastell.store.bytes";
/// Calls to a master key provider (issue 16). Unit `{call}`; labels `master`
/// (its name in `keys.masters`, or `local`), `provider` (`file`, `pkcs11`,
/// `transit`), `operation` (`wrap`, `unwrap`), `outcome` (`ok`, `unavailable`,
/// `revoked`, `failed`).
pub const KEY_PROVIDER_CALLS: &str = "kastell.keys.provider.calls";
/// Duration of those calls. Unit `s`; labels `master`, `provider`, `operation`.
pub const KEY_PROVIDER_DURATION: &str = "kastell.keys.provider.duration";

/// Time a STOW request spends in each stage of the write path, per part or per
/// request. Unit `s`; label `stage`: `receive` (a part's bytes, from its first
/// to its last, the client's pace included), `encrypt_write` (sealing and
/// writing them to the blob store, within `receive`), `finish` (the blob made
/// durable), `parse` (its header read and checked), `metadata` (its metadata
/// record sealed), `index` (the request's one index transaction), `audit` (its
/// audit record committed before the answer).
pub const STOW_STAGE_DURATION: &str = "kastell.stow.stage.duration";

/// Every metric name, for the documentation test.
pub const ALL: [&str; 21] = [
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    HTTP_RECEIVED,
    HTTP_SENT,
    INSTANCES_STORED,
    STORE_DURATION,
    INDEX_DURATION,
    INDEX_POOL_CONNECTIONS,
    CRYPTO_SEALED,
    CRYPTO_OPENED,
    EVENTS_BACKLOG,
    EVENTS_DELIVERIES,
    JOBS,
    LIFECYCLE_MOVES,
    LIFECYCLE_RESTORES,
    LIFECYCLE_RESTORES_WAITING,
    STORE_OBJECTS,
    STORE_BYTES,
    KEY_PROVIDER_CALLS,
    KEY_PROVIDER_DURATION,
    STOW_STAGE_DURATION,
];

/// Name of the instrumentation scope every instrument belongs to.
pub const SCOPE: &str = "kastell";

/// Bucket bounds of the duration histograms, in seconds: from a cached index
/// lookup (a millisecond) to a whole-study upload or retrieval (minutes). The SDK
/// defaults are made for milliseconds and would put every request in one bucket.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The instruments, made on first use from the global meter provider (installed by
/// [`super::init_server`] before anything is served; a no-op elsewhere, e.g. in the
/// CLI commands and unit tests).
pub(crate) struct Instruments {
    pub http_requests: Counter<u64>,
    pub http_duration: Histogram<f64>,
    pub http_received: Counter<u64>,
    pub http_sent: Counter<u64>,
    pub instances_stored: Counter<u64>,
    pub store_duration: Histogram<f64>,
    pub index_duration: Histogram<f64>,
    pub crypto_sealed: Counter<u64>,
    pub crypto_opened: Counter<u64>,
    pub events_deliveries: Counter<u64>,
    pub jobs: Counter<u64>,
    pub lifecycle_moves: Counter<u64>,
    pub lifecycle_restores: Counter<u64>,
    pub key_provider_calls: Counter<u64>,
    pub key_provider_duration: Histogram<f64>,
    pub stow_stage_duration: Histogram<f64>,
}

pub(crate) fn meter() -> Meter {
    opentelemetry::global::meter(SCOPE)
}

pub(crate) static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = meter();
    let seconds = |name: &'static str, description: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(description)
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build()
    };
    let counter = |name: &'static str, unit: &'static str, description: &'static str| {
        meter
            .u64_counter(name)
            .with_unit(unit)
            .with_description(description)
            .build()
    };
    Instruments {
        http_requests: counter(HTTP_REQUESTS, "{request}", "HTTP requests answered"),
        http_duration: seconds(
            HTTP_REQUEST_DURATION,
            "Time from request to the last byte of the answer",
        ),
        http_received: counter(HTTP_RECEIVED, "By", "Request body bytes read"),
        http_sent: counter(HTTP_SENT, "By", "Response body bytes sent"),
        instances_stored: counter(
            INSTANCES_STORED,
            "{instance}",
            "Instances accepted by STOW-RS",
        ),
        store_duration: seconds(STORE_DURATION, "Duration of blob store calls"),
        index_duration: seconds(INDEX_DURATION, "Duration of index calls"),
        crypto_sealed: counter(CRYPTO_SEALED, "By", "Plaintext bytes encrypted"),
        crypto_opened: counter(CRYPTO_OPENED, "By", "Plaintext bytes decrypted"),
        events_deliveries: counter(EVENTS_DELIVERIES, "{event}", "Events handed to a sink"),
        jobs: counter(JOBS, "{job}", "Jobs run"),
        lifecycle_moves: counter(
            LIFECYCLE_MOVES,
            "{object}",
            "Objects moved between stores by lifecycle passes",
        ),
        lifecycle_restores: counter(
            LIFECYCLE_RESTORES,
            "{object}",
            "Restores from offline tiers asked for",
        ),
        key_provider_calls: counter(
            KEY_PROVIDER_CALLS,
            "{call}",
            "Wrap and unwrap calls to master key providers",
        ),
        key_provider_duration: seconds(
            KEY_PROVIDER_DURATION,
            "Duration of calls to master key providers",
        ),
        stow_stage_duration: seconds(
            STOW_STAGE_DURATION,
            "Time STOW requests spend in each stage of the write path",
        ),
    }
});

/// Counts one call to master key provider `master` and how long it took.
pub fn key_provider_call(
    master: &str,
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    let labels = [
        KeyValue::new("master", master.to_string()),
        KeyValue::new("provider", provider),
        KeyValue::new("operation", operation),
    ];
    INSTRUMENTS
        .key_provider_duration
        .record(elapsed.as_secs_f64(), &labels);
    let mut with_outcome = labels.to_vec();
    with_outcome.push(KeyValue::new("outcome", outcome));
    INSTRUMENTS.key_provider_calls.add(1, &with_outcome);
}

/// Counts instances a STOW request stored for `tenant`.
pub fn instances_stored(tenant: &str, outcome: &'static str, count: u64) {
    if count > 0 {
        INSTRUMENTS.instances_stored.add(
            count,
            &[
                KeyValue::new("tenant", tenant.to_string()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

/// Counts events a sink delivered (`delivered`), failed to deliver and will
/// retry (`failed`), or gave up on (`dead_lettered`).
pub fn events_delivered(sink: &str, outcome: &'static str, count: u64) {
    if count > 0 {
        INSTRUMENTS.events_deliveries.add(
            count,
            &[
                KeyValue::new("sink", sink.to_string()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

/// Counts objects a lifecycle pass handled for `tenant` towards `store`.
pub fn lifecycle_moved(tenant: &str, store: &str, outcome: &'static str, count: u64) {
    if count > 0 {
        INSTRUMENTS.lifecycle_moves.add(
            count,
            &[
                KeyValue::new("tenant", tenant.to_string()),
                KeyValue::new("store", store.to_string()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

/// Counts restores from offline tiers asked for `tenant`.
pub fn restores_requested(tenant: &str, count: u64) {
    if count > 0 {
        INSTRUMENTS
            .lifecycle_restores
            .add(count, &[KeyValue::new("tenant", tenant.to_string())]);
    }
}

/// The last value of a gauge per set of labels, observed at every collection.
struct GaugeTable {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    values: std::sync::Mutex<Vec<(Vec<KeyValue>, u64)>>,
    registered: std::sync::Once,
}

impl GaugeTable {
    const fn new(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self {
            name,
            unit,
            description,
            values: std::sync::Mutex::new(Vec::new()),
            registered: std::sync::Once::new(),
        }
    }

    fn set(&'static self, labels: Vec<KeyValue>, value: u64) {
        self.registered.call_once(|| {
            let _gauge = meter()
                .u64_observable_gauge(self.name)
                .with_unit(self.unit)
                .with_description(self.description)
                .with_callback(move |observer| {
                    let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
                    for (labels, value) in values.iter() {
                        observer.observe(*value, labels);
                    }
                })
                .build();
        });
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match values.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, old)) => *old = value,
            None => values.push((labels, value)),
        }
    }
}

static RESTORES_WAITING: GaugeTable = GaugeTable::new(
    LIFECYCLE_RESTORES_WAITING,
    "{object}",
    "Objects whose restore from an offline tier is not finished",
);
static STORE_OBJECT_COUNTS: GaugeTable =
    GaugeTable::new(STORE_OBJECTS, "{object}", "Instance objects per store");
static STORE_BYTE_COUNTS: GaugeTable =
    GaugeTable::new(STORE_BYTES, "By", "Bytes of instance objects per store");

/// Records how many objects of `tenant` wait for their restore.
pub fn restores_waiting(tenant: &str, waiting: i64) {
    RESTORES_WAITING.set(
        vec![KeyValue::new("tenant", tenant.to_string())],
        u64::try_from(waiting).unwrap_or(0),
    );
}

/// Records what `tenant` keeps in `store` (of storage class `class`).
pub fn store_usage(tenant: &str, store: &str, class: &str, objects: i64, bytes: i64) {
    let labels = vec![
        KeyValue::new("tenant", tenant.to_string()),
        KeyValue::new("store", store.to_string()),
        KeyValue::new("class", class.to_string()),
    ];
    STORE_OBJECT_COUNTS.set(labels.clone(), u64::try_from(objects).unwrap_or(0));
    STORE_BYTE_COUNTS.set(labels, u64::try_from(bytes).unwrap_or(0));
}

/// Counts a job of `kind` this process ran, with its outcome.
pub fn job_ran(kind: &'static str, outcome: &'static str) {
    INSTRUMENTS.jobs.add(
        1,
        &[
            KeyValue::new("kind", kind),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// The outbox backlog of each (tenant, sink), as the dispatchers last saw it,
/// reported by the `kastell.events.backlog` gauge.
static BACKLOG: std::sync::Mutex<Vec<((String, String), u64)>> = std::sync::Mutex::new(Vec::new());
static BACKLOG_GAUGE: std::sync::Once = std::sync::Once::new();

/// Records the backlog of `sink` for `tenant`.
pub fn events_backlog(tenant: &str, sink: &str, backlog: u64) {
    BACKLOG_GAUGE.call_once(|| {
        let _gauge = meter()
            .u64_observable_gauge(EVENTS_BACKLOG)
            .with_unit("{change}")
            .with_description("Changes a sink has not delivered yet")
            .with_callback(|observer| {
                let backlog = BACKLOG.lock().unwrap_or_else(|e| e.into_inner());
                for ((tenant, sink), value) in backlog.iter() {
                    observer.observe(
                        *value,
                        &[
                            KeyValue::new("tenant", tenant.clone()),
                            KeyValue::new("sink", sink.clone()),
                        ],
                    );
                }
            })
            .build();
    });
    let mut all = BACKLOG.lock().unwrap_or_else(|e| e.into_inner());
    let key = (tenant.to_string(), sink.to_string());
    match all.iter_mut().find(|(k, _)| *k == key) {
        Some((_, value)) => *value = backlog,
        None => all.push((key, backlog)),
    }
}

/// Counts plaintext bytes encrypted for the blob store.
pub fn sealed(backend: &str, bytes: u64) {
    INSTRUMENTS
        .crypto_sealed
        .add(bytes, &[KeyValue::new("backend", backend.to_string())]);
}

/// Counts plaintext bytes decrypted from the blob store.
pub fn opened(backend: &str, bytes: u64) {
    INSTRUMENTS
        .crypto_opened
        .add(bytes, &[KeyValue::new("backend", backend.to_string())]);
}

/// Records the time one STOW part or request spent in `stage` (see
/// [`STOW_STAGE_DURATION`]).
pub fn stow_stage(stage: &'static str, elapsed: Duration) {
    INSTRUMENTS
        .stow_stage_duration
        .record(elapsed.as_secs_f64(), &[KeyValue::new("stage", stage)]);
}

/// Records the duration of a blob store call.
pub fn store_call(operation: &'static str, backend: &str, elapsed: Duration) {
    INSTRUMENTS.store_duration.record(
        elapsed.as_secs_f64(),
        &[
            KeyValue::new("operation", operation),
            KeyValue::new("backend", backend.to_string()),
        ],
    );
}

/// Times one blob store call from its creation to its drop: a `let` at the top of
/// the call covers every way out of it, `?` included.
pub struct StoreTimer {
    operation: &'static str,
    backend: String,
    started: std::time::Instant,
}

impl StoreTimer {
    pub fn start(operation: &'static str, backend: &str) -> Self {
        Self {
            operation,
            backend: backend.to_string(),
            started: std::time::Instant::now(),
        }
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        store_call(self.operation, &self.backend, self.started.elapsed());
    }
}

/// One index call: a span named `index.<operation>` (entered for the call, which
/// runs on one blocking thread) and its duration, recorded when dropped.
pub struct IndexCall {
    operation: &'static str,
    db_system: &'static str,
    started: std::time::Instant,
    _span: tracing::span::EnteredSpan,
}

impl IndexCall {
    /// `function` is the type name of an item inside the calling function (see
    /// `with_conn!`); its last path segment that is not a closure is the `Index`
    /// method, which names the span and the `operation` label.
    pub fn start(function: &'static str, db_system: &'static str) -> Self {
        let operation = operation_of(function);
        let span = tracing::info_span!(
            "index",
            otel.name = %format_args!("index.{operation}"),
            otel.kind = "client",
            db.system = db_system,
            db.operation = operation,
        );
        Self {
            operation,
            db_system,
            started: std::time::Instant::now(),
            _span: span.entered(),
        }
    }
}

impl Drop for IndexCall {
    fn drop(&mut self) {
        INSTRUMENTS.index_duration.record(
            self.started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("operation", self.operation),
                KeyValue::new("db_system", self.db_system),
            ],
        );
    }
}

/// `kastell::index::Index::search::here` → `search`;
/// `kastell::index::generate::generate::{{closure}}::here` → `generate`.
fn operation_of(function: &'static str) -> &'static str {
    function
        .rsplit("::")
        .skip(1)
        .find(|segment| !segment.starts_with('{'))
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_operations_are_named_after_the_calling_method() {
        fn here() {}
        // This very function, as `with_conn!` sees its callers.
        let name = std::any::type_name_of_val(&here);
        assert_eq!(
            operation_of(name),
            "index_operations_are_named_after_the_calling_method"
        );
        let closure = || {
            fn here() {}
            std::any::type_name_of_val(&here)
        };
        let in_closure = closure();
        assert_eq!(
            operation_of(in_closure),
            "index_operations_are_named_after_the_calling_method"
        );
        assert_eq!(operation_of("here"), "unknown");
    }

    #[test]
    fn metric_names_are_documented_for_operators() {
        let readme = include_str!("../../README.md");
        for name in ALL {
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} is not listed in the README"
            );
        }
    }
}
