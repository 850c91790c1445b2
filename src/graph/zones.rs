//! IANA → Windows time-zone names, for the `timeZone` of Graph's `dateTimeTimeZone` (GRAPH.md §2.3:
//! prefer Windows names on the wire, some IANA names are rejected).
//!
//! The tables (`zones/table.rs`) are generated, never edited: `cargo run --example zones` makes
//! them from two committed inputs, and a test checks that the committed file is exactly what the
//! generator makes of them.
//!
//! - `zones/windowsZones.json`: CLDR's windowsZones (`supplementalData/windowsZones/
//!   mapTimezones`), CLDR 48, as the CLDR project publishes it in JSON (the `cldr-core` package,
//!   `supplemental/windowsZones.json`; Unicode License v3, `zones/LICENSE-CLDR`). Every IANA id
//!   in every `mapZone` maps to that entry's Windows name, and each Windows name's territory-"001"
//!   entry is its default IANA zone for the reverse direction. No maintained crate carries this
//!   mapping in the IANA → Windows direction for jiff's zone names (jiff has only Windows → IANA,
//!   privately; `localzone` and `windows-timezones` are built on chrono-tz and know no aliases).
//! - `zones/aliases.txt`: CLDR keys zones by its own canonical ids, often older IANA spellings
//!   (Asia/Calcutta, Asia/Saigon, Europe/Kiev, …), and jiff reports a zone by the name it was
//!   looked up with, so every other name in jiff's bundled tzdb that is a link to a CLDR-listed
//!   zone maps like that zone (Asia/Kolkata, Europe/Kyiv, US/Eastern, Japan, UTC, Etc/GMT0, …).
//!
//! Names with no Windows zone (Antarctica/Troll, Factory) are absent, and the caller falls back
//! to another zone. CLDR 48 maps Edmonton, Vancouver and Winnipeg to the long-standing
//! "Mountain", "Pacific" and "Central Standard Time", and America/Coyhaique (tzdb 2025b) to
//! "Magallanes Standard Time".

#[rustfmt::skip]
mod table;
#[cfg(test)]
mod generate;

#[cfg(test)]
use table::ALIASES;
/// The CLDR release the mapping comes from.
pub use table::CLDR_VERSION;
use table::{IANA_TO_WINDOWS, WINDOWS_TO_IANA};

/// The Windows name for an IANA zone id: exact and case-sensitive, like IANA ids themselves
/// (`jiff::tz::TimeZone::iana_name` reports the tzdb spelling, e.g. "Asia/Tokyo").
pub fn windows_name(iana: &str) -> Option<&'static str> {
    lookup(IANA_TO_WINDOWS, iana)
}

/// The default IANA zone of a Windows name (CLDR's territory "001" entry), e.g.
/// "Tokyo Standard Time" → "Asia/Tokyo", "Eastern Standard Time" → "America/New_York".
pub fn iana_for_windows(windows: &str) -> Option<&'static str> {
    lookup(WINDOWS_TO_IANA, windows)
}

/// The whole IANA → Windows table, sorted by IANA id.
pub fn all() -> &'static [(&'static str, &'static str)] {
    IANA_TO_WINDOWS
}

fn lookup(table: &'static [(&'static str, &'static str)], key: &str) -> Option<&'static str> {
    table
        .binary_search_by(|(k, _)| (*k).cmp(key))
        .ok()
        .map(|i| table[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use jiff::tz::TimeZone;

    /// IANA ids in the table that jiff's bundled tzdb does not know. None today; an entry here
    /// must say why.
    const NOT_IN_JIFF: &[&str] = &[];

    #[test]
    fn maps_well_known_zones() {
        for (iana, windows) in [
            ("Asia/Tokyo", Some("Tokyo Standard Time")),
            ("America/New_York", Some("Eastern Standard Time")),
            ("Europe/Berlin", Some("W. Europe Standard Time")),
            ("Asia/Kolkata", Some("India Standard Time")),
            ("Asia/Calcutta", Some("India Standard Time")),
            ("Europe/London", Some("GMT Standard Time")),
            ("America/Los_Angeles", Some("Pacific Standard Time")),
            ("Australia/Sydney", Some("AUS Eastern Standard Time")),
            ("Asia/Seoul", Some("Korea Standard Time")),
            ("Asia/Ho_Chi_Minh", Some("SE Asia Standard Time")),
            ("Europe/Kyiv", Some("FLE Standard Time")),
            ("US/Eastern", Some("Eastern Standard Time")),
            ("Japan", Some("Tokyo Standard Time")),
            ("UTC", Some("UTC")),
            ("Etc/UTC", Some("UTC")),
            ("Etc/GMT", Some("UTC")),
            ("GMT", Some("UTC")),
            ("Etc/GMT-9", Some("Tokyo Standard Time")),
            ("Mars/Olympus_Mons", None),
            ("asia/tokyo", None),
            ("", None),
        ] {
            assert_eq!(windows_name(iana), windows, "{iana}");
        }
    }

    #[test]
    fn the_reverse_gives_the_territory_001_default() {
        for (windows, iana) in [
            ("Tokyo Standard Time", Some("Asia/Tokyo")),
            ("Eastern Standard Time", Some("America/New_York")),
            ("W. Europe Standard Time", Some("Europe/Berlin")),
            ("India Standard Time", Some("Asia/Calcutta")),
            ("UTC", Some("Etc/UTC")),
            ("Pacific Standard Time", Some("America/Los_Angeles")),
            ("Greenwich Mean Time", None),
            ("tokyo standard time", None),
        ] {
            assert_eq!(iana_for_windows(windows), iana, "{windows}");
        }
    }

    #[test]
    fn the_committed_table_is_what_the_generator_makes_of_cldr_and_the_aliases() {
        let made = generate::table(
            include_str!("zones/windowsZones.json"),
            include_str!("zones/aliases.txt"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            made == include_str!("zones/table.rs"),
            "src/graph/zones/table.rs is not what its inputs make: run `cargo run --example zones`"
        );
        assert_eq!(CLDR_VERSION, "48");
    }

    #[test]
    fn the_generator_refuses_an_alias_list_that_is_out_of_date() {
        let cldr = include_str!("zones/windowsZones.json");
        let listed = generate::table(cldr, "Asia/Tokyo Asia/Tokyo").unwrap_err();
        assert!(listed.contains("CLDR lists Asia/Tokyo itself"), "{listed}");
        let unknown = generate::table(cldr, "Japan Asia/Nowhere").unwrap_err();
        assert!(
            unknown.contains("Japan links to Asia/Nowhere, which CLDR does not list"),
            "{unknown}"
        );
        let twice = generate::table(cldr, "Japan Asia/Tokyo\nJapan Asia/Tokyo").unwrap_err();
        assert!(twice.contains("Japan is listed twice"), "{twice}");
    }

    #[test]
    fn tables_are_sorted_without_duplicate_keys() {
        for table in [IANA_TO_WINDOWS, WINDOWS_TO_IANA] {
            for pair in table.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{:?} before {:?}", pair[0], pair[1]);
            }
        }
        assert_eq!(all().len(), IANA_TO_WINDOWS.len());
    }

    #[test]
    fn jiff_knows_every_iana_id_in_the_tables() {
        let ids = IANA_TO_WINDOWS.iter().map(|(i, _)| *i);
        let ids = ids.chain(WINDOWS_TO_IANA.iter().map(|(_, i)| *i));
        for id in ids.filter(|id| !NOT_IN_JIFF.contains(id)) {
            assert!(TimeZone::get(id).is_ok(), "jiff does not know {id}");
        }
    }

    #[test]
    fn every_windows_name_has_a_default_that_maps_back() {
        for (windows, iana) in WINDOWS_TO_IANA {
            assert_eq!(windows_name(iana), Some(*windows), "{iana}");
            assert_eq!(iana_for_windows(windows), Some(*iana), "{windows}");
        }
        for (iana, windows) in IANA_TO_WINDOWS {
            assert!(
                iana_for_windows(windows).is_some(),
                "{iana} → {windows} has no default"
            );
        }
    }

    #[test]
    fn an_alias_maps_like_the_zone_it_links_to_and_keeps_its_clock() {
        // Sample every ~10 days from 2000 to 2040: an alias must show the same offset as its
        // target (they are tzdb links), so the Windows zone is right for it too.
        let from = Timestamp::from_second(946_684_800).unwrap();
        for (alias, target) in ALIASES {
            assert_eq!(
                windows_name(alias),
                windows_name(target),
                "{alias} → {target}"
            );
            assert!(windows_name(target).is_some(), "{target}");
            let (a, t) = (
                TimeZone::get(alias).unwrap(),
                TimeZone::get(target).unwrap(),
            );
            for step in 0..1461 {
                let at = from + jiff::SignedDuration::from_hours(240 * step);
                assert_eq!(
                    a.to_offset(at),
                    t.to_offset(at),
                    "{alias} vs {target} at {at}"
                );
            }
        }
    }

    #[test]
    fn every_zone_jiff_knows_is_mapped_but_a_documented_few() {
        let unmapped: Vec<String> = jiff::tz::db()
            .available()
            .map(|n| n.to_string())
            .filter(|n| windows_name(n).is_none())
            .collect();
        let mut unmapped: Vec<&str> = unmapped.iter().map(String::as_str).collect();
        unmapped.sort();
        assert_eq!(unmapped, ["Antarctica/Troll", "Factory"]);
    }
}
