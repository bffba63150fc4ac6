//! The SQLite store (placeholder until the next step).
