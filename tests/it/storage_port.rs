//! The storage port's contract: what every backend behind `hartslag::core::storage` keeps,
//! written once and run against each backend. A backend joins with one line at the end of
//! this file (`contract!(name => open_port, open_services, open_monitors);`), whose
//! functions open its port, the services on it, or its monitor and outbox stores, over a
//! directory that belongs to the test.
//!
//! The process-level form of "acknowledged means durable" (kill -9 under load) lives in
//! `durability.rs` (and, for PostgreSQL with several replicas, `pg_replicas.rs`); here a
//! backend is closed without a flush and opened again.
//!
//! Monitors and the alert outbox are checked twice: at the port ([`engine`]: rounds,
//! history, timelines, claims and finishes) and through the services a backend opens (the
//! engine and the scheduler on top of them). What a backend shared by replicas adds
//! (fenced leader writes, the changes a mirror reads) is in [`leader_writes`].

mod engine;
mod figures;
mod leader_writes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use hartslag::core::alert::message::{Alert, Target};
use hartslag::core::alert::{Deliver, DeliveryError};
use hartslag::core::calendar::{Periods, date_key};
use hartslag::core::metrics::MetricRegistry;
use hartslag::core::monitor::engine::{DefRecord, MonitorDef, Origin, PingInput, PingKind};
use hartslag::core::monitor::state::State;
use hartslag::core::storage::{
    AppRecord, EventValue, EventWrite, ExportFilter, Fence, IDEMPOTENCY_WINDOW, Idempotency,
    MonitorStorage, Outcome, Storage, Tally, TokenOwner, hour_of,
};
use hartslag::core::token::{TokenHash, TokenKind};
use hartslag::core::{Services, ServicesConfig};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Opens a backend over a directory of the test's; called again on the same directory to
/// reopen it once every handle of the previous opening is dropped.
type Open = fn(PathBuf) -> BoxFuture<'static, Storage>;

/// Opens the services (registry, events, monitor engine, outbox) on a backend over a
/// directory of the test's.
type OpenServices = fn(PathBuf) -> BoxFuture<'static, Services>;

/// sled, opened as the services open it; a reopen waits until the last opening has let
/// go of the directory (its threads finish after the handles are dropped).
fn open_sled(dir: PathBuf) -> BoxFuture<'static, Storage> {
    Box::pin(reopen_sled(dir, hartslag::core::store::port::open))
}

/// sled's monitor and outbox stores, opened like [`open_sled`].
fn monitors_on_sled(dir: PathBuf) -> BoxFuture<'static, MonitorStorage> {
    Box::pin(reopen_sled(dir, hartslag::core::store::port::open_monitors))
}

/// Opens sled in `dir` with `open` once the last opening has let go of the directory.
async fn reopen_sled<T, E>(
    dir: PathBuf,
    open: fn(&std::path::Path, &hartslag::core::store::StoreOptions) -> Result<T, E>,
) -> T {
    let options = hartslag::core::store::StoreOptions {
        cache_bytes: 8 << 20,
    };
    crate::helpers::wait_for(
        "the sled directory to be free",
        Duration::from_secs(20),
        || {
            let opened = open(&dir, &options);
            async move { opened.ok() }
        },
    )
    .await
}

/// The services on sled; a reopen waits until the last opening has let go of the directory.
fn services_on_sled(dir: PathBuf) -> BoxFuture<'static, Services> {
    Box::pin(open_services(dir, None))
}

/// The services over `dir`, or in `database` when given; a reopen waits until the last
/// opening has let go of the directory.
async fn open_services(
    dir: PathBuf,
    database: Option<hartslag::core::store_pg::DatabaseUrl>,
) -> Services {
    let config = ServicesConfig {
        data_dir: dir,
        cache_bytes: 8 << 20,
        ping_history: 5,
        outbox: Default::default(),
        limits: Default::default(),
        hold_deadlines: false,
        top_events: 10,
        // On a database, opening the services with a fence that leads makes this
        // process take the lead.
        fence: Fence::sole(),
        database,
        installation: "standalone".into(),
    };
    crate::helpers::wait_for(
        "the sled directory to be free",
        Duration::from_secs(20),
        || {
            let config = config.clone();
            async move {
                let metrics = &mut MetricRegistry::default();
                Services::open(&config, metrics).await.ok()
            }
        },
    )
    .await
}

/// PostgreSQL, on the database the shared test server keeps for this directory: a reopen
/// connects to the same database again.
fn open_postgres(dir: PathBuf) -> BoxFuture<'static, Storage> {
    Box::pin(async move {
        let url = crate::pg::database_for(&dir).parse().unwrap();
        hartslag::core::store_pg::open(&url, &mut MetricRegistry::default())
            .await
            .unwrap()
    })
}

/// PostgreSQL's monitor and outbox stores, on the database the shared test server keeps
/// for this directory, with this opening leading (so an opening deposes the one before).
fn monitors_on_postgres(dir: PathBuf) -> BoxFuture<'static, MonitorStorage> {
    Box::pin(async move {
        let url = crate::pg::database_for(&dir).parse().unwrap();
        let fence = Fence::follower();
        let stores = hartslag::core::store_pg::open_monitors(&url, fence.clone());
        let stores = stores.await.unwrap();
        hartslag::core::store_pg::lead_alone_at_start(&url, &fence)
            .await
            .unwrap();
        stores.storage()
    })
}

/// The services with everything in PostgreSQL.
fn services_on_postgres(dir: PathBuf) -> BoxFuture<'static, Services> {
    let url = crate::pg::database_for(&dir).parse().unwrap();
    Box::pin(open_services(dir, Some(url)))
}

/// Runs `work` on services opened by `open` in a runtime of its own, and drops that
/// runtime after: its tasks end, so the engine's threads let go of the backend, as at the
/// end of a process.
async fn with_services<T: Send + 'static>(
    open: OpenServices,
    dir: &std::path::Path,
    work: impl FnOnce(Services) -> BoxFuture<'static, T> + Send + 'static,
) -> T {
    let dir = dir.to_path_buf();
    let run = move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async move { work(open(dir).await).await });
        drop(rt);
        out
    };
    tokio::task::spawn_blocking(run).await.unwrap()
}

/// 2024-03-14T12:00:00Z, a Thursday.
const NOON: i64 = 1_710_417_600;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

/// An event of `app` at `when` (dated in UTC), with weight and user.
fn event(app: u64, when: Timestamp, name: &str, weight: i64, user: Option<i64>) -> EventWrite {
    EventWrite {
        app,
        at: when,
        date: date_key(when.to_zoned(TimeZone::UTC).date()),
        value: EventValue {
            event: name.into(),
            weight,
            user_id: user,
        },
        idempotency: None,
        name_limit: 100,
    }
}

fn keyed(mut write: EventWrite, key: &str) -> EventWrite {
    let hash = |s: &str| TokenHash::of(s).0;
    let v = &write.value;
    let fingerprint = format!("{}|{}|{:?}", v.event, v.weight, v.user_id);
    write.idempotency = Some(Idempotency {
        key: hash(key),
        fingerprint: hash(&fingerprint),
    });
    write
}

async fn store(s: &Storage, writes: Vec<EventWrite>) {
    let acks = futures::future::join_all(writes.into_iter().map(|w| s.events.write(w))).await;
    for ack in acks {
        assert_eq!(ack.unwrap(), Outcome::Stored);
    }
}

fn tally(count: i64, weight: i128) -> Tally {
    Tally { count, weight }
}

async fn acknowledged_writes_are_there_after_a_reopen(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let writes = (0..200)
        .map(|i| event(1, at(NOON + i), "order", 2, Some(i % 7)))
        .collect();
    store(&s, writes).await;
    // Closed without asking for a flush: each acknowledgement already meant durable.
    drop(s);
    let s = open(dir.path().into()).await;
    assert_eq!(s.events.event_count(1).await.unwrap(), 200);
    let periods = Periods::of_date(at(NOON).to_zoned(TimeZone::UTC).date());
    let report = s.events.stats(1, periods, None, None).await.unwrap();
    assert_eq!(report.overall.total, tally(200, 400));
    assert_eq!(
        s.events.last_event_at(1).await.unwrap(),
        Some(at(NOON + 199))
    );
}

async fn counts_and_weights_fall_in_their_periods(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let day = 86_400;
    store(
        &s,
        vec![
            // Today (Thursday), twice, and in its hour.
            event(1, at(NOON), "order", 3, Some(7)),
            event(1, at(NOON + 60), "order", 4, Some(8)),
            event(1, at(NOON + 120), "signup", 1, Some(7)),
            // Monday of the same week.
            event(1, at(NOON - 3 * day), "order", 10, Some(7)),
            // The 1st of the month, the week before.
            event(1, at(NOON - 13 * day), "order", 100, None),
            // Last month.
            event(1, at(NOON - 20 * day), "order", 1000, None),
            // Another application, which must not leak into the first.
            event(2, at(NOON), "order", 5, Some(7)),
        ],
    )
    .await;
    let periods = Periods::of_date(at(NOON).to_zoned(TimeZone::UTC).date());
    let r = s.events.stats(1, periods, None, None).await.unwrap();
    assert_eq!(r.overall.today, tally(3, 8));
    assert_eq!(r.overall.week, tally(4, 18));
    assert_eq!(r.overall.month, tally(5, 118));
    assert_eq!(r.overall.total, tally(6, 1118));
    assert_eq!(r.events.keys().collect::<Vec<_>>(), ["order", "signup"]);
    assert_eq!(r.events["order"].today, tally(2, 7));
    assert_eq!(r.events["signup"].total, tally(1, 1));

    let by_event = s.events.stats(1, periods, Some("order".into()), None);
    assert_eq!(by_event.await.unwrap().overall.total, tally(5, 1117));
    let by_user = s.events.stats(1, periods, None, Some(7)).await.unwrap();
    assert_eq!(by_user.overall.today, tally(2, 4));
    assert_eq!(by_user.overall.total, tally(3, 14));
    let other = s.events.stats(2, periods, None, None).await.unwrap();
    assert_eq!(other.overall.total, tally(1, 5));

    let hour = hour_of(at(NOON));
    let hourly = s.events.hourly(1, hour, hour + 1, None).await.unwrap();
    let hourly: Vec<_> = hourly
        .iter()
        .map(|b| (b.at, b.event.as_str(), b.tally))
        .collect();
    assert_eq!(
        hourly,
        [(hour, "order", tally(2, 7)), (hour, "signup", tally(1, 1))]
    );
    let today = date_key(at(NOON).to_zoned(TimeZone::UTC).date());
    let monday = date_key(at(NOON - 3 * day).to_zoned(TimeZone::UTC).date());
    let daily = s.events.daily(1, monday, today, Some("order".into()), None);
    let daily: Vec<_> = daily
        .await
        .unwrap()
        .iter()
        .map(|b| (b.at, b.tally))
        .collect();
    assert_eq!(
        daily,
        [
            (i64::from(monday), tally(1, 10)),
            (i64::from(today), tally(2, 7))
        ]
    );
    let daily = s
        .events
        .daily(1, today, today, None, Some(8))
        .await
        .unwrap();
    assert_eq!(daily.len(), 1);
    assert_eq!(daily[0].tally, tally(1, 4));
    let top = s.events.top_users(1, None, 1).await.unwrap();
    assert_eq!(top, [(7, tally(3, 14))]);
    let top = s
        .events
        .top_users(1, Some("order".into()), 5)
        .await
        .unwrap();
    assert_eq!(top, [(7, tally(2, 13)), (8, tally(1, 4))]);
}

async fn many_concurrent_writes_are_all_counted_once(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let writes = (0..2000)
        .map(|i| event(1, at(NOON + i % 50), "tick", 1 + i % 3, None))
        .collect();
    store(&s, writes).await;
    let periods = Periods::of_date(at(NOON).to_zoned(TimeZone::UTC).date());
    let r = s.events.stats(1, periods, None, None).await.unwrap();
    let weight: i128 = (0..2000).map(|i| 1 + i128::from(i % 3)).sum();
    assert_eq!(r.overall.today, tally(2000, weight));
    assert_eq!(s.events.event_count(1).await.unwrap(), 2000);
}

async fn an_idempotency_key_answers_retries_and_refuses_other_events(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let first = keyed(event(1, at(NOON), "order", 5, None), "k1");
    assert_eq!(
        s.events.write(first.clone()).await.unwrap(),
        Outcome::Stored
    );
    assert_eq!(
        s.events.write(first.clone()).await.unwrap(),
        Outcome::Replayed
    );
    let other = keyed(event(1, at(NOON), "order", 6, None), "k1");
    assert_eq!(s.events.write(other).await.unwrap(), Outcome::KeyReused);
    // Keys are per application.
    let elsewhere = keyed(event(2, at(NOON), "order", 5, None), "k1");
    assert_eq!(s.events.write(elsewhere).await.unwrap(), Outcome::Stored);
    assert_eq!(s.events.event_count(1).await.unwrap(), 1);
    // Within the window a purge keeps the key; it still answers after a reopen.
    let purged = s.events.purge_idempotency(1, Timestamp::now()).await;
    purged.unwrap();
    drop(s);
    let s = open(dir.path().into()).await;
    assert_eq!(s.events.write(first).await.unwrap(), Outcome::Replayed);
    assert_eq!(s.events.event_count(1).await.unwrap(), 1);
    assert!(IDEMPOTENCY_WINDOW >= jiff::SignedDuration::from_hours(24));
}

async fn a_new_name_past_the_limit_is_refused(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let limited = |name: &str| EventWrite {
        name_limit: 2,
        ..event(1, at(NOON), name, 1, None)
    };
    store(&s, vec![limited("a")]).await;
    store(&s, vec![limited("b")]).await;
    assert_eq!(
        s.events.write(limited("c")).await.unwrap(),
        Outcome::TooManyNames
    );
    // Names it has are still taken.
    assert_eq!(s.events.write(limited("a")).await.unwrap(), Outcome::Stored);
    assert_eq!(s.events.event_count(1).await.unwrap(), 3);
}

async fn export_yields_events_in_time_order_filtered(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    // Stored out of time order, in separate writes, past one export batch in all.
    for chunk in [vec![30, 10, 50], vec![20, 40], vec![10]] {
        let writes = chunk
            .into_iter()
            .map(|t| event(1, at(NOON + t), &format!("e{t}"), 1, Some(t)))
            .collect();
        store(&s, writes).await;
    }
    let bulk = (0..3000).map(|i| event(1, at(NOON + 100 + i), "bulk", 1, None));
    store(&s, bulk.collect()).await;
    store(&s, vec![event(2, at(NOON + 15), "other", 1, None)]).await;

    let rows = |filter: ExportFilter| {
        let batches = s.events.export(1, filter);
        async move {
            let batches: Vec<_> = batches.collect().await;
            let mut rows = Vec::new();
            for b in batches {
                rows.extend(b.unwrap());
            }
            rows
        }
    };
    let all = rows(ExportFilter::default()).await;
    assert_eq!(all.len(), 3006);
    assert!(
        all.windows(2).all(|w| w[0].at <= w[1].at),
        "not in time order"
    );
    let head: Vec<_> = all.iter().take(7).map(|e| e.value.event.as_str()).collect();
    assert_eq!(head, ["e10", "e10", "e20", "e30", "e40", "e50", "bulk"]);
    let window = ExportFilter {
        from: Some(at(NOON + 20)),
        to: Some(at(NOON + 50)),
        ..Default::default()
    };
    let names: Vec<_> = rows(window)
        .await
        .into_iter()
        .map(|e| e.value.event)
        .collect();
    assert_eq!(names, ["e20", "e30", "e40"]);
    let user = ExportFilter {
        user_id: Some(30),
        ..Default::default()
    };
    assert_eq!(rows(user).await.len(), 1);
    let name = ExportFilter {
        event: Some("bulk".into()),
        ..Default::default()
    };
    assert_eq!(rows(name).await.len(), 3000);
}

async fn retention_deletes_raw_events_and_keeps_the_counts(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let day = 86_400;
    let old: Vec<_> = (0..10)
        .map(|i| event(1, at(NOON - 10 * day + i), "old", 2, None))
        .collect();
    store(&s, old).await;
    store(&s, vec![event(1, at(NOON), "new", 3, None)]).await;
    let removed = s.events.purge_before(1, at(NOON - day)).await.unwrap();
    assert_eq!(removed, 10);
    assert_eq!(s.events.event_count(1).await.unwrap(), 1);
    let names: Vec<_> = s.events.export(1, ExportFilter::default()).collect().await;
    let names: Vec<_> = names.into_iter().flat_map(Result::unwrap).collect();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].value.event, "new");
    let periods = Periods::of_date(at(NOON).to_zoned(TimeZone::UTC).date());
    let r = s.events.stats(1, periods, None, None).await.unwrap();
    assert_eq!(r.overall.total, tally(11, 23), "totals outlive raw events");
    assert_eq!(s.events.last_event_at(1).await.unwrap(), Some(at(NOON)));

    s.events.purge_application(1).await.unwrap();
    assert_eq!(s.events.event_count(1).await.unwrap(), 0);
    let r = s.events.stats(1, periods, None, None).await.unwrap();
    assert_eq!(r.overall.total, tally(0, 0));
    assert_eq!(s.events.last_event_at(1).await.unwrap(), None);
}

fn app(num: u64, name: &str, token: &str) -> AppRecord {
    AppRecord {
        num,
        namespace: "default".into(),
        name: name.into(),
        spec: Default::default(),
        token: TokenHash::of(token),
        retained_since: None,
    }
}

fn owner(kind: TokenKind, key: &str) -> TokenOwner {
    TokenOwner {
        kind,
        key: key.into(),
    }
}

async fn applications_and_tokens_round_trip(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let (a, b) = (
        s.apps.next_app_num().await.unwrap(),
        s.apps.next_app_num().await.unwrap(),
    );
    assert!(a != 0 && b != 0 && a != b, "ids {a} and {b}");
    let shop = app(a, "shop", "t-shop");
    s.apps
        .put_app("default/shop".into(), shop.clone(), None)
        .await
        .unwrap();
    let web = app(b, "web", "t-web");
    s.apps
        .put_app("default/web".into(), web.clone(), None)
        .await
        .unwrap();
    let beat = owner(TokenKind::Heartbeat, "default/nightly");
    let s_apps = &s.apps;
    s_apps
        .put_token(TokenHash::of("t-beat"), beat.clone(), None)
        .await
        .unwrap();
    // A rotated token replaces the old one.
    let rotated = AppRecord {
        token: TokenHash::of("t-shop-2"),
        ..shop.clone()
    };
    let old = Some(shop.token);
    s_apps
        .put_app("default/shop".into(), rotated.clone(), old)
        .await
        .unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    let get = s.apps.get_app("default/shop".into()).await.unwrap();
    assert_eq!(get, Some(rotated.clone()));
    assert_eq!(s.apps.get_app("default/none".into()).await.unwrap(), None);
    let mut names: Vec<_> = s.apps.load_apps().await.unwrap();
    names.sort_by_key(|r| r.num);
    assert_eq!(names, [rotated.clone(), web.clone()]);
    let mut tokens = s.apps.load_tokens().await.unwrap();
    tokens.sort_by(|x, y| x.1.key.cmp(&y.1.key));
    let application = |key: &str| owner(TokenKind::Application, key);
    assert_eq!(
        tokens,
        [
            (TokenHash::of("t-beat"), beat),
            (TokenHash::of("t-shop-2"), application("default/shop")),
            (TokenHash::of("t-web"), application("default/web")),
        ]
    );
    let c = s.apps.next_app_num().await.unwrap();
    assert!(c != a && c != b, "an id was given twice across a reopen");

    // Retained: the record stays, marked; its token goes.
    let now = Timestamp::now();
    let retained = s.apps.retain_app("default/shop".into(), now).await.unwrap();
    assert_eq!(retained.unwrap().retained_since, Some(now));
    let kept = s
        .apps
        .get_app("default/shop".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.retained_since, Some(now));
    // Deleted: record and token go.
    let deleted = s.apps.delete_app("default/web".into()).await.unwrap();
    assert_eq!(deleted, Some(web));
    assert_eq!(s.apps.delete_app("default/web".into()).await.unwrap(), None);
    s.apps.remove_token(TokenHash::of("t-beat")).await.unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    assert!(s.apps.load_tokens().await.unwrap().is_empty());
    let left = s.apps.load_apps().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].retained_since, Some(now));
}

fn monitor(name: &str) -> MonitorDef {
    DefRecord {
        grace_secs: 60,
        origin: Origin::Manifest,
        retain_on_delete: true,
        ..DefRecord::sample(&format!("default/{name}"), 3600, Timestamp::now())
    }
    .into()
}

fn ping(kind: PingKind, body: &str) -> PingInput {
    PingInput {
        kind,
        exit_code: (kind == PingKind::Fail).then_some(3),
        source: Some("192.0.2.7".into()),
        user_agent: Some("contract".into()),
        body: Some(body.into()),
        rid: None,
        stopped_alert: None,
    }
}

async fn monitor_state_pings_and_timeline_survive_a_reopen(open: OpenServices) {
    let dir = tempfile::tempdir().unwrap();
    let written = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let e = &core.engine;
            e.upsert(monitor("nightly")).await.unwrap();
            for (i, kind) in [PingKind::Success, PingKind::Fail, PingKind::Success]
                .into_iter()
                .cycle()
                .take(7)
                .enumerate()
            {
                e.ping("default/nightly", ping(kind, &format!("run {i}")))
                    .await
                    .unwrap();
            }
            let m = e.get("default/nightly").unwrap();
            let pings = e.pings(m.num, 10).await.unwrap();
            let timeline = e.transitions(m.num, 10).await.unwrap();
            (m, pings, timeline)
        })
    })
    .await;
    let (m, pings, timeline) = &written;
    assert_eq!(m.state.state, State::Up);
    assert_eq!(m.state.pings, 7);
    // Newest first, and only as many as the history keeps.
    let seqs: Vec<u64> = pings.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [7, 6, 5, 4, 3]);
    assert_eq!(pings[0].body.as_deref(), Some("run 6"));
    assert_eq!(pings[2].kind, PingKind::Fail);
    assert_eq!(pings[2].exit_code, Some(3));
    let states: Vec<State> = timeline.iter().map(|t| t.to).collect();
    assert_eq!(states[..2], [State::Up, State::Down]);

    let (read, gone) = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let e = &core.engine;
            let m = e.get("default/nightly").unwrap();
            let read = (
                m.clone(),
                e.pings(m.num, 10).await.unwrap(),
                e.transitions(m.num, 10).await.unwrap(),
            );
            // Deleted with its data retained: its last record is kept for a re-creation.
            e.remove("default/nightly").await.unwrap();
            (read, e.get("default/nightly"))
        })
    })
    .await;
    assert_eq!(read, written, "monitor, pings and timeline after a reopen");
    assert_eq!(gone, None);

    let retained = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let retained = core.engine.retained("default/nightly").await;
            let all = core.engine.retained_all().await.unwrap();
            (core.engine.get("default/nightly"), retained, all)
        })
    })
    .await;
    assert_eq!(retained.0, None, "a removed monitor came back");
    let kept = retained.1.expect("the retained record");
    assert_eq!((kept.num, kept.state.pings), (written.0.num, 7));
    assert_eq!(retained.2, vec![kept], "every retained record is listed");
}

/// Monitor `ns/job` of the Kubernetes object with uid `uid`.
fn of_object(uid: &str, retain: bool) -> MonitorDef {
    DefRecord {
        id: uid.into(),
        origin: Origin::Kubernetes,
        retain_on_delete: retain,
        ..DefRecord::sample("ns/job", 3600, Timestamp::now())
    }
    .into()
}

/// A monitor belongs to its object: another object of its name (deleted and created again
/// while no operator looked) gets a new monitor, the old one's history goes with it (or is
/// picked up, under `Retain`), and one recorded without a uid takes its object's.
async fn an_object_created_again_under_its_name_starts_afresh(open: OpenServices) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let e = &core.engine;
            let old = e.upsert(of_object("uid-1", false)).await.unwrap();
            e.ping("ns/job", ping(PingKind::Fail, "failed"))
                .await
                .unwrap();
            let new = e.upsert(of_object("uid-2", false)).await.unwrap();
            (old, new)
        })
    })
    .await;
    assert_ne!(new.num, old.num);
    assert_eq!((new.state.state, new.state.pings), (State::New, 0));
    let (stored, old_pings, old_timeline, kept) = with_services(open, dir.path(), move |core| {
        Box::pin(async move {
            let e = &core.engine;
            (
                e.get("ns/job"),
                e.pings(old.num, 10).await.unwrap(),
                e.transitions(old.num, 10).await.unwrap(),
                e.retained("ns/job").await,
            )
        })
    })
    .await;
    assert_eq!(stored, Some(new.clone()), "the new monitor after a reopen");
    assert!(old_pings.is_empty() && old_timeline.is_empty());
    assert_eq!(kept, None);

    // Kept by `Retain`: the next object picks the history up under the same number.
    let retained = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let e = &core.engine;
            e.upsert(of_object("uid-2", true)).await.unwrap();
            e.ping("ns/job", ping(PingKind::Success, "ok"))
                .await
                .unwrap();
            e.upsert(of_object("uid-3", true)).await.unwrap()
        })
    })
    .await;
    assert_eq!((retained.num, retained.state.pings), (new.num, 1));
    assert_eq!(retained.def.id, "uid-3");

    // Recorded without a uid (its id is its key): taken over, and the uid recorded.
    let adopted = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let e = &core.engine;
            e.upsert(of_object("uid-3", false)).await.unwrap();
            e.remove("ns/job").await.unwrap();
            let unnamed = e.upsert(of_object("ns/job", false)).await.unwrap();
            e.ping("ns/job", ping(PingKind::Success, "ok"))
                .await
                .unwrap();
            (
                unnamed.num,
                e.upsert(of_object("uid-4", false)).await.unwrap(),
            )
        })
    })
    .await;
    assert_eq!((adopted.1.num, adopted.1.state.pings), (adopted.0, 1));
    let reread = with_services(open, dir.path(), |core| {
        Box::pin(async move { core.engine.get("ns/job") })
    })
    .await;
    assert_eq!(reread.map(|m| m.def.id), Some("uid-4".to_string()));
}

/// A channel that takes every alert and remembers it, as `(alert id, target)`.
#[derive(Default)]
struct Courier(std::sync::Mutex<Vec<String>>);

impl Courier {
    fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Deliver for Courier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        _target: &'a Target,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        self.0.lock().unwrap().push(alert.id.clone());
        Box::pin(async { Ok(()) })
    }
}

/// Waits until `courier` has taken `n` alerts; returns them.
async fn delivered(courier: &Courier, n: usize) -> Vec<String> {
    let what = format!("{n} alerts delivered");
    crate::helpers::wait_for(&what, Duration::from_secs(30), || {
        let ids = courier.ids();
        async move { (ids.len() >= n).then_some(ids) }
    })
    .await
}

async fn an_alert_is_queued_with_its_state_and_delivered_once(open: OpenServices) {
    let dir = tempfile::tempdir().unwrap();
    let alerting = || -> MonitorDef {
        DefRecord {
            targets: vec![Target::Webhook {
                url: "http://alerts.invalid/hook".into(),
            }],
            ..monitor("backup").to_record()
        }
        .into()
    };
    // Down with nobody delivering: the alert waits in the outbox, durable with the state.
    with_services(open, dir.path(), move |core| {
        Box::pin(async move {
            let e = &core.engine;
            e.upsert(alerting()).await.unwrap();
            e.ping("default/backup", ping(PingKind::Success, "ok"))
                .await
                .unwrap();
            e.ping("default/backup", ping(PingKind::Fail, "disk full"))
                .await
                .unwrap();
        })
    })
    .await;
    // Delivered after a reopen; then the recovery, which the target's queue sends only
    // after the first delivery is recorded.
    let first = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let courier = Arc::new(Courier::default());
            core.deliver_alerts(courier.clone());
            delivered(&courier, 1).await;
            let e = &core.engine;
            e.ping("default/backup", ping(PingKind::Success, "ok"))
                .await
                .unwrap();
            delivered(&courier, 2).await
        })
    })
    .await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first[0] != first[1], "{first:?}");
    // Reopened again: nothing delivered is sent again; a new incident is.
    let second = with_services(open, dir.path(), |core| {
        Box::pin(async move {
            let courier = Arc::new(Courier::default());
            core.deliver_alerts(courier.clone());
            let e = &core.engine;
            e.ping("default/backup", ping(PingKind::Fail, "again"))
                .await
                .unwrap();
            delivered(&courier, 1).await;
            core.flush().await.unwrap();
            courier.ids()
        })
    })
    .await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(!first.contains(&second[0]), "sent twice: {second:?}");
}

/// The contract's tests for one backend, as a module named after it.
macro_rules! contract {
    ($backend:ident => $open:ident, $services:ident, $monitors:ident) => {
        contract!($backend => $open, $services; $monitors);
    };
    ($backend:ident => $open:ident, $services:ident $(; $monitors:ident)?) => {
        mod $backend {
            contract!(@tests $services;
                monitor_state_pings_and_timeline_survive_a_reopen,
                an_alert_is_queued_with_its_state_and_delivered_once,
                an_object_created_again_under_its_name_starts_afresh,
            );
            contract!(@tests $open;
                acknowledged_writes_are_there_after_a_reopen,
                counts_and_weights_fall_in_their_periods,
                many_concurrent_writes_are_all_counted_once,
                an_idempotency_key_answers_retries_and_refuses_other_events,
                a_new_name_past_the_limit_is_refused,
                export_yields_events_in_time_order_filtered,
                retention_deletes_raw_events_and_keeps_the_counts,
                applications_and_tokens_round_trip,
            );
            $(
                contract!(@engine $monitors;
                    a_committed_round_is_there_after_a_reopen,
                    ping_history_is_newest_first_and_cut_to_what_is_kept,
                    a_timeline_is_trimmed_to_its_newest_entries,
                    a_retained_monitor_keeps_its_record_and_history,
                    a_state_round_after_a_whole_one_is_there_merged_after_a_reopen,
                    a_whole_round_after_a_state_round_wins,
                    a_deleted_monitor_leaves_no_state_behind,
                    a_retained_record_carries_the_newest_state,
                    a_delivery_is_claimed_and_finished_once_across_a_reopen,
                    a_claimed_delivery_never_finished_is_pending_after_a_restart,
                    a_retry_keeps_its_backoff_and_ends_the_claim,
                );
            )?
        }
    };
    (@tests $open:ident; $($test:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::$open).await
            }
        )*
    };
    (@engine $open:ident; $($test:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::engine::$test(super::$open).await
            }
        )*
    };
}

contract!(on_sled => open_sled, services_on_sled, monitors_on_sled);
contract!(on_postgres => open_postgres, services_on_postgres, monitors_on_postgres);
