//! DNS-safe node names: sanitising hostnames and de-duplicating them.
//!
//! A node's name is one DNS label under the tailnet domain: 1 to 63 characters of
//! `[a-z0-9-]`, not starting or ending with `-`.

use std::collections::HashSet;

/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// Name used when a hostname has nothing usable in it.
pub const FALLBACK_NAME: &str = "node";

/// Turns a machine's hostname into a DNS label: keeps the part before the first dot
/// (`laptop.local` → `laptop`), lowercases ASCII, turns every other character into `-`,
/// collapses runs of `-`, trims `-` from the ends and cuts to 63 characters. Returns
/// [`FALLBACK_NAME`] if nothing is left.
pub fn sanitise_hostname(hostname: &str) -> String {
    let first_label = hostname.trim().split('.').next().unwrap_or_default();
    let mut name = String::with_capacity(first_label.len().min(MAX_LABEL_LEN));
    for c in first_label.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (name.is_empty() || name.ends_with('-')) {
            continue;
        }
        if name.len() == MAX_LABEL_LEN {
            break;
        }
        name.push(c);
    }
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        FALLBACK_NAME.to_owned()
    } else {
        name.to_owned()
    }
}

/// Whether `name` is already a valid DNS label of the kind nodes get.
pub fn is_dns_label(name: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `base` if it is free, else the first free `base-2`, `base-3`, … (shortening `base` so
/// the result stays within 63 characters). `base` must be a DNS label.
pub fn unique_name(base: &str, taken: &HashSet<String>) -> String {
    if !taken.contains(base) {
        return base.to_owned();
    }
    // At most taken.len() + 1 candidates can be needed.
    for n in 2..=taken.len().saturating_add(2) {
        let suffix = format!("-{n}");
        let keep = MAX_LABEL_LEN.saturating_sub(suffix.len()).min(base.len());
        let stem = base.get(..keep).unwrap_or(base).trim_end_matches('-');
        let candidate = format!("{stem}{suffix}");
        if !taken.contains(&candidate) {
            return candidate;
        }
    }
    // Unreachable by counting, but never panic: fall back to something unique-looking.
    format!("{FALLBACK_NAME}-{}", taken.len().saturating_add(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostnames_become_dns_labels() {
        assert_eq!(sanitise_hostname("Laptop.local"), "laptop");
        assert_eq!(
            sanitise_hostname("Alice's MacBook Pro"),
            "alice-s-macbook-pro"
        );
        assert_eq!(sanitise_hostname("--build__box--"), "build-box");
        assert_eq!(sanitise_hostname("Ünïcødé"), "n-c-d");
        assert_eq!(sanitise_hostname(""), "node");
        assert_eq!(sanitise_hostname("..."), "node");
        assert_eq!(sanitise_hostname("日本"), "node");
        let long = "a".repeat(100);
        assert_eq!(sanitise_hostname(&long).len(), 63);
        let dash_at_63 = format!("{}-b", "a".repeat(62));
        assert_eq!(sanitise_hostname(&dash_at_63), "a".repeat(62));
    }

    #[test]
    fn duplicates_get_numbered() {
        let mut taken = HashSet::new();
        for expected in ["web", "web-2", "web-3"] {
            let name = unique_name("web", &taken);
            assert_eq!(name, expected);
            taken.insert(name);
        }
        let long = "x".repeat(63);
        taken.insert(long.clone());
        let name = unique_name(&long, &taken);
        assert_eq!(name, format!("{}-2", "x".repeat(61)));
    }

    proptest! {
        #[test]
        fn sanitised_names_are_always_valid_labels(hostname in ".{0,100}") {
            let name = sanitise_hostname(&hostname);
            prop_assert!(is_dns_label(&name), "{name:?}");
        }

        #[test]
        fn unique_names_are_valid_and_free(
            hostname in "[a-zA-Z0-9 -]{0,80}",
            count in 0usize..30,
        ) {
            let base = sanitise_hostname(&hostname);
            let mut taken = HashSet::new();
            for _ in 0..count {
                let name = unique_name(&base, &taken);
                prop_assert!(is_dns_label(&name), "{name:?}");
                prop_assert!(taken.insert(name));
            }
        }
    }
}
