//! Connections: TLS through rustls (ring, the process's one TLS stack) verified against the
//! system's roots, and the pool every query takes its connection from.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{DatabaseUrl, PgError};

/// How long a connection may take to open, and a request may wait for one: a database
/// that cannot be reached turns into a 503 within this, not a request that hangs.
pub(super) const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// Connections per process: the ingest task holds one at a time, queries and retention
/// share the rest.
const POOL_SIZE: usize = 16;

/// The TLS connector, used when the URL's `sslmode` asks for TLS (`prefer`, the default,
/// tries it; `require` insists; `disable` skips it). The server's certificate is verified
/// against the system's roots (`SSL_CERT_FILE` or `SSL_CERT_DIR` add a private CA).
pub(super) fn tls() -> Result<MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the store cannot parse is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The pool over `url`'s database. Connections open lazily; a broken one (the server
/// restarted) is dropped when it is next taken, so the service resumes by itself.
pub(super) fn pool(url: &DatabaseUrl, tls: MakeRustlsConnect) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        tuned(url),
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_WITHIN))
        .wait_timeout(Some(CONNECT_WITHIN))
        .recycle_timeout(Some(CONNECT_WITHIN))
        .build()
        .map_err(|e| PgError::Connect {
            url: url.to_string(),
            detail: url.redact(&e.to_string()),
        })
}

/// `url`'s configuration with the timeouts a server process needs: a connect timeout, and
/// TCP keepalives so a database host that vanished is noticed on an idle connection.
pub(super) fn tuned(url: &DatabaseUrl) -> tokio_postgres::Config {
    let mut config = url.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_WITHIN);
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("hartslag");
    }
    // A process stalled inside a transaction (a pause, SIGSTOP) would hold its locks, the
    // leader row's share lock among them, for as long as it stalls: a take-over would wait
    // that long. The server ends such a session instead.
    if config.get_options().is_none() {
        config.options(IDLE_IN_TRANSACTION);
    }
    config
}

/// Longest a transaction may sit idle (no statement running) before the server ends it;
/// every transaction of the store is a few statements sent back to back.
const IDLE_IN_TRANSACTION: &str = "-c idle_in_transaction_session_timeout=10000";
