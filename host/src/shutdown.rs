//! The stop signal shared by the host's long-running tasks: a `watch` of a flag.

use tokio::sync::watch;

/// Resolves once the flag turns true, or once its sender is gone (nobody can cancel
/// the stop any more, so the task should end too).
pub async fn requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
