//! Builds the concrete backends from the configuration and runs the server.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::audit::{Action, AuditEvent, Outcome};
use crate::config::{Config, MasterKeySource};
use crate::crypto::{
    CryptoError, KeyId, KeyProvider, KeyRing, LocalMasterKey, SecretKey, TenantKeyLoader,
    TenantKeyRecord, TenantKeyState,
};
use crate::http;
use crate::index::{Index, IndexOptions};
use crate::service::tenants::Tenants;
use crate::service::{ServiceSettings, Services};
use crate::sovereignty;
use crate::store::{BlobStore, Retries, WriteOptions};

/// Tenant keys persisted in the index database.
struct IndexKeyLoader(Index);

impl TenantKeyLoader for IndexKeyLoader {
    fn load(&self, tenant: &str) -> Result<Vec<TenantKeyRecord>, CryptoError> {
        let rows = self
            .0
            .tenant_keys(tenant)
            .map_err(|e| CryptoError::KeyStore(e.to_string()))?;
        rows.into_iter()
            .map(|row| {
                Ok(TenantKeyRecord {
                    id: KeyId {
                        tenant: row.tenant,
                        version: row.version as u32,
                    },
                    state: TenantKeyState::parse(&row.state)
                        .ok_or(CryptoError::KeyStore("unknown key state".into()))?,
                    wrapped: row.wrapped_key,
                })
            })
            .collect()
    }

    fn add_active(&self, record: &TenantKeyRecord) -> Result<(), CryptoError> {
        let wrapped = record
            .wrapped
            .as_deref()
            .ok_or(CryptoError::KeyMaterial("a new key is wrapped"))?;
        self.0
            .add_active_tenant_key(&record.id.tenant, record.id.version as i64, wrapped)
            .map_err(|e| CryptoError::KeyStore(e.to_string()))
    }

    fn retire(&self, id: &KeyId) -> Result<(), CryptoError> {
        match self.0.retire_tenant_key(&id.tenant, id.version as i64) {
            Ok(true) => Ok(()),
            Ok(false) => Err(CryptoError::UnknownKey(format!(
                "{id} is not a previous key version"
            ))),
            Err(e) => Err(CryptoError::KeyStore(e.to_string())),
        }
    }

    fn shred(&self, tenant: &str) -> Result<(), CryptoError> {
        self.0
            .shred_tenant_keys(tenant)
            .map(|_| ())
            .map_err(|e| CryptoError::KeyStore(e.to_string()))
    }
}

/// Decodes key text: 32 raw bytes, or their base64 or hex form.
fn decode_key(bytes: &[u8]) -> anyhow::Result<SecretKey> {
    use base64::Engine;
    if bytes.len() == 32 {
        return Ok(SecretKey::from_bytes(bytes)?);
    }
    let text = std::str::from_utf8(bytes)
        .context("the master key is neither 32 bytes nor text")?
        .trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("the master key is not valid base64")?
    };
    SecretKey::from_bytes(&decoded).context("the master key must be 32 bytes (256 bits)")
}

/// The master key provider: configured key, key file, or (embedded default only) a
/// generated development key.
pub fn master_key(config: &Config) -> anyhow::Result<Arc<dyn KeyProvider>> {
    let path = match config.master_key_source() {
        MasterKeySource::Configured => {
            let key = decode_key(config.keys.master_key.as_bytes())?;
            return Ok(Arc::new(LocalMasterKey::new(
                &key,
                "configuration / environment",
            )));
        }
        MasterKeySource::File(path) => {
            let shared = crate::private_files::shared_mode_bits(&path)
                .with_context(|| format!("reading the master key file {}", path.display()))?;
            if shared != 0 {
                anyhow::bail!(
                    "the master key file {} is accessible to its group or to others (mode \
                     bits {shared:03o} beyond the owner's): whoever can read it can read every \
                     image. Make it readable by the service user only: \
                     `chmod 600 {}` (or 400)",
                    path.display(),
                    path.display()
                );
            }
            let bytes = std::fs::read(&path)
                .with_context(|| format!("reading the master key file {}", path.display()))?;
            let key = decode_key(&bytes)?;
            return Ok(Arc::new(LocalMasterKey::new(
                &key,
                format!("file {}", path.display()),
            )));
        }
        MasterKeySource::Missing => anyhow::bail!(
            "no master key is configured: set keys.master_key_file or KASTELL__KEYS__MASTER_KEY \
             (a generated development key is only used with the embedded local blob store)"
        ),
        MasterKeySource::Development(path) => path,
    };
    if !path.exists() {
        crate::private_files::create_dir_all(&config.storage.data_dir)?;
        let key = SecretKey::generate()?;
        crate::private_files::write_new(&path, key.expose())?;
    }
    let key = decode_key(&std::fs::read(&path)?)?;
    tracing::warn!(
        key_file = %path.display(),
        "!!! USING A GENERATED DEVELOPMENT MASTER KEY, stored next to the data it protects. \
         Anyone with this directory can read every image. Configure keys.master_key_file for real use. !!!"
    );
    Ok(Arc::new(LocalMasterKey::new(
        &key,
        format!("development key {}", path.display()),
    )))
}

/// The key ring over the index's tenant keys, with the default tenant's key made.
pub fn key_ring(config: &Config, index: &Index) -> anyhow::Result<Arc<KeyRing>> {
    let ring = Arc::new(KeyRing::new(
        master_key(config)?,
        Arc::new(IndexKeyLoader(index.clone())),
    ));
    match ring.ensure_tenant(&config.keys.default_tenant) {
        Ok(_) => {}
        // A shredded tenant stays shredded: serve 410 for its data, store nothing new.
        Err(CryptoError::Shredded(_)) => tracing::warn!(
            tenant = %config.keys.default_tenant,
            "the keys of this tenant were shredded: its images answer 410 Gone and nothing new can be stored"
        ),
        Err(error) => {
            return Err(anyhow::Error::new(error)).with_context(|| {
                format!("preparing the key of tenant {}", config.keys.default_tenant)
            })
        }
    }
    Ok(ring)
}

fn index_options(pool_size: u32, config: &Config) -> IndexOptions {
    IndexOptions {
        pool_size,
        busy_timeout: Duration::from_millis(config.index.busy_timeout_ms),
        acquire_timeout: Duration::from_millis(config.index.acquire_timeout_ms),
        statement_timeout: Duration::from_millis(config.index.statement_timeout_ms),
    }
}

/// Every tenant over the configured backends (for the CLI: small pools).
pub fn build_tenants(config: &Config) -> anyhow::Result<Tenants> {
    Ok(Tenants::new(
        build_services(config)?,
        &config.keys.default_tenant,
        &config.effective_index_url(),
        index_options(2, config),
    ))
}

/// Registers a tenant: its entry in the control index, its key-encryption key and
/// its own index. `false` when it was registered already (nothing changes).
pub fn add_tenant(config: &Config, name: &str, display_name: &str) -> anyhow::Result<bool> {
    if name == config.keys.default_tenant {
        anyhow::bail!("{name} is the default tenant; it always exists");
    }
    let control = open_index(config)?;
    let added = control.add_tenant(name, display_name)?;
    let ring = KeyRing::new(
        master_key(config)?,
        Arc::new(IndexKeyLoader(control.clone())),
    );
    ring.ensure_tenant(name)
        .with_context(|| format!("making the key of tenant {name}"))?;
    Index::open_tenant(
        &config.effective_index_url(),
        name,
        index_options(2, config),
    )
    .with_context(|| format!("creating the index of tenant {name}"))?;
    Ok(added)
}

/// Opens the index and the blob store named by the configuration (the default
/// tenant's services; other tenants are reached through [`Tenants`]).
pub fn build_services(config: &Config) -> anyhow::Result<Services> {
    // The embedded index and blobs live in the data directory: only the service
    // user may enter it (0700 when Kastell creates it, whatever the umask).
    if config.storage.blob_url.is_empty() || config.index.url.is_empty() {
        crate::private_files::create_dir_all(&config.storage.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                config.storage.data_dir.display()
            )
        })?;
    }
    let index_url = config.effective_index_url();
    let index = Index::open(&index_url, index_options(config.index.pool_size, config))
        .with_context(|| {
            format!(
                "opening the index at {}",
                crate::config::redact_url(&index_url)
            )
        })?;
    let keys = key_ring(config, &index)?;
    let blob_url = config.effective_blob_url();
    let options = config.storage.blob_option_pairs();
    let store = BlobStore::from_url(
        &blob_url,
        &options,
        WriteOptions {
            part_bytes: config.storage.upload_part_bytes,
            concurrency: config.storage.upload_concurrency,
        },
        blob_retries(config),
        keys,
        &config.keys.default_tenant,
    )
    .with_context(|| {
        format!(
            "opening the blob store at {}",
            crate::config::redact_url(&blob_url)
        )
    })?;
    crate::dicom::guard::ParseLimits::install(config.limits.parse_limits());
    Ok(Services {
        index,
        store,
        settings: Arc::new(ServiceSettings {
            max_header_bytes: config.storage.max_header_bytes,
            overwrite_existing: config.dicomweb.overwrite_existing,
            qido_max_results: config.dicomweb.qido_max_results as u64,
            orphan_grace: Duration::from_secs(config.storage.orphan_grace_secs),
            limits: config.limits.clone(),
            decoding: crate::service::DecodingBudget::new(
                config.limits.max_decoding_bytes,
                config.limits.retry_after_secs,
            ),
        }),
    })
}

/// How a cloud blob store retries failed requests (`storage.blob_*retr*`).
fn blob_retries(config: &Config) -> Retries {
    Retries {
        max_retries: config.storage.blob_max_retries,
        timeout: Duration::from_millis(config.storage.blob_retry_timeout_ms),
    }
}

/// What the backends' libraries read from the environment to pick their endpoints
/// (object_store's `AWS_*` / `AZURE_*` variables and emulator URL, libpq's `PGHOST`),
/// so that the pure sovereignty check sees the endpoints the backends will use.
fn sovereignty_environment() -> sovereignty::Environment {
    sovereignty::Environment {
        blob_settings: crate::store::environment_settings(),
        azurite_url: std::env::var("AZURITE_BLOB_STORAGE_URL").ok(),
        pg_host: std::env::var("PGHOST").ok(),
    }
}

/// The sovereignty report of this configuration in this environment, violations
/// included (`kastell sovereignty report`).
pub fn sovereignty_report(config: &Config) -> sovereignty::Report {
    sovereignty::assess(config, &sovereignty_environment())
}

/// Holds the configuration to the jurisdiction policy: logs what is undeclared but
/// allowed, and refuses with every violation at once.
pub fn enforce_sovereignty(config: &Config) -> Result<sovereignty::Report, sovereignty::Refusal> {
    let report = sovereignty_report(config);
    let host = report
        .backend(sovereignty::BackendKind::Server)
        .name
        .clone();
    for warning in &report.warnings {
        if warning.backend == host {
            // The embedded default runs here: say it at every start, like the
            // development key, so that nobody mistakes it for a declared setup.
            tracing::warn!(
                "!!! THE LOCATION OF THIS HOST IS UNDECLARED: {}. \
                 `kastell sovereignty report` shows the control chain. !!!",
                warning.message
            );
        } else {
            tracing::warn!(backend = %warning.backend, "{}", warning.message);
        }
    }
    report.into_result().map_err(sovereignty::Refusal)
}

/// Runs the HTTP server until SIGTERM or SIGINT, then stops accepting connections
/// and lets in-flight requests finish for up to `server.shutdown_timeout_secs`
/// (see [`stop_on_signal`]).
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is created: the embedded defaults are for loopback only.
    let exposure = config
        .check_exposure()
        .context("kastell refuses to start")?;
    for risk in exposure {
        tracing::warn!(
            listen = %config.server.listen,
            "!!! INSECURE EXPOSURE ALLOWED (server.allow_insecure_exposure): {risk} !!!"
        );
    }
    // Before any backend is opened: a configuration that breaks the jurisdiction
    // policy must not create, migrate or write to anything.
    let report = enforce_sovereignty(&config).context("kastell refuses to start")?;
    let sovereignty_report =
        Arc::new(serde_json::to_value(&report).context("rendering the sovereignty report")?);
    let services = build_services(&config)?;
    // Built now so that a bad JWKS file or URL stops the server at start.
    let authenticator = crate::auth::Authenticator::new(&config.auth, services.index.clone())
        .context("setting up authentication")?;
    if let Err(error) = authenticator.warm_up().await {
        tracing::warn!(%error, "the identity provider's keys could not be fetched yet; retrying on demand");
    }
    if let Some(warning) = crate::auth::anonymous_warning(&config.auth) {
        tracing::warn!("{warning}");
    }
    if config.storage.blob_url.is_empty() {
        tracing::warn!(
            data_dir = %config.storage.data_dir.display(),
            "running on the embedded defaults: SQLite index and local blob files under the data directory"
        );
    }
    // The audit trail lives in the control index, whatever the tenant.
    // With the master key the services already hold: loading it again would
    // read (or warn about) it twice.
    let chain_key =
        crate::audit::ChainKey::load_or_create(&services.index, services.store.keys().provider())?;
    let audit = crate::audit::AuditLog::start(services.index.clone(), chain_key);
    let tenants = Arc::new(Tenants::new(
        services,
        &config.keys.default_tenant,
        &config.effective_index_url(),
        index_options(config.index.pool_size, &config),
    ));
    // Every tenant's store is a view of this one and shares its list of blobs
    // waiting for deletion.
    let store = tenants.default_services().store.clone();
    let sweeper = tenants.clone();
    tokio::spawn(async move {
        match sweeper.sweep_orphans().await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, "removed blobs left behind by interrupted uploads")
            }
            Err(error) => tracing::warn!(%error, "the orphan sweep failed"),
        }
    });
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let site = http::Site {
        tenants,
        path_prefix: config.dicomweb.path_prefix.clone(),
        wado_uri_path: config.dicomweb.wado_uri_path.clone(),
        public_base_url: config.dicomweb.public_base_url.clone(),
        max_request_bytes: config.server.max_request_bytes,
        warning_agent: config.dicomweb.warning_agent.clone(),
        sovereignty_report,
        authenticator,
        audit: audit.clone(),
        draining: draining.clone(),
        trusted_proxies: crate::config::proxies::TrustedProxies::parse(
            &config.server.trusted_proxies,
        )
        .map_err(anyhow::Error::msg)
        .context("server.trusted_proxies")?,
        client_address_header: config.server.client_address_header,
    };
    let prefix = config.dicomweb.path_prefix.clone();
    let wado_uri_path = config.dicomweb.wado_uri_path.clone();
    let origins = config.server.cors_allowed_origins.clone();
    let data = web::Data::new(site);
    let shield = web::Data::new(http::shield::Shield::new(config.limits.clone()));
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(shield.clone())
            .wrap(actix_web::middleware::from_fn(http::tenancy::resolve))
            .wrap(http::cors(&origins))
            .wrap(actix_web::middleware::from_fn(http::shield::protect))
            // Outermost: refused and preflight requests are counted and traced too.
            .wrap(actix_web::middleware::from_fn(http::telemetry::observe))
            .configure(|c| http::configure(c, &prefix, &wado_uri_path))
            .default_service(web::to(http::not_found))
    })
    .shutdown_timeout(config.server.shutdown_timeout_secs)
    // Slow clients (slowloris) cannot hold a connection open without sending.
    .client_request_timeout(Duration::from_secs(config.limits.header_timeout_secs))
    .keep_alive(Duration::from_secs(config.limits.keep_alive_secs))
    // Signals are ours (stop_on_signal): actix would stop at once on SIGINT.
    .disable_signals()
    // Streamed multipart answers end in small writes; without NODELAY, Nagle and the
    // client's delayed ACK add ~40 ms to every retrieve on a kept-alive connection.
    .tcp_nodelay(true)
    .bind(config.server.listen)
    .with_context(|| format!("binding {}", config.server.listen))?;
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    tracing::info!(
        listen = %config.server.listen,
        dicomweb = %config.dicomweb.path_prefix,
        "kastell is serving"
    );
    let server = server.run();
    let (forced_tx, forced_rx) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(stop_on_signal(
        server.handle(),
        Shutdown {
            drain_delay: Duration::from_secs(config.server.drain_delay_secs),
            timeout_secs: config.server.shutdown_timeout_secs,
            draining,
        },
        forced_tx,
    ));
    let forced = tokio::select! {
        served = server => {
            served.context("running the HTTP server")?;
            None
        }
        // A dropped sender (the graceful stop completed) disables this branch.
        Ok(exit_code) = forced_rx => Some(exit_code),
    };
    // Every answered request is in the audit writer: write what it still holds,
    // with the counts of refusals not recorded one by one, on the forced path
    // too (acknowledged work must leave its record).
    match tokio::time::timeout(Duration::from_secs(30), audit.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "AUDIT EVENTS NOT WRITTEN AT SHUTDOWN"),
        Err(_) => tracing::error!(
            "AUDIT EVENTS NOT WRITTEN AT SHUTDOWN: the index did not answer in 30 s"
        ),
    }
    if let Some(exit_code) = forced {
        // Requests may still run on the workers: do not wait for them. Nothing
        // they did is acknowledged yet; their blobs go in the next orphan sweep.
        std::process::exit(exit_code);
    }
    // Every request has ended. Blobs that drop guards of requests cut off at the
    // timeout scheduled for deletion may have died with their worker's runtime.
    let removed = store.finish_detached(Duration::from_secs(10)).await;
    if removed > 0 {
        tracing::info!(removed, "removed the blobs of unfinished requests");
    }
    tracing::info!("kastell stopped");
    Ok(())
}

/// The life cycle on signals. The first SIGTERM or SIGINT makes `/readyz` answer
/// 503, goes on serving for the drain delay (if any), then closes the listening
/// socket and gives the requests in flight up to `timeout_secs` to finish; a STOW
/// that finishes is committed and answered, one cut off at the timeout is dropped
/// with its blobs and never acknowledged (nothing is acknowledged before its index
/// transaction commits). A second signal, for an operator who will not wait, sends
/// the exit code on `forced` (128 + the signal's number) for `run` to exit at once:
/// that too loses nothing acknowledged, and leaves any half-written blobs to the
/// next start's orphan sweep.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    shutdown: Shutdown,
    forced: tokio::sync::oneshot::Sender<i32>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot listen for SIGTERM and SIGINT; stop the server with SIGKILL");
            return;
        }
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    shutdown
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let second = async {
        tokio::select! {
            _ = term.recv() => ("SIGTERM", 128 + 15),
            _ = int.recv() => ("SIGINT", 128 + 2),
        }
    };
    tokio::pin!(second);
    if !shutdown.drain_delay.is_zero() {
        tracing::info!(
            signal = first,
            drain_delay_secs = shutdown.drain_delay.as_secs(),
            "draining: /readyz answers 503 while requests are still served"
        );
        tokio::select! {
            () = tokio::time::sleep(shutdown.drain_delay) => {}
            second = &mut second => return exit_at_once(second, forced),
        }
    }
    tracing::info!(
        signal = first,
        timeout_secs = shutdown.timeout_secs,
        "shutting down: no new connections, in-flight requests may finish"
    );
    let stopped = server.stop(true);
    let second = tokio::select! {
        () = stopped => return,
        second = &mut second => second,
    };
    exit_at_once(second, forced);
}

/// What the life cycle on signals needs of the configuration.
struct Shutdown {
    drain_delay: Duration,
    timeout_secs: u64,
    /// Set at the first signal (read by `/readyz`).
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The second signal: the process exits now with 128 + its number.
fn exit_at_once(second: (&str, i32), forced: tokio::sync::oneshot::Sender<i32>) {
    tracing::warn!(
        signal = second.0,
        "second signal: exiting without waiting for in-flight requests"
    );
    let _ = forced.send(second.1);
}

/// What `kastell keys rotate` did.
#[derive(Debug)]
pub struct RotationReport {
    pub new_key: KeyId,
    pub rewrapped: usize,
    pub already_current: usize,
    pub failed: Vec<(String, String)>,
}

/// Makes a new tenant key version and re-wraps the data key of every object of the
/// tenant under it (new headers, the same encrypted segments). Audited.
pub async fn rotate_tenant_key(config: &Config, tenant: &str) -> anyhow::Result<RotationReport> {
    let tenants = build_tenants(config)?;
    // The audit trail, like the keys, lives in the control index.
    let control = tenants.default_services().clone();
    let result = async {
        let services = tenants.get(tenant).await?;
        rotate_with(&services, &control, tenant).await
    }
    .await;
    let event = match &result {
        Ok(report) => {
            let (outcome, status) = if report.failed.is_empty() {
                (Outcome::Success, 0)
            } else {
                (Outcome::Failure, 1)
            };
            AuditEvent::cli(tenant, Action::KeyRotate, outcome)
                .status(status)
                .detail(format!(
                    "new key {}; {} data keys re-wrapped, {} already current, {} failed",
                    report.new_key,
                    report.rewrapped,
                    report.already_current,
                    report.failed.len()
                ))
        }
        Err(error) => AuditEvent::cli(tenant, Action::KeyRotate, Outcome::Failure)
            .status(1)
            .detail(format!("{error:#}")),
    };
    audit_cli(config, &control.index, event, result)
}

async fn rotate_with(
    services: &Services,
    control: &Services,
    tenant: &str,
) -> anyhow::Result<RotationReport> {
    let store = services.store.for_tenant(tenant);
    let new_key = store.keys().rotate(tenant)?;
    let blobs = services.index.all_blobs()?;
    let mut report = RotationReport {
        new_key,
        rewrapped: 0,
        already_current: 0,
        failed: Vec::new(),
    };
    for (name, _) in blobs {
        let outcome = match crate::store::BlobKey::parse(&name) {
            Ok(key) => store.rewrap(&key).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(true) => report.rewrapped += 1,
            Ok(false) => report.already_current += 1,
            Err(error) => report.failed.push((name, error)),
        }
    }
    // Key events live with the keys, in the control index.
    control.index.record_key_event(
        tenant,
        "data-keys-rewrapped",
        Some(format!(
            "{} re-wrapped under {}, {} failed",
            report.rewrapped,
            report.new_key,
            report.failed.len()
        )),
    )?;
    Ok(report)
}

/// The key that seals the audit chain in the control index `index`, made on
/// first use (wrapped by the master key provider).
pub fn audit_chain_key(config: &Config, index: &Index) -> anyhow::Result<crate::audit::ChainKey> {
    let provider = master_key(config)?;
    Ok(crate::audit::ChainKey::load_or_create(index, &*provider)?)
}

/// Appends `events` to the audit trail of the control index `index` (for the
/// command line; the server goes through its `AuditLog`).
pub fn append_audit(config: &Config, index: &Index, events: &[AuditEvent]) -> anyhow::Result<()> {
    let key = audit_chain_key(config, index)?;
    crate::audit::append(index, &key, events)?;
    Ok(())
}

/// Verifies the audit trail of the control index `index`, keyed rows with the
/// installation's chain key (none made yet: every row is unkeyed).
pub fn verify_audit(
    config: &Config,
    index: &Index,
    anchor: Option<crate::audit::Anchor>,
) -> anyhow::Result<crate::audit::VerifyReport> {
    let provider = master_key(config)?;
    let key = crate::audit::ChainKey::load(index, &*provider)?;
    Ok(crate::audit::verify_anchored(index, key, anchor)?)
}

/// Appends the audit record of a command-line operation, then hands back the
/// operation's result. An operation that happened but could not be audited fails
/// the command, so the operator knows the trail lacks it.
fn audit_cli<T>(
    config: &Config,
    index: &Index,
    event: AuditEvent,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    let action = event.action;
    match (append_audit(config, index, &[event]), result) {
        (Ok(_), result) => result,
        (Err(audit), Ok(_)) => Err(audit.context(format!(
            "the {action} operation was carried out, but its audit record could not be written"
        ))),
        (Err(audit), Err(error)) => {
            tracing::error!(%audit, %action, "the audit record of a failed operation could not be written");
            Err(error)
        }
    }
}

/// Destroys a superseded key version after checking that no indexed object's header
/// still names it (a rotation re-wraps them all). Returns how many objects were
/// checked. Audited.
pub async fn retire_tenant_key(
    config: &Config,
    tenant: &str,
    version: u32,
) -> anyhow::Result<usize> {
    let tenants = build_tenants(config)?;
    let result = async {
        let services = tenants.get(tenant).await?;
        retire_with(&services, tenant, version).await
    }
    .await;
    let event = match &result {
        Ok(checked) => AuditEvent::cli(tenant, Action::KeyRetire, Outcome::Success)
            .status(0)
            .detail(format!(
                "key version {version} destroyed; {checked} objects checked"
            )),
        Err(error) => AuditEvent::cli(tenant, Action::KeyRetire, Outcome::Failure)
            .status(1)
            .detail(format!("key version {version}: {error:#}")),
    };
    audit_cli(config, &tenants.default_services().index, event, result)
}

async fn retire_with(services: &Services, tenant: &str, version: u32) -> anyhow::Result<usize> {
    let id = KeyId {
        tenant: tenant.to_string(),
        version,
    };
    let mut checked = 0;
    for (name, _) in services.index.all_blobs()? {
        let key = crate::store::BlobKey::parse(&name)?;
        if services.store.key_id_of(&key).await? == id {
            anyhow::bail!(
                "blob {name} is still encrypted under {id}; run `kastell keys rotate` first"
            );
        }
        checked += 1;
    }
    services.store.keys().retire(&id)?;
    Ok(checked)
}

/// What crypto-shredding a tenant erased.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShredReport {
    pub studies: usize,
    pub instances: usize,
}

/// Crypto-shredding, the erasure path: destroys every key of a tenant, so that
/// its objects (and every copy of them in blob backups) can never be read again,
/// then erases what the index still knew of them — the studies' attributes,
/// patient data included — keeping only their UIDs so that retrieval answers
/// 410 Gone, and removes the unreadable blobs. Running it again finishes an
/// erasure that was interrupted. Audited.
pub async fn shred_tenant(config: &Config, tenant: &str) -> anyhow::Result<ShredReport> {
    let tenants = build_tenants(config)?;
    let result = async {
        let services = tenants
            .all()
            .await?
            .into_iter()
            .find_map(|(name, services)| (name == tenant).then_some(services))
            .ok_or_else(|| anyhow::anyhow!("there is no tenant {tenant}"))?;
        services.store.keys().shred(tenant)?;
        let mut report = ShredReport::default();
        let studies = services.with_index(|index| index.study_uids()).await?;
        for study in studies {
            report.instances +=
                crate::service::delete::delete(&services, crate::index::Scope::Study { study })
                    .await?;
            report.studies += 1;
        }
        anyhow::Ok(report)
    }
    .await;
    let event = match &result {
        Ok(report) => AuditEvent::cli(tenant, Action::KeyShred, Outcome::Success)
            .status(0)
            .detail(format!(
                "every key version destroyed; {} studies ({} instances) erased from the index",
                report.studies, report.instances
            )),
        Err(error) => AuditEvent::cli(tenant, Action::KeyShred, Outcome::Failure)
            .status(1)
            .detail(format!("{error:#}")),
    };
    audit_cli(config, &tenants.default_services().index, event, result)
}

/// How long a derived object may exist before its index row: `verify` does not
/// call a younger one an orphan (a running server writes the object first).
const DERIVED_IN_FLIGHT: Duration = Duration::from_secs(60);

/// What `kastell verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub failed: Vec<(String, String)>,
    pub orphans: Vec<String>,
}

/// Decrypts every indexed blob end to end, and lists blobs no index row references.
pub async fn verify(config: &Config) -> anyhow::Result<VerifyReport> {
    use futures_util::StreamExt;
    let tenants = build_tenants(config)?;
    let mut report = VerifyReport::default();
    let mut indexed = std::collections::HashSet::new();
    for (_, services) in tenants.all().await? {
        let blobs = services.index.all_blobs()?;
        for (name, size) in blobs {
            indexed.insert(name.clone());
            report.checked += 1;
            let key = match crate::store::BlobKey::parse(&name) {
                Ok(key) => key,
                Err(e) => {
                    report.failed.push((name, e.to_string()));
                    continue;
                }
            };
            let result = async {
                let mut stream = services.store.read_stream(&key).await?;
                let mut total = 0u64;
                while let Some(chunk) = stream.next().await {
                    total += chunk?.len() as u64;
                }
                Ok::<u64, crate::store::StoreError>(total)
            }
            .await;
            match result {
                Ok(total) if total == size as u64 => {}
                Ok(total) => report
                    .failed
                    .push((name, format!("{total} bytes, the index says {size}"))),
                Err(error) => report.failed.push((name, error.to_string())),
            }
        }
    }
    let services = tenants.default_services();
    for key in services
        .store
        .keys_older_than(crate::store::BlobKind::Instance, Duration::ZERO)
        .await?
    {
        if !indexed.contains(key.as_str()) {
            report.orphans.push(key.as_str().to_string());
        }
    }
    // Derived objects are not decrypted (they are rebuilt when unreadable), but
    // one that no index records is an orphan all the same. Those younger than a
    // minute may be on their way to being recorded by a running server.
    let mut derived = std::collections::HashSet::new();
    for (_, services) in tenants.all().await? {
        derived.extend(services.index.derived_blob_keys()?);
    }
    for key in services
        .store
        .keys_older_than(crate::store::BlobKind::Derived, DERIVED_IN_FLIGHT)
        .await?
    {
        if !derived.contains(key.as_str()) {
            report.orphans.push(key.as_str().to_string());
        }
    }
    Ok(report)
}

/// The index alone (for tools that need no blob store).
pub fn open_index(config: &Config) -> anyhow::Result<Index> {
    Ok(Index::open(
        &config.effective_index_url(),
        IndexOptions {
            pool_size: 2,
            busy_timeout: Duration::from_millis(config.index.busy_timeout_ms),
            acquire_timeout: Duration::from_millis(config.index.acquire_timeout_ms),
            statement_timeout: Duration::from_millis(config.index.statement_timeout_ms),
        },
    )?)
}

/// Imports every DICOM file under `dir` into a tenant (the default one when
/// `None`), `jobs` files at a time (`kastell import`).
pub async fn import(
    config: &Config,
    dir: &std::path::Path,
    tenant: Option<&str>,
    jobs: usize,
    observer: Arc<dyn crate::ops::import::Observer>,
) -> anyhow::Result<crate::ops::import::ImportReport> {
    use crate::ops::import::{self, ImportOptions};
    use crate::service::ServiceError;
    let mut config = config.clone();
    // Each worker may hold a connection at once (a look-up, a commit).
    config.index.pool_size = config.index.pool_size.max(jobs as u32 + 1);
    let tenants = Tenants::new(
        build_services(&config)?,
        &config.keys.default_tenant,
        &config.effective_index_url(),
        index_options(config.index.pool_size, &config),
    );
    let tenant = tenant.unwrap_or(&config.keys.default_tenant);
    let services = match tenants.get(tenant).await {
        Ok(services) => services,
        Err(ServiceError::NotFound(_)) => {
            anyhow::bail!("no tenant {tenant}; `kastell tenants list` shows them")
        }
        Err(ServiceError::TenantDisabled) => anyhow::bail!(
            "tenant {tenant} is disabled; `kastell tenants enable {tenant}` to import into it"
        ),
        Err(error) => return Err(error.into()),
    };
    Ok(import::run(services, dir, &ImportOptions::with_jobs(jobs), observer).await?)
}

/// Counts and sizes per tenant and backend (`kastell stats`), from the indexes
/// alone: no key is needed and nothing is decrypted. With `list_blobs` the blob
/// store is listed too.
pub async fn stats(
    config: &Config,
    list_blobs: bool,
) -> anyhow::Result<crate::ops::stats::StatsReport> {
    use crate::index::conn::Dialect;
    use crate::ops::stats::{BlobBackend, IndexBackend, StatsReport, TenantStats};
    let control_url = config.effective_index_url();
    let control = open_index(config)?;
    let options = index_options(2, config);
    let mut indexes = vec![(
        config.keys.default_tenant.clone(),
        "active".to_string(),
        control.clone(),
    )];
    for row in control.tenants()? {
        if row.name == config.keys.default_tenant {
            continue;
        }
        let index = Index::open_tenant(&control_url, &row.name, options)
            .with_context(|| format!("opening the index of tenant {}", row.name))?;
        indexes.push((row.name, row.status, index));
    }
    let mut tenants = Vec::new();
    let mut sqlite_bytes = 0;
    for (name, status, index) in indexes {
        let stats = index.stats()?;
        if index.dialect() == Dialect::Sqlite {
            sqlite_bytes += index.database_bytes()?;
        }
        tenants.push(TenantStats {
            name,
            status,
            stats,
        });
    }
    let (database, bytes) = match control.dialect() {
        Dialect::Sqlite => ("sqlite", sqlite_bytes),
        // One database holds every tenant's schema.
        Dialect::Postgres => ("postgresql", control.database_bytes()?),
    };
    let blob_url = config.effective_blob_url();
    let listed = if list_blobs {
        let options = config.storage.blob_option_pairs();
        Some(crate::store::usage(&blob_url, &options, blob_retries(config)).await?)
    } else {
        None
    };
    Ok(StatsReport::new(
        IndexBackend {
            url: crate::config::redact_url(&control_url),
            database,
            bytes,
        },
        BlobBackend {
            url: crate::config::redact_url(&blob_url),
            listed,
        },
        tenants,
    ))
}
