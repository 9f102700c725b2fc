//! The HTTP server: app state, middleware, the listening socket, and what is
//! written and removed once it has stopped.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::config::Config;
use crate::http;
use crate::service::tenants::Tenants;

use super::backends::{build_services, index_options};
use super::exposure::check_exposure;
use super::shutdown::{stop_on_signal, Shutdown};
use super::sovereignty::enforce_sovereignty;

/// Runs the HTTP server until SIGTERM or SIGINT, then stops accepting connections
/// and lets in-flight requests finish for up to `server.shutdown_timeout_secs`
/// (see [`stop_on_signal`]).
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is created: the embedded defaults are for loopback only.
    let exposure = check_exposure(&config).context("kastell refuses to start")?;
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
    // The webhook subscriptions, checked before any backend is opened: a secret file that
    // cannot be read stops the server before the index is created or migrated.
    super::events::webhook_sinks(&config)?;
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
        crate::audit::ChainKey::load_or_create(&services.index, services.store.keys().masters())?;
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
            Ok(0) => tracing::info!("orphan sweep: nothing left behind"),
            Ok(removed) => {
                tracing::info!(removed, "removed blobs left behind by interrupted uploads")
            }
            Err(error) => tracing::warn!(%error, "the orphan sweep failed"),
        }
    });
    let events = super::events::start(&config, tenants.clone(), &audit)?;
    super::lifecycle::start(&config, tenants.clone(), audit.clone());
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
        events,
        changefeed_max_page: config.events.max_page,
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
    // Tenants nobody asked for lately lose their unwrapped keys, requests or not.
    let ring = store.keys().clone();
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            ring.evict_idle();
        }
    });
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
    // The unwrapped tenant keys are zeroed now, not whenever the allocator
    // reuses their memory.
    store.keys().clear();
    tracing::info!("kastell stopped");
    Ok(())
}
