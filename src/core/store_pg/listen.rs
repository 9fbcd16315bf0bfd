//! Notifications from the database (`LISTEN`), on a connection of their own: a pooled
//! connection is handed to whoever asks next, and a `LISTEN` lasts only as long as its
//! session.
//!
//! A notification sent while the connection is down is lost, so this only speeds readers
//! up: each reader also polls. The signal is raised once more on every (re)connection,
//! so whatever was missed while the connection was down is read at once.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DatabaseUrl;
use crate::core::storage::Signal;

/// How long to wait before connecting again after the connection failed or was lost.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Listens on `channel` for as long as the returned signal is held by anyone else than
/// the listening task, raising it on every notification.
pub(super) fn spawn(url: &DatabaseUrl, tls: MakeRustlsConnect, channel: &'static str) -> Signal {
    let signal: Signal = Arc::new(Notify::new());
    let weak = Arc::downgrade(&signal);
    let config = super::connect::tuned(url);
    let url = url.clone();
    tokio::spawn(async move {
        while weak.strong_count() > 0 {
            if let Err(e) = listen(&config, tls.clone(), channel, &weak).await {
                tracing::debug!(channel, error = %url.redact(&e), "listening for notifications");
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    });
    signal
}

/// One session: connects, listens, and raises the signal on each notification until the
/// connection ends or nobody holds the signal any more.
async fn listen(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: &'static str,
    weak: &Weak<Notify>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection carries the LISTEN's answer and the notifications; it must be polled
    // while the client waits for its answer.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let listening = client.batch_execute(&format!("LISTEN {channel}")).await;
    if let Err(e) = listening {
        driver.abort();
        return Err(e.to_string());
    }
    // Anything sent while no session listened.
    raise(weak);
    loop {
        match tokio::time::timeout(RECONNECT_AFTER, rx.recv()).await {
            Ok(Some(())) => {
                if !raise(weak) {
                    break;
                }
            }
            Ok(None) => return Err("the listening connection was lost".into()),
            // Nothing heard: is anyone still listening?
            Err(_) if weak.strong_count() == 0 => break,
            Err(_) => {}
        }
    }
    driver.abort();
    Ok(())
}

/// Raises the signal; false once nobody holds it.
fn raise(weak: &Weak<Notify>) -> bool {
    match weak.upgrade() {
        Some(signal) => {
            signal.notify_one();
            true
        }
        None => false,
    }
}
