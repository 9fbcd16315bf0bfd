//! The command line as an operator meets it: a wrong flag, variable or directory gets one
//! line naming the problem and a non-zero exit, before anything is written; and a
//! manifests directory that went missing does not revoke every token.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{
    ChildServer, app_manifest, backend_args, binary, exchange, heartbeat_manifest, read_token,
};

/// Runs `hartslag` with `args` (and `env`), expecting it to stop by itself within 30 s; one
/// that keeps running (it started when it should have refused) is killed and fails the
/// test.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("HARTSLAG_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hartslag {args:?} kept running instead of refusing:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts `hartslag standalone` on `manifests` and `data` with `extra`, on loopback.
fn standalone<'a>(manifests: &'a Path, data: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = ["standalone", "--listen", "127.0.0.1:0", "--manifests"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(manifests.display().to_string());
    args.push("--data".into());
    args.push(data.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(backend_args(data));
    args
}

#[test]
fn wrong_flags_and_variables_are_refused_in_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = (dir.path().join("m"), dir.path().join("data"));
    std::fs::create_dir(&m).unwrap();
    /// Flags, variables, and what the refusal says.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--listen", "localhost:8080"],
            vec![],
            "is not an IP address and port",
        ),
        (
            vec!["--external-url", "not a url"],
            vec![],
            "is not an http:// or https:// URL with a host",
        ),
        (
            vec!["--external-url", "https://"],
            vec![],
            "is not an http:// or https:// URL with a host",
        ),
        (
            vec!["--allow-private-webhooks", "--refuse-private-webhooks"],
            vec![],
            "contradict each other",
        ),
        (
            vec!["--allow-private-webhooks"],
            vec![("HARTSLAG_REFUSE_PRIVATE_WEBHOOKS", "true")],
            "contradict each other",
        ),
        (
            vec!["--webhook-url", "http://127.0.0.1:8080/hook"],
            vec![],
            "--webhook-url (HARTSLAG_WEBHOOK_URL): host 127.0.0.1 is loopback: alerts are not sent there unless --webhook-allowed-cidrs covers it or --allow-private-webhooks is set",
        ),
        (
            vec!["--installation", " "],
            vec![],
            "is not an installation name",
        ),
        (
            vec![],
            vec![("HARTSLAG_INSTALLATION", "team\na")],
            "is not an installation name",
        ),
        (
            vec![],
            vec![("HARTSLAG_LOG", "hartslag=loud")],
            "HARTSLAG_LOG \"hartslag=loud\" is not a log filter",
        ),
    ];
    for (extra, env, says) in cases {
        let m_path = m.display().to_string();
        let data_path = data.display().to_string();
        let mut args = vec!["standalone", "--manifests", &m_path, "--data", &data_path];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend(extra.iter().copied());
        let out = run(&args, &env);
        let err = stderr(&out);
        assert!(!out.status.success(), "{extra:?} {env:?} started");
        assert!(err.contains(says), "{extra:?} {env:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!data.exists(), "{extra:?} {env:?} made the data directory");
        if env.is_empty() {
            assert!(!err.contains("environment variable"), "{extra:?}: {err}");
        }
    }
    // A bad value from a variable names the variable, not only the flag nobody typed.
    let (m_path, data_path) = (m.display().to_string(), data.display().to_string());
    let out = run(
        &["standalone", "--manifests", &m_path, "--data", &data_path],
        &[("HARTSLAG_LISTEN", "localhost:8080")],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "a bad HARTSLAG_LISTEN started");
    assert!(
        err.contains("is not an IP address and port")
            && err.contains("the environment variable HARTSLAG_LISTEN"),
        "{err}"
    );
    // A variable set to false is no contradiction: the start goes on to the next check
    // (here the manifests directory, which does not exist).
    let missing = dir.path().join("nosuch").display().to_string();
    let data_path = data.display().to_string();
    let out = run(
        &[
            "standalone",
            "--manifests",
            &missing,
            "--data",
            &data_path,
            "--listen",
            "127.0.0.1:0",
            "--allow-private-webhooks",
            "--external-url",
            "HTTPS://hb.example.com",
        ],
        &[("HARTSLAG_REFUSE_PRIVATE_WEBHOOKS", "false")],
    );
    let err = stderr(&out);
    // ... nor is a scheme in capitals a wrong URL.
    assert!(err.contains("cannot read the manifests directory"), "{err}");
    // `crd --help` names every definition it prints.
    let help = String::from_utf8_lossy(&run(&["crd", "--help"], &[]).stdout).into_owned();
    assert!(
        help.contains("AlertChannel") && help.contains("ClusterAlertChannel"),
        "{help}"
    );
}

#[test]
fn a_missing_manifests_directory_is_named_and_leaves_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = (dir.path().join("nosuch"), dir.path().join("data"));
    let args = standalone(&m, &data, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read the manifests directory") && err.contains("nosuch"),
        "{err}"
    );
    assert!(!data.exists(), "a data directory was made: {err}");
}

#[test]
fn a_broken_reference_is_refused_naming_the_file_and_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = (dir.path().join("m"), dir.path().join("data"));
    std::fs::create_dir(&m).unwrap();
    let head = "apiVersion: hartslag.dev/v1alpha1\n";
    std::fs::write(
        m.join("jobs.yaml"),
        format!("{head}kind: Heartbeat\nmetadata:\n  name: a\n  namespace: team-a\nspec:\n  applicationRef:\n    name: nope\n"),
    )
    .unwrap();
    let args = standalone(&m, &data, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("jobs.yaml: Heartbeat a: spec.applicationRef names Application \"nope\", which is not defined in namespace team-a"),
        "{err}"
    );
    std::fs::remove_file(m.join("jobs.yaml")).unwrap();
    std::fs::write(
        m.join("apps.yaml"),
        format!(
            "{head}kind: Application\nmetadata:\n  name: shop\nspec:\n  tokenFile: nope.token\n"
        ),
    )
    .unwrap();
    let out = run(&args, &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("apps.yaml: Application shop: token file") && err.contains("nope.token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_manifests_directory_does_not_revoke_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = (dir.path().join("m"), dir.path().join("data"));
    std::fs::create_dir(&m).unwrap();
    std::fs::write(
        m.join("hb.yaml"),
        heartbeat_manifest("backup", "1h", "5m", ""),
    )
    .unwrap();
    let mut server = ChildServer::start(&m, &data, &[]).await;
    let token = read_token(&data, "heartbeat", "backup");
    assert!(server.terminate(Duration::from_secs(30)).is_some());

    // The volume did not mount: the directory is there, without a manifest in it.
    std::fs::remove_file(m.join("hb.yaml")).unwrap();
    let args = standalone(&m, &data, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, &[]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "started with an empty manifests directory"
    );
    assert!(
        err.contains("holds no .yaml file, but 0 Application(s) and 1 Heartbeat(s)"),
        "{err}"
    );
    assert_eq!(
        read_token(&data, "heartbeat", "backup"),
        token,
        "the token file is kept"
    );

    // Removing them all on purpose: an empty manifest file says so.
    std::fs::write(m.join("none.yaml"), "").unwrap();
    let mut server = ChildServer::start(&m, &data, &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while data.join("tokens/heartbeat-backup.token").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Heartbeat removed on purpose kept its token file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.terminate(Duration::from_secs(30)).is_some());
}

/// `hartslag standalone` with one Application, `shop`, in a temporary directory (`m/` the
/// manifests, `data/` the data directory).
struct Shop {
    server: ChildServer,
    token: String,
    /// `127.0.0.1:PORT`, for raw sockets.
    addr: String,
}

impl Shop {
    async fn start(extra: &[&str]) -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().unwrap();
        let (m, data) = (dir.path().join("m"), dir.path().join("data"));
        std::fs::create_dir(&m).unwrap();
        std::fs::write(m.join("app.yaml"), app_manifest("shop", "UTC")).unwrap();
        let server = ChildServer::start(&m, &data, extra).await;
        let token = read_token(&data, "application", "shop");
        let addr = server.base.trim_start_matches("http://").to_string();
        (
            dir,
            Self {
                server,
                token,
                addr,
            },
        )
    }
}

/// SIGTERM to `pid`, as the kubelet sends it.
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_while_a_request_holds_the_first_one_up() {
    use std::io::Write;
    let (_dir, mut shop) = Shop::start(&["--shutdown-grace", "60s"]).await;
    let (server, token, addr) = (&mut shop.server, &shop.token, &shop.addr);
    // A request whose body never ends: a graceful stop waits for it up to the grace.
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"event\":"
    );
    held.write_all(head.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.child.id();
    let signal = || sigterm(pid);
    // The first signal, delivered twice at once (an init forwarding a terminal's Ctrl-C
    // that the process got too): one signal, so the drain goes on.
    signal();
    signal();
    // Still serving its last request after the first signal, as it should.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "stopped before the grace: {}",
        server.log_text()
    );
    let sent = Instant::now();
    signal();
    let deadline = sent + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a second signal did not stop it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130), "{}", server.log_text());
    assert!(
        server
            .log_text()
            .contains("a second signal: stopping at once")
    );
    drop(held);
}

#[tokio::test]
async fn a_shutdown_delay_serves_on_not_ready_closing_each_connection_then_stops() {
    let (dir, mut shop) = Shop::start(&["--shutdown-delay", "4s"]).await;
    let (server, token, addr) = (&mut shop.server, &shop.token, &shop.addr);
    let ready = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    let event = |id: &str| {
        let body = format!(r#"{{"event":"order-{id}"}}"#);
        format!(
            "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // A client's keep-alive connection from before the signal.
    let mut kept = std::net::TcpStream::connect(addr).unwrap();
    let (status, headers, closed) = exchange(&mut kept, ready);
    assert_eq!(status, 200);
    assert!(!closed && !headers.contains(&"connection: close".to_string()));

    let signalled = Instant::now();
    sigterm(server.child.id());
    // Not ready at once, and still accepting: a load balancer that has not yet heard of
    // the stop gets answers, not refused connections.
    let deadline = signalled + Duration::from_secs(3);
    loop {
        let mut conn = std::net::TcpStream::connect(addr).expect("refused during the delay");
        let (status, _, _) = exchange(
            &mut conn,
            &ready.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
        );
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after the signal"
        );
    }
    // Writes are still taken, on the old connection and on a new one; each answer closes
    // its connection, so the client's next request goes where the Service sends it.
    let (status, headers, closed) = exchange(&mut kept, &event("kept"));
    assert_eq!(status, 201, "{headers:?}");
    assert!(
        headers.contains(&"connection: close".to_string()),
        "{headers:?}"
    );
    assert!(closed, "the kept connection stayed open during the drain");
    let mut fresh = std::net::TcpStream::connect(addr).expect("refused during the delay");
    let (status, headers, closed) = exchange(&mut fresh, &event("fresh"));
    assert_eq!(status, 201, "{headers:?}");
    assert!(closed && headers.contains(&"connection: close".to_string()));
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "the checks above took longer than the delay, so they proved nothing"
    );

    let deadline = signalled + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after the signal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{}", server.log_text());
    assert!(
        signalled.elapsed() >= Duration::from_secs(4),
        "stopped before the delay was over"
    );
    assert!(server.log_text().contains("not ready; still serving"));

    // Both events answered during the delay are stored.
    let (m, data) = (dir.path().join("m"), dir.path().join("data"));
    let server = ChildServer::start(&m, &data, &[]).await;
    let stats = crate::helpers::get_json(&format!("{}/api/v1/stats", server.base), token).await;
    assert_eq!(stats["total"]["count"], 2, "{stats}");
}

#[tokio::test]
async fn a_stop_the_process_decides_on_itself_does_not_wait_for_the_shutdown_delay() {
    use crate::helpers::InProcess;
    // A lost Lease or a deposed leader stops the server without a signal: no load balancer
    // was told, and the controllers must stop at once, so the delay does not apply.
    let server = InProcess::start_with(&[("app.yaml", app_manifest("shop", "UTC"))], |c| {
        c.http.shutdown_delay = Duration::from_secs(60);
    })
    .await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("a stop without a signal waited for the 60 s shutdown delay");
    assert!(started.elapsed() < Duration::from_secs(20));
}
