//! Leadership by a PostgreSQL advisory lock, held on a connection of its own.
//!
//! A session-level advisory lock belongs to the session that took it: it is released the
//! moment the server ends that session. So the lock is exactly as alive as the leader's
//! connection, and the connection is made to die with the leader:
//! - a killed process closes its socket, and the server ends the session at once;
//! - a vanished host is noticed by the server's TCP keepalives (set short for this
//!   session);
//! - a stalled process (a long pause, SIGSTOP) still has a kernel that answers keepalives,
//!   so the holder proves it is alive by a query every [`Timing::check_every`], and the
//!   server ends a session idle for [`Timing::idle_limit`] (`idle_session_timeout`).
//!
//! The pool's connections are not used: a pool recycles and replaces connections, and a
//! lock must not move with them. Waiting replicas try the lock every
//! [`Timing::retry_every`]; the winner takes the leader row over (the generation every
//! leader-only write is fenced with, [`super::leader`]).
//!
//! The holder proves its session alive with a query every [`Timing::check_every`], from
//! the moment it wins the lock, in a task of its own: taking office (catching up with the
//! predecessor's rounds, declaring thousands of manifests) may take longer than
//! [`Timing::idle_limit`], and a session left idle meanwhile would be ended by the server
//! and the lock handed to another replica. When
//! that fails (the query takes longer than [`Timing::check_within`], the connection
//! ends), it reconnects and takes the lock back if, and only if, nobody took the leader
//! row over meanwhile: a database restart does not cost the leader its leadership, and a
//! holder whose lock went to another replica learns so and stops. Between the two, its
//! leader-only writes are refused by the fence if someone else leads. A holder that was
//! stalled past the idle limit stops at once.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{DatabaseUrl, PgError, describe};
use crate::core::leadership::{Elector, LeadershipError, Term};

/// The advisory lock's key: "hslead" in ASCII, so it is recognisable in `pg_locks` (the
/// migration lock is "hartslag").
pub const LOCK_KEY: i64 = 0x6873_6c65_6164;

/// How often things are tried and how long they may take.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often a waiting replica tries the lock.
    pub retry_every: Duration,
    /// How often the holder proves its session alive.
    pub check_every: Duration,
    /// Longest a liveness query may take before the holder gives up.
    pub check_within: Duration,
    /// A session idle this long is ended by the server (a stalled holder's lock is freed).
    pub idle_limit: Duration,
}

impl Default for Timing {
    /// A stalled leader's lock is free after 10 s, taken within a second after that.
    fn default() -> Self {
        Self {
            retry_every: Duration::from_secs(1),
            check_every: Duration::from_secs(2),
            check_within: Duration::from_secs(3),
            idle_limit: Duration::from_secs(10),
        }
    }
}

/// Seeks leadership through the advisory lock on `url`'s database.
#[derive(Debug, Clone)]
pub struct AdvisoryLock {
    url: DatabaseUrl,
    identity: String,
    timing: Timing,
}

impl AdvisoryLock {
    /// An elector for `identity` (see [`crate::core::leadership::identity`]).
    pub fn new(url: DatabaseUrl, identity: String, timing: Timing) -> Self {
        Self {
            url,
            identity,
            timing,
        }
    }

    async fn connect(&self) -> Result<Session, String> {
        let tls = super::connect::tls(&self.url).map_err(|e| e.to_string())?;
        let config = session_config(&self.url, &self.timing);
        let (client, connection) = config
            .connect(tls)
            .await
            .map_err(|e| self.url.redact(&describe(&e)))?;
        let (ended_tx, ended) = watch::channel(None);
        tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the database closed the connection".to_string(),
                Err(e) => describe(&e),
            };
            let _ = ended_tx.send(Some(why));
        });
        let session = Session { client, ended };
        session.limit_idleness(&self.timing).await;
        Ok(session)
    }

    /// Tries the lock until it is ours, on one connection (a new one after a failure).
    async fn win(&self) -> Result<Session, LeadershipError> {
        let mut last_problem: Option<String> = None;
        let mut last_holder: Option<String> = None;
        loop {
            let session = match self.connect().await {
                Ok(s) => s,
                Err(why) => {
                    if last_problem.as_ref() != Some(&why) {
                        tracing::warn!(error = %why, "cannot connect to seek the leadership; retrying");
                        last_problem = Some(why);
                    }
                    tokio::time::sleep(self.timing.retry_every).await;
                    continue;
                }
            };
            loop {
                match session.try_lock().await {
                    Ok(true) => return Ok(session),
                    Ok(false) => {
                        let holder = session.holder().await;
                        if holder != last_holder {
                            tracing::info!(
                                leader = holder.as_deref().unwrap_or("unknown"),
                                "another replica leads; following"
                            );
                            last_holder = holder;
                        }
                    }
                    Err(e)
                        if e.code()
                            == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
                    {
                        return Err(LeadershipError::Refused(self.url.redact(&describe(&e))));
                    }
                    Err(e) => {
                        tracing::warn!(error = %self.url.redact(&describe(&e)), "lost the connection while waiting to lead; reconnecting");
                        break;
                    }
                }
                tokio::time::sleep(self.timing.retry_every).await;
            }
        }
    }

    /// After the lock's connection failed: takes the lock again on a new connection, as
    /// long as nobody took the leader row over meanwhile (`generation` is still current).
    /// While the database cannot be reached nobody else can take over either, so this
    /// keeps trying; a restarted database does not cost the leader its leadership.
    async fn regain(&self, generation: u64) -> Result<Session, String> {
        loop {
            tokio::time::sleep(self.timing.retry_every).await;
            let Ok(session) = self.connect().await else {
                continue;
            };
            match session.try_lock().await {
                Ok(true) => {}
                Ok(false) => return Err("another replica holds the leader lock".into()),
                Err(_) => continue,
            }
            match session.generation().await {
                Ok(current) if current == generation => return Ok(session),
                Ok(current) => {
                    return Err(format!(
                        "another replica led meanwhile (generation {current})"
                    ));
                }
                Err(_) => continue,
            }
        }
    }

    async fn campaign_once(self) -> Result<Term, LeadershipError> {
        loop {
            let session = self.win().await?;
            match super::leader::take_over(&session.client, &self.identity).await {
                Ok(generation) => {
                    let holding = tokio::spawn(hold(self.clone(), session, generation));
                    // The term ends the task (and so frees the lock) when it is dropped.
                    let held = EndOnDrop(holding.abort_handle());
                    let lost = async move {
                        holding
                            .await
                            .unwrap_or_else(|e| format!("the leader lock's holder ended: {e}"))
                    };
                    tracing::info!(identity = %self.identity, generation, "holding the leader lock");
                    return Ok(Term::new(generation, lost, held));
                }
                Err(e) => {
                    // Dropping the session frees the lock for whoever comes next.
                    tracing::warn!(error = %self.url.redact(&describe(&e)), "won the lock but cannot take the leader row over; trying again");
                    drop(session);
                    tokio::time::sleep(self.timing.retry_every).await;
                }
            }
        }
    }
}

impl Elector for AdvisoryLock {
    fn campaign(self: Box<Self>) -> BoxFuture<'static, Result<Term, LeadershipError>> {
        Box::pin(self.campaign_once())
    }
}

/// Ends the task that holds the lock's session when the term is dropped.
struct EndOnDrop(tokio::task::AbortHandle);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The connection the lock lives on.
struct Session {
    client: tokio_postgres::Client,
    /// Why the connection ended, once it has.
    ended: watch::Receiver<Option<String>>,
}

impl Session {
    /// Asks the server to end this session when it sits idle (a stalled holder) and to
    /// probe its socket often. Servers before PostgreSQL 14 lack `idle_session_timeout`;
    /// keepalives alone then free a vanished holder's lock, a stalled one keeps it.
    async fn limit_idleness(&self, timing: &Timing) {
        let idle_ms = timing.idle_limit.as_millis();
        let settings = [
            format!("SET idle_session_timeout = {idle_ms}"),
            "SET tcp_keepalives_idle = 5".to_string(),
            "SET tcp_keepalives_interval = 2".to_string(),
            "SET tcp_keepalives_count = 3".to_string(),
        ];
        for sql in settings {
            if let Err(e) = self.client.batch_execute(&sql).await {
                tracing::warn!(statement = %sql, error = %describe(&e), "the database refused a setting of the leader lock's session");
            }
        }
    }

    async fn try_lock(&self) -> Result<bool, tokio_postgres::Error> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await?;
        Ok(row.get(0))
    }

    /// The leader row's generation.
    async fn generation(&self) -> Result<u64, tokio_postgres::Error> {
        let row = self
            .client
            .query_one("SELECT generation FROM hartslag_leader WHERE id = 1", &[])
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Who holds the leader row, for the log.
    async fn holder(&self) -> Option<String> {
        let row = self
            .client
            .query_opt("SELECT holder FROM hartslag_leader WHERE id = 1", &[])
            .await
            .ok()??;
        row.get(0)
    }
}

/// Resolves with the reason once the holder's session is gone or stops answering and
/// cannot be had back as it was.
async fn hold(elector: AdvisoryLock, mut session: Session, generation: u64) -> String {
    loop {
        let failure = match watch_liveness(&mut session, elector.timing).await {
            Liveness::Stalled(why) => return why,
            Liveness::Failed(why) => why,
        };
        tracing::warn!(reason = %elector.url.redact(&failure), "the connection holding the leader lock failed; taking the lock back unless another replica took over");
        match elector.regain(generation).await {
            Ok(back) => {
                tracing::info!(generation, "holding the leader lock again");
                session = back;
            }
            Err(why) => return format!("{failure}; {why}"),
        }
    }
}

/// How a holder's session stopped serving it.
enum Liveness {
    /// This process was stalled past the idle limit: the server has let the lock go.
    Stalled(String),
    /// The connection failed or stopped answering.
    Failed(String),
}

/// Proves the session alive every [`Timing::check_every`] until it is not.
async fn watch_liveness(session: &mut Session, timing: Timing) -> Liveness {
    let mut tick = tokio::time::interval(timing.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_alive = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = session.ended.changed() => {
                let why = session.ended.borrow().clone().unwrap_or_default();
                return Liveness::Failed(format!("the connection holding the leader lock ended: {why}"));
            }
        }
        // A process that was stopped wakes up here late: by then the server has ended the
        // session and another replica may lead. Do not wait for a query to say so.
        let gap = last_alive.elapsed();
        if gap >= timing.idle_limit {
            return Liveness::Stalled(format!(
                "this process was stalled for {}s, longer than the leader lock outlives an idle session ({}s)",
                gap.as_secs(),
                timing.idle_limit.as_secs()
            ));
        }
        match tokio::time::timeout(timing.check_within, session.client.simple_query("SELECT 1"))
            .await
        {
            Ok(Ok(_)) => last_alive = Instant::now(),
            Ok(Err(e)) => {
                return Liveness::Failed(format!(
                    "the leader lock's connection failed: {}",
                    describe(&e)
                ));
            }
            Err(_) => {
                return Liveness::Failed(format!(
                    "the database did not answer the leader lock's liveness query within {}s",
                    timing.check_within.as_secs()
                ));
            }
        }
    }
}

/// The pool's tuning, with keepalives that notice a vanished database within seconds.
fn session_config(url: &DatabaseUrl, timing: &Timing) -> tokio_postgres::Config {
    let mut config = super::connect::tuned(url);
    config
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(timing.check_within * 2)
        .application_name("hartslag-leader-lock");
    config
}

/// Takes the leader row over for `holder`, whose leadership something else decided (a
/// Kubernetes Lease), on a connection of its own; returns the generation to lead under.
pub async fn take_over(url: &DatabaseUrl, holder: &str) -> Result<u64, PgError> {
    let tls = super::connect::tls(url)?;
    let fail = |e: tokio_postgres::Error| PgError::Connect {
        url: url.to_string(),
        detail: url.redact(&describe(&e)),
    };
    let (client, connection) = super::connect::tuned(url)
        .connect(tls)
        .await
        .map_err(fail)?;
    let task = tokio::spawn(connection);
    let generation = super::leader::take_over(&client, holder)
        .await
        .map_err(fail);
    drop(client);
    let _ = task.await;
    generation
}
