//! The one cancellation token every long-running task watches.
//!
//! SIGTERM (Kubernetes stopping a pod) and SIGINT (Ctrl-C) cancel it; each loop has a
//! cancel arm and drains within its own deadline, which is shorter than the pod's
//! termination grace period.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

/// The process-wide token, cancelled on the first SIGTERM or SIGINT. Call from inside a
/// tokio runtime; later calls return clones of the same token.
pub fn on_signal() -> CancellationToken {
    static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let token = CancellationToken::new();
            let trigger = token.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown signal received");
                trigger.cancel();
            });
            token
        })
        .clone()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can still be stopped by SIGKILL; wait on
            // Ctrl-C as the portable fallback.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
