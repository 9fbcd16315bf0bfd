//! The operator on the test control plane as the Helm chart installs it: the chart is
//! rendered by Helm's own engine, its ServiceAccount, RBAC and Lease are applied, and the
//! operator runs with a token of that ServiceAccount — never as an admin — so every test
//! also proves the chart's RBAC is enough (and the audit log shows what it is used for).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};

pub use crate::helpers::kubectl;
use crate::helpers::wait_for;
use hartslag::k8s::crd::Heartbeat;
use k8s_openapi::api::core::v1::{Namespace, Secret};

pub const NEEDS_CLUSTER: &str = "needs a Kubernetes cluster: run tests/run-all.sh (starts one), or set KUBECONFIG and pass --include-ignored";

/// The tests share one API server and one of them pauses it: they run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client with the test's own (admin) credentials.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = std::env::var("KUBECONFIG")
        .unwrap_or_else(|_| panic!("KUBECONFIG is not set: {NEEDS_CLUSTER}"));
    assert!(
        Path::new(&path).exists(),
        "KUBECONFIG {path} does not exist: {NEEDS_CLUSTER}"
    );
    let config = Config::infer().await.expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Runs kubectl (as admin); its output, or what it said on failure.
pub fn kubectl_try(args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The test control plane's run directory (see tests/cluster/README.md).
pub fn cluster_run() -> PathBuf {
    PathBuf::from(
        std::env::var("HARTSLAG_CLUSTER_RUN").unwrap_or_else(|_| "/tmp/hartslag-cluster".into()),
    )
}

/// Applies the CRDs and creates a fresh namespace named `prefix-<random>`.
pub async fn prepare(prefix: &str) -> (Client, String) {
    let client = client().await;
    let root = env!("CARGO_MANIFEST_DIR");
    // --validate=false: kubectl checks the CRD against the server's own schema, and servers
    // older than 1.25 do not know x-kubernetes-validations (they drop the rules).
    kubectl(&[
        "apply",
        "--validate=false",
        "-f",
        &format!("{root}/crds/hartslag.dev.yaml"),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/applications.hartslag.dev",
        "crd/heartbeats.hartslag.dev",
        "crd/alertchannels.hartslag.dev",
        "crd/clusteralertchannels.hartslag.dev",
        "--timeout=60s",
    ]);
    let ns = format!("{prefix}-{}", random(8));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    (client, ns)
}

fn random(n: usize) -> String {
    hartslag::core::token::random_id()
        .unwrap()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(n)
        .collect()
}

/// Deletes a test namespace. The operator puts no finalizer on its resources, but a test
/// may leave one (such as the one earlier versions put on them) where no operator runs any
/// more to take it off: finalizers are taken off first, or the namespace would stay
/// Terminating for good and keep the namespace controller busy.
pub fn teardown(namespace: &str) {
    for kind in ["heartbeats.hartslag.dev", "applications.hartslag.dev"] {
        let names = kubectl_try(&["get", kind, "-n", namespace, "-o", "name"]).unwrap_or_default();
        for name in names.lines().filter(|l| !l.is_empty()) {
            let _ = kubectl_try(&[
                "patch",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
    let _ = kubectl_try(&["delete", "namespace", namespace, "--wait=false"]);
}

/// What the chart installs for one release, without the Deployment: the ServiceAccount,
/// its RBAC and the Lease. Cluster-scoped objects are removed on drop.
pub struct Install {
    /// The release namespace.
    pub namespace: String,
    /// `<release>-hartslag`: the ServiceAccount, the Lease and the Roles.
    pub fullname: String,
    /// A kubeconfig with a token of the ServiceAccount.
    pub kubeconfig: PathBuf,
    /// The ServiceAccount's user name, as the audit log records it.
    pub user: String,
    /// The namespaces it watches.
    pub watched: Vec<String>,
    cluster_objects: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Kinds a test installs from the rendered chart (the Deployment is the test's own process).
const INSTALLED: [&str; 6] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "Lease",
];

impl Install {
    /// Installs a release in `namespace` that watches `watched`.
    pub fn new(namespace: &str, watched: &[&str]) -> Self {
        let release = format!("e2e-{}", random(6));
        let values = json!({"scope": {"clusterWide": false, "namespaces": watched}});
        Self::with_values(namespace, &release, values)
    }

    /// Installs release `release` with chart values `values`.
    pub fn with_values(namespace: &str, release: &str, values: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rendered = dir.path().join("rendered.yaml");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart/render.py");
        let out = Command::new("python3")
            .args([script, release, namespace, &values.to_string()])
            .arg(&rendered)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "rendering the chart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&rendered).unwrap();
        let mut keep = Vec::new();
        let mut cluster_objects = Vec::new();
        for doc in text.split("\n---\n") {
            let kind = doc
                .lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .unwrap_or_default()
                .trim()
                .to_string();
            if !INSTALLED.contains(&kind.as_str()) {
                continue;
            }
            if kind.starts_with("Cluster") {
                let name = doc
                    .lines()
                    .skip_while(|l| !l.starts_with("metadata:"))
                    .find_map(|l| l.trim().strip_prefix("name: "))
                    .unwrap_or_default();
                cluster_objects.push(format!("{}/{name}", kind.to_lowercase()));
            }
            keep.push(doc.to_string());
        }
        let objects = dir.path().join("objects.yaml");
        std::fs::write(&objects, keep.join("\n---\n")).unwrap();
        kubectl(&["apply", "-f", objects.to_str().unwrap()]);
        let fullname = format!("{release}-hartslag");
        let token = kubectl(&[
            "create",
            "token",
            &fullname,
            "-n",
            namespace,
            "--duration=24h",
        ]);
        let admin: Value = serde_json::from_str(&kubectl(&[
            "config", "view", "--raw", "--minify", "-o", "json",
        ]))
        .unwrap();
        let cluster = admin["clusters"][0]["cluster"].clone();
        let kubeconfig = dir.path().join("kubeconfig");
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": fullname, "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "test", "user": fullname, "namespace": namespace}}],
            "current-context": "sa",
        });
        std::fs::write(&kubeconfig, config.to_string()).unwrap();
        let watched = values["scope"]["namespaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            watched,
            namespace: namespace.into(),
            user: format!("system:serviceaccount:{namespace}:{fullname}"),
            fullname,
            kubeconfig,
            cluster_objects,
            _dir: dir,
        }
    }

    /// The Secret holding the dashboard admin token.
    pub fn admin_secret(&self) -> String {
        format!("{}-admin", self.fullname)
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        for o in &self.cluster_objects {
            let _ = kubectl_try(&["delete", o, "--ignore-not-found"]);
        }
    }
}

/// What the operator logs once its caches are complete and it removed what vanished.
const SETTLED: &str = "removed what vanished while the operator was down";

/// The operator as a child process, authenticated as an [`Install`]'s ServiceAccount.
pub struct Operator {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its log file.
    pub log: PathBuf,
    /// How often [`SETTLED`] was in the log (shared by restarts on one port) before it.
    settled_before: usize,
}

impl Operator {
    /// Starts the operator and waits until it is ready.
    pub async fn start(install: &Install, data: &Path, smtp: &str, port: u16) -> Self {
        let op = Self::spawn(install, data, smtp, port, &[]);
        op.wait_ready(Duration::from_secs(60)).await;
        op
    }

    /// Starts the operator without waiting; `extra` flags come last.
    pub fn spawn(install: &Install, data: &Path, smtp: &str, port: u16, extra: &[&str]) -> Self {
        let base = format!("http://127.0.0.1:{port}");
        // Outside the test's temporary directory, so it is still there when a test failed.
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("{}-{port}.log", install.namespace));
        let settled_before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(SETTLED)
            .count();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // Test timing, unless `extra` sets it otherwise.
        let defaults = [
            ("--min-interval", "1s"),
            ("--alert-retry-base", "1s"),
            ("--status-period", "1s"),
        ];
        let timing: Vec<&str> = defaults
            .iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [*flag, *value])
            .collect();
        // On the PostgreSQL lane, a database per data directory, unless `extra` names one.
        let database = crate::helpers::backend_args(data)
            .into_iter()
            .filter(|_| !extra.iter().any(|a| a.starts_with("--database-url")));
        let child = Command::new(env!("CARGO_BIN_EXE_hartslag"))
            .args(["operator", "--namespaces"])
            .arg(install.watched.join(","))
            .arg("--data")
            .arg(data)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--external-url",
                &base,
                "--smtp-url",
                smtp,
                "--admin-namespace",
                &install.namespace,
                "--admin-secret",
                &install.admin_secret(),
                "--lease-namespace",
                &install.namespace,
                "--lease-name",
                &install.fullname,
                // Test receivers listen on loopback.
                "--allow-private-webhooks",
            ])
            .args(timing)
            .args(database)
            .args(extra)
            .env("KUBECONFIG", &install.kubeconfig)
            .env(
                "HARTSLAG_LOG",
                std::env::var("HARTSLAG_E2E_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            base,
            log,
            settled_before,
        }
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.base))
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let log = self.log.clone();
        wait_for(
            &format!("the operator to be ready (log: {})", log.display()),
            within,
            || async { self.ready().await.then_some(()) },
        )
        .await;
    }

    /// Waits until it leads with complete watch caches and has removed what vanished while
    /// no operator ran (it logs so). On sled an operator is ready only then; on PostgreSQL
    /// it is ready at once, as a follower, and gets there once the Lease is its own (after
    /// a SIGKILL, once the dead holder's Lease has expired).
    pub async fn wait_settled(&self) {
        let log = self.log.clone();
        wait_for(
            &format!("the operator to lead and settle (log: {})", log.display()),
            Duration::from_secs(90),
            || async {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let settled = text.matches(SETTLED).count() > self.settled_before;
                let leads = crate::helpers::metric(&self.base, "hartslag_leader").await;
                (settled && leads == Some(1.0)).then_some(())
            },
        )
        .await;
    }

    /// Kills it at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it as Kubernetes would (SIGTERM) and waits for it to exit; returns whether it
    /// exited successfully.
    pub fn terminate(mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Sends SIGTERM, as the kubelet does, without waiting.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// Waits up to `within` for the process to exit; its exit code (`None`: still
    /// running, or killed by a signal).
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A key of a Secret, as text.
pub async fn secret_value(api: &Api<Secret>, name: &str, key: &str) -> Option<String> {
    let s = api.get_opt(name).await.ok()??;
    let b = s.data?.get(key)?.0.clone();
    String::from_utf8(b).ok()
}

/// A Heartbeat's status as JSON.
pub async fn hb_status(api: &Api<Heartbeat>, name: &str) -> Option<Value> {
    let hb = api.get_opt(name).await.ok()??;
    serde_json::to_value(hb.status?).ok()
}

/// How many Events with `reason` the namespace holds.
pub async fn events_with_reason(client: &Client, ns: &str, reason: &str) -> usize {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .count()
        })
        .unwrap_or(0)
}

/// The usual start of a test: the cluster to itself (tests run one at a time), a fresh
/// namespace with the chart's RBAC for it, an SMTP sink and a ready operator.
pub struct Scenario {
    /// Admin client.
    pub client: Client,
    /// The test's namespace (also the release namespace).
    pub ns: String,
    /// The chart's objects for it.
    pub install: Install,
    /// The operator, as the install's ServiceAccount.
    pub op: Operator,
    /// Heartbeats in `ns`.
    pub hbs: Api<Heartbeat>,
    /// Applications in `ns`.
    pub apps: Api<hartslag::k8s::crd::Application>,
    /// Secrets in `ns`.
    pub secrets: Api<Secret>,
    /// Alert email.
    pub sink: crate::helpers::SmtpSink,
    /// The operator's data directory.
    pub data: PathBuf,
    /// The operator's port.
    pub port: u16,
    _dir: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Scenario {
    /// Sets it all up in namespace `prefix-<random>`.
    pub async fn start(prefix: &str) -> Self {
        let serial = SERIAL.lock().await;
        let (client, ns) = prepare(prefix).await;
        let dir = tempfile::tempdir().unwrap();
        let sink = crate::helpers::SmtpSink::start(dir.path()).await;
        let install = Install::new(&ns, &[&ns]);
        let data = dir.path().join("data");
        let port = crate::helpers::free_port();
        let op = Operator::start(&install, &data, &sink.url(), port).await;
        op.wait_settled().await;
        Self {
            hbs: Api::namespaced(client.clone(), &ns),
            apps: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            install,
            op,
            sink,
            data,
            port,
            _dir: dir,
            _serial: serial,
        }
    }
}

impl Scenario {
    /// Kills the operator (SIGKILL) and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        self.op.kill();
        self.op = Operator::start(&self.install, &self.data, &self.sink.url(), self.port).await;
        self.op.wait_settled().await;
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // The operator goes first, so that it does not race the namespace's deletion.
        self.op.kill();
        teardown(&self.ns);
    }
}

/// One request as the API server's audit log recorded it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `get`, `list`, `watch`, `create`, `patch`, `update`, `delete`.
    pub verb: String,
    /// `heartbeats`, `secrets`, `leases`, ...
    pub resource: String,
    /// `status`, `finalizers`, or empty.
    pub subresource: String,
    /// The request URI.
    pub uri: String,
}

/// The requests `user` sent that the API server received at or after `since`, one per
/// request (a watch logs twice: when it starts and when it ends).
pub fn requests(user: &str, since: jiff::Timestamp) -> Vec<Request> {
    let path = cluster_run().join("logs/audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "audit log {}: {e} (is the test control plane up?)",
            path.display()
        )
    });
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["user"]["username"] != user {
            continue;
        }
        let Some(at) = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let id = e["auditID"].as_str().unwrap_or_default().to_string();
        if at < since || !seen.insert(id) {
            continue;
        }
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        out.push(Request {
            verb: s(&e["verb"]),
            resource: s(&e["objectRef"]["resource"]),
            subresource: s(&e["objectRef"]["subresource"]),
            uri: s(&e["requestURI"]),
        });
    }
    out
}

/// Status writes among `requests`.
pub fn status_writes(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| r.subresource == "status" && r.verb != "get")
        .collect()
}

/// Pauses the API server (SIGSTOP of the local control plane's process, or `docker pause`
/// of a kind node) until the returned guard is dropped.
pub struct ApiServerPause(Box<dyn FnMut()>);

impl ApiServerPause {
    pub fn start() -> Self {
        let pidfile = cluster_run().join("kube-apiserver.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let pid = pid.trim().to_string();
            assert!(
                Command::new("kill")
                    .args(["-STOP", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            return Self(Box::new(move || {
                let _ = Command::new("kill").args(["-CONT", &pid]).status();
            }));
        }
        let node = format!(
            "{}-control-plane",
            std::env::var("HARTSLAG_CLUSTER_KIND_NAME").unwrap_or_else(|_| "hartslag".into())
        );
        let paused = Command::new("docker")
            .args(["pause", &node])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            paused,
            "cannot pause the API server: no {} and no kind node {node}",
            pidfile.display()
        );
        Self(Box::new(move || {
            let _ = Command::new("docker").args(["unpause", &node]).status();
        }))
    }
}

impl Drop for ApiServerPause {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Applies `yaml` in namespace `ns` with kubectl (as admin).
pub fn apply(ns: &str, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("o.yaml");
    std::fs::write(&f, yaml).unwrap();
    kubectl(&["apply", "-n", ns, "-f", f.to_str().unwrap()]);
}

/// The condition of `type` in a status.
pub fn condition(status: &Value, ty: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

/// Waits (up to `within`) until the Heartbeat's status satisfies `check`; returns it.
pub async fn status_where(
    hbs: &Api<Heartbeat>,
    name: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("{name}: {what}"), within, || async {
        hb_status(hbs, name).await.filter(|s| check(s))
    })
    .await
}
