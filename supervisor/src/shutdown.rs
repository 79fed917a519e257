//! Shutdown signals: SIGTERM and SIGINT cancel one [`CancellationToken`] that everything
//! long-running watches.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT. Returns at once if the handlers cannot be
/// installed (the error is logged and the token stays usable for other triggers).
pub fn cancel_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install SIGTERM/SIGINT handlers");
            return;
        }
    };
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = token.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down");
        token.cancel();
    });
}
