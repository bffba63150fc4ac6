//! The command line: the target store and one command, parsed by `clap`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use courteous::journal::GroupBy;
use courteous::{Limit, Resource};

/// Status, statistics, journal and upkeep of a `courteous` store.
///
/// Safe while applications use the same file: the command opens it like any other process
/// (WAL mode, a busy timeout; a file an older version made is upgraded on open, as any process
/// of this version would). Reads (`status`, `stats`, `journal`, `check`) take no write lock;
/// `unblock`, `invalidate`, `purge` and `clear` take the write lock for one short transaction
/// each; `vacuum` holds it for the whole rewrite of the file and needs as much free disk as the
/// file takes. The configured limits live in the application, not in the store: pass them with
/// `status --limit` to see what remains. On Redis (`--redis URL`), `status` shows only the
/// resources given with `--limit`, and `check` and `vacuum` do not apply.
#[derive(Debug, Parser)]
#[command(name = "courteous", version)]
pub struct Args {
    /// The SQLite file the applications use.
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// A Redis the applications share, instead of a file (`redis://127.0.0.1:6379/`).
    #[cfg(feature = "redis")]
    #[arg(long, global = true, value_name = "URL", conflicts_with = "db")]
    pub redis: Option<String>,
    /// The key prefix the applications use on Redis.
    #[cfg(feature = "redis")]
    #[arg(long, global = true, default_value = "courteous")]
    pub prefix: String,
    /// Print JSON instead of aligned tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per resource the store holds state for: admissions in the last second, minute and hour
    /// by priority, in flight, and any block the server imposed (read only).
    Status {
        /// Only this resource.
        resource: Option<String>,
        /// A limit the application sets, `RESOURCE=N/WINDOW` (`issue=5000/1h`; windows in
        /// s, m, h, d), to show what remains and when the next slot frees; repeatable.
        #[arg(long = "limit", value_name = "RESOURCE=N/WINDOW", value_parser = parse_limit)]
        limits: Vec<(String, Limit)>,
    },
    /// Cache, dedupe, rate-limit and journal counts, file sizes and schema versions (read only).
    Stats,
    /// The upstream calls the journal kept, grouped, with the quota they spent (read only).
    Journal {
        /// Only the calls of this last while (`90s`, `15m`, `1h`, `7d`).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        since: Option<Duration>,
        /// Only the calls of this resource.
        #[arg(long)]
        resource: Option<String>,
        /// How to group the calls.
        #[arg(long, value_enum, default_value_t = By::Resource)]
        by: By,
    },
    /// Lifts the block and budget a server imposed on a resource (a short write).
    Unblock {
        /// The resource.
        resource: String,
    },
    /// Drops the cached responses whose URL starts with a prefix (a short write).
    Invalidate {
        /// The URL prefix, e.g. `https://api.example/issues/`.
        #[arg(value_name = "URL-PREFIX")]
        url_prefix: String,
    },
    /// Drops cached responses (all of them, or with `--expired` those past their lifetime) and
    /// expired dedupe leases and results (a short write).
    Purge {
        /// Only what has expired.
        #[arg(long)]
        expired: bool,
    },
    /// Drops every cached response (a short write).
    Clear,
    /// Checks the file: `PRAGMA integrity_check`, schema versions, file modes (0600), WAL size.
    /// Exits with 1 on a problem (read only).
    Check,
    /// Rewrites the file to reclaim free pages: holds the write lock for the whole rewrite and
    /// needs as much free disk as the file takes.
    Vacuum,
}

/// How `journal` groups the calls.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum By {
    /// By resource name.
    Resource,
    /// By the upstream's status code.
    Status,
    /// By priority.
    Priority,
}

impl From<By> for GroupBy {
    fn from(by: By) -> GroupBy {
        match by {
            By::Resource => GroupBy::Resource,
            By::Status => GroupBy::Status,
            By::Priority => GroupBy::Priority,
        }
    }
}

/// `90s`, `15m`, `1h`, `7d` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// `RESOURCE=N/WINDOW`.
pub fn parse_limit(text: &str) -> Result<(String, Limit), String> {
    let (resource, limit) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected RESOURCE=N/WINDOW, like issue=5000/1h"))?;
    Resource::new(resource).map_err(|e| format!("{resource:?}: {e}"))?;
    let (max, window) = limit
        .split_once('/')
        .ok_or_else(|| format!("{limit:?}: expected N/WINDOW, like 5000/1h"))?;
    let max: u32 = max
        .parse()
        .map_err(|_| format!("{max:?}: expected a number of requests"))?;
    let window = parse_duration(window)?;
    let limit = Limit::try_new(max, window).map_err(|e| e.to_string())?;
    Ok((resource.to_owned(), limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_limits_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        let (resource, limit) = parse_limit("issue=5000/1h").unwrap();
        assert_eq!((resource.as_str(), limit.max()), ("issue", 5000));
        assert_eq!(limit.window(), Duration::from_secs(3600));
        assert!(parse_limit("issue").is_err());
        assert!(parse_limit("issue=5000").is_err());
    }
}
