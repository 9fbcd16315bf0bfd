//! `hartslag migrate --from-sled DIR --to postgres://...`: copies what one sled directory
//! holds into a PostgreSQL database, part by part ([`rows::Part`]), each part in one
//! transaction that also records it as copied, with a sum of the rows it read
//! ([`digest::SourceDigest`]). So the copy is idempotent: a second run copies nothing and says
//! so, and a run killed midway copies the part it was in again from scratch (nothing of it
//! was committed). A second run first reads every part copied before again, and refuses
//! (before copying anything) when one no longer matches its sum: the directory was used
//! again after it was copied, and the database lacks what was written since.
//!
//! It refuses a directory a running hartslag holds (sled's lock), and a database that
//! holds data it did not copy itself: another directory's copy, or rows written by a
//! hartslag already running on it. It copies for one installation, as the server that
//! will run on the database names itself: a database that belongs to another is refused
//! before anything is copied, and one that belongs to none is recorded as this one's
//! before the first row goes in ([`from_sled`]). The directory is read through the sled backend's own
//! decoding ([`crate::core::store::dump`]), the database written through the PostgreSQL
//! backend's own encoding ([`crate::core::store_pg::copy`]).

pub mod digest;
pub mod rows;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::core::storage::StorageError;
use crate::core::store::{Store, StoreError, StoreOptions};
use crate::core::store_pg::copy::{self, Marker, Target};
use crate::core::store_pg::{DatabaseUrl, PgError};
use digest::{Form, SourceDigest};
use rows::{Part, Row};

/// Batches of rows in flight between the directory's reader and the database.
const IN_FLIGHT: usize = 4;

/// Why a migration stopped. Nothing of a part that failed was kept.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The directory holds no sled database.
    #[error("{dir} holds no hartslag data (no sled database in it): check --from-sled")]
    NotSled {
        /// The directory.
        dir: String,
    },
    /// A running hartslag holds the directory.
    #[error(
        "the sled directory {dir} is in use by a running hartslag (sled's lock is held): stop it first (in Kubernetes, scale the Deployment to 0 replicas) and run migrate again"
    )]
    Locked {
        /// The directory.
        dir: String,
    },
    /// The directory could not be read.
    #[error("cannot read the sled directory {dir}: {source}")]
    Source {
        /// The directory.
        dir: String,
        /// Why.
        source: StoreError,
    },
    /// The database could not be opened or its schema brought up to date.
    #[error(transparent)]
    Database(#[from] PgError),
    /// Another migration is copying into the same database.
    #[error("another hartslag migrate is copying into {url}: wait for it to end")]
    Busy {
        /// The database, without its password.
        url: String,
    },
    /// The database holds data this migration did not copy.
    #[error(
        "refusing to copy into {url}: it holds data this migration did not copy ({what}); migrate into a new, empty database, before any hartslag runs on it"
    )]
    Foreign {
        /// The database, without its password.
        url: String,
        /// What was found.
        what: String,
    },
    /// The directory changed after an earlier run copied a part of it.
    #[error(
        "the sled directory {dir} changed since its {part} were copied into {url} at {at} ({then} then, {now} now): the database lacks what was written to the directory since, and a part copied once is never copied again. To move the directory as it is now, migrate it again into a new, empty database; to keep using the directory, start hartslag without the database on it (what was written to PostgreSQL since is not in it).{form}"
    )]
    Changed {
        /// The directory.
        dir: String,
        /// The part that changed.
        part: &'static str,
        /// The database, without its password.
        url: String,
        /// When the part was copied.
        at: Timestamp,
        /// The part's rows then, as [`SourceDigest::describe`] says it.
        then: String,
        /// And now.
        now: String,
        /// A note when the sum was recorded in the debug form ([`Form::Debug`]).
        form: &'static str,
    },
    /// The database belongs to another installation than the one this migration is for.
    #[error(
        "refusing to copy into {url}: it belongs to the installation {theirs:?} (claimed by {claimed_by} at {since}), and this migration is for the installation {ours:?} (--installation, HARTSLAG_INSTALLATION): the two installations' Applications, Heartbeats and tokens would be mixed in one database, and each one's leader would remove the other's. Nothing was copied. Migrate into a database of this installation's own; if {theirs:?} is this installation under another name, run migrate again with --installation {theirs:?}"
    )]
    OtherInstallation {
        /// The database, without its password.
        url: String,
        /// The installation this migration is for.
        ours: String,
        /// The installation the database belongs to.
        theirs: String,
        /// Who claimed the database for it.
        claimed_by: String,
        /// When.
        since: Timestamp,
    },
    /// Copying a part failed; nothing of it was kept.
    #[error("copying the {part} failed, nothing of them was kept: {source}")]
    Copy {
        /// The part.
        part: &'static str,
        /// Why.
        source: StorageError,
    },
}

/// What became of one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    /// Copied now: rows per table, and how long the part took.
    Copied(Vec<(&'static str, u64)>, Duration),
    /// Copied by an earlier run: rows, and when.
    Before {
        /// Rows it copied.
        copied: u64,
        /// When it finished.
        at: Timestamp,
    },
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The directory's identity, as the marker table records it.
    pub source: String,
    /// The installation the database belongs to, and whether this run recorded it.
    pub installation: (String, bool),
    /// Each part, in the order copied.
    pub parts: Vec<(Part, PartOutcome)>,
    /// How long the run took.
    pub took: Duration,
}

impl Report {
    /// Rows copied by this run.
    pub fn copied(&self) -> u64 {
        self.parts
            .iter()
            .map(|(_, o)| match o {
                PartOutcome::Copied(tables, _) => tables.iter().map(|(_, n)| n).sum(),
                PartOutcome::Before { .. } => 0,
            })
            .sum()
    }
}

/// `n rows`, or `1 row`.
fn rows(n: u64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{n} rows")
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (part, outcome) in &self.parts {
            match outcome {
                PartOutcome::Copied(tables, took) => {
                    let n: u64 = tables.iter().map(|(_, n)| n).sum();
                    write!(f, "{}: copied {}", part.name(), rows(n))?;
                    if !tables.is_empty() {
                        let each: Vec<String> =
                            tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
                        write!(f, " ({})", each.join(", "))?;
                    }
                    writeln!(f, " in {:.1} s", took.as_secs_f64())?;
                }
                PartOutcome::Before { copied, at } => writeln!(
                    f,
                    "{}: nothing to copy, {} copied from this directory at {at}",
                    part.name(),
                    rows(*copied)
                )?,
            }
        }
        let copied_now = self
            .parts
            .iter()
            .any(|(_, o)| matches!(o, PartOutcome::Copied(..)));
        if !copied_now {
            writeln!(
                f,
                "nothing copied: every part was copied from this directory before, and it has not changed since"
            )?;
        }
        let (installation, now) = &self.installation;
        match now {
            true => writeln!(
                f,
                "installation: the database now belongs to the installation {installation:?}: start hartslag on it with that --installation (HARTSLAG_INSTALLATION)"
            )?,
            false => writeln!(
                f,
                "installation: the database belongs to the installation {installation:?}"
            )?,
        }
        write!(
            f,
            "{} copied in {:.1} s",
            rows(self.copied()),
            self.took.as_secs_f64()
        )
    }
}

/// Copies everything in the sled directory `from` into `to` that an earlier run did not,
/// for the installation `installation`: a database that belongs to another one is refused
/// before anything is copied, and one that belongs to none yet is recorded as this one's
/// before the first row goes in (as a starting replica claims it,
/// [`crate::core::store_pg::claim`]), so that no other installation's replica starts on
/// the copy and removes what it does not declare.
pub async fn from_sled(
    from: &Path,
    to: &DatabaseUrl,
    installation: &str,
) -> Result<Report, MigrateError> {
    let started = Instant::now();
    let dir = from.display().to_string();
    let store = open_source(from.to_path_buf()).await?;
    let source = store.source_id().map_err(|source| MigrateError::Source {
        dir: dir.clone(),
        source,
    })?;
    let mut target = copy::target(to).await?.ok_or_else(|| MigrateError::Busy {
        url: to.to_string(),
    })?;
    let owner = |e| MigrateError::Copy {
        part: "installation",
        source: e,
    };
    // Named first: "another installation's" says more than "holds data it did not copy".
    if let Some(found) = target.installation().await.map_err(owner)?
        && let Some(refused) = not_ours(found, to, installation)
    {
        return Err(refused);
    }
    let done = plan(&target, to, &source).await?;
    unchanged(&store, &target, &done, &dir, to).await?;
    // Only once the database is known to take this copy: a refused one keeps no claim
    // (it may hold an earlier release's data, whose installation has not claimed it yet).
    let holder = format!(
        "hartslag migrate from {dir} on {}",
        crate::core::store_pg::holder()
    );
    let claimed = target.claim(installation, &holder).await.map_err(owner)?;
    let recorded_now = claimed.now;
    if let Some(refused) = not_ours(claimed, to, installation) {
        return Err(refused);
    }
    if recorded_now {
        tracing::info!(%installation, "the database now belongs to this installation");
    }
    let mut parts = Vec::new();
    for part in Part::ALL {
        if let Some(m) = done.iter().find(|m| m.part == part.name()) {
            let before = PartOutcome::Before {
                copied: m.copied,
                at: m.finished_at,
            };
            parts.push((part, before));
            continue;
        }
        let part_started = Instant::now();
        let tables = copy_part(&store, &mut target, &source, part, &dir).await?;
        tracing::info!(part = part.name(), ?tables, "copied a part");
        parts.push((part, PartOutcome::Copied(tables, part_started.elapsed())));
    }
    Ok(Report {
        source,
        installation: (installation.to_string(), recorded_now),
        parts,
        took: started.elapsed(),
    })
}

/// The refusal of a database that belongs to another installation than `installation`.
fn not_ours(
    found: crate::core::store_pg::Installation,
    url: &DatabaseUrl,
    installation: &str,
) -> Option<MigrateError> {
    (found.name != installation).then(|| MigrateError::OtherInstallation {
        url: url.to_string(),
        ours: installation.to_string(),
        theirs: found.name,
        claimed_by: found.claimed_by,
        since: found.since,
    })
}

/// Opens the directory, refusing one that holds no sled database or that a running
/// hartslag holds (sled takes an exclusive lock on its files).
async fn open_source(dir: PathBuf) -> Result<Store, MigrateError> {
    let name = dir.display().to_string();
    if !dir.join("conf").is_file() {
        return Err(MigrateError::NotSled { dir: name });
    }
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, &StoreOptions::default()))
        .await
        .map_err(|e| MigrateError::Source {
            dir: name.clone(),
            source: StoreError::Thread(e.to_string()),
        })?;
    opened.map_err(|source| match &source {
        StoreError::Locked(_) => MigrateError::Locked { dir: name.clone() },
        _ => MigrateError::Source {
            dir: name.clone(),
            source,
        },
    })
}

/// The parts this directory already copied; refuses a database holding anything else.
async fn plan(
    target: &Target,
    url: &DatabaseUrl,
    source: &str,
) -> Result<Vec<Marker>, MigrateError> {
    let foreign = |what: String| MigrateError::Foreign {
        url: url.to_string(),
        what,
    };
    let failed = |source| MigrateError::Copy {
        part: "markers",
        source,
    };
    let markers = target.markers().await.map_err(failed)?;
    if let Some(other) = markers.iter().find(|m| m.source != source) {
        return Err(foreign(format!(
            "its {} were copied from another sled directory (source {}) at {}",
            other.part, other.source, other.finished_at
        )));
    }
    for part in Part::ALL {
        if markers.iter().any(|m| m.part == part.name()) {
            continue;
        }
        let occupied = target
            .occupied(part)
            .await
            .map_err(|source| MigrateError::Copy {
                part: part.name(),
                source,
            })?;
        if let Some(table) = occupied {
            return Err(foreign(format!(
                "table {table} has rows, and no migration from this directory copied the {}",
                part.name()
            )));
        }
    }
    Ok(markers)
}

/// Copies one part in one transaction: the directory is read on a blocking thread while
/// the database takes the rows read so far.
async fn copy_part(
    store: &Store,
    target: &mut Target,
    source: &str,
    part: Part,
    dir: &str,
) -> Result<Vec<(&'static str, u64)>, MigrateError> {
    let failed = |source| MigrateError::Copy {
        part: part.name(),
        source,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Row>>(IN_FLIGHT);
    let reader = store.clone();
    let now = Timestamp::now();
    let reading = tokio::task::spawn_blocking(move || {
        let mut digest = SourceDigest::new(Form::Stable);
        reader
            .dump(part, now, &mut |rows| {
                digest.add(&rows);
                tx.blocking_send(rows).is_ok()
            })
            .map(|()| digest)
    });
    let mut copy = target.begin(part).await.map_err(failed)?;
    while let Some(rows) = rx.recv().await {
        copy.write(rows).await.map_err(failed)?;
    }
    // Everything was read, or the part is not committed.
    let digest = match reading.await {
        Ok(Ok(digest)) => digest,
        Ok(Err(source)) => {
            return Err(MigrateError::Source {
                dir: dir.to_string(),
                source,
            });
        }
        Err(e) => {
            return Err(MigrateError::Source {
                dir: dir.to_string(),
                source: StoreError::Thread(e.to_string()),
            });
        }
    };
    copy.finish(source, &digest.text()).await.map_err(failed)
}

/// Refuses to go on when a part an earlier run copied (`done`) no longer holds what it
/// held then. The idempotency keys are not compared: which are within their 24 hours
/// changes with the clock alone, and a new key comes with a new event. A sum recorded in
/// the first, debug form ([`Form::Debug`]) is compared in that form and, once it matched,
/// recorded again in the stable one, which later releases compare alike.
async fn unchanged(
    store: &Store,
    target: &Target,
    done: &[Marker],
    dir: &str,
    url: &DatabaseUrl,
) -> Result<(), MigrateError> {
    for part in Part::ALL {
        if part == Part::Idempotency {
            continue;
        }
        let Some(marker) = done.iter().find(|m| m.part == part.name()) else {
            continue;
        };
        let Some(then) = &marker.digest else {
            tracing::warn!(
                part = part.name(),
                "copied by an earlier release, which kept no sum of the rows: not checked for changes since"
            );
            continue;
        };
        let form = SourceDigest::form_of(then);
        let [now, stable] = read_digests(store, part, form, dir).await?;
        if &now != then {
            return Err(MigrateError::Changed {
                dir: dir.to_string(),
                part: part.name(),
                url: url.to_string(),
                at: marker.finished_at,
                then: SourceDigest::describe(then),
                now: SourceDigest::describe(&now),
                form: match form {
                    Form::Stable => "",
                    Form::Debug => DEBUG_FORM_NOTE,
                },
            });
        }
        if form == Form::Debug {
            target
                .record_digest(&marker.source, part, &stable)
                .await
                .map_err(|source| MigrateError::Copy {
                    part: part.name(),
                    source,
                })?;
            tracing::info!(
                part = part.name(),
                "the sum an earlier release recorded matched; recorded again in the stable form"
            );
        }
    }
    Ok(())
}

/// What [`MigrateError::Changed`] adds for a sum recorded in the debug form.
const DEBUG_FORM_NOTE: &str = " The sum was recorded by an earlier release in a form that can differ between releases for the same rows: if the directory was not used since, the difference may come from the release alone; run the migrate of the release that copied it to check.";

/// Reads `part` of the directory again: its sum in `form`, and in the stable form.
async fn read_digests(
    store: &Store,
    part: Part,
    form: Form,
    dir: &str,
) -> Result<[String; 2], MigrateError> {
    let reader = store.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut digest = SourceDigest::new(form);
        let mut stable = SourceDigest::new(Form::Stable);
        reader
            .dump(part, Timestamp::now(), &mut |rows| {
                digest.add(&rows);
                if form != Form::Stable {
                    stable.add(&rows);
                }
                true
            })
            .map(|()| match form {
                Form::Stable => [digest.text(), digest.text()],
                Form::Debug => [digest.text(), stable.text()],
            })
    })
    .await;
    match read {
        Ok(Ok(texts)) => Ok(texts),
        Ok(Err(source)) => Err(MigrateError::Source {
            dir: dir.to_string(),
            source,
        }),
        Err(e) => Err(MigrateError::Source {
            dir: dir.to_string(),
            source: StoreError::Thread(e.to_string()),
        }),
    }
}
