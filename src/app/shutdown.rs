//! Graceful shutdown: draining, then stopping on the first signal; exiting at once
//! on the second.

use std::sync::Arc;
use std::time::Duration;

/// The life cycle on signals. The first SIGTERM or SIGINT makes `/readyz` answer
/// 503, goes on serving for the drain delay (if any), then closes the listening
/// socket and gives the requests in flight up to `timeout_secs` to finish; a STOW
/// that finishes is committed and answered, one cut off at the timeout is dropped
/// with its blobs and never acknowledged (nothing is acknowledged before its index
/// transaction commits). A second signal, for an operator who will not wait, sends
/// the exit code on `forced` (128 + the signal's number) for `run` to exit at once:
/// that too loses nothing acknowledged, and leaves any half-written blobs to the
/// next start's orphan sweep.
pub(super) async fn stop_on_signal(
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
pub(super) struct Shutdown {
    pub drain_delay: Duration,
    pub timeout_secs: u64,
    /// Set at the first signal (read by `/readyz`).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The second signal: the process exits now with 128 + its number.
fn exit_at_once(second: (&str, i32), forced: tokio::sync::oneshot::Sender<i32>) {
    tracing::warn!(
        signal = second.0,
        "second signal: exiting without waiting for in-flight requests"
    );
    let _ = forced.send(second.1);
}
