//! `courteous`: the state of a store, the journal of upstream calls, and upkeep, from the shell.
//!
//! - `args`: the command line (`clap`), and the `--help` texts;
//! - `commands`: `status`, `stats`, `journal`, `unblock`, `invalidate`, `purge`, `clear`,
//!   through the store's own APIs and read-only queries;
//! - `file`: `check` (on the bare file, so it works on a damaged one) and `vacuum`;
//! - `output`: aligned tables and `--json`.
//!
//! It works on the SQLite file the applications use (`--db PATH`), while they use it: it opens
//! the file like any other process (WAL mode, a busy timeout). Reads take no write lock; `unblock`,
//! `invalidate`, `purge` and `clear` take it for one short transaction; `vacuum` holds it for
//! the whole rewrite and needs as much free disk as the file takes. The limits are configured
//! in the applications, not stored: `status --limit RESOURCE=N/WINDOW` supplies them.
//! With feature `redis` it works on a Redis the applications share (`--redis URL --prefix P`):
//! there `status` shows the resources named with `--limit`, and `check`/`vacuum` do not apply.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod file;
mod output;

use std::process::ExitCode;

use clap::Parser;
use courteous::store::sqlite::SqliteStore;

use args::{Args, Command};
use commands::{Failure, Stores};

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
    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis {
        let store = courteous::store::redis::RedisStore::builder(url.as_str())
            .prefix(args.prefix.as_str())
            .connect()?;
        store.ping().await?;
        let stores = Stores::redis(&store);
        let report = dispatch(&stores, args.command).await?;
        report.print(args.json);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(path) = args.db else {
        return Err("no store given: pass --db PATH (or --redis URL)".into());
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
        Command::Vacuum => file::vacuum(&store).await,
        command => dispatch(&Stores::sqlite(store.clone()), command).await,
    };
    let closed = store.close().await;
    let report = report?;
    closed?;
    report.print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// Runs a command that works on any store.
async fn dispatch(stores: &Stores, command: Command) -> Result<output::Report, Failure> {
    match command {
        Command::Status { resource, limits } => commands::status(stores, resource, limits).await,
        Command::Stats => commands::stats(stores).await,
        Command::Journal {
            since,
            resource,
            by,
        } => commands::journal(stores, since, resource, by).await,
        Command::Unblock { resource } => commands::unblock(stores, &resource).await,
        Command::Invalidate { url_prefix } => commands::invalidate(stores, &url_prefix).await,
        Command::Purge { expired } => commands::purge(stores, expired).await,
        Command::Clear => commands::clear(stores).await,
        Command::Check | Command::Vacuum => {
            Err("check and vacuum work on a SQLite file (--db PATH)".into())
        }
    }
}
