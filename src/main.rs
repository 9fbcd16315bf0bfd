//! The `hartslag` command line: parses flags and environment, then hands over to the
//! library. Nothing else lives here.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hartslag::config::ServerConfig;

#[derive(Parser)]
#[command(
    name = "hartslag",
    version,
    about = "Kubernetes-native heartbeat service: event tracking and dead-man's-switch monitors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Command {
    /// Run everything without Kubernetes, from a directory of Application and Heartbeat manifests.
    Standalone {
        /// Directory of YAML manifests (apiVersion hartslag.dev/v1alpha1).
        #[arg(long, env = "HARTSLAG_MANIFESTS")]
        manifests: PathBuf,
        #[command(flatten)]
        common: Common,
    },

    /// Run the controllers and the HTTP server in a cluster (kubeconfig or in-cluster config).
    Operator {
        /// Namespaces to watch (comma-separated); all when empty.
        #[arg(long, env = "HARTSLAG_NAMESPACES", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Most status writes per second for state changes and refreshes (answers to spec
        /// changes are written at once).
        #[arg(long, env = "HARTSLAG_STATUS_RATE", default_value_t = 20)]
        status_rate: u32,
        /// How often coarse status facts (last ping, counts) are looked at; each object's
        /// are refreshed at most this often.
        #[arg(long, env = "HARTSLAG_STATUS_PERIOD", default_value = "60s")]
        status_period: hartslag::core::duration::SpecDuration,
        /// Reconciles of one kind running at once (per watched namespace): how many
        /// resources are activated in parallel.
        #[arg(long, env = "HARTSLAG_RECONCILE_CONCURRENCY", default_value_t = hartslag::k8s::operator::CONCURRENCY)]
        reconcile_concurrency: u16,
        /// Lease that keeps the operator to one running instance.
        #[arg(long, env = "HARTSLAG_LEASE_NAME", default_value = LEASE_NAME)]
        lease_name: String,
        /// Namespace of that Lease; the operator's own namespace when unset.
        #[arg(long, env = "HARTSLAG_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Secret holding the dashboard admin token (created when missing).
        #[arg(long, env = "HARTSLAG_ADMIN_SECRET", default_value = "hartslag-admin")]
        admin_secret: String,
        /// Namespace of that Secret; the operator's own namespace when unset.
        #[arg(long, env = "HARTSLAG_ADMIN_NAMESPACE")]
        admin_namespace: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Print the CustomResourceDefinitions (Application, Heartbeat, AlertChannel,
    /// ClusterAlertChannel) as YAML.
    Crd,
    /// Copy a sled data directory into PostgreSQL, with hartslag stopped. Idempotent: a
    /// second run copies what the first did not finish, and says what it copied.
    Migrate {
        /// The sled data directory (the --data of the hartslag that wrote it).
        #[arg(long = "from-sled", value_name = "DIR", env = "HARTSLAG_FROM_SLED")]
        from_sled: PathBuf,
        /// The PostgreSQL database to copy into (postgres://user:password@host:port/database);
        /// when neither the flag nor HARTSLAG_TO is set, HARTSLAG_DATABASE_URL, the server's
        /// own variable, so a Job can take the server's Secret as it is.
        // Parsed after clap, whose error would quote the value, password and all.
        #[arg(long, env = "HARTSLAG_TO", hide_env_values = true)]
        to: Option<String>,
        /// PEM file of the CA that signed the database server's certificate.
        #[arg(long, env = "HARTSLAG_DATABASE_CA_FILE")]
        database_ca_file: Option<PathBuf>,
        /// The installation the database is for, as the server started on it will name
        /// itself (--installation): a database that belongs to another installation is
        /// refused, and one that belongs to none yet is recorded as this one's. Default: the
        /// server's, `standalone`, or in a Kubernetes pod the operator's
        /// `<lease-namespace>/<lease-name>` (HARTSLAG_LEASE_NAMESPACE, else the pod's
        /// namespace; HARTSLAG_LEASE_NAME, else `hartslag`).
        #[arg(long, env = "HARTSLAG_INSTALLATION", value_parser = installation)]
        installation: Option<String>,
    },
}

/// The operator's Lease when `--lease-name` is not given.
const LEASE_NAME: &str = "hartslag";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct Common {
    /// Address of the HTTP server: an IP address and a port.
    #[arg(long, env = "HARTSLAG_LISTEN", default_value = "0.0.0.0:8080", value_parser = listen_address)]
    listen: SocketAddr,
    /// Data directory: the sled store, and in standalone mode the token files (`tokens/`),
    /// which stay here with --database-url too (keep it across a move to PostgreSQL).
    #[arg(long, env = "HARTSLAG_DATA", default_value = "./hartslag-data")]
    data: PathBuf,
    /// PostgreSQL for everything: events, applications, the token index, monitors, ping
    /// history and the alert outbox
    /// (postgres://user:password@host:port/database?sslmode=require), shared by every
    /// replica; schema migrations run at start, and --data holds only the standalone token
    /// files. Unset: everything in --data.
    // Parsed after clap, whose error would quote the value, password and all.
    #[arg(long, env = "HARTSLAG_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PEM file of the CA that signed the database server's certificate, trusted for the
    /// database beside the system's roots (CloudNativePG: its `<cluster>-ca` Secret's ca.crt).
    #[arg(long, env = "HARTSLAG_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// The name of this installation, which the database (--database-url) records: a
    /// replica of another installation refuses to start on it rather than remove this
    /// one's objects. Default: `standalone`, or the operator's Lease as
    /// `<lease-namespace>/<lease-name>`.
    #[arg(long, env = "HARTSLAG_INSTALLATION", value_parser = installation)]
    installation: Option<String>,
    /// Base URL written into issued ping URLs, http:// or https:// (default http://<listen>).
    #[arg(long, env = "HARTSLAG_EXTERNAL_URL", value_parser = external_url)]
    external_url: Option<String>,
    /// SMTP server for alert email: smtp://[user:pass@]host[:port], smtps://..., smtp://...?tls=starttls.
    #[arg(long, env = "HARTSLAG_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender address of alert email.
    #[arg(long, env = "HARTSLAG_MAIL_FROM", default_value = "hartslag@localhost")]
    mail_from: String,
    /// Default alert webhook for monitors that name none.
    #[arg(long, env = "HARTSLAG_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Log format.
    #[arg(long, env = "HARTSLAG_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "HARTSLAG_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// sled page cache in MiB.
    #[arg(long, env = "HARTSLAG_CACHE_MB", default_value_t = 32)]
    cache_mb: u64,
    /// Pings kept per monitor.
    #[arg(long, env = "HARTSLAG_PING_HISTORY", default_value_t = 1000)]
    ping_history: usize,
    /// Shortest accepted Heartbeat interval; lower it only for development and tests.
    #[arg(long, env = "HARTSLAG_MIN_INTERVAL", default_value = "60s")]
    min_interval: hartslag::core::duration::SpecDuration,
    /// First delay before an alert delivery is retried (doubles per attempt, up to 10m).
    #[arg(long, env = "HARTSLAG_ALERT_RETRY_BASE", default_value = "2s")]
    alert_retry_base: hartslag::core::duration::SpecDuration,
    /// Let alert webhooks reach any address: loopback, link-local and private ones too
    /// (tests, trusted on-prem networks).
    #[arg(long, env = "HARTSLAG_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
    /// Also refuse webhooks to private ranges (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// fc00::/7); loopback and link-local are always refused.
    #[arg(long, env = "HARTSLAG_REFUSE_PRIVATE_WEBHOOKS")]
    refuse_private_webhooks: bool,
    /// Address ranges webhooks may reach whatever they are (comma-separated CIDRs or
    /// addresses), such as an in-cluster receiver.
    #[arg(long, env = "HARTSLAG_WEBHOOK_ALLOWED_CIDRS", value_delimiter = ',', value_parser = cidr)]
    webhook_allowed_cidrs: Vec<ipnet::IpNet>,
    /// Proxies whose X-Forwarded-For header is believed (comma-separated CIDRs or
    /// addresses); other clients are recorded by their own address.
    #[arg(long, env = "HARTSLAG_TRUSTED_PROXIES", value_delimiter = ',', value_parser = cidr)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Most alert deliveries in flight at once (each target gets one at a time).
    #[arg(long, env = "HARTSLAG_ALERT_CONCURRENCY", default_value_t = 16)]
    alert_concurrency: usize,
    /// A monitor that raises more notices than this within --alert-flapping-window is
    /// flapping: one "flapping" notice, then its notices wait until it is stable.
    #[arg(long, env = "HARTSLAG_ALERT_FLAPPING_NOTICES", default_value_t = 6)]
    alert_flapping_notices: u32,
    /// The window of the flapping rule, and how long a flapping monitor must be quiet.
    #[arg(long, env = "HARTSLAG_ALERT_FLAPPING_WINDOW", default_value = "30m")]
    alert_flapping_window: hartslag::core::duration::SpecDuration,
    /// Most notices per alert target (email recipients, webhook URL) per hour; 0 is no cap.
    #[arg(long, env = "HARTSLAG_ALERT_TARGET_HOURLY_CAP", default_value_t = 100)]
    alert_target_hourly_cap: u32,
    /// Longest wait for a request's headers, from when the server is ready for them; also
    /// how long an idle keep-alive connection stays open.
    #[arg(long, env = "HARTSLAG_HTTP_HEADER_TIMEOUT", default_value = "10s")]
    http_header_timeout: hartslag::core::duration::SpecDuration,
    /// Longest time to receive a request body (408 after it).
    #[arg(long, env = "HARTSLAG_HTTP_BODY_TIMEOUT", default_value = "30s")]
    http_body_timeout: hartslag::core::duration::SpecDuration,
    /// Longest an answer may wait for its client to take more of it: past it the
    /// connection is closed, and an export to a client that stopped reading ends.
    #[arg(long, env = "HARTSLAG_HTTP_WRITE_TIMEOUT", default_value = "60s")]
    http_write_timeout: hartslag::core::duration::SpecDuration,
    /// Most HTTP connections open at once; further clients wait until one closes.
    #[arg(long, env = "HARTSLAG_HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    http_max_connections: usize,
    /// Most Heartbeats an Application may create through the management API, unless its
    /// spec.limits.heartbeats says otherwise.
    #[arg(long, env = "HARTSLAG_MAX_HEARTBEATS", default_value_t = 1000)]
    max_heartbeats: u32,
    /// Most distinct event names per Application, unless its spec.limits.eventNames says
    /// otherwise.
    #[arg(long, env = "HARTSLAG_MAX_EVENT_NAMES", default_value_t = 10_000)]
    max_event_names: u32,
    /// Events per second an Application's token may send, sustained (0: no limit), unless
    /// its spec.limits.ingestRate says otherwise.
    #[arg(long, env = "HARTSLAG_INGEST_RATE", default_value_t = 2000)]
    ingest_rate: u32,
    /// Events an Application's token may send at once above that rate, unless its
    /// spec.limits.ingestBurst says otherwise.
    #[arg(long, env = "HARTSLAG_INGEST_BURST", default_value_t = 10_000)]
    ingest_burst: u32,
    /// Stats and CSV export requests per Application running at once (one more gets 429
    /// with Retry-After), unless its spec.limits.concurrentReads says otherwise.
    #[arg(long, env = "HARTSLAG_MAX_CONCURRENT_READS", default_value_t = 2)]
    max_concurrent_reads: u32,
    /// Stats and CSV export requests running at once over every Application together (one
    /// more gets 503 with Retry-After): many tenants each within their own limit still
    /// leave cores and database connections to ingest.
    #[arg(long, env = "HARTSLAG_MAX_CONCURRENT_READS_TOTAL", default_value_t = hartslag::http::reads::DEFAULT_MAX_TOTAL)]
    max_concurrent_reads_total: u32,
    /// Event names per Application that get their own `hartslag_events_total` series on
    /// /metrics (the most frequent since start; bounds the series a tenant can create).
    #[arg(long, env = "HARTSLAG_METRICS_TOP_EVENTS", default_value_t = hartslag::core::ingest::counts::DEFAULT_TOP_EVENTS)]
    metrics_top_events: usize,
    /// How long a shutdown waits for requests in flight.
    #[arg(long, env = "HARTSLAG_SHUTDOWN_GRACE", default_value = "20s")]
    shutdown_grace: hartslag::core::duration::SpecDuration,
    /// How long, after the first signal, the server goes on accepting with /readyz at 503
    /// and every answer closing its connection, so that load balancers stop sending
    /// requests here before it stops accepting (rolling updates of several replicas).
    #[arg(long, env = "HARTSLAG_SHUTDOWN_DELAY", default_value = "0s")]
    shutdown_delay: hartslag::core::duration::SpecDuration,
}

impl Common {
    fn config(&self) -> Result<ServerConfig, Box<dyn std::error::Error>> {
        // Checked here, not by clap: clap counts a variable set to `false` as given.
        if self.allow_private_webhooks && self.refuse_private_webhooks {
            return Err("--allow-private-webhooks and --refuse-private-webhooks (or their variables) contradict each other: set one".into());
        }
        let mut c = ServerConfig::new(self.listen, self.data.clone());
        if let Some(u) = &self.external_url {
            c.external_url = u.trim_end_matches('/').to_string();
        }
        c.smtp_url = self.smtp_url.clone().filter(|s| !s.is_empty());
        c.mail_from = self.mail_from.clone();
        c.webhook_url = self.webhook_url.clone().filter(|s| !s.is_empty());
        c.max_body_bytes = self.max_body_bytes;
        c.cache_bytes = self.cache_mb.saturating_mul(1024 * 1024);
        c.ping_history = self.ping_history;
        c.min_interval = self.min_interval;
        c.outbox.base_delay =
            std::time::Duration::from_secs(self.alert_retry_base.as_secs().max(1));
        c.webhooks = hartslag::notify::guard::AddressPolicy {
            allow_all: self.allow_private_webhooks,
            refuse_private: self.refuse_private_webhooks,
            allowed: self.webhook_allowed_cidrs.clone(),
        };
        // A default webhook whose every delivery would be refused stops the start.
        if let Some(url) = &c.webhook_url {
            c.webhooks
                .check_url(url)
                .map_err(|e| format!("--webhook-url (HARTSLAG_WEBHOOK_URL): {e}"))?;
        }
        c.trusted_proxies = self.trusted_proxies.clone();
        c.metrics_top_events = self.metrics_top_events;
        c.database_url = match self.database_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Some(with_ca(url.parse()?, &self.database_ca_file)),
            _ => None,
        };
        c.installation = self.installation.clone();
        c.outbox.concurrency = self.alert_concurrency.max(1);
        c.outbox.policy = hartslag::core::alert::policy::PolicyConfig {
            flapping_notices: self.alert_flapping_notices,
            flapping_window: secs(self.alert_flapping_window),
            hourly_cap: self.alert_target_hourly_cap,
        };
        c.limits = hartslag::core::limits::LimitDefaults {
            heartbeats: self.max_heartbeats,
            event_names: self.max_event_names.max(1),
            ingest_rate: self.ingest_rate,
            ingest_burst: self.ingest_burst.max(1),
            concurrent_reads: self.max_concurrent_reads.max(1),
        };
        c.http = hartslag::http::HttpLimits {
            header_timeout: secs(self.http_header_timeout),
            body_timeout: secs(self.http_body_timeout),
            write_timeout: secs(self.http_write_timeout),
            max_connections: self.http_max_connections.max(1),
            max_concurrent_reads_total: self.max_concurrent_reads_total.max(1),
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace.as_secs()),
            shutdown_delay: std::time::Duration::from_secs(self.shutdown_delay.as_secs()),
        };
        Ok(c)
    }

    fn init_logs(&self) -> Result<(), String> {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(log_filter("info")?)
            .with_ansi(colour())
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
        if self.external_url.is_none() && self.listen.ip().is_unspecified() {
            tracing::warn!(
                listen = %self.listen,
                "no --external-url: issued ping URLs name http://{}, which no other host can reach; set --external-url to the address clients use",
                self.listen
            );
        }
        Ok(())
    }
}

/// `url` trusting the CA file `ca`, when one is given.
fn with_ca(
    url: hartslag::core::store_pg::DatabaseUrl,
    ca: &Option<PathBuf>,
) -> hartslag::core::store_pg::DatabaseUrl {
    match ca {
        Some(ca) if !ca.as_os_str().is_empty() => url.with_ca_file(ca.clone()),
        _ => url,
    }
}

/// The log filter from `HARTSLAG_LOG`, else `default`; a filter that does not parse is an
/// error, not a silent fall back to the default.
fn log_filter(default: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    match std::env::var("HARTSLAG_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&v)
            .map_err(|e| format!("HARTSLAG_LOG {v:?} is not a log filter ({e}); write it like info, debug or hartslag=debug,info")),
        _ => Ok(tracing_subscriber::EnvFilter::new(default)),
    }
}

/// Colour in text logs only on a terminal, and never with `NO_COLOR`: escape codes in a
/// log file or a pipe are noise.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `--listen`: an IP address and a port (a host name would need a lookup, and could name
/// several addresses).
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("{text:?} is not an IP address and port, such as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080")
    })
}

/// `--external-url`: an http(s) URL with a host, which every ping URL starts with.
fn external_url(text: &str) -> Result<String, String> {
    let t = text.trim();
    // The scheme in any case (`HTTPS://` is one too); the rest as given.
    let scheme = t.find("://").map_or(0, |i| i + 3);
    let rest = match t.get(..scheme).map(str::to_ascii_lowercase).as_deref() {
        Some("http://" | "https://") => t.get(scheme..),
        _ => None,
    };
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !t.contains(char::is_whitespace) =>
        {
            Ok(t.to_string())
        }
        _ => Err(format!(
            "{text:?} is not an http:// or https:// URL with a host, such as https://hartslag.example.com"
        )),
    }
}

/// `--installation`: a name people recognise in an error, at most 253 characters (a
/// Kubernetes namespace and name fit), without control characters.
fn installation(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > 253 || t.chars().any(char::is_control) {
        return Err(format!(
            "{text:?} is not an installation name: 1 to 253 characters without control characters, such as hartslag/hartslag or standalone"
        ));
    }
    Ok(t.to_string())
}

/// The installation `hartslag migrate` records when given none, and why: the default of
/// the server that will run on the database. Outside Kubernetes that is standalone's
/// (the operator runs in a pod); in a pod (`KUBERNETES_SERVICE_HOST`, which Kubernetes
/// sets in every container) the operator's, from its Lease's variables as a Job that
/// copies the Deployment's environment has them, or their defaults.
fn migrate_installation() -> (String, &'static str) {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("KUBERNETES_SERVICE_HOST").is_none() {
        return (
            hartslag::config::STANDALONE_INSTALLATION.to_string(),
            "standalone's default; give the server's --installation if it has one",
        );
    }
    let namespace =
        var("HARTSLAG_LEASE_NAMESPACE").unwrap_or_else(hartslag::k8s::admin::own_namespace);
    let name = var("HARTSLAG_LEASE_NAME").unwrap_or_else(|| LEASE_NAME.to_string());
    (
        hartslag::config::operator_installation(&namespace, &name),
        "in a Kubernetes pod: the operator's default, its Lease; the chart sets HARTSLAG_INSTALLATION to <namespace>/<fullname> or database.installation, give that",
    )
}

/// A CIDR range, or a single address as a range of one.
fn cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR range such as 10.0.0.0/8"))
}

/// A flag's duration, at least one second (zero would turn a timeout into "at once").
fn secs(d: hartslag::core::duration::SpecDuration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs().max(1))
}

/// The command line, or the exit code after clap printed why it is not one. A bad value
/// that came from an environment variable names the variable too: clap names only the
/// flag, and whoever set `HARTSLAG_LISTEN` in a Deployment never typed `--listen`.
fn parse_cli() -> Result<Cli, ExitCode> {
    let e = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    let code = ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    match variable_behind(&e) {
        Some(var) => {
            use std::io::{IsTerminal, Write};
            // In colour where clap's own print would colour it.
            let coloured =
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let text = match coloured {
                true => e.render().ansi().to_string(),
                false => e.render().to_string(),
            };
            let (error, rest) = text.split_once("\n\n").unwrap_or((text.trim_end(), ""));
            // Like clap's print: a closed stderr is no reason to panic.
            let _ = write!(
                std::io::stderr(),
                "{error}\n  (the value comes from the environment variable {var})\n\n{rest}"
            );
        }
        None => {
            let _ = e.print();
        }
    }
    Err(code)
}

/// The environment variable a refused value came from: the flag's variable is set and the
/// flag itself is not on the command line.
fn variable_behind(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let var = env_of(&<Cli as clap::CommandFactory>::command(), long)?;
    let flag = format!("--{long}");
    let given = std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    (!given && std::env::var_os(&var).is_some()).then_some(var)
}

/// The variable of the flag `--long` in `cmd` or any of its subcommands.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|c| env_of(c, long)))
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hartslag: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "hartslag stopped");
            eprintln!("hartslag: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Standalone { manifests, common } => {
            common.init_logs()?;
            hartslag::standalone::run(common.config()?, manifests).await?;
        }
        Command::Operator {
            namespaces,
            status_rate,
            status_period,
            reconcile_concurrency,
            lease_name,
            lease_namespace,
            admin_secret,
            admin_namespace,
            common,
        } => {
            common.init_logs()?;
            let writer = hartslag::k8s::status::WriterConfig {
                max_per_sec: status_rate.max(1),
                refresh: std::time::Duration::from_secs(status_period.as_secs().max(1)),
                // Answers to reconciles are written as fast as they come (the budget is
                // for transitions and refreshes), so as many at once as reconciles run.
                concurrency: usize::from(reconcile_concurrency.max(8)),
            };
            let namespaces = namespaces
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let own = |n: Option<String>| {
                n.filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(hartslag::k8s::admin::own_namespace)
            };
            let admin = hartslag::k8s::admin::AdminSecret {
                namespace: own(admin_namespace),
                name: admin_secret,
            };
            let config = hartslag::k8s::OperatorConfig {
                server: common.config()?,
                namespaces,
                writer,
                admin,
                lease: (own(lease_namespace), lease_name),
                concurrency: reconcile_concurrency.max(1),
            };
            hartslag::k8s::run(config).await?;
        }
        Command::Crd => {
            print!("{}", hartslag::k8s::crd::crds_yaml()?);
        }
        Command::Migrate {
            from_sled,
            to,
            database_ca_file,
            installation,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(log_filter("warn")?)
                .with_ansi(colour())
                .with_writer(std::io::stderr)
                .init();
            let Some(to) = to.or_else(|| std::env::var("HARTSLAG_DATABASE_URL").ok()) else {
                return Err("hartslag migrate needs the database to copy into: --to, HARTSLAG_TO or HARTSLAG_DATABASE_URL".into());
            };
            let to = with_ca(to.parse()?, &database_ca_file);
            let (installation, why) = match installation {
                Some(given) => (given, "--installation or HARTSLAG_INSTALLATION"),
                None => migrate_installation(),
            };
            println!(
                "copying {} into {to}, for the installation {installation:?} ({why})",
                from_sled.display()
            );
            let report = hartslag::core::migrate::from_sled(&from_sled, &to, &installation).await?;
            println!("{report}");
        }
    }
    Ok(())
}
