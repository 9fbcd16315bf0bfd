//! Failover between real `hartslag standalone` processes on one PostgreSQL database:
//! every replica serves and is ready from the start, exactly one leads (`hartslag_leader`),
//! a leader killed with SIGKILL is replaced within 15 s, and a stalled leader (SIGSTOP)
//! is deposed by the database and, once it runs again, stops with exit code 1, and a
//! leader whose monitor round the database refused steps down for a replica that can
//! write; a leader stalled inside a delivery is sent for by its successor only once its
//! claim ran out; and many incidents falling due around a leader's SIGKILL each alert
//! exactly once.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hartslag::core::token::{Token, TokenKind};

use crate::helpers::{ChildServer, SmtpSink, app_manifest, heartbeat_manifest, metric, wait_for};

/// The bound the design promises between a leader's end and its successor's start.
const FAILOVER_WITHIN: Duration = Duration::from_secs(15);

/// A manifests directory and one data directory per replica, every one holding the same
/// tokens (as a shared Secret or token files give every replica the same ones).
pub(crate) struct Layout {
    pub _dir: tempfile::TempDir,
    manifests: PathBuf,
    data: Vec<PathBuf>,
    url: String,
}

impl Layout {
    /// `replicas` data directories over one new database; `heartbeats` are manifests.
    pub fn new(replicas: usize, heartbeats: &[String]) -> Self {
        Self::on(replicas, heartbeats, None)
    }

    /// [`Layout::new`] over the database at `url`, or a new one on the shared server.
    pub fn on(replicas: usize, heartbeats: &[String], url: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("app.yaml"), app_manifest("shop", "UTC")).unwrap();
        for (i, hb) in heartbeats.iter().enumerate() {
            std::fs::write(manifests.join(format!("hb-{i}.yaml")), hb).unwrap();
        }
        let mut tokens = vec![
            ("application-shop.token".to_string(), TokenKind::Application),
            ("admin.token".to_string(), TokenKind::Admin),
        ];
        for hb in heartbeats {
            let name = manifest_name(hb);
            tokens.push((format!("heartbeat-{name}.token"), TokenKind::Heartbeat));
        }
        let tokens: Vec<(String, String)> = tokens
            .into_iter()
            .map(|(file, kind)| (file, Token::generate(kind).unwrap().expose().to_string()))
            .collect();
        let data: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.path().join(format!("r{i}")))
            .collect();
        for d in &data {
            std::fs::create_dir_all(d.join("tokens")).unwrap();
            for (file, token) in &tokens {
                std::fs::write(d.join("tokens").join(file), token).unwrap();
            }
        }
        let url = url.unwrap_or_else(|| crate::pg::database_for(dir.path()));
        Self {
            _dir: dir,
            manifests,
            data,
            url,
        }
    }

    /// The name of the database the replicas share (on the shared server unless
    /// [`Layout::on`] was given another).
    pub fn database(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }

    /// Heartbeat `name`'s token, the same in every replica.
    pub fn heartbeat_token(&self, name: &str) -> String {
        let path = self.data[0]
            .join("tokens")
            .join(format!("heartbeat-{name}.token"));
        std::fs::read_to_string(path).unwrap().trim().to_string()
    }

    /// The manifests directory every replica reads.
    pub fn manifests(&self) -> &std::path::Path {
        &self.manifests
    }

    /// Replica `i`'s data directory.
    pub fn data(&self, i: usize) -> &std::path::Path {
        &self.data[i]
    }

    /// The URL of the database the replicas share.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token file `file` of replica `i` (`admin.token`, `application-shop.token`, ...).
    pub fn token_file(&self, i: usize, file: &str) -> PathBuf {
        self.data[i].join("tokens").join(file)
    }

    /// Starts replica `i` with `extra` arguments; it must be ready (`/readyz` 200) whether
    /// it leads or not.
    pub async fn start(&self, i: usize, extra: &[&str]) -> ChildServer {
        let mut args = vec!["--database-url", self.url.as_str()];
        args.extend_from_slice(extra);
        ChildServer::start(&self.manifests, &self.data[i], &args).await
    }
}

fn manifest_name(manifest: &str) -> String {
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("name: "))
        .unwrap()
        .trim()
        .to_string()
}

/// Whether the replica at `base` says it leads; `None` while it does not answer.
pub(crate) async fn leads(base: &str) -> Option<bool> {
    metric(base, "hartslag_leader").await.map(|v| v == 1.0)
}

/// Waits until exactly one of `replicas` leads; returns its index.
pub(crate) async fn the_leader(replicas: &[&ChildServer], within: Duration) -> usize {
    wait_for("exactly one leader", within, || async move {
        let mut leading = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            match leads(&r.base).await {
                Some(true) => leading.push(i),
                Some(false) => {}
                None => return None,
            }
        }
        (leading.len() == 1).then(|| leading[0])
    })
    .await
}

/// Sends SIGSTOP or SIGCONT to `server`.
pub(crate) fn signal(server: &ChildServer, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `server` to exit; its exit code.
pub(crate) async fn exit_code(server: &mut ChildServer, within: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            started.elapsed() < within,
            "the process did not exit within {within:?}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pings the monitor whose token is `token` through the replica at `base`; the status.
pub(crate) async fn ping(base: &str, token: &str) -> u16 {
    let url = format!("{base}/v1/heartbeats/{token}/ping");
    match reqwest::Client::new().post(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A Heartbeat that emails ops@example.com.
fn emailing(name: &str, interval: &str) -> String {
    heartbeat_manifest(
        name,
        interval,
        "0s",
        "  alerts:\n    email: [\"ops@example.com\"]\n",
    )
}

/// Waits `extra` and then asserts that `sink` holds exactly one message about `subject`.
async fn still_one(sink: &SmtpSink, subject: &str, extra: Duration) {
    tokio::time::sleep(extra).await;
    let mails = sink.with_subject(subject);
    assert_eq!(mails.len(), 1, "{} emails about {subject:?}", mails.len());
}

fn generation(text: &str) -> f64 {
    crate::helpers::metric_value(text, "hartslag_leader_generation").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_replicas_leads_and_a_killed_leader_is_replaced_within_15_seconds() {
    let layout = Layout::new(3, &[heartbeat_manifest("nightly", "1h", "5m", "")]);
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(layout.start(i, &[]).await);
    }
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let before = generation(&crate::helpers::metrics_text(&replicas[leader].base).await);
    // Followers take pings too (they relay them to the leader).
    let token = layout.heartbeat_token("nightly");
    for r in &replicas {
        let res = ping(&r.base, &token).await;
        assert_eq!(res, 200, "a ping through {}", r.base);
    }

    let killed = replicas.remove(leader);
    let log = killed.log.clone();
    killed.kill9();
    let started = Instant::now();
    let successor = the_leader(
        &replicas.iter().collect::<Vec<_>>(),
        Duration::from_secs(30),
    )
    .await;
    let took = started.elapsed();
    eprintln!("a new leader after {took:?}");
    assert!(
        took < FAILOVER_WITHIN,
        "the successor led {took:?} after the leader was killed"
    );
    let after = generation(&crate::helpers::metrics_text(&replicas[successor].base).await);
    assert!(after > before, "generation {after} after {before}");
    assert!(std::fs::read_to_string(log).unwrap().contains("leading"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_is_deposed_and_exits_1_when_it_runs_again() {
    let layout = Layout::new(2, &[]);
    let mut replicas = [layout.start(0, &[]).await, layout.start(1, &[]).await];
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let follower = 1 - leader;
    signal(&replicas[leader], "-STOP");
    let started = Instant::now();
    let follower_base = replicas[follower].base.clone();
    wait_for("the follower to lead", Duration::from_secs(30), || {
        let base = follower_base.clone();
        async move { leads(&base).await.filter(|l| *l) }
    })
    .await;
    let took = started.elapsed();
    eprintln!("the stalled leader was replaced after {took:?}");
    assert!(took < FAILOVER_WITHIN, "replaced only after {took:?}");

    signal(&replicas[leader], "-CONT");
    let code = exit_code(&mut replicas[leader], Duration::from_secs(15)).await;
    let log = replicas[leader].log_text();
    assert_eq!(code, Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("lost the leadership"), "{log}");
    // The successor keeps leading.
    assert_eq!(leads(&follower_base).await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_just_after_the_leader_is_killed_sends_one_email_from_its_successor() {
    let layout = Layout::new(3, &[emailing("payroll", "8s")]);
    let sink = SmtpSink::start(layout._dir.path()).await;
    let smtp = sink.url();
    let args = ["--smtp-url", smtp.as_str(), "--min-interval", "1s"];
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(layout.start(i, &args).await);
    }
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    // Pinged through a follower: the relay brings it to the leader; due 8 s later.
    let token = layout.heartbeat_token("payroll");
    let follower = (leader + 1) % 3;
    assert_eq!(ping(&replicas[follower].base, &token).await, 200);
    let due = Instant::now() + Duration::from_secs(8);
    // The leader has applied the ping once the monitor is Up everywhere.
    let base = replicas[follower].base.clone();
    wait_for(
        "the relayed ping to be applied",
        Duration::from_secs(5),
        || {
            let base = base.clone();
            async move {
                metric(&base, "hartslag_monitors{state=\"Up\"}")
                    .await
                    .filter(|v| *v == 1.0)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    replicas.remove(leader).kill9();
    let successor = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;

    let mails = sink
        .wait_for_mail("DOWN: payroll", Duration::from_secs(40))
        .await;
    let late = Instant::now().saturating_duration_since(due);
    eprintln!("the Down email came {late:?} after the deadline");
    assert_eq!(mails.len(), 1);
    assert!(late < FAILOVER_WITHIN, "sent {late:?} after the deadline");
    let delivered = metric(
        &replicas[successor].base,
        "hartslag_alert_deliveries_total{outcome=\"delivered\"}",
    )
    .await;
    assert_eq!(delivered, Some(1.0), "the successor did not send it");
    still_one(&sink, "DOWN: payroll", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_woken_after_its_successor_alerted_sends_nothing_and_exits_1() {
    let layout = Layout::new(2, &[emailing("ledger", "4s")]);
    let sink = SmtpSink::start(layout._dir.path()).await;
    let smtp = sink.url();
    let args = ["--smtp-url", smtp.as_str(), "--min-interval", "1s"];
    let mut replicas = [layout.start(0, &args).await, layout.start(1, &args).await];
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let follower = 1 - leader;
    let token = layout.heartbeat_token("ledger");
    assert_eq!(ping(&replicas[leader].base, &token).await, 200);
    // The deadline falls while the leader is stalled; its successor alerts once it leads.
    signal(&replicas[leader], "-STOP");
    let mails = sink
        .wait_for_mail("DOWN: ledger", Duration::from_secs(40))
        .await;
    assert_eq!(mails.len(), 1);
    assert_eq!(leads(&replicas[follower].base).await, Some(true));

    signal(&replicas[leader], "-CONT");
    let code = exit_code(&mut replicas[leader], Duration::from_secs(15)).await;
    let log = replicas[leader].log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("lost the leadership"), "{log}");
    still_one(&sink, "DOWN: ledger", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_round_the_database_refused_steps_down_and_another_leads_once_it_is_back() {
    let server = crate::pg::PgServer::start();
    let url = server.database("refused_round");
    let hb = heartbeat_manifest("nightly", "1h", "5m", "");
    let layout = Layout::on(2, &[hb], Some(url));
    let mut replicas = [layout.start(0, &[]).await, layout.start(1, &[]).await];
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let follower = 1 - leader;
    let token = layout.heartbeat_token("nightly");
    assert_eq!(ping(&replicas[leader].base, &token).await, 200);

    server.stop();
    // The leader's engine cannot store this ping's round: the client is told, and the
    // leader, whose engine stores nothing after a refused round, steps down.
    let answer = ping(&replicas[leader].base, &token).await;
    assert_eq!(answer, 503, "{}", replicas[leader].log_text());
    let code = exit_code(&mut replicas[leader], Duration::from_secs(30)).await;
    let log = replicas[leader].log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("steps down"), "{log}");

    server.resume();
    let base = replicas[follower].base.clone();
    wait_for("the other replica to lead", Duration::from_secs(30), || {
        let base = base.clone();
        async move { leads(&base).await.filter(|l| *l) }
    })
    .await;
    assert_eq!(ping(&replicas[follower].base, &token).await, 200);
    let status = crate::helpers::metrics_text(&replicas[follower].base).await;
    assert!(generation(&status) >= 2.0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_leaves_the_leader_leading_under_its_generation() {
    let server = crate::pg::PgServer::start();
    let url = server.database("restart_keeps_leader");
    let layout = Layout::on(3, &[], Some(url));
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(layout.start(i, &[]).await);
    }
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let before = generation(&crate::helpers::metrics_text(&replicas[leader].base).await);

    // The outage itself is the scenario: every session ends, the lock's included.
    server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.resume();
    let again = "holding the leader lock again";
    wait_for(
        "the leader to take its lock back",
        Duration::from_secs(30),
        || {
            let mut exited = replicas
                .iter_mut()
                .filter_map(|r| r.child.try_wait().unwrap().map(|s| (s, r.log_text())));
            if let Some((status, log)) = exited.next() {
                panic!("a replica exited ({status}) over a database restart:\n{log}");
            }
            let back = replicas[leader].log_text().contains(again);
            async move { back.then_some(()) }
        },
    )
    .await;
    let still = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    assert_eq!(still, leader, "{}", replicas[still].log_text());
    let status = crate::helpers::metrics_text(&replicas[leader].base).await;
    assert_eq!(generation(&status), before, "{status}");
    let row = server.psql(layout.database(), "SELECT generation FROM hartslag_leader");
    assert_eq!(
        row.trim(),
        format!("{before}"),
        "the leader row was taken over"
    );
    for r in &mut replicas {
        assert!(r.child.try_wait().unwrap().is_none(), "{}", r.log_text());
    }
}

/// A webhook receiver that records when each request came (and its `event`) and answers
/// it `hold` later: an attempt stays open that long.
async fn slow_receiver(
    hold: Duration,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
) {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                let event = v["event"].as_str().unwrap_or_default().to_string();
                sink.lock().unwrap().push((Instant::now(), event));
                tokio::time::sleep(hold).await;
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stalled_inside_a_delivery_is_sent_for_by_its_successor_only_once_the_claim_ran_out()
 {
    let (hook, received) = slow_receiver(Duration::from_secs(3)).await;
    let hb = heartbeat_manifest(
        "ledger",
        "4s",
        "0s",
        &format!("  alerts:\n    webhook: {hook}\n"),
    );
    let layout = Layout::new(2, &[hb]);
    let args = ["--min-interval", "1s"];
    let mut replicas = [layout.start(0, &args).await, layout.start(1, &args).await];
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let follower = 1 - leader;
    let token = layout.heartbeat_token("ledger");
    assert_eq!(ping(&replicas[leader].base, &token).await, 200);
    // The Down notice goes out; the leader stalls while its attempt is open.
    let r = received.clone();
    let first = wait_for("the leader's attempt", Duration::from_secs(30), || {
        let first = r.lock().unwrap().first().cloned();
        async move { first }
    })
    .await;
    signal(&replicas[leader], "-STOP");
    assert_eq!(first.1, "down");

    // Its successor leads within seconds, but sends only once the claim ran out. (The
    // target took the stalled attempt's request: this is the repeat the guarantee names,
    // a stall inside the send; a stall before the send would have sent nothing.)
    let r = received.clone();
    let second = wait_for("the successor's attempt", Duration::from_secs(90), || {
        let second = r.lock().unwrap().get(1).cloned();
        async move { second }
    })
    .await;
    assert_eq!(leads(&replicas[follower].base).await, Some(true));
    let gap = second.0.duration_since(first.0);
    eprintln!("the successor sent {gap:?} after the stalled leader's attempt");
    let claim = hartslag::core::storage::CLAIM_FOR;
    assert!(
        gap >= claim - Duration::from_secs(2),
        "sent {gap:?} after, within the claim"
    );
    assert_eq!(second.1, "down");

    // Woken, the deposed leader sends nothing more and exits 1.
    signal(&replicas[leader], "-CONT");
    let code = exit_code(&mut replicas[leader], Duration::from_secs(15)).await;
    assert_eq!(code, Some(1), "{}", replicas[leader].log_text());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        2,
        "{:?}",
        received.lock().unwrap()
    );
}

/// A webhook receiver with one path per monitor (`/hook/<name>`), so every monitor is a
/// target of its own (the per-target hourly cap and one-at-a-time order stay out of the
/// way). It accepts (200) only the monitors in `open`, or every one once `all_open` is
/// set, and answers 503 otherwise: a refused attempt is no delivery, and the outbox
/// retries it.
#[derive(Clone, Default)]
struct Receiver {
    open: Arc<Mutex<HashSet<String>>>,
    all_open: Arc<AtomicBool>,
    /// Every accepted delivery: the monitor (from the path) and the alert's id and event.
    accepted: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl Receiver {
    /// Serves on a loopback port; the URL prefix to append the monitor's name to.
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook/{name}",
            axum::routing::post(
                move |axum::extract::Path(name): axum::extract::Path<String>,
                      axum::Json(v): axum::Json<serde_json::Value>| {
                    let me = me.clone();
                    async move {
                        let accept = me.all_open.load(Ordering::SeqCst)
                            || me.open.lock().unwrap().contains(&name);
                        if !accept {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                        let record = (name, field("alert_id"), field("event"));
                        me.accepted.lock().unwrap().push(record);
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    /// The monitors that have at least one accepted delivery.
    fn delivered(&self) -> HashSet<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().map(|(name, _, _)| name.clone()).collect()
    }
}

/// Rows in `table` of the database `db` on the shared server.
fn rows(db: &str, table: &str) -> usize {
    let out = crate::pg::shared().psql(db, &format!("SELECT count(*) FROM {table}"));
    out.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_incidents_due_around_a_killed_leader_each_alert_exactly_once() {
    // 48 monitors pinged together, due 3 to 10 s later (six a second): a few go
    // Down and are delivered by the leader, then it is killed while the others fall due
    // (refused by the receiver before the kill, so still in the outbox; in the failover
    // window; and after it).
    const MONITORS: usize = 48;
    let receiver = Receiver::default();
    let hook = receiver.start().await;
    let names: Vec<String> = (0..MONITORS).map(|i| format!("m{i:02}")).collect();
    let interval = |i: usize| Duration::from_secs(3 + i as u64 / 6);
    let manifests: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let alerts = format!("  alerts:\n    webhook: \"{hook}{name}\"\n");
            let every = format!("{}s", interval(i).as_secs());
            heartbeat_manifest(name, &every, "0s", &alerts)
        })
        .collect();
    // The leader may deliver the even ones of the first two seconds before it is killed.
    let early: HashSet<String> = (0..12).step_by(2).map(|i| names[i].clone()).collect();
    receiver.open.lock().unwrap().extend(early.iter().cloned());

    let layout = Layout::new(3, &manifests);
    let db = layout.database().to_string();
    let args = ["--min-interval", "1s"];
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(layout.start(i, &args).await);
    }
    let leader = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    // Pings through every replica in turn, all at once: two thirds are relayed by
    // followers. Deadlines are counted from the last answer (a ping is taken before).
    let pings = names.iter().enumerate().map(|(i, name)| {
        let (base, token) = (replicas[i % 3].base.clone(), layout.heartbeat_token(name));
        async move { (name, ping(&base, &token).await) }
    });
    let sending = Instant::now();
    for (name, status) in futures::future::join_all(pings).await {
        assert_eq!(status, 200, "{name}");
    }
    let pinged = Instant::now();
    eprintln!("{MONITORS} pings answered in {:?}", pinged - sending);
    let leader_base = replicas[leader].base.clone();
    wait_for("every ping applied", Duration::from_secs(10), || {
        let base = leader_base.clone();
        async move {
            metric(&base, "hartslag_monitors{state=\"New\"}")
                .await
                .filter(|n| *n == 0.0)
        }
    })
    .await;

    // Killed only once the early deliveries are finished in the outbox (a delivery that
    // reached its target in the instant before the kill, unrecorded, would go out again
    // by design: the receiver's alert id tells such a repeat apart).
    let done = wait_for("the early deliveries", Duration::from_secs(40), || {
        let (receiver, early, db) = (receiver.clone(), early.clone(), db.clone());
        async move {
            let got = receiver.delivered().is_superset(&early);
            let done = rows(&db, "hartslag_outbox_done");
            (got && done == early.len()).then_some(done)
        }
    })
    .await;
    assert_eq!(done, early.len(), "only the open targets were delivered");
    eprintln!(
        "the early deliveries finished {:?} after the pings",
        pinged.elapsed()
    );
    let killed_at = pinged.elapsed();
    replicas.remove(leader).kill9();
    let successor = the_leader(&replicas.iter().collect::<Vec<_>>(), FAILOVER_WITHIN).await;
    let led_at = pinged.elapsed();
    // The dead leader's last attempts were refused before the successor led.
    receiver.all_open.store(true, Ordering::SeqCst);
    let due = |i: usize| interval(i);
    let before = (0..MONITORS).filter(|i| due(*i) < killed_at).count();
    let window = (0..MONITORS)
        .filter(|i| due(*i) >= killed_at && due(*i) < led_at)
        .count();
    eprintln!(
        "killed {killed_at:?} after the pings, a new leader at {led_at:?}: {before} due before, \
         {window} in the window, {} after",
        MONITORS - before - window
    );

    let all: HashSet<String> = names.iter().cloned().collect();
    wait_for("a delivery per incident", Duration::from_secs(90), || {
        let (receiver, all) = (receiver.clone(), all.clone());
        async move { receiver.delivered().is_superset(&all).then_some(()) }
    })
    .await;
    // Nothing left to send: whatever the replicas had queued went out.
    wait_for("an empty outbox", Duration::from_secs(30), || {
        let db = db.clone();
        async move { (rows(&db, "hartslag_outbox") == 0).then_some(()) }
    })
    .await;
    let accepted = receiver.accepted.lock().unwrap().clone();
    let mut per_monitor: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, id, event) in &accepted {
        assert_eq!(event, "down", "{name}: {id}");
        per_monitor.entry(name).or_default().push(id);
    }
    let wrong: Vec<_> = per_monitor
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .collect();
    assert!(wrong.is_empty(), "incidents not alerted once: {wrong:?}");
    assert_eq!(per_monitor.len(), MONITORS);
    let delivered = metric(
        &replicas[successor].base,
        "hartslag_alert_deliveries_total{outcome=\"delivered\"}",
    )
    .await;
    assert_eq!(delivered, Some((MONITORS - early.len()) as f64));
}
