//! Token files under `<data>/tokens/`: where standalone mode hands issued tokens to people.
//!
//! The store keeps only hashes, so the file is the one place the token text lives; it is
//! written with mode 0600 and replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::core::monitor::define::ping_url;
use crate::core::token::{Token, TokenError, TokenKind};

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading or writing failed.
    #[error("token file {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token file given by the user is empty or too short to be a secret.
    #[error("token file {0} must hold a token of at least 16 characters")]
    TooShort(PathBuf),
    /// A token file holds more than one word (a file that is no token file, or a
    /// token with a space or a line break inside).
    #[error("token file {0} must hold one token on one line, without spaces or control characters")]
    NotOneToken(PathBuf),
    /// No randomness.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file + rename), and
/// durably: the rename is only sure to survive a crash once the directory is synced. A
/// token file lost to a crash is issued anew at the next start, and the token already
/// handed out would stop working.
pub fn write_private(path: &Path, contents: &str) -> Result<(), TokenFileError> {
    let io = |source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = temporary_path(path);
    let written = write_new(&tmp, contents).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    crate::core::files::sync_parent(path).map_err(io)?;
    Ok(())
}

/// A temporary file beside `path` that no other write uses: two writers of one file (two
/// requests creating a monitor, each under the name it found free) must not write into
/// each other's temporary file, nor rename one away from under the other.
/// The name stays short whatever the file's: a name at the file system's limit (a
/// Heartbeat's may be long) would leave no room for a suffix.
fn temporary_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".writing-{}-{n}.tmp", std::process::id()))
}

/// Temporary files older than this are left from a write that never finished; younger
/// ones may be another replica's write (replicas on one database may share a data
/// directory), which takes milliseconds.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files in `dir` ([`temporary_path`]) that a process killed while
/// writing left behind; logs how many. Each holds a token no monitor has.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut removed = 0usize;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".writing-") && name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > STALE_TEMPORARY));
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed temporary token files an interrupted write left");
    }
}

/// Writes `contents` and a newline to a new file at `tmp` (mode 0600) and flushes it.
fn write_new(tmp: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(tmp)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Reads a token from a file, trimmed.
pub fn read_token(path: &Path) -> Result<Option<Token>, TokenFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let t = text.trim();
            if t.len() < 16 {
                return Err(TokenFileError::TooShort(path.to_path_buf()));
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(TokenFileError::NotOneToken(path.to_path_buf()));
            }
            Ok(Some(Token::from_string(t)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Longest file name the usual file systems take (ext4, XFS, btrfs), in bytes.
const NAME_MAX: usize = 255;
/// Hex digits of the name's digest in a shortened file name.
const DIGEST_HEX: usize = 16;

/// The start of an object's file names, `<kind>-<name>`, cut to fit with `.token` after it.
/// A Kubernetes name may take 253 characters, more than a file name has room for with the
/// kind before it; a longer one keeps its start, and a digest of the whole name keeps two
/// names that share that start apart.
fn file_stem(kind: &str, name: &str) -> String {
    let plain = format!("{kind}-{name}");
    if plain.len() + ".token".len() <= NAME_MAX {
        return plain;
    }
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let room = NAME_MAX - ".token".len() - kind.len() - 2 - DIGEST_HEX;
    let mut cut = room.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{kind}-{}-{}",
        name.get(..cut).unwrap_or_default(),
        digest.get(..DIGEST_HEX).unwrap_or_default()
    )
}

/// The token file of an object: `<data>/tokens/<kind>-<name>.token` ([`file_stem`]).
pub fn token_path(data: &Path, kind: &str, name: &str) -> PathBuf {
    data.join("tokens")
        .join(format!("{}.token", file_stem(kind, name)))
}

/// The file holding a Heartbeat's ping URL, relative to the data directory:
/// `tokens/heartbeat-<name>.url` ([`file_stem`]).
pub fn ping_url_file(name: &str) -> PathBuf {
    Path::new("tokens").join(format!("{}.url", file_stem("heartbeat", name)))
}

/// The file holding a Heartbeat's ping URL: `<data>/tokens/heartbeat-<name>.url`.
pub fn ping_url_path(data: &Path, name: &str) -> PathBuf {
    data.join(ping_url_file(name))
}

/// Writes the ping URL file of Heartbeat `name` for `token` (the token file itself is
/// [`ensure_token`]'s or the caller's); returns the URL file's path.
pub fn write_ping_url(
    data: &Path,
    name: &str,
    token: &Token,
    base_url: &str,
) -> Result<PathBuf, TokenFileError> {
    let path = ping_url_path(data, name);
    let url = ping_url(base_url, token.expose());
    // Unchanged (every declaration after the first): not written again. A flush per
    // Heartbeat held up a leader taking office for seconds with thousands of them.
    if !holds(&path, &url) {
        write_private(&path, &url)?;
    }
    Ok(path)
}

/// The token in Heartbeat `name`'s ping URL file. Every Heartbeat has that file, wherever
/// its token lives (a manifest's own `tokenFile` may be anywhere); callers check the token
/// against the monitor's hash, since a file can outlive its monitor.
pub fn ping_url_token(data: &Path, name: &str) -> Option<Token> {
    let url = std::fs::read_to_string(ping_url_path(data, name)).ok()?;
    let escaped = url.trim_end().strip_suffix("/ping")?.rsplit('/').next()?;
    let token = percent_decode(escaped)?;
    (token.len() >= 16).then(|| Token::from_string(&token))
}

/// `text` with its `%XX` escapes decoded; `None` when one is broken or the result is not
/// UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Whether the ping URL file at `path` holds `url`.
fn holds(path: &Path, url: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|current| current.trim_end() == url)
}

/// A manifest Heartbeat's token and ping URL file (see [`ensure_token`] and
/// [`write_ping_url`]), made on the blocking pool: every file written is flushed, and the
/// Heartbeats a leader declares at once flush at the same time, which the file system's
/// journal commits together. One after another, a fresh data directory cost one flush per
/// file, milliseconds each, before a leader with thousands of Heartbeats served. (One sync
/// of the directory after unflushed writes would make the names durable but not what the
/// files hold: a crash could leave a token file empty whose hash the store keeps.)
pub async fn heartbeat_files(
    data: &Path,
    manifests: &Path,
    name: &str,
    user_file: Option<&str>,
    base_url: &str,
) -> Result<(Token, TokenSource, PathBuf), TokenFileError> {
    // Every declaration after the first finds both files right: read here, with no hop
    // to the blocking pool (anything wrong is for the full path below to report).
    let token_file = match user_file {
        Some(file) => manifests.join(file),
        None => token_path(data, "heartbeat", name),
    };
    if let Ok(Some(token)) = read_token(&token_file) {
        let path = ping_url_path(data, name);
        if holds(&path, &ping_url(base_url, token.expose())) {
            let source = match user_file {
                Some(_) => TokenSource::UserFile,
                None => TokenSource::Existing,
            };
            return Ok((token, source, path));
        }
    }
    let (data, manifests) = (data.to_path_buf(), manifests.to_path_buf());
    let (name, user_file) = (name.to_string(), user_file.map(str::to_string));
    let base_url = base_url.to_string();
    let path = ping_url_path(&data, &name);
    let made = tokio::task::spawn_blocking(move || {
        let (token, source) = ensure_token(
            &data,
            &manifests,
            TokenKind::Heartbeat,
            "heartbeat",
            &name,
            user_file.as_deref(),
        )?;
        let path = write_ping_url(&data, &name, &token, &base_url)?;
        Ok((token, source, path))
    });
    made.await.map_err(|e| TokenFileError::Io {
        path,
        source: std::io::Error::other(e),
    })?
}

/// Writes both files of a new Heartbeat `name`: its token and its ping URL; returns the
/// URL file's path.
pub fn write_heartbeat_files(
    data: &Path,
    name: &str,
    token: &Token,
    base_url: &str,
) -> Result<PathBuf, TokenFileError> {
    write_private(&token_path(data, "heartbeat", name), token.expose())?;
    write_ping_url(data, name, token, base_url)
}

/// Removes both files of Heartbeat `name`; files already gone are no error.
pub fn remove_heartbeat_files(data: &Path, name: &str) {
    let _ = std::fs::remove_file(token_path(data, "heartbeat", name));
    let _ = std::fs::remove_file(ping_url_path(data, name));
}

/// How an alert tells people to ping Heartbeat `name`: by reading its URL file, so the
/// token never appears in an alert. The file is named relative to the data directory:
/// replicas sharing a database may keep their data at different paths, and a hint naming
/// one of them would make every definition differ on the others, so a new leader would
/// rewrite them all before its deadlines run.
pub fn ping_hint(name: &str) -> String {
    format!(
        "curl -fsS -m 10 --retry 3 \"$(cat {})\"  # in hartslag's data directory (--data)",
        ping_url_file(name).display()
    )
}

/// Where a token came from, so the caller can tell the user once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// A file the manifest named.
    UserFile,
    /// Issued earlier and read back.
    Existing,
    /// Issued now.
    New,
}

/// The token for an object: the manifest's file, else the issued one, else a new one.
pub fn ensure_token(
    data: &Path,
    manifests: &Path,
    kind: TokenKind,
    kind_name: &str,
    name: &str,
    user_file: Option<&str>,
) -> Result<(Token, TokenSource), TokenFileError> {
    if let Some(file) = user_file {
        let path = manifests.join(file);
        return match read_token(&path)? {
            Some(t) => Ok((t, TokenSource::UserFile)),
            None => Err(TokenFileError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
            }),
        };
    }
    let path = token_path(data, kind_name, name);
    if let Some(t) = read_token(&path)? {
        return Ok((t, TokenSource::Existing));
    }
    let t = Token::generate(kind)?;
    write_private(&path, t.expose())?;
    Ok((t, TokenSource::New))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_of_any_kubernetes_length_gets_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let short = token_path(dir.path(), "heartbeat", "backup");
        assert!(short.ends_with("tokens/heartbeat-backup.token"));
        let long_a = format!("{}a", "x".repeat(252));
        let long_b = format!("{}b", "x".repeat(252));
        let token = Token::from_string("0123456789abcdef0123");
        for name in [&long_a, &long_b] {
            let url = write_heartbeat_files(dir.path(), name, &token, "http://h").unwrap();
            let file = url.file_name().unwrap().to_string_lossy().into_owned();
            assert!(file.len() <= NAME_MAX, "{}", file.len());
            assert!(file.starts_with("heartbeat-xxxx") && file.ends_with(".url"));
            assert!(token_path(dir.path(), "heartbeat", name).exists());
            assert_eq!(
                ping_url_token(dir.path(), name).map(|t| t.expose().to_string()),
                Some(token.expose().to_string())
            );
        }
        assert_ne!(
            token_path(dir.path(), "heartbeat", &long_a),
            token_path(dir.path(), "heartbeat", &long_b),
            "names that share their start keep apart"
        );
        // The longest name that still fits is kept whole.
        let fits = "y".repeat(NAME_MAX - "heartbeat-".len() - ".token".len());
        assert!(
            token_path(dir.path(), "heartbeat", &fits).ends_with(format!("heartbeat-{fits}.token"))
        );
    }

    #[test]
    fn temporaries_a_killed_write_left_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".writing-4242-0.tmp");
        let fresh = dir.path().join(".writing-4243-0.tmp");
        let other = dir.path().join("heartbeat-x.token");
        for f in [&old, &fresh, &other] {
            std::fs::write(f, "secret-token-text").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        for f in [&old, &other] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        remove_stale_temporaries(dir.path());
        assert!(!old.exists(), "left by a killed write");
        assert!(fresh.exists(), "maybe another replica's write under way");
        assert!(other.exists(), "not a temporary");
    }

    #[test]
    fn issues_once_then_reads_back_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (a, o1) = ensure_token(
            dir.path(),
            dir.path(),
            TokenKind::Application,
            "application",
            "shop",
            None,
        )
        .unwrap();
        let (b, o2) = ensure_token(
            dir.path(),
            dir.path(),
            TokenKind::Application,
            "application",
            "shop",
            None,
        )
        .unwrap();
        assert_eq!((o1, o2), (TokenSource::New, TokenSource::Existing));
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(dir.path(), "application", "shop"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn user_file_wins_and_short_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.token"),
            "  my-own-token-1234567890  \n",
        )
        .unwrap();
        let (t, o) = ensure_token(
            dir.path(),
            dir.path(),
            TokenKind::Application,
            "application",
            "x",
            Some("mine.token"),
        )
        .unwrap();
        assert_eq!(
            (t.expose(), o),
            ("my-own-token-1234567890", TokenSource::UserFile)
        );
        std::fs::write(dir.path().join("short.token"), "abc").unwrap();
        assert!(
            ensure_token(
                dir.path(),
                dir.path(),
                TokenKind::Application,
                "application",
                "y",
                Some("short.token")
            )
            .is_err()
        );
    }

    #[test]
    fn a_token_of_any_characters_reads_back_from_its_ping_url_file_and_one_of_many_lines_is_refused()
     {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::from_string("q7Zk+9/fXh2LrT0aB1c/PQ9wYm3e==");
        write_ping_url(dir.path(), "job", &token, "http://hs").unwrap();
        let url = std::fs::read_to_string(ping_url_path(dir.path(), "job")).unwrap();
        assert!(
            url.contains("q7Zk%2B9%2FfXh2LrT0aB1c%2FPQ9wYm3e%3D%3D/ping"),
            "{url}"
        );
        let back = ping_url_token(dir.path(), "job").unwrap();
        assert_eq!(back.expose(), token.expose());
        let many = dir.path().join("shadow");
        std::fs::write(&many, "root:x:0:0:aaaaaaaaaaaaaaaa\ndaemon:x:1:1\n").unwrap();
        let e = read_token(&many).unwrap_err().to_string();
        assert!(e.contains("one token on one line"), "{e}");
    }

    #[test]
    fn replicas_with_different_data_directories_declare_equal_definitions() {
        use crate::core::monitor::define::DeclaredHeartbeat;
        use crate::core::monitor::engine::Origin;
        let spec = crate::core::spec::HeartbeatSpec::default();
        let token = Token::generate(TokenKind::Heartbeat).unwrap();
        let now = jiff::Timestamp::now();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let defs: Vec<_> = [a.path(), b.path()]
            .into_iter()
            .map(|data| {
                write_ping_url(data, "backup", &token, "http://hs").unwrap();
                DeclaredHeartbeat {
                    namespace: "default",
                    name: "backup",
                    spec: &spec,
                    application: None,
                    cron_job: None,
                    token: token.hash(),
                    ping_hint: ping_hint("backup"),
                    origin: Origin::Manifest,
                    id: "id".into(),
                    channels: Vec::new(),
                }
                .monitor_def(None, None, now)
                .unwrap()
            })
            .collect();
        assert_eq!(defs[0], defs[1]);
        // The file the hint names, read in either data directory, is the one written there.
        let hint = defs[0].ping_hint();
        let named = hint
            .split("cat ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        for data in [a.path(), b.path()] {
            assert!(!hint.contains(&*data.to_string_lossy()), "{hint}");
            let url = std::fs::read_to_string(data.join(named)).unwrap();
            assert_eq!(url.trim_end(), ping_url("http://hs", token.expose()));
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_heartbeats_files_are_written_once_and_again_only_when_its_url_changes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let files = |base: &'static str| {
            let data = dir.path().to_path_buf();
            async move {
                heartbeat_files(&data, &data, "backup", None, base)
                    .await
                    .unwrap()
            }
        };
        let (token, source, url_file) = files("http://a").await;
        assert_eq!(source, TokenSource::New);
        let token_file = token_path(dir.path(), "heartbeat", "backup");
        let inodes = || {
            let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
            (ino(&token_file), ino(&url_file))
        };
        let first = inodes();
        let (again, source, _) = files("http://a").await;
        assert_eq!((&again, source), (&token, TokenSource::Existing));
        assert_eq!(inodes(), first, "an unchanged file was written again");
        files("http://b").await;
        let (token_ino, url_ino) = inodes();
        assert_eq!(token_ino, first.0, "the token file was written again");
        assert_ne!(url_ino, first.1, "a changed URL was not written");
        let url = std::fs::read_to_string(&url_file).unwrap();
        assert_eq!(url.trim_end(), ping_url("http://b", token.expose()));
    }
}
