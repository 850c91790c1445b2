//! Regenerates `src/graph/zones/table.rs` (IANA → Windows time-zone names) from CLDR's
//! windowsZones and the alias list beside it:
//!
//! ```sh
//! cargo run --example zones
//! ```
//!
//! To take a newer CLDR: `npm pack cldr-core@latest`, copy the tarball's
//! `package/supplemental/windowsZones.json` over `src/graph/zones/windowsZones.json` (and its
//! `LICENSE` over `LICENSE-CLDR`), run this, then the zones tests (`cargo test --lib zones`):
//! they say which names need a line in `aliases.txt` or have a new Windows zone.

#[path = "../src/graph/zones/generate.rs"]
mod generate;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/graph/zones");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
    };
    let made = read("windowsZones.json")
        .and_then(|cldr| Ok((cldr, read("aliases.txt")?)))
        .and_then(|(cldr, aliases)| generate::table(&cldr, &aliases));
    let out = dir.join("table.rs");
    match made.and_then(|text| {
        std::fs::write(&out, text).map_err(|e| format!("cannot write {}: {e}", out.display()))
    }) {
        Ok(()) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
