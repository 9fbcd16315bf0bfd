//! Alert email over SMTP (lettre), configured by one URL.
//!
//! `smtp://host[:port]` (plain, port 25), `smtp://host[:port]?tls=starttls` (STARTTLS
//! required, port 587), `smtps://host[:port]` (implicit TLS, port 465), each with optional
//! `user:pass@` (percent-encoded). Credentials never appear in `Debug` output or errors.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::core::alert::DeliveryError;
use crate::core::alert::message::{Alert, Links};

/// Why an SMTP URL or sender address is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailConfigError {
    /// Not smtp:// or smtps://.
    #[error("SMTP URL must start with smtp:// or smtps:// (got {0:?})")]
    Scheme(String),
    /// No host, or a bad port.
    #[error("SMTP URL has no valid host[:port]")]
    Host,
    /// Unknown `tls=` value.
    #[error("SMTP URL option tls={0:?} is not supported; use tls=starttls")]
    Tls(String),
    /// The sender address does not parse.
    #[error("sender address {0:?} is not a valid email address")]
    From(String),
    /// lettre refused the TLS setup.
    #[error("cannot set up TLS for {host}: {detail}")]
    Setup {
        /// Host.
        host: String,
        /// Why.
        detail: String,
    },
}

/// How to reach the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Security {
    /// No TLS (local relays, test servers).
    Plain,
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

/// A parsed SMTP URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Server host name or address.
    pub host: String,
    /// Server port: given, or 25, 587 or 465 by TLS mode.
    pub port: u16,
    /// TLS mode.
    pub security: Security,
    user: Option<String>,
    pass: Option<String>,
    /// Sender address (`From`).
    pub from: String,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("auth", &self.user.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .finish()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SmtpConfig {
    /// Parses an SMTP URL and checks the sender address.
    pub fn from_url(url: &str, from: &str) -> Result<Self, EmailConfigError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| EmailConfigError::Scheme(url.chars().take(10).collect()))?;
        let implicit = match scheme {
            "smtp" => false,
            "smtps" => true,
            other => return Err(EmailConfigError::Scheme(other.to_string())),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.trim_end_matches('/');
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let security = security(implicit, query.unwrap_or(""))?;
        let (host, port) = host_and_port(hostport, security)?;
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((a, b)) => (Some(percent_decode(a)), Some(percent_decode(b))),
                None => (Some(percent_decode(u)), Some(String::new())),
            },
            None => (None, None),
        };
        from.parse::<Mailbox>()
            .map_err(|_| EmailConfigError::From(from.to_string()))?;
        Ok(Self {
            host,
            port,
            security,
            user,
            pass,
            from: from.to_string(),
        })
    }
}

/// The TLS mode: implicit for `smtps://`, STARTTLS when the query asks for it.
fn security(implicit: bool, query: &str) -> Result<Security, EmailConfigError> {
    let mut security = if implicit {
        Security::Implicit
    } else {
        Security::Plain
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("tls", "starttls")) if !implicit => security = Security::StartTls,
            Some(("tls", v)) => return Err(EmailConfigError::Tls(v.to_string())),
            _ => {}
        }
    }
    Ok(security)
}

/// The host (brackets of an IPv6 address removed) and the port, by default the one the
/// TLS mode uses.
fn host_and_port(hostport: &str, security: Security) -> Result<(String, u16), EmailConfigError> {
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(p.parse::<u16>().map_err(|_| EmailConfigError::Host)?),
        ),
        None => (hostport, None),
    };
    if host.is_empty() {
        return Err(EmailConfigError::Host);
    }
    let port = port.unwrap_or(match security {
        Security::Plain => 25,
        Security::StartTls => 587,
        Security::Implicit => 465,
    });
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Sends alert email through one SMTP server.
#[derive(Clone)]
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl std::fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSender")
            .field("server", &self.server)
            .finish()
    }
}

impl EmailSender {
    /// Builds the transport (no connection is made until the first send).
    pub fn new(config: &SmtpConfig) -> Result<Self, EmailConfigError> {
        let setup = |e: lettre::transport::smtp::Error| EmailConfigError::Setup {
            host: config.host.clone(),
            detail: e.to_string(),
        };
        let builder = match config.security {
            Security::Plain => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            }
            Security::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host).map_err(setup)?
            }
            Security::Implicit => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host).map_err(setup)?
            }
        };
        let mut builder = builder
            .port(config.port)
            .timeout(Some(Duration::from_secs(10)));
        if let (Some(u), Some(p)) = (&config.user, &config.pass) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|_| EmailConfigError::From(config.from.clone()))?;
        Ok(Self {
            transport: builder.build(),
            from,
            server: format!("{}:{}", config.host, config.port),
        })
    }

    /// Sends `alert` to `to` as one message, with `links` in its body.
    pub async fn send(
        &self,
        alert: &Alert,
        to: &[String],
        links: Links<'_>,
    ) -> Result<(), DeliveryError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(alert.subject());
        let mut any = false;
        for addr in to {
            match addr.parse::<Mailbox>() {
                Ok(m) => {
                    builder = builder.to(m);
                    any = true;
                }
                Err(_) => {
                    tracing::warn!(recipient = %addr, "skipping an invalid alert email address")
                }
            }
        }
        if !any {
            return Err(DeliveryError::Permanent(
                "no valid recipient address".into(),
            ));
        }
        let message = builder
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(alert.body(links))
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the message: {e}")))?;
        // lettre's timeout covers connecting, not a server that accepts and then stalls.
        let sent =
            tokio::time::timeout(Duration::from_secs(30), self.transport.send(message)).await;
        let Ok(sent) = sent else {
            return Err(DeliveryError::Transient(format!(
                "SMTP {}: no answer within 30 s",
                self.server
            )));
        };
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(DeliveryError::Permanent(format!(
                "SMTP {}: {e}",
                self.server
            ))),
            Err(e) => Err(DeliveryError::Transient(format!(
                "SMTP {}: {e}",
                self.server
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_url_forms() {
        let c = SmtpConfig::from_url("smtp://mail.example.com", "a@b.c").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.security),
            ("mail.example.com", 25, Security::Plain)
        );
        let c =
            SmtpConfig::from_url("smtp://u%40x:p%3Ass@mail:2525?tls=starttls", "a@b.c").unwrap();
        assert_eq!((c.port, c.security), (2525, Security::StartTls));
        assert_eq!(
            (c.user.as_deref(), c.pass.as_deref()),
            (Some("u@x"), Some("p:ss"))
        );
        let c = SmtpConfig::from_url("smtps://user:secret@smtp.example.com", "Hartslag <a@b.c>")
            .unwrap();
        assert_eq!((c.port, c.security), (465, Security::Implicit));
        assert!(!format!("{c:?}").contains("secret"));
        let c = SmtpConfig::from_url("smtp://h?tls=starttls", "a@b.c").unwrap();
        assert_eq!(c.port, 587);
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        assert!(matches!(
            SmtpConfig::from_url("http://x", "a@b.c"),
            Err(EmailConfigError::Scheme(_))
        ));
        assert!(matches!(
            SmtpConfig::from_url("smtp://", "a@b.c"),
            Err(EmailConfigError::Host)
        ));
        assert!(matches!(
            SmtpConfig::from_url("smtp://h:99999", "a@b.c"),
            Err(EmailConfigError::Host)
        ));
        assert!(matches!(
            SmtpConfig::from_url("smtp://h?tls=maybe", "a@b.c"),
            Err(EmailConfigError::Tls(_))
        ));
        assert!(matches!(
            SmtpConfig::from_url("smtp://h", "not an address"),
            Err(EmailConfigError::From(_))
        ));
    }
}
