//! `hartslag migrate --from-sled DIR --to postgres://...`: a sled directory filled through
//! the services is copied by the real binary, and the services opened on PostgreSQL
//! serve what sled served (stats, charts, export, applications and tokens); a second run
//! copies nothing and says so; a database holding data the migration did not copy, and a
//! directory a running hartslag holds, are refused.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use hartslag::core::alert::message::Target;
use hartslag::core::calendar::{Periods, date_key};
use hartslag::core::metrics::MetricRegistry;
use hartslag::core::monitor::engine::{DefRecord, MonitorDef, Origin, PingInput, PingKind};
use hartslag::core::monitor::state::State;
use hartslag::core::spec::ApplicationSpec;
use hartslag::core::storage::{EventValue, EventWrite, ExportFilter, Fence, Idempotency, Outcome};
use hartslag::core::store_pg::DatabaseUrl;
use hartslag::core::token::TokenHash;
use hartslag::core::{Services, ServicesConfig};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The services over `dir`, everything in `database` when given; monitor deadlines fire
/// only with `deadlines` (the fill), so what is compared stays as it was stored.
async fn open(dir: PathBuf, database: Option<DatabaseUrl>, deadlines: bool) -> Services {
    let config = services_config(dir, database, deadlines);
    crate::helpers::wait_for(
        "the sled directory to be free",
        Duration::from_secs(20),
        || {
            let config = config.clone();
            async move {
                Services::open(&config, &mut MetricRegistry::default())
                    .await
                    .ok()
            }
        },
    )
    .await
}

/// The services' configuration for [`open`], of the installation `standalone`.
fn services_config(dir: PathBuf, database: Option<DatabaseUrl>, deadlines: bool) -> ServicesConfig {
    ServicesConfig {
        data_dir: dir,
        cache_bytes: 8 << 20,
        ping_history: 50,
        outbox: Default::default(),
        limits: Default::default(),
        hold_deadlines: !deadlines,
        top_events: 10,
        // On a database, opening the services makes this process lead.
        fence: if database.is_some() {
            Fence::follower()
        } else {
            Fence::sole()
        },
        database,
        installation: "standalone".into(),
    }
}

/// Runs `work` on the services over `dir` in a runtime of its own, dropped after, so the
/// services let go of the directory as at the end of a process.
async fn with_services<T: Send + 'static>(
    dir: &Path,
    database: Option<DatabaseUrl>,
    work: impl FnOnce(Services) -> BoxFuture<'static, T> + Send + 'static,
) -> T {
    run_services(dir, database, false, work).await
}

async fn run_services<T: Send + 'static>(
    dir: &Path,
    database: Option<DatabaseUrl>,
    deadlines: bool,
    work: impl FnOnce(Services) -> BoxFuture<'static, T> + Send + 'static,
) -> T {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async move { work(open(dir, database, deadlines).await).await });
        drop(rt);
        out
    })
    .await
    .unwrap()
}

fn spec(tz: &str) -> ApplicationSpec {
    serde_json::from_value(serde_json::json!({ "timeZone": tz })).unwrap()
}

fn event(
    app: u64,
    tz: &TimeZone,
    at: Timestamp,
    name: &str,
    weight: i64,
    user: Option<i64>,
) -> EventWrite {
    EventWrite {
        app,
        at,
        date: date_key(at.to_zoned(tz.clone()).date()),
        value: EventValue {
            event: name.into(),
            weight,
            user_id: user,
        },
        idempotency: None,
        name_limit: 100,
    }
}

fn keyed(mut w: EventWrite, key: &str) -> EventWrite {
    w.idempotency = Some(Idempotency {
        key: TokenHash::of(key).0,
        fingerprint: TokenHash::of(&format!("{:?}", w.value)).0,
    });
    w
}

const DAY: i64 = 86_400;

/// Two applications with users, events over three weeks (some of one instant, some
/// keyed), the old ones of `blog` deleted by retention, and a third application deleted
/// with its data retained.
fn fill(s: Services) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let now = Timestamp::now();
        let amsterdam = TimeZone::get("Europe/Amsterdam").unwrap();
        let r = &s.registry;
        let shop = r
            .upsert_application(
                "shop",
                "web",
                spec("Europe/Amsterdam"),
                TokenHash::of("shop-token"),
            )
            .await
            .unwrap();
        let blog = r
            .upsert_application("blog", "web", spec("UTC"), TokenHash::of("blog-token"))
            .await
            .unwrap();
        let gone = r
            .upsert_application("old", "web", spec("UTC"), TokenHash::of("old-token"))
            .await
            .unwrap();
        let mut writes = Vec::new();
        for i in 0..600i64 {
            let at = now
                .checked_sub(jiff::SignedDuration::from_secs(i * 3_000))
                .unwrap();
            let name = ["order", "signup", "refund"][(i % 3) as usize];
            writes.push(event(
                shop.num,
                &amsterdam,
                at,
                name,
                i % 11 - 3,
                Some(i % 13),
            ));
            writes.push(event(
                blog.num,
                &TimeZone::UTC,
                at,
                "read",
                1,
                (i % 2 == 0).then_some(i % 5),
            ));
        }
        // Several events of one instant keep the order they were stored in.
        for w in ["a", "b", "c", "d"] {
            writes.push(event(shop.num, &amsterdam, now, w, 1, None));
        }
        writes.push(keyed(
            event(shop.num, &amsterdam, now, "order", 5, Some(1)),
            "retry-me",
        ));
        writes.push(event(gone.num, &TimeZone::UTC, now, "legacy", 9, Some(4)));
        for w in writes {
            assert_eq!(s.events.write(w).await.unwrap(), Outcome::Stored);
        }
        // Retention took blog's events older than ten days; their rollups stay.
        let cutoff = now
            .checked_sub(jiff::SignedDuration::from_secs(10 * DAY))
            .unwrap();
        assert!(s.events.purge_before(blog.num, cutoff).await.unwrap() > 0);
        r.remove_application("old", "web", false).await.unwrap();
        fill_monitors(&s).await;
        s.flush().await.unwrap();
    })
}

fn monitor(name: &str, interval_secs: u64, retain: bool) -> MonitorDef {
    DefRecord {
        display_name: Some(format!("The {name} job")),
        targets: vec![Target::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
        }],
        application: Some("web".into()),
        origin: Origin::Manifest,
        retain_on_delete: retain,
        ..DefRecord::sample(&format!("shop/{name}"), interval_secs, Timestamp::now())
    }
    .into()
}

fn ping(kind: PingKind, body: &str) -> PingInput {
    PingInput {
        kind,
        exit_code: (kind == PingKind::Fail).then_some(3),
        source: Some("10.0.0.7".into()),
        user_agent: Some("curl/8".into()),
        body: Some(body.into()),
        rid: Some("run-1".into()),
        stopped_alert: None,
    }
}

/// A monitor pinged forty times that is Up, one that went Down on a failed run (its Down
/// notice queued, never sent: no delivery runs here), and one deleted with its data
/// retained.
async fn fill_monitors(s: &Services) {
    let e = &s.engine;
    e.upsert(monitor("backup", 3600, false)).await.unwrap();
    for i in 0..40 {
        let kind = if i % 9 == 8 {
            PingKind::Fail
        } else {
            PingKind::Success
        };
        e.ping("shop/backup", ping(kind, &format!("log line {i}")))
            .await
            .unwrap();
    }
    e.ping("shop/backup", ping(PingKind::Success, "fine"))
        .await
        .unwrap();
    e.upsert(monitor("report", 3600, false)).await.unwrap();
    e.ping("shop/report", ping(PingKind::Success, "ok"))
        .await
        .unwrap();
    e.upsert(monitor("legacy", 3600, true)).await.unwrap();
    e.ping("shop/legacy", ping(PingKind::Start, ""))
        .await
        .unwrap();
    e.remove("shop/legacy").await.unwrap();
    // A failed run: Down at once, and its notice queued.
    e.ping("shop/report", ping(PingKind::Fail, "exit 3"))
        .await
        .unwrap();
    let report = e.get("shop/report").unwrap();
    assert_eq!(report.state.state, State::Down, "{report:?}");
    let pending = s.outbox.store().pending().await.unwrap();
    assert!(!pending.is_empty(), "the Down notice is queued");
}

/// What the services serve about events and applications, as text to compare.
fn served(s: Services) -> BoxFuture<'static, Vec<String>> {
    Box::pin(async move {
        let mut out = Vec::new();
        let r = &s.registry;
        let mut apps: Vec<_> = r
            .applications()
            .iter()
            .map(|a| (a.key.clone(), a.num))
            .collect();
        apps.sort();
        out.push(format!("applications {apps:?}"));
        for token in ["shop-token", "blog-token", "old-token"] {
            out.push(format!("{token} {:?}", r.authenticate(token)));
        }
        let retained: Vec<_> = r
            .retention_targets()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, n, _)| (k, n))
            .collect();
        let mut retained = retained;
        retained.sort();
        out.push(format!("retention targets {retained:?}"));
        let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
        let periods = Periods::of_date(today);
        let hour = hartslag::core::storage::hour_of(Timestamp::now());
        for (_, num) in retained {
            let e = &s.events;
            out.push(format!(
                "{num} stats {:?}",
                e.stats(num, periods, None, None).await.unwrap()
            ));
            out.push(format!(
                "{num} user 3 {:?}",
                e.stats(num, periods, None, Some(3)).await.unwrap()
            ));
            let from = date_key(today.checked_sub(jiff::Span::new().days(30)).unwrap());
            out.push(format!(
                "{num} daily {:?}",
                e.daily(num, from, date_key(today), None, None)
                    .await
                    .unwrap()
            ));
            out.push(format!(
                "{num} user daily {:?}",
                e.daily(num, from, date_key(today), None, Some(4))
                    .await
                    .unwrap()
            ));
            out.push(format!(
                "{num} hourly {:?}",
                e.hourly(num, hour - 24 * 30, hour + 1, None).await.unwrap()
            ));
            out.push(format!(
                "{num} top {:?}",
                e.top_users(num, None, 5).await.unwrap()
            ));
            out.push(format!("{num} count {}", e.event_count(num).await.unwrap()));
            out.push(format!(
                "{num} last {:?}",
                e.last_event_at(num).await.unwrap()
            ));
            let rows: Vec<_> = e
                .export(num, ExportFilter::default())
                .map(|b| b.unwrap())
                .concat()
                .await;
            out.push(format!("{num} export {rows:?}"));
        }
        let mut monitors = s.engine.list();
        monitors.sort_by(|a, b| a.def.key.cmp(&b.def.key));
        for m in &monitors {
            out.push(format!("monitor {m:?}"));
            out.push(format!(
                "{} pings {:?}",
                m.def.key,
                s.engine.pings(m.num, 100).await.unwrap()
            ));
            out.push(format!(
                "{} timeline {:?}",
                m.def.key,
                s.engine.transitions(m.num, 100).await.unwrap()
            ));
        }
        let retained = s.engine.retained("shop/legacy").await;
        out.push(format!("retained {retained:?}"));
        if let Some(m) = retained {
            out.push(format!(
                "retained pings {:?}",
                s.engine.pings(m.num, 100).await.unwrap()
            ));
        }
        let store = s.outbox.store();
        let mut pending = store.pending().await.unwrap();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(format!("pending {pending:?}"));
        out.push(format!("notices {}", store.pending_notices().unwrap()));
        let mut targets = store.target_histories().await.unwrap();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(format!("targets {targets:?}"));
        out
    })
}

/// Runs `hartslag migrate`, outside Kubernetes and given no installation.
fn migrate(from: &Path, to: &str) -> Output {
    migrate_with(from, to, &[], &[])
}

/// Variables that choose the installation `hartslag migrate` records: none of the test
/// process's own reach it.
const INSTALLATION_VARIABLES: [&str; 4] = [
    "HARTSLAG_INSTALLATION",
    "KUBERNETES_SERVICE_HOST",
    "HARTSLAG_LEASE_NAMESPACE",
    "HARTSLAG_LEASE_NAME",
];

/// Runs `hartslag migrate` with `args` after the sled directory and the database, and
/// `envs` (of [`INSTALLATION_VARIABLES`], or others).
fn migrate_with(from: &Path, to: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(crate::helpers::binary());
    cmd.args(["migrate", "--from-sled"])
        .arg(from)
        .args(["--to", to])
        .args(args)
        .env_remove("HARTSLAG_DATABASE_URL");
    for var in INSTALLATION_VARIABLES {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied());
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_directory_is_copied_once_and_postgres_serves_what_sled_served() {
    let sled = tempfile::tempdir().unwrap();
    with_services(sled.path(), None, fill).await;
    let before = with_services(sled.path(), None, served).await;
    assert!(
        before.iter().any(|l| l.contains("export [ExportedEvent")),
        "{before:#?}"
    );

    let url = crate::pg::shared().database("migrate_copy");
    let out = migrate(sled.path(), &url);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("applications: copied 5 rows (hartslag_apps 3, hartslag_tokens 2)"),
        "{report}"
    );
    assert!(report.contains("events: copied"), "{report}");
    assert!(report.contains("idempotency: copied 1 row"), "{report}");
    assert!(!report.contains("copied 1 rows"), "{report}");
    assert!(
        report
            .contains("monitors: copied 3 rows (hartslag_monitor_retained 1, hartslag_monitors 2)"),
        "{report}"
    );
    assert!(report.contains("pings: copied"), "{report}");
    assert!(report.contains("outbox: copied"), "{report}");

    let database: DatabaseUrl = url.parse().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let after = with_services(elsewhere.path(), Some(database.clone()), served).await;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a);
    }
    // The key sent before the move is still a retry after it; new applications get new
    // numbers.
    let (replay, fresh) = with_services(elsewhere.path(), Some(database), |s| {
        Box::pin(async move {
            let shop = s.registry.application("shop/web").unwrap();
            let amsterdam = TimeZone::get("Europe/Amsterdam").unwrap();
            let w = keyed(
                event(shop.num, &amsterdam, Timestamp::now(), "order", 5, Some(1)),
                "retry-me",
            );
            let replay = s.events.write(w).await.unwrap();
            let fresh = s
                .registry
                .upsert_application("new", "web", spec("UTC"), TokenHash::of("new-token"))
                .await
                .unwrap();
            let nums: Vec<u64> = s.registry.applications().iter().map(|a| a.num).collect();
            (replay, (fresh.num, nums))
        })
    })
    .await;
    assert_eq!(replay, Outcome::Replayed);
    let (num, nums) = fresh;
    assert_eq!(nums.iter().filter(|n| **n == num).count(), 1, "{nums:?}");
    assert!(num > 3, "{num}");

    // A second run copies nothing, and says so.
    let again = migrate(sled.path(), &url);
    assert!(again.status.success(), "{}", text(&again));
    let report = String::from_utf8_lossy(&again.stdout);
    assert!(report.contains("nothing copied"), "{report}");
    assert!(report.contains("0 rows copied"), "{report}");
    assert!(report.contains("events: nothing to copy"), "{report}");

    // Another directory is not copied over the first's.
    let other = tempfile::tempdir().unwrap();
    with_services(other.path(), None, |s| {
        Box::pin(async move {
            s.registry
                .upsert_application("x", "y", spec("UTC"), TokenHash::of("x-token"))
                .await
                .unwrap();
        })
    })
    .await;
    let refused = migrate(other.path(), &url);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(said.contains("another sled directory"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_data_of_its_own_is_refused_and_left_as_it_was() {
    let sled = tempfile::tempdir().unwrap();
    run_services(sled.path(), None, true, fill).await;
    let url = crate::pg::shared().database("migrate_foreign");
    let database: DatabaseUrl = url.parse().unwrap();
    // A hartslag already ran on the database and wrote an application.
    let elsewhere = tempfile::tempdir().unwrap();
    with_services(elsewhere.path(), Some(database), |s| {
        Box::pin(async move {
            s.registry
                .upsert_application("mine", "web", spec("UTC"), TokenHash::of("mine"))
                .await
                .unwrap();
        })
    })
    .await;
    let out = migrate(sled.path(), &url);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("holds data this migration did not copy"),
        "{said}"
    );
    assert!(said.contains("hartslag_apps"), "{said}");
    let server = crate::pg::shared();
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(server.psql(db, "SELECT count(*) FROM hartslag_apps"), "1");
    assert_eq!(server.psql(db, "SELECT count(*) FROM hartslag_events"), "0");
    assert_eq!(
        server.psql(db, "SELECT count(*) FROM hartslag_migrations_from_sled"),
        "0"
    );

    // A database an earlier release wrote (data, no installation yet) is refused alike,
    // and the refused migration does not claim it: its own installation still can.
    server.psql(db, "DELETE FROM hartslag_installation");
    let out = migrate_with(sled.path(), &url, &["--installation", "team-a"], &[]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("holds data this migration did not copy"),
        "{said}"
    );
    assert_eq!(
        server.psql(db, "SELECT count(*) FROM hartslag_installation"),
        "0"
    );
}

const OWNER: &str = "SELECT name || ' / ' || claimed_by FROM hartslag_installation";

/// A database that belongs to another installation (its replica claimed it, or another
/// migration did) is refused before anything is copied, naming both installations; the
/// same installation under the name the database records (here from the variable)
/// copies, and the record stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_installation_is_refused_before_anything_is_copied() {
    let sled = tempfile::tempdir().unwrap();
    with_services(sled.path(), None, fill).await;
    let server = crate::pg::shared();
    let db = "migrate_other_installation";
    let url = server.database(db);
    let parsed: DatabaseUrl = url.parse().unwrap();
    hartslag::core::store_pg::claim(&parsed, "team-b", "a replica of team-b")
        .await
        .unwrap();

    let out = migrate_with(sled.path(), &url, &["--installation", "team-a"], &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    for part in [
        "refusing to copy into",
        "belongs to the installation \"team-b\" (claimed by a replica of team-b at",
        "this migration is for the installation \"team-a\"",
        "Nothing was copied",
        "--installation \"team-b\"",
    ] {
        assert!(said.contains(part), "{part:?} missing: {said}");
    }
    let count = |sql: &str| server.psql(db, sql);
    assert_eq!(count("SELECT count(*) FROM hartslag_apps"), "0");
    assert_eq!(count("SELECT count(*) FROM hartslag_events"), "0");
    assert_eq!(
        count("SELECT count(*) FROM hartslag_migrations_from_sled"),
        "0"
    );
    assert_eq!(count(OWNER), "team-b / a replica of team-b");

    let out = migrate_with(
        sled.path(),
        &url,
        &[],
        &[("HARTSLAG_INSTALLATION", "team-b")],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("events: copied"), "{said}");
    assert!(
        said.contains("installation: the database belongs to the installation \"team-b\"\n"),
        "{said}"
    );
    assert_eq!(count(OWNER), "team-b / a replica of team-b");
}

/// A database that belongs to no installation yet is recorded as the migration's before
/// its first row goes in, so it is the installation's from then on, not the first
/// server's to start on it: a replica of another installation refuses the copy, and this
/// installation's opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_belongs_to_the_migrations_installation_before_a_server_starts() {
    let sled = tempfile::tempdir().unwrap();
    with_services(sled.path(), None, fill).await;
    let server = crate::pg::shared();
    let db = "migrate_records_installation";
    let url = server.database(db);
    let out = migrate_with(sled.path(), &url, &["--installation", "team-a"], &[]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("for the installation \"team-a\" (--installation or HARTSLAG_INSTALLATION)"),
        "{said}"
    );
    assert!(
        said.contains("installation: the database now belongs to the installation \"team-a\""),
        "{said}"
    );
    let owner = server.psql(db, OWNER);
    assert!(
        owner.starts_with("team-a / hartslag migrate from ")
            && owner.contains(&sled.path().display().to_string()),
        "{owner}"
    );

    let database: DatabaseUrl = url.parse().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut config = services_config(elsewhere.path().to_path_buf(), Some(database), false);
    config.installation = "team-b".into();
    let refused = Services::open(&config, &mut MetricRegistry::default()).await;
    let said = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        said.contains("belongs to the installation \"team-a\"")
            && said.contains("installation is \"team-b\""),
        "{said}"
    );
    config.installation = "team-a".into();
    let opened = Services::open(&config, &mut MetricRegistry::default())
        .await
        .unwrap();
    assert!(opened.registry.application("shop/web").is_some());
    assert_eq!(server.psql(db, OWNER), owner);
}

/// Given no installation, migrate records the one the server it prepares the database for
/// takes by default: `standalone` outside Kubernetes; in a pod, the operator's Lease
/// (`<lease-namespace>/<lease-name>`, from the operator's variables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_records_the_servers_default_installation_outside_and_inside_kubernetes() {
    let sled = tempfile::tempdir().unwrap();
    with_services(sled.path(), None, fill).await;
    let server = crate::pg::shared();
    let url = server.database("migrate_default_standalone");
    let out = migrate(sled.path(), &url);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("for the installation \"standalone\" (standalone's default"),
        "{said}"
    );
    assert_eq!(
        server.psql(
            "migrate_default_standalone",
            "SELECT name FROM hartslag_installation"
        ),
        "standalone"
    );

    let url = server.database("migrate_default_operator");
    let in_pod = [
        // Only read, as Kubernetes sets it in every container; nothing is sent there.
        ("KUBERNETES_SERVICE_HOST", "kubernetes.invalid"),
        ("HARTSLAG_LEASE_NAMESPACE", "ops"),
        ("HARTSLAG_LEASE_NAME", "beats"),
    ];
    let out = migrate_with(sled.path(), &url, &[], &in_pod);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("for the installation \"ops/beats\" (in a Kubernetes pod"),
        "{said}"
    );
    assert_eq!(
        server.psql(
            "migrate_default_operator",
            "SELECT name FROM hartslag_installation"
        ),
        "ops/beats"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_a_running_hartslag_holds_is_refused() {
    let sled = tempfile::tempdir().unwrap();
    let url = crate::pg::shared().database("migrate_locked");
    let dir = sled.path().to_path_buf();
    let said = with_services(sled.path(), None, move |services| {
        Box::pin(async move {
            // Held while the migration runs, as a running hartslag holds it.
            let _held = services;
            let out = migrate(&dir, &url);
            assert!(!out.status.success());
            text(&out)
        })
    })
    .await;
    assert!(said.contains("is in use by a running hartslag"), "{said}");
    assert!(said.contains("scale the Deployment to 0"), "{said}");

    let missing = migrate(
        &sled.path().join("nothing-here"),
        "postgres://127.0.0.1:1/x",
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("holds no hartslag data"),
        "{}",
        text(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_failed_midway_left_nothing_and_is_copied_again_from_scratch() {
    let sled = tempfile::tempdir().unwrap();
    run_services(sled.path(), None, true, fill).await;
    let server = crate::pg::shared();
    let url = server.database("migrate_redo");
    // The schema, then a trigger that fails the timelines' part after some of its rows.
    let parsed: DatabaseUrl = url.parse().unwrap();
    drop(
        hartslag::core::store_pg::open(&parsed, &mut MetricRegistry::default())
            .await
            .unwrap(),
    );
    server.psql(
        "migrate_redo",
        "CREATE FUNCTION fail_third() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF (SELECT count(*) FROM hartslag_timeline) >= 2 THEN RAISE EXCEPTION 'disk full'; END IF; \
         RETURN NEW; END $$",
    );
    server.psql(
        "migrate_redo",
        "CREATE TRIGGER fail_third AFTER INSERT ON hartslag_timeline \
         FOR EACH ROW EXECUTE FUNCTION fail_third()",
    );
    let failed = migrate(sled.path(), &url);
    assert!(!failed.status.success());
    let said = text(&failed);
    assert!(
        said.contains("copying the timelines failed, nothing of them was kept"),
        "{said}"
    );
    assert!(said.contains("disk full"), "{said}");
    let count = |sql: &str| server.psql("migrate_redo", sql);
    assert_eq!(count("SELECT count(*) FROM hartslag_timeline"), "0");
    assert_eq!(
        count("SELECT string_agg(part, ',' ORDER BY part) FROM hartslag_migrations_from_sled"),
        "applications,events,idempotency,monitors,pings,rollups"
    );
    let events = count("SELECT count(*) FROM hartslag_events");

    server.psql(
        "migrate_redo",
        "DROP TRIGGER fail_third ON hartslag_timeline",
    );
    let again = migrate(sled.path(), &url);
    assert!(again.status.success(), "{}", text(&again));
    let report = String::from_utf8_lossy(&again.stdout);
    assert!(report.contains("events: nothing to copy"), "{report}");
    assert!(report.contains("timelines: copied"), "{report}");
    assert!(report.contains("outbox: copied"), "{report}");
    assert_eq!(count("SELECT count(*) FROM hartslag_events"), events);
    assert!(
        count("SELECT count(*) FROM hartslag_timeline")
            .parse::<u64>()
            .unwrap()
            >= 3
    );
    assert_eq!(
        count("SELECT count(*) FROM hartslag_migrations_from_sled"),
        "8"
    );
}

#[test]
fn migrate_reads_every_flag_from_its_environment_variable_and_the_servers_database_url() {
    let missing = tempfile::tempdir().unwrap();
    let from = missing.path().join("no-such-directory");
    // Nothing listens on port 1: the run fails once it has read both settings, saying
    // what it was copying where.
    let url = "postgres://hartslag@127.0.0.1:1/hartslag";
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(crate::helpers::binary());
        cmd.arg("migrate")
            .env_remove("HARTSLAG_DATABASE_URL")
            .env_remove("HARTSLAG_TO")
            .env_remove("HARTSLAG_FROM_SLED");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let from_text = from.to_str().unwrap();
    for to_variable in ["HARTSLAG_TO", "HARTSLAG_DATABASE_URL"] {
        let out = run(&[("HARTSLAG_FROM_SLED", from_text), (to_variable, url)]);
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains(&format!("copying {from_text} into")) && said.contains("127.0.0.1:1"),
            "{to_variable}: {said}"
        );
    }
    let out = run(&[("HARTSLAG_FROM_SLED", from_text)]);
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("--to, HARTSLAG_TO or HARTSLAG_DATABASE_URL"),
        "{said}"
    );
}

/// The directory was used again after it was copied (a start without the database, new
/// events): a second run refuses, naming the part that changed and when it was copied,
/// instead of reporting nothing to copy and leaving the new data out; the database is
/// left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_used_again_after_its_copy_is_refused_by_a_second_run() {
    let sled = tempfile::tempdir().unwrap();
    with_services(sled.path(), None, fill).await;
    let server = crate::pg::shared();
    let url = server.database("migrate_changed");
    let first = migrate(sled.path(), &url);
    assert!(first.status.success(), "{}", text(&first));
    let count = |sql: &str| server.psql("migrate_changed", sql);
    let events = count("SELECT count(*) FROM hartslag_events");

    with_services(sled.path(), None, |s| {
        Box::pin(async move {
            let shop = s.registry.application("shop/web").unwrap();
            let utc = TimeZone::UTC;
            let w = event(shop.num, &utc, Timestamp::now(), "late", 1, None);
            assert_eq!(s.events.write(w).await.unwrap(), Outcome::Stored);
        })
    })
    .await;
    // The store closed with its runtime lets go of the directory a moment later.
    let again = crate::helpers::wait_for(
        "the sled directory to be free",
        Duration::from_secs(20),
        || {
            let out = migrate(sled.path(), &url);
            let held = text(&out).contains("in use by a running hartslag");
            async move { (!held).then_some(out) }
        },
    )
    .await;
    let said = text(&again);
    assert!(!again.status.success(), "{said}");
    assert!(
        said.contains("changed since its events were copied"),
        "{said}"
    );
    assert!(said.contains("into a new, empty database"), "{said}");
    assert!(!said.contains("nothing copied"), "{said}");
    assert_eq!(count("SELECT count(*) FROM hartslag_events"), events);
}

/// The sum of `part` of the sled directory `dir` in the first release's debug form, as
/// that release recorded it.
async fn debug_form_sum(dir: &Path, part: hartslag::core::migrate::rows::Part) -> String {
    use hartslag::core::migrate::digest::{Form, SourceDigest};
    use hartslag::core::store::{Store, StoreOptions};
    let dir = dir.to_path_buf();
    crate::helpers::wait_for(
        "the sled directory to open",
        Duration::from_secs(20),
        || {
            let dir = dir.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let store = Store::open(&dir, &StoreOptions::default()).ok()?;
                    let mut digest = SourceDigest::new(Form::Debug);
                    store
                        .dump(part, Timestamp::now(), &mut |rows| {
                            digest.add(&rows);
                            true
                        })
                        .unwrap();
                    Some(digest.text())
                })
                .await
                .unwrap()
            }
        },
    )
    .await
}

/// Runs `hartslag migrate` once the sled directory is free (a store closed a moment ago
/// lets go of it a moment later).
async fn migrate_when_free(from: &Path, to: &str) -> Output {
    crate::helpers::wait_for(
        "the sled directory to be free",
        Duration::from_secs(20),
        || {
            let out = migrate(from, to);
            let held = text(&out).contains("in use by a running hartslag");
            async move { (!held).then_some(out) }
        },
    )
    .await
}

/// The first release of migration 7 recorded each part's sum over the rows' debug text,
/// which can change with the build for the same rows. A later run still compares such a
/// sum in its own form, and once it matched records the part's sum in the stable form
/// (`v2:`), which releases compute alike; a sum in the first form that does not match is
/// refused with a note that the release may be the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sum_recorded_in_the_first_form_is_checked_in_it_and_recorded_again_in_the_stable_one() {
    use hartslag::core::migrate::rows::Part;
    let sled = tempfile::tempdir().unwrap();
    with_services(sled.path(), None, fill).await;
    let server = crate::pg::shared();
    let db = "migrate_first_form";
    let url = server.database(db);
    let first = migrate(sled.path(), &url);
    assert!(first.status.success(), "{}", text(&first));
    let recorded = |part: &str| {
        server.psql(
            db,
            &format!("SELECT digest FROM hartslag_migrations_from_sled WHERE part = '{part}'"),
        )
    };
    let stable = recorded("events");
    assert!(stable.starts_with("v2:"), "{stable}");

    let debug = debug_form_sum(sled.path(), Part::Events).await;
    assert!(!debug.starts_with("v2:"), "{debug}");
    let set = |digest: &str| {
        server.psql(
            db,
            &format!(
                "UPDATE hartslag_migrations_from_sled SET digest = '{digest}' WHERE part = 'events'"
            ),
        )
    };
    set(&debug);
    let again = migrate_when_free(sled.path(), &url).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("nothing copied"), "{}", text(&again));
    assert_eq!(recorded("events"), stable);

    let rows = stable.split(':').nth(1).unwrap();
    set(&format!("{rows}:{}", "0".repeat(64)));
    let refused = migrate_when_free(sled.path(), &url).await;
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("changed since its events were copied"),
        "{said}"
    );
    assert!(
        said.contains("in a form that can differ between releases"),
        "{said}"
    );
}
