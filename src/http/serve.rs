//! Serving: the router on a listener until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;

use super::{HttpState, router};

/// Serves the APIs and the dashboard on `listener` until `shutdown` resolves; `/readyz`
/// answers ready meanwhile, while the front end's gate is open. Live dashboard streams end as shutdown begins, so open browser
/// tabs do not hold it up.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    state.serving.store(true, Ordering::Release);
    let closing = state.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.dashboard.close_streams();
        })
        .await;
    state.serving.store(false, Ordering::Release);
    served
}
