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
//! leader-only write is fenced with, [`super::leader`]), unless the database came back
//! less than [`Timing::reclaim_grace`] ago: the holder's session ended with the restart,
//! not with the holder, which is reconnecting to take its lock back, so the winner lets
//! the lock go again and leaves the row alone until the grace is over.
//!
//! The holder proves its session alive with a query every [`Timing::check_every`], from
//! the moment it wins the lock, in a task of its own: taking office (catching up with the
//! predecessor's rounds, declaring thousands of manifests) may take longer than
//! [`Timing::idle_limit`], and a session left idle meanwhile would be ended by the server
//! and the lock handed to another replica. When
//! that fails (the query takes longer than [`Timing::check_within`], the connection
//! ends), it reconnects at once and every [`Timing::regain_every`] after, and takes the
//! lock back if, and only if, nobody took the leader row over meanwhile: a database
//! restart does not cost the leader its leadership, and a holder whose lock went to
//! another replica learns so and stops. Finding the lock held is not enough to stop: a
//! waiting replica may hold it for a moment during the grace; the generation decides. Between the two, its
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
    /// How often a holder whose lock's connection failed tries to take the lock back
    /// (the first try is at once): more often than waiting replicas try it.
    pub regain_every: Duration,
    /// How long after the database (re)started, or this replica's own connection came
    /// back, a waiting replica that wins the lock leaves the leader row to the replica
    /// that holds it, which is reconnecting: a database restart ends every session, the
    /// holder's too, without the holder having gone.
    pub reclaim_grace: Duration,
}

impl Default for Timing {
    /// A stalled leader's lock is free after 10 s, taken within a second after that.
    fn default() -> Self {
        Self {
            retry_every: Duration::from_secs(1),
            check_every: Duration::from_secs(2),
            check_within: Duration::from_secs(3),
            idle_limit: Duration::from_secs(10),
            regain_every: Duration::from_millis(250),
            reclaim_grace: Duration::from_secs(5),
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

    /// Tries the lock until it is ours, on one connection (a new one after a failure),
    /// and the leader row may be taken over ([`Timing::reclaim_grace`]).
    async fn win(&self) -> Result<Session, LeadershipError> {
        let mut last_problem: Option<String> = None;
        let mut last_holder: Option<String> = None;
        // Whether the database was out of reach since this replica last reached it, and
        // when it came back: the holder may be reconnecting since then.
        let mut lost = false;
        let mut back_at: Option<Instant> = None;
        let mut leaving = false;
        loop {
            let session = match self.connect().await {
                Ok(s) => s,
                Err(why) => {
                    if last_problem.as_ref() != Some(&why) {
                        tracing::warn!(error = %why, "cannot connect to seek the leadership; retrying");
                        last_problem = Some(why);
                    }
                    lost = true;
                    tokio::time::sleep(self.timing.retry_every).await;
                    continue;
                }
            };
            if std::mem::take(&mut lost) {
                back_at = Some(Instant::now());
            }
            loop {
                let attempt = match session.try_lock().await {
                    Ok(true) => match self.reconnecting_holder(&session, back_at).await {
                        Ok(None) => return Ok(session),
                        Ok(Some(holder)) => Ok(Some(holder)),
                        Err(e) => Err(e),
                    },
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(Some(holder)) => {
                        if !std::mem::replace(&mut leaving, true) {
                            tracing::info!(
                                leader = %holder,
                                grace_s = self.timing.reclaim_grace.as_secs(),
                                "the database came back moments ago; leaving the leader lock to the replica that led while it reconnects"
                            );
                        }
                    }
                    Ok(None) => {
                        leaving = false;
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
                        lost = true;
                        break;
                    }
                }
                tokio::time::sleep(self.timing.retry_every).await;
            }
        }
    }

    /// Who holds the leader row, if a replica that just won the lock must leave the row
    /// to it: it led before the database came back less than [`Timing::reclaim_grace`]
    /// ago (the server's start, or `back_at`, when this replica reached it again), so its
    /// session ended with the database, and it is reconnecting to take its lock back. On
    /// `Some` the lock is let go again.
    async fn reconnecting_holder(
        &self,
        session: &Session,
        back_at: Option<Instant>,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let grace = self.timing.reclaim_grace;
        let row = session
            .client
            .query_one(
                "SELECT generation, holder, \
                 (extract(epoch FROM now() - pg_postmaster_start_time()) * 1000)::bigint \
                 FROM hartslag_leader WHERE id = 1",
                &[],
            )
            .await?;
        let (generation, holder, up_ms): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
        let up = Duration::from_millis(u64::try_from(up_ms).unwrap_or(0));
        let came_back = up < grace || back_at.is_some_and(|at| at.elapsed() < grace);
        if generation <= 0 || holder == self.identity || !came_back {
            return Ok(None);
        }
        session.unlock().await?;
        Ok(Some(holder))
    }

    /// After the lock's connection failed: takes the lock again on a new connection, as
    /// long as nobody took the leader row over meanwhile (`generation` is still current).
    /// Tries at once and every [`Timing::regain_every`], more often than waiting replicas
    /// try the lock, which leave it to this holder for [`Timing::reclaim_grace`] after the
    /// database came back. While the database cannot be reached nobody else can take over
    /// either, so this keeps trying; a restarted database does not cost the leader its
    /// leadership. A lock held by another session alone does not end it (a waiting replica
    /// holds it for a moment while it checks the grace): a changed generation does.
    async fn regain(&self, generation: u64) -> Result<Session, String> {
        let mut session: Option<Session> = None;
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(self.timing.regain_every).await;
            }
            let current = match session.take() {
                Some(s) if s.ended.borrow().is_none() => s,
                _ => match self.connect().await {
                    Ok(s) => s,
                    Err(_) => continue,
                },
            };
            let locked = match current.try_lock().await {
                Ok(locked) => locked,
                Err(_) => continue,
            };
            match current.generation().await {
                Ok(now) if now != generation => {
                    return Err(format!(
                        "another replica holds the leader lock and led meanwhile (generation {now})"
                    ));
                }
                Ok(_) if locked => return Ok(current),
                Ok(_) => session = Some(current),
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

    /// Lets go of the lock taken once by [`Session::try_lock`].
    async fn unlock(&self) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await
            .map(|_| ())
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
        // A session that only stopped answering may still hold the lock on the server;
        // closing it lets the server free the lock for the new one.
        drop(session);
        tracing::warn!(reason = %elector.url.redact(&failure), "the connection holding the leader lock failed; taking the lock back unless another replica took over");
        session = match elector.regain(generation).await {
            Ok(back) => back,
            Err(why) => return format!("{failure}; {why}"),
        };
        tracing::info!(generation, "holding the leader lock again");
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
