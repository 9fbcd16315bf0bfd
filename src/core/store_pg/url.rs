//! The database URL: parsed once, shown everywhere without its password.

use std::str::FromStr;

/// A PostgreSQL connection string (`postgres://user:password@host:port/db?sslmode=...`
/// or `host=... user=...`). `Display` and `Debug` never show the password, so the URL may
/// be logged and put in errors as it is.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    /// The password as given, to blank it out of any text that might echo it.
    password: Option<String>,
    /// A PEM file of CAs the server's certificate may also be signed by.
    ca_file: Option<std::path::PathBuf>,
}

/// Why a database URL was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "not a PostgreSQL connection URL ({0}); expected postgres://user:password@host:port/database"
)]
pub struct UrlError(String);

impl FromStr for DatabaseUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let config = tokio_postgres::Config::from_str(text.trim()).map_err(|e| {
            // The parser's message may quote the part it stumbled on: never the password.
            let password = password_in(text);
            UrlError(blank(&e.to_string(), password.as_deref()))
        })?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        Ok(Self {
            config,
            password,
            ca_file: None,
        })
    }
}

/// The password of a `scheme://user:password@...` URL, found without parsing it fully (for
/// the error of a URL the parser refused).
fn password_in(text: &str) -> Option<String> {
    let rest = text.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// `text` with every occurrence of `secret` replaced by `***`.
fn blank(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

impl DatabaseUrl {
    /// The parsed configuration, to connect with.
    pub(super) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same database, its server's certificate also trusted when a CA in the PEM file
    /// `pem` signed it (a private CA, such as CloudNativePG's `<cluster>-ca`), besides the
    /// system's roots. A flag of its own rather than `SSL_CERT_FILE`, which would replace
    /// the roots every other TLS client of the process (SMTP, webhooks) trusts.
    pub fn with_ca_file(mut self, pem: std::path::PathBuf) -> Self {
        self.ca_file = Some(pem);
        self
    }

    /// The PEM file of [`Self::with_ca_file`], if one was given.
    pub(super) fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// `text` without the password, wherever it appears (an error that echoes the URL).
    pub fn redact(&self, text: &str) -> String {
        blank(text, self.password.as_deref())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("postgres://")?;
        if let Some(user) = self.config.get_user() {
            write!(f, "{user}")?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        let hosts = self.config.get_hosts();
        let ports = self.config.get_ports();
        for (i, host) in hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match host {
                tokio_postgres::config::Host::Tcp(h) => write!(f, "{h}")?,
                tokio_postgres::config::Host::Unix(p) => write!(f, "{}", p.display())?,
            }
            if let Some(port) = ports.get(i).or(ports.first()) {
                write!(f, ":{port}")?;
            }
        }
        if let Some(db) = self.config.get_dbname() {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let url: DatabaseUrl =
            "postgres://hartslag:s3cr%3Dt@db.example:6543/events?sslmode=require"
                .parse()
                .unwrap();
        let shown = url.to_string();
        assert_eq!(shown, "postgres://hartslag:***@db.example:6543/events");
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(
            url.redact("password s3cr=t was refused"),
            "password *** was refused"
        );
    }

    #[test]
    fn a_refused_url_does_not_echo_its_password() {
        let err = "postgres://u:hunter2@host:notaport/db"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn key_value_form_and_no_password() {
        let url: DatabaseUrl = "host=127.0.0.1 port=5433 user=postgres dbname=h"
            .parse()
            .unwrap();
        assert_eq!(url.to_string(), "postgres://postgres@127.0.0.1:5433/h");
    }
}
