//! Who may log in: the `--allowed-domains` and `--allowed-groups` rules, as a pure check.

/// Which identities the coord accepts after the IdP vouched for them.
///
/// An identity is admitted when its email's domain is in `domains` (or `domains` is empty)
/// AND it is in at least one of `groups` (or `groups` is empty). With both lists empty,
/// everyone the IdP authenticates may log in: say so loudly in the operator's docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Email domains allowed (`example.com`), compared case-insensitively; empty: any.
    pub domains: Vec<String>,
    /// IdP groups of which the user must be in one; empty: any (or none).
    pub groups: Vec<String>,
}

/// Why an identity was refused, in words for the person in the browser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The email's domain is not allowed.
    #[error("{email} may not log in: only accounts of {allowed} are allowed on this tailnet")]
    Domain {
        /// The email that logged in.
        email: String,
        /// The allowed domains, comma-separated.
        allowed: String,
    },
    /// The user is in none of the allowed groups.
    #[error(
        "{email} may not log in: membership in one of the groups {allowed} is required (your groups: {groups})"
    )]
    Group {
        /// The email that logged in.
        email: String,
        /// The allowed groups, comma-separated.
        allowed: String,
        /// The user's groups, comma-separated, or `none`.
        groups: String,
    },
    /// The IdP gave no usable email.
    #[error(
        "the identity provider did not say who you are (no email claim, or it is not verified); ask the admin to grant the `email` scope"
    )]
    NoEmail,
}

impl Admission {
    /// Admits or refuses `email` with `groups`.
    pub fn check(&self, email: &str, groups: &[String]) -> Result<(), Refusal> {
        let domain = email
            .rsplit_once('@')
            .map(|(_, domain)| domain)
            .filter(|domain| !domain.is_empty())
            .ok_or(Refusal::NoEmail)?;
        if !self.domains.is_empty()
            && !self
                .domains
                .iter()
                .any(|allowed| allowed.trim_start_matches('@').eq_ignore_ascii_case(domain))
        {
            return Err(Refusal::Domain {
                email: email.to_owned(),
                allowed: self.domains.join(", "),
            });
        }
        if !self.groups.is_empty() && !groups.iter().any(|group| self.groups.contains(group)) {
            return Err(Refusal::Group {
                email: email.to_owned(),
                allowed: self.groups.join(", "),
                groups: if groups.is_empty() {
                    "none".to_owned()
                } else {
                    groups.join(", ")
                },
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn empty_rules_admit_any_email() {
        assert_eq!(Admission::default().check("bob@other.org", &[]), Ok(()));
    }

    #[test]
    fn domains_compare_case_insensitively_and_refuse_others_with_the_list() {
        let rules = Admission {
            domains: strings(&["example.com", "@corp.example"]),
            groups: Vec::new(),
        };
        assert_eq!(rules.check("alice@Example.COM", &[]), Ok(()));
        assert_eq!(rules.check("x@corp.example", &[]), Ok(()));
        let refusal = rules.check("eve@evil.example", &[]).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "eve@evil.example may not log in: only accounts of example.com, @corp.example are allowed on this tailnet"
        );
        // A suffix is not the domain.
        assert!(rules.check("eve@notexample.com", &[]).is_err());
    }

    #[test]
    fn groups_need_one_match_and_the_refusal_lists_the_users_groups() {
        let rules = Admission {
            domains: Vec::new(),
            groups: strings(&["eng", "ops"]),
        };
        assert_eq!(
            rules.check("alice@example.com", &strings(&["admins", "eng"])),
            Ok(())
        );
        let refusal = rules
            .check("bob@example.com", &strings(&["contractors"]))
            .unwrap_err();
        assert!(
            refusal.to_string().contains("(your groups: contractors)"),
            "{refusal}"
        );
        let refusal = rules.check("carol@example.com", &[]).unwrap_err();
        assert!(
            refusal.to_string().contains("(your groups: none)"),
            "{refusal}"
        );
    }

    #[test]
    fn an_email_without_a_domain_is_refused() {
        assert_eq!(
            Admission::default().check("alice", &[]),
            Err(Refusal::NoEmail)
        );
        assert_eq!(
            Admission::default().check("alice@", &[]),
            Err(Refusal::NoEmail)
        );
    }
}
