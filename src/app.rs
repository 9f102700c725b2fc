//! Builds the concrete backends from the configuration and runs the server.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::index::{Index, IndexOptions};
use crate::service::{ServiceSettings, Services};
use crate::store::{BlobStore, WriteOptions};

/// Opens the index and the blob store named by the configuration.
pub fn build_services(config: &Config) -> anyhow::Result<Services> {
    let index_url = config.effective_index_url();
    let index = Index::open(
        &index_url,
        IndexOptions {
            pool_size: config.index.pool_size,
            busy_timeout: Duration::from_millis(config.index.busy_timeout_ms),
            acquire_timeout: Duration::from_millis(config.index.acquire_timeout_ms),
        },
    )
    .with_context(|| {
        format!(
            "opening the index at {}",
            crate::config::redact_url(&index_url)
        )
    })?;
    let blob_url = config.effective_blob_url();
    let store = BlobStore::from_url(
        &blob_url,
        WriteOptions {
            part_bytes: config.storage.upload_part_bytes,
            concurrency: config.storage.upload_concurrency,
        },
    )
    .with_context(|| {
        format!(
            "opening the blob store at {}",
            crate::config::redact_url(&blob_url)
        )
    })?;
    Ok(Services {
        index,
        store,
        settings: Arc::new(ServiceSettings {
            max_header_bytes: config.storage.max_header_bytes,
            overwrite_existing: config.dicomweb.overwrite_existing,
            qido_max_results: config.dicomweb.qido_max_results as u64,
            orphan_grace: Duration::from_secs(config.storage.orphan_grace_secs),
        }),
    })
}

/// Runs the HTTP server until SIGINT/SIGTERM, then lets in-flight requests finish.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let services = build_services(&config)?;
    if config.storage.blob_url.is_empty() {
        tracing::warn!(
            data_dir = %config.storage.data_dir.display(),
            "running on the embedded defaults: SQLite index and local blob files under the data directory"
        );
    }
    let sweeper = services.clone();
    tokio::spawn(async move {
        match sweeper.sweep_orphans().await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, "removed blobs left behind by interrupted uploads")
            }
            Err(error) => tracing::warn!(%error, "the orphan sweep failed"),
        }
    });
    let state = AppState {
        services,
        path_prefix: config.dicomweb.path_prefix.clone(),
        public_base_url: config.dicomweb.public_base_url.clone(),
        max_request_bytes: config.server.max_request_bytes,
        warning_agent: config.dicomweb.warning_agent.clone(),
    };
    let prefix = config.dicomweb.path_prefix.clone();
    let data = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(
                actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms")
                    .log_target("kastell::access"),
            )
            .configure(|c| http::configure(c, &prefix))
            .default_service(web::to(http::not_found))
    })
    .shutdown_timeout(config.server.shutdown_timeout_secs)
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
    server.run().await.context("running the HTTP server")
}
