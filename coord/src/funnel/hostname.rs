//! Funnel hostnames: one DNS label under the coord's funnel domain.
//!
//! The scheme (also in `docs/coord.md`):
//!
//! - `postern funnel 3000 --name hooks` asks for `hooks.FUNNEL-DOMAIN`. The name must be a
//!   DNS label (`[a-z0-9-]`, 1 to 63 characters, no `-` at either end); if another funnel
//!   of the tailnet (open or closed: a closed funnel keeps its hostname in reserve) holds
//!   it, the request is refused with `name_taken`.
//! - Without `--name` the label is the node's name: `laptop.FUNNEL-DOMAIN`, or, if that is
//!   held by another funnel (the same node's other port, say), `laptop-3000.FUNNEL-DOMAIN`.
//!   If both are held, `name_taken`.
//! - Once a (node, port) has a hostname it keeps it for as long as the funnel's row exists
//!   (reopening, coord restarts, node renames), unless the node asks for a different
//!   `--name`. The row goes with its node, or when an admin releases it.

use crate::registry::names::{MAX_LABEL_LEN, is_dns_label, sanitise_hostname};

/// The longest funnel domain accepted: a label and a dot must still fit in 253 characters.
pub const MAX_FUNNEL_DOMAIN_LEN: usize = 253 - MAX_LABEL_LEN - 1;

/// Why a funnel domain or name is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostnameError {
    /// The funnel domain is not a DNS name.
    #[error(
        "the funnel domain {0:?} is not a DNS name: give lowercase labels of a-z, 0-9 and -, separated by dots (e.g. funnel.example.com)"
    )]
    BadDomain(String),
    /// A `--name` is not a DNS label.
    #[error(
        "the funnel name {given:?} is not a DNS label (a-z, 0-9 and -, at most 63 characters, no - at either end); try --name {suggestion}"
    )]
    BadName {
        /// What was asked for.
        given: String,
        /// A label made from it.
        suggestion: String,
    },
}

/// Checks and normalises a funnel domain (`funnel.example.com`, an optional trailing dot
/// and upper case are accepted).
pub fn parse_funnel_domain(domain: &str) -> Result<String, HostnameError> {
    let normal = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !normal.is_empty()
        && normal.len() <= MAX_FUNNEL_DOMAIN_LEN
        && normal.split('.').all(is_dns_label);
    if valid {
        Ok(normal)
    } else {
        Err(HostnameError::BadDomain(domain.to_owned()))
    }
}

/// The label a funnel is named by: `name` if given (it must be a DNS label), else the
/// node's name.
pub fn funnel_label(name: Option<&str>, node_name: &str) -> Result<String, HostnameError> {
    match name {
        Some(given) if is_dns_label(given) => Ok(given.to_owned()),
        Some(given) => Err(HostnameError::BadName {
            given: given.to_owned(),
            suggestion: sanitise_hostname(given),
        }),
        None => Ok(node_name.to_owned()),
    }
}

/// The hostnames to try, in order, for a new funnel labelled `label` on local `port`:
/// `LABEL.DOMAIN` only when the name was given explicitly, else also `LABEL-PORT.DOMAIN`
/// (the label shortened so the result stays one DNS label).
pub fn hostname_candidates(label: &str, port: u16, explicit: bool, domain: &str) -> Vec<String> {
    let mut candidates = vec![format!("{label}.{domain}")];
    if !explicit {
        let suffix = format!("-{port}");
        let keep = MAX_LABEL_LEN.saturating_sub(suffix.len());
        let base: String = label.chars().take(keep).collect();
        let base = base.trim_end_matches('-');
        candidates.push(format!("{base}{suffix}.{domain}"));
    }
    candidates
}

/// The public TCP port of a new TCP funnel for (node, port): the first free port of
/// `range`, starting at a point derived from the node and port (so different funnels
/// rarely contend), or `None` when the range is full.
pub fn pick_public_port(
    range: std::ops::RangeInclusive<u16>,
    node: u64,
    port: u16,
    taken: &std::collections::HashSet<u16>,
) -> Option<u16> {
    let first = u64::from(*range.start());
    let len = u64::from(*range.end()).checked_sub(first)?.checked_add(1)?;
    let seed = node
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(port).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    let start = seed % len;
    (0..len)
        .map(|step| first + (start + step) % len)
        .filter_map(|candidate| u16::try_from(candidate).ok())
        .find(|candidate| !taken.contains(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn domains_are_normalised_or_refused() {
        assert_eq!(
            parse_funnel_domain("Funnel.Example.com.").unwrap(),
            "funnel.example.com"
        );
        for bad in [
            "",
            "funnel..example.com",
            "-x.example.com",
            "a b.com",
            "é.com",
        ] {
            let err = parse_funnel_domain(bad).unwrap_err();
            assert!(err.to_string().contains("is not a DNS name"), "{err}");
        }
        let long = format!("{}.com", "a.".repeat(100));
        assert!(parse_funnel_domain(&long).is_err());
    }

    #[test]
    fn labels_come_from_the_name_or_the_node() {
        assert_eq!(funnel_label(Some("hooks"), "laptop").unwrap(), "hooks");
        assert_eq!(funnel_label(None, "laptop").unwrap(), "laptop");
        let err = funnel_label(Some("My Hooks!"), "laptop").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the funnel name \"My Hooks!\" is not a DNS label (a-z, 0-9 and -, at most 63 characters, no - at either end); try --name my-hooks"
        );
    }

    #[test]
    fn candidates_follow_the_scheme() {
        assert_eq!(
            hostname_candidates("hooks", 3000, true, "f.example.com"),
            vec!["hooks.f.example.com"]
        );
        assert_eq!(
            hostname_candidates("laptop", 3000, false, "f.example.com"),
            vec!["laptop.f.example.com", "laptop-3000.f.example.com"]
        );
        let long = "a".repeat(62) + "b";
        let second = &hostname_candidates(&long, 65535, false, "f.example.com")[1];
        let label = second.split('.').next().unwrap();
        assert_eq!(label.len(), 63);
        assert!(is_dns_label(label), "{label}");
        assert!(label.ends_with("-65535"));
        // A shortened label never ends up with a double hyphen.
        let hyphen = format!("{}-{}", "a".repeat(56), "bbbbbb");
        let second = &hostname_candidates(&hyphen, 65535, false, "d")[1];
        assert!(is_dns_label(second.trim_end_matches(".d")), "{second}");
        assert!(!second.contains("--"), "{second}");
    }

    #[test]
    fn public_ports_are_stable_and_skip_taken_ones() {
        let none = HashSet::new();
        let a = pick_public_port(20000..=20999, 7, 3000, &none).unwrap();
        assert!((20000..=20999).contains(&a));
        assert_eq!(pick_public_port(20000..=20999, 7, 3000, &none), Some(a));
        let taken: HashSet<u16> = [a].into();
        let b = pick_public_port(20000..=20999, 7, 3000, &taken).unwrap();
        assert_ne!(a, b);
        let full: HashSet<u16> = (20000..=20002).collect();
        assert_eq!(pick_public_port(20000..=20002, 1, 1, &full), None);
        assert_eq!(pick_public_port(5..=5, 1, 1, &none), Some(5));
        assert!(pick_public_port(0..=65535, 9, 9, &none).is_some());
    }
}
