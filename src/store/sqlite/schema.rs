//! Versioned schema, one migration list per component.
//!
//! Every part of courteous that keeps tables in the shared file (the engine itself, the cache,
//! dedupe and rate-limit stores) is a [`Component`] with its own list of migrations. The file's
//! `courteous_schema` table records how many of each list have run. Opening a file applies the
//! missing ones in one `BEGIN IMMEDIATE` transaction, so several processes opening one file at
//! once never migrate twice; a file written by a newer build is refused with
//! [`SqliteError::SchemaTooNew`] instead of being damaged.
//!
//! Migrations are append-only: a released entry is never edited, a change is a new entry. A
//! change SQL cannot express (re-encoding a column) is a [`Step`] in [`STEPS`], run in the same
//! transaction right after the SQL of its version.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::error::SqliteError;

/// A named list of migrations; entry `i` brings the component from version `i` to `i + 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Component {
    pub(crate) name: &'static str,
    pub(crate) migrations: &'static [&'static str],
}

/// The engine's own tables.
pub(crate) const CORE: Component = Component {
    name: "core",
    migrations: &[
        // 1: facts about the file itself.
        "CREATE TABLE courteous_meta (
             key   TEXT PRIMARY KEY NOT NULL,
             value TEXT NOT NULL
         ) STRICT;
         INSERT INTO courteous_meta (key, value)
             VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));",
    ],
};

/// A migration step in Rust, for what SQL cannot express (re-encoding a column's bytes).
pub(crate) type Step = fn(&Connection) -> rusqlite::Result<()>;

/// The [`Step`]s, by component and the version whose SQL they follow.
const STEPS: &[(&str, usize, Step)] = &[(
    crate::cache::store::sqlite::CACHE.name,
    2,
    crate::cache::store::sqlite::reencode_headers,
)];

/// Every component compiled into this build.
pub(crate) const COMPONENTS: &[Component] = &[
    CORE,
    crate::cache::store::sqlite::CACHE,
    crate::dedupe::store::sqlite::DEDUPE,
    crate::rate_limit::store::sqlite::RATE_LIMIT,
    crate::journal::sqlite::JOURNAL,
];

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS courteous_schema (
    component   TEXT PRIMARY KEY NOT NULL,
    version     INTEGER NOT NULL,
    migrated_at TEXT NOT NULL
) STRICT";

fn version(conn: &Connection, component: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT version FROM courteous_schema WHERE component = ?1",
        [component],
        |row| row.get(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0))
}

fn up_to_date(conn: &Connection, components: &[Component]) -> rusqlite::Result<bool> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'courteous_schema')",
        [],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(false);
    }
    for component in components {
        if version(conn, component.name)? != component.migrations.len() as i64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Brings every component up to date. Returns how many migrations ran.
pub(crate) fn migrate(
    conn: &mut Connection,
    path: &Path,
    components: &[Component],
) -> Result<usize, SqliteError> {
    if up_to_date(conn, components)? {
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_TABLE)?;
    let mut ran = 0;
    for component in components {
        let found = version(&tx, component.name)?;
        let supported = component.migrations.len() as i64;
        if found > supported {
            return Err(SqliteError::SchemaTooNew {
                path: path.to_path_buf(),
                component: component.name,
                found,
                supported,
            });
        }
        for (index, sql) in component.migrations.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)?;
            for (_, _, step) in STEPS
                .iter()
                .filter(|(name, version, _)| *name == component.name && *version == index + 1)
            {
                step(&tx)?;
            }
            tracing::info!(
                component = component.name,
                version = index + 1,
                "migrated sqlite schema"
            );
            ran += 1;
        }
        if found < supported {
            tx.execute(
                "INSERT INTO courteous_schema (component, version, migrated_at)
                 VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
                 ON CONFLICT (component) DO UPDATE SET version = excluded.version,
                                                       migrated_at = excluded.migrated_at",
                rusqlite::params![component.name, supported],
            )?;
        }
    }
    tx.commit()?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[&str] =
        &["CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL) STRICT;"];
    const V3: &[&str] = &[
        V1[0],
        "ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';",
        "CREATE INDEX things_by_colour ON things (colour);",
    ];

    fn component(migrations: &'static [&'static str]) -> Component {
        Component {
            name: "things",
            migrations,
        }
    }

    #[test]
    fn a_file_made_by_an_older_schema_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            assert_eq!(migrate(&mut conn, &path, &[component(V1)]).unwrap(), 1);
            conn.execute("INSERT INTO things (name) VALUES ('kept')", [])
                .unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn, &path, &[component(V3)]).unwrap(), 2);
        let (name, colour): (String, String) = conn
            .query_row("SELECT name, colour FROM things", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((name.as_str(), colour.as_str()), ("kept", "red"));
        assert_eq!(version(&conn, "things").unwrap(), 3);
        // Opening again runs nothing.
        assert_eq!(migrate(&mut conn, &path, &[component(V3)]).unwrap(), 0);
    }

    #[test]
    fn a_file_from_a_newer_build_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path, &[component(V3)]).unwrap();
        let err = migrate(&mut conn, &path, &[component(V1)]).unwrap_err();
        assert!(
            matches!(
                err,
                SqliteError::SchemaTooNew {
                    found: 3,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(version(&conn, "things").unwrap(), 3);
    }

    #[test]
    fn a_failed_migration_leaves_the_file_as_it_was() {
        const BROKEN: &[&str] = &[V1[0], "ALTER TABLE nowhere ADD COLUMN x TEXT;"];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path, &[component(V1)]).unwrap();
        assert!(migrate(&mut conn, &path, &[component(BROKEN)]).is_err());
        assert_eq!(version(&conn, "things").unwrap(), 1);
    }
}
