//! The store's Lua scripts: each is `prelude.lua` (the index helpers every script shares)
//! followed by its own file, which says what its `KEYS` and `ARGV` are and what it returns.
//! Redis runs each one atomically, so an entry, its metadata and the indexes change together.

use std::sync::LazyLock;

use redis::Script;

/// One script: the prelude, then `$file`.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("prelude.lua"), include_str!($file))))
    };
}

/// Writes an entry and indexes it; cleans a few expired members (`put.lua`).
pub(super) static PUT: LazyLock<Script> = script!("put.lua");

/// Deletes an entry and its index members (`delete.lua`).
pub(super) static DELETE: LazyLock<Script> = script!("delete.lua");

/// Moves an entry's freshness and expiry (`touch.lua`).
pub(super) static TOUCH: LazyLock<Script> = script!("touch.lua");

/// Deletes one batch of the entries whose URL matches (`invalidate.lua`).
pub(super) static INVALIDATE: LazyLock<Script> = script!("invalidate.lua");

/// Removes expired index members and one batch of evicted ones (`purge.lua`).
pub(super) static PURGE: LazyLock<Script> = script!("purge.lua");

/// Counts the index (`stats.lua`).
pub(super) static STATS: LazyLock<Script> = script!("stats.lua");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_the_prelude_and_its_file() {
        for (script, file) in [
            (&PUT, include_str!("put.lua")),
            (&DELETE, include_str!("delete.lua")),
            (&TOUCH, include_str!("touch.lua")),
            (&INVALIDATE, include_str!("invalidate.lua")),
            (&PURGE, include_str!("purge.lua")),
            (&STATS, include_str!("stats.lua")),
        ] {
            let text = format!("{}{file}", include_str!("prelude.lua"));
            assert_eq!(script.get_hash(), Script::new(&text).get_hash());
        }
    }
}
