//! What `cargo package` ships: every file under `src/` (the Lua scripts of the Redis stores are
//! compiled in with `include_str!`), or the published crate does not build.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn files_under(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files_under(&path, root, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_package_holds_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(env!("CARGO"))
        .args([
            "package",
            "--list",
            "--allow-dirty",
            "--all-features",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo package --list");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut sources = BTreeSet::new();
    files_under(&root.join("src"), root, &mut sources);
    let missing: Vec<_> = sources.difference(&listed).collect();
    assert!(missing.is_empty(), "not in the package: {missing:?}");
}
