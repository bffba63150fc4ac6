//! `courteous`: the state of a store, the journal of upstream calls, and upkeep, from the shell.
//!
//! - `args`: the command line (`clap`), and the `--help` texts;
//! - `commands`: `status`, `stats`, `journal`, `unblock`, `invalidate`, `purge`, `clear`,
//!   through the store's own APIs and read-only queries;
//! - `file`: `check` (on the bare file, so it works on a damaged one) and `vacuum`;
//! - `output`: aligned tables and `--json`.
//!
//! It works on the SQLite file the applications use, while they use it: it opens the file like
//! any other process (WAL mode, a busy timeout). Reads take no write lock; `unblock`,
//! `invalidate`, `purge` and `clear` take it for one short transaction; `vacuum` holds it for
//! the whole rewrite and needs as much free disk as the file takes. The limits are configured
//! in the applications, not stored: `status --limit RESOURCE=N/WINDOW` supplies them.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod file;
mod output;

use std::process::ExitCode;

use clap::Parser;
use courteous::store::sqlite::SqliteStore;

use args::{Args, Command};
use commands::Failure;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("courteous: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("courteous: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Failure> {
    let Some(path) = args.db else {
        return Err("no store given: pass --db PATH".into());
    };
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()).into());
    }
    if let Command::Check = args.command {
        let (report, ok) = file::check(&path);
        report.print(args.json);
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let store = SqliteStore::open(&path).await?;
    let report = match args.command {
        Command::Status { resource, limits } => commands::status(&store, resource, limits).await,
        Command::Stats => commands::stats(&store).await,
        Command::Journal {
            since,
            resource,
            by,
        } => commands::journal(&store, since, resource, by).await,
        Command::Unblock { resource } => commands::unblock(&store, &resource).await,
        Command::Invalidate { prefix } => commands::invalidate(&store, &prefix).await,
        Command::Purge { expired } => commands::purge(&store, expired).await,
        Command::Clear => commands::clear(&store).await,
        Command::Vacuum => file::vacuum(&store).await,
        Command::Check => unreachable_check(),
    };
    let closed = store.close().await;
    let report = report?;
    closed?;
    report.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// `check` is answered before the store opens.
fn unreachable_check() -> Result<output::Report, Failure> {
    Err("check runs on the bare file".into())
}
