//! Issue 12 item 11, first half: a store that cannot write fails at open with `ReadOnly` naming
//! the file, and a failed read-only open leaves nothing behind that breaks later writes.
//!
//! Tests here run as root, whom file modes do not stop: the scenarios run in a child process
//! of this test binary started as `nobody` (uid 65534) in a directory it owns. Run as another
//! user, the child runs as that user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use courteous::store::sqlite::SqliteStore;

use crate::support::child::{CHILD_ENV, is_child, param, wait_ok};

const NOBODY: u32 = 65534;

fn set_mode(file: &Path, mode: u32) {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// A temp dir the child can write in, and whether the child runs as `nobody`.
fn child_dir() -> (tempfile::TempDir, bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
    if root {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    (dir, root)
}

/// Runs the child `entry` with `DB=path`, as `nobody` when `as_nobody`; `None` (after saying
/// why) when `nobody` may not run this test binary (a build directory only its owner may enter).
fn run_child(entry: &str, path: &Path, as_nobody: bool) -> Option<String> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, entry)
        .env("DB", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if as_nobody {
        command.uid(NOBODY).gid(NOBODY);
    }
    match command.spawn() {
        Ok(child) => Some(wait_ok(child)),
        Err(error) if as_nobody && error.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("SKIPPED: nobody may not run {entry} here ({error})");
            None
        }
        Err(error) => panic!("spawn child: {error}"),
    }
}

async fn write_once(store: &SqliteStore) -> Result<(), courteous::store::sqlite::SqliteError> {
    store
        .call(|conn| {
            conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x); INSERT INTO t VALUES (1)")?;
            Ok(())
        })
        .await?;
    store.defer(|conn| conn.execute("INSERT INTO t VALUES (2)", []).map(drop))?;
    store.flush().await
}

/// A file made read-only (0400) fails to open with `ReadOnly` naming it. That failed open left
/// a 0400 `-shm` behind (SQLite creates it with the database's mode); once the file was made
/// writable again, every open succeeded and every write failed.
#[test]
fn a_read_only_file_is_refused_at_open_and_writable_again_after_chmod() {
    let (dir, as_nobody) = child_dir();
    let Some(out) = run_child(
        "readonly::child_read_only_then_writable",
        &dir.path().join("ro.db"),
        as_nobody,
    ) else {
        return;
    };
    assert!(out.contains("CHILD-OK"), "{out}");
}

#[tokio::test]
#[ignore = "child process of a_read_only_file_is_refused_at_open_and_writable_again_after_chmod"]
async fn child_read_only_then_writable() {
    if !is_child("readonly::child_read_only_then_writable") {
        return;
    }
    let path: PathBuf = param("DB");
    let store = SqliteStore::open(&path).await.unwrap();
    write_once(&store).await.unwrap();
    store.close().await.unwrap();

    set_mode(&path, 0o400);
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(error.is_read_only(), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    let shm = with_suffix(&path, "-shm");
    if let Ok(meta) = std::fs::metadata(&shm) {
        println!("-shm left by the read-only open: {:o}", meta.mode() & 0o777);
    }

    set_mode(&path, 0o600);
    let store = SqliteStore::open(&path).await.expect("writable again");
    write_once(&store)
        .await
        .expect("a store that opened can write");
    store.close().await.unwrap();
    println!("CHILD-OK");
}

/// A `-shm` file the process may only read (another user's) and cannot fix: the connection
/// could read but not write, and the open succeeded. It now fails with `ReadOnly` naming the
/// file. Needs root to make a file the child does not own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_could_only_read_fails_at_open() {
    let (dir, as_nobody) = child_dir();
    if !as_nobody {
        eprintln!("SKIPPED: needs root to give the -shm file to another user");
        return;
    }
    let path = dir.path().join("shm.db");
    // Created (and held open, so that the -wal and -shm stay) by root.
    let holder = SqliteStore::open(&path).await.unwrap();
    write_once(&holder).await.unwrap();
    for file in [path.clone(), with_suffix(&path, "-wal")] {
        std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let shm = with_suffix(&path, "-shm");
    set_mode(&shm, 0o644);
    let out = run_child("readonly::child_cannot_write_shm", &path, true);
    holder.close().await.unwrap();
    if let Some(out) = out {
        assert!(out.contains("CHILD-OK"), "{out}");
    }
}

#[tokio::test]
#[ignore = "child process of a_store_that_could_only_read_fails_at_open"]
async fn child_cannot_write_shm() {
    if !is_child("readonly::child_cannot_write_shm") {
        return;
    }
    let path: PathBuf = param("DB");
    match SqliteStore::open(&path).await {
        Err(error) => {
            assert!(error.is_read_only(), "{error:?}");
            assert!(
                error.to_string().contains(&path.display().to_string()),
                "{error}"
            );
        }
        Ok(store) => {
            let written = write_once(&store).await;
            panic!("the open succeeded; a write then gave {written:?}");
        }
    }
    println!("CHILD-OK");
}
