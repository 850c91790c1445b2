//! The rules that hold the layout (ARCHITECTURE.md, "The layout, and the rules that hold it"),
//! checked on the source itself.

use std::path::{Path, PathBuf};

use crate::support::repo_path;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The code of a file without its `#[cfg(test)] mod … { … }` blocks, its `#[cfg(test)] mod …;`
/// declarations (a `tests.rs` beside the code) and comments.
fn production_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else {
            rest = "";
            break;
        };
        if let Some(semi) = after.find(';')
            && semi < open
        {
            rest = &after[semi + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_path(""))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn the_pure_modules_import_no_io() {
    let mut pure = rust_files(&repo_path("src/event"));
    pure.push(repo_path("src/sync/plan.rs"));
    pure.push(repo_path("src/sync/outcome.rs"));
    pure.push(repo_path("src/repair/decide.rs"));
    pure.extend(rust_files(&repo_path("src/graph/mapping")));
    let forbidden = [
        "redis",
        "lapin",
        "reqwest",
        "tokio",
        "axum",
        "crate::store::Copies",
        "crate::store::lease",
        "crate::store::connect",
        "crate::amqp",
        "crate::window",
        "crate::graph::client",
        "crate::tenants::Directory",
        "std::fs",
        "std::net",
    ];
    // A `tests.rs` beside the code is test code.
    pure.retain(|f| !f.ends_with("tests.rs"));
    let mut found = Vec::new();
    for f in &pure {
        let code = production_code(f);
        for word in forbidden {
            if code.contains(&format!("{word}::")) || code.contains(&format!("use {word};")) {
                found.push(format!("{} uses {word}", rel(f)));
            }
        }
    }
    assert!(found.is_empty(), "pure modules doing I/O: {found:#?}");
}

#[test]
fn no_module_but_the_store_builds_a_redis_key() {
    let mut found = Vec::new();
    for f in rust_files(&repo_path("src")) {
        let r = rel(&f);
        // The store names the keys; the configuration holds the prefix; the fleet compares the
        // prefix between workers (a setting that must agree), building no key with it.
        if r.starts_with("src/store/") || r.starts_with("src/config/") || r == "src/fleet.rs" {
            continue;
        }
        for (n, line) in production_code(&f).lines().enumerate() {
            // Setting the prefix (the sandbox names its own) is not building a key.
            if line.contains("key_prefix") && !line.contains("key_prefix =") {
                found.push(format!("{r}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Redis keys built outside store::keys (ask the store for the key instead): {found:#?}"
    );
}

#[test]
fn only_the_directory_module_talks_to_postgresql() {
    let mut found = Vec::new();
    for f in rust_files(&repo_path("src")) {
        let r = rel(&f);
        // The directory owns the database; the configuration only parses database.url with the
        // client's own parser (as it does for Redis).
        if r.starts_with("src/tenants/") || r == "src/config/checks.rs" {
            continue;
        }
        for (n, line) in production_code(&f).lines().enumerate() {
            if line.contains("tokio_postgres") || line.contains("deadpool_postgres") {
                found.push(format!("{r}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "PostgreSQL used outside tenants (ask the Directory, or its cache, instead): {found:#?}"
    );
}

#[test]
fn no_module_but_the_store_opens_a_redis_connection() {
    let mut found = Vec::new();
    for f in rust_files(&repo_path("src")) {
        let r = rel(&f);
        if r.starts_with("src/store/") {
            continue;
        }
        for (n, line) in production_code(&f).lines().enumerate() {
            for word in [
                "ConnectionManager",
                "Client::open",
                "ClusterClient",
                "SentinelClient",
            ] {
                if line.contains(word) {
                    found.push(format!("{r}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "Redis connections opened outside store (hold a store::Redis from store::connect or \
         store::connect_lazy, so every topology works): {found:#?}"
    );
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut long = Vec::new();
    for dir in ["src", "crates/graph-emulator/src"] {
        for f in rust_files(&repo_path(dir)) {
            let r = rel(&f);
            // Generated from CLDR's windowsZones.xml, a table rather than code.
            if r == "src/graph/zones/table.rs" {
                continue;
            }
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > 800 {
                long.push(format!("{r}: {n} lines"));
            }
        }
    }
    assert!(long.is_empty(), "split these by what they do: {long:#?}");
}
