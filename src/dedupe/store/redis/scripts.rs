//! The Lua scripts of the Redis dedupe store, one `.lua` file each next to this one.
//!
//! Every per-key script starts with `prelude.lua` (its helpers); their `KEYS` are lease, meta,
//! result and the URL's index, in that order. Each file's header says what its `ARGV` are.

use std::sync::LazyLock;

use redis::Script;

/// A per-key script: the prelude, then `$file`.
macro_rules! with_prelude {
    ($file:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("prelude.lua"), include_str!($file))))
    };
}

pub(super) static TRY_LEAD: LazyLock<Script> = with_prelude!("try_lead.lua");
pub(super) static RENEW: LazyLock<Script> = with_prelude!("renew.lua");
pub(super) static PUBLISH: LazyLock<Script> = with_prelude!("publish.lua");
pub(super) static RELEASE: LazyLock<Script> = with_prelude!("release.lua");
pub(super) static POLL: LazyLock<Script> = with_prelude!("poll.lua");

pub(super) static INVALIDATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("invalidate.lua")));
pub(super) static CLEAN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("clean.lua")));
