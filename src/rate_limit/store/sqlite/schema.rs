//! The rate limiter's tables, triggers and migrations (component `rate_limit` of the file's
//! versioned schema, see `store::sqlite::schema`).

use crate::store::sqlite::schema::Component;

/// The rate limiter's tables.
pub(crate) const RATE_LIMIT: Component = Component {
    name: "rate_limit",
    migrations: &[
        // 1: admissions, per-second user activity, per-resource state.
        "CREATE TABLE rate_limit_admissions (
             resource   TEXT NOT NULL,
             at         INTEGER NOT NULL,
             id         INTEGER NOT NULL,
             background INTEGER NOT NULL,
             PRIMARY KEY (resource, at, id)
         ) STRICT, WITHOUT ROWID;
         CREATE TABLE rate_limit_activity (
             resource TEXT NOT NULL,
             second   INTEGER NOT NULL,
             users    INTEGER NOT NULL,
             PRIMARY KEY (resource, second)
         ) STRICT, WITHOUT ROWID;
         CREATE TABLE rate_limit_state (
             resource         TEXT PRIMARY KEY NOT NULL,
             first_at         INTEGER NOT NULL,
             last_user_at     INTEGER,
             blocked_until    INTEGER NOT NULL DEFAULT 0,
             budget_remaining INTEGER,
             budget_observed  INTEGER,
             budget_reset     INTEGER
         ) STRICT;",
        // 2: the longest window any process still counts in, per resource, so that a process
        // with a shorter one (a rolling deploy that shortened a limit) does not prune what the
        // others count.
        "CREATE TABLE rate_limit_retention (
             resource TEXT PRIMARY KEY NOT NULL,
             keep_ms  INTEGER NOT NULL,
             until_ms INTEGER NOT NULL
         ) STRICT;",
        // 3: a per-resource generation, raised by a trigger with every admission inserted
        // (whatever version of this crate inserts it), which tells a process whether its copy of
        // a resource's admissions is still exact, and the last 16 admissions, from which a copy
        // that is behind catches up (see `window`). The trigger also creates the state row on a
        // resource's first admission.
        "ALTER TABLE rate_limit_state ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE rate_limit_state ADD COLUMN recent TEXT NOT NULL DEFAULT '';
         CREATE TRIGGER rate_limit_admission_generation AFTER INSERT ON rate_limit_admissions
         BEGIN
             INSERT INTO rate_limit_state (resource, first_at, generation, recent)
                 VALUES (NEW.resource, NEW.at, 1,
                         printf('%016x', NEW.at * 2 + (NEW.background != 0)))
             ON CONFLICT (resource) DO UPDATE SET
                 generation = generation + 1,
                 recent = substr(recent || excluded.recent, -256);
         END;",
        // 4: in-flight admissions are re-stamped (an UPDATE of `at`) when their response
        // arrives: the generation rises by two and the log gets two entries, the removal of the
        // old stamp (the top bit set) and the new one, so that copies stay exact (see
        // `window`). The log keeps the last 64 entries.
        "DROP TRIGGER rate_limit_admission_generation;
         CREATE TRIGGER rate_limit_admission_generation AFTER INSERT ON rate_limit_admissions
         BEGIN
             INSERT INTO rate_limit_state (resource, first_at, generation, recent)
                 VALUES (NEW.resource, NEW.at, 1,
                         printf('%016x', NEW.at * 2 + (NEW.background != 0)))
             ON CONFLICT (resource) DO UPDATE SET
                 generation = generation + 1,
                 recent = substr(recent || excluded.recent, -1024);
         END;
         CREATE TRIGGER rate_limit_admission_restamp AFTER UPDATE OF at ON rate_limit_admissions
         BEGIN
             UPDATE rate_limit_state SET
                 generation = generation + 2,
                 recent = substr(recent
                     || printf('%016x', (OLD.at * 2 + (OLD.background != 0)) | (1 << 63))
                     || printf('%016x', NEW.at * 2 + (NEW.background != 0)), -1024)
             WHERE resource = NEW.resource;
         END;",
    ],
};
