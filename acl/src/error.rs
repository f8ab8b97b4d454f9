//! Errors of loading a policy: each names `FILE:LINE:COL`, what was expected, and what to do.

use std::fmt;

use crate::source::Position;

/// One problem found in a policy file. Displays as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{position}: {kind}")]
pub struct PolicyError {
    /// Where the problem is.
    pub position: Position,
    /// What the problem is.
    pub kind: ErrorKind,
}

/// What is wrong at a [`PolicyError`]'s position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not valid HuJSON.
    #[error("invalid HuJSON: {message}")]
    Syntax {
        /// The parser's description.
        message: String,
    },
    /// A key that no Postern or Tailscale policy has.
    #[error("unknown key \"{key}\" in {context}{}", Hint(suggestion, expected))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was (e.g. `an acls entry`).
        context: &'static str,
        /// The nearest known key, if one is close.
        suggestion: Option<String>,
        /// The keys allowed there.
        expected: &'static [&'static str],
    },
    /// A Tailscale key for a feature Postern does not have.
    #[error("\"{key}\" is a Tailscale feature Postern does not support; remove it from the policy")]
    UnsupportedKey {
        /// The key as written.
        key: String,
    },
    /// The same key twice in one object.
    #[error("duplicate key \"{key}\"; each key may appear once in an object")]
    DuplicateKey {
        /// The key as written.
        key: String,
    },
    /// A value of the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What was expected (e.g. `an array of strings`).
        expected: &'static str,
        /// What was found (e.g. `a number`).
        found: &'static str,
    },
    /// A key that must be present is missing.
    #[error("missing \"{key}\" in {context}")]
    MissingKey {
        /// The missing key.
        key: &'static str,
        /// The object it belongs in.
        context: &'static str,
    },
    /// A string that does not have the form expected there.
    #[error("expected {expected}, found \"{found}\"")]
    InvalidValue {
        /// What was expected, in words.
        expected: String,
        /// The text found.
        found: String,
    },
    /// A `group:` that `groups` does not define.
    #[error("group:{name} is not defined in \"groups\"{}", Hint(suggestion, &[]))]
    UndefinedGroup {
        /// The group name (without `group:`).
        name: String,
        /// The nearest defined group.
        suggestion: Option<String>,
    },
    /// A `tag:` that `tagOwners` does not define.
    #[error("tag:{name} is not defined in \"tagOwners\"; every tag used must have owners{}", Hint(suggestion, &[]))]
    UndefinedTag {
        /// The tag name (without `tag:`).
        name: String,
        /// The nearest defined tag.
        suggestion: Option<String>,
    },
    /// A bare name that is not a host alias (and not any other selector).
    #[error(
        "\"{name}\" is not a host alias in \"hosts\", a user (user@domain), group:, tag:, autogroup:, IP or CIDR{}",
        Hint(suggestion, &[])
    )]
    UndefinedHost {
        /// The name as written.
        name: String,
        /// The nearest defined alias.
        suggestion: Option<String>,
    },
    /// A group listed inside a group.
    #[error("groups cannot contain other groups (found \"{member}\"); list its members instead")]
    NestedGroup {
        /// The member as written.
        member: String,
    },
    /// A selector used where it has no meaning.
    #[error("\"{selector}\" cannot be used in {place}: {reason}")]
    NotAllowedHere {
        /// The selector as written.
        selector: String,
        /// Where (e.g. `src`).
        place: &'static str,
        /// Why not, and what to do.
        reason: &'static str,
    },
    /// A `tests` entry whose expectation does not hold.
    #[error("{test} failed: expected {src} -> {dst} ({proto}) to be {expected}, but {outcome}")]
    TestFailed {
        /// The test, e.g. `tests[0]`.
        test: String,
        /// The test's source as written.
        src: String,
        /// The destination as written.
        dst: String,
        /// The protocol tested.
        proto: String,
        /// `accepted` or `denied`.
        expected: &'static str,
        /// What happened, naming the rule that decided (e.g. `acls[2] (p.hujson:14:5)
        /// accepts it`) or that no rule allowed it.
        outcome: String,
    },
}

/// Several problems found in one policy file, in file order. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The individual errors.
    pub fn errors(&self) -> &[PolicyError] {
        &self.0
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Formats "; did you mean X?" or "; expected one of: ...".
struct Hint<'a>(&'a Option<String>, &'a [&'a str]);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(s), _) => write!(f, "; did you mean \"{s}\"?"),
            (None, []) => Ok(()),
            (None, expected) => write!(f, "; expected one of: {}", expected.join(", ")),
        }
    }
}

/// The candidate nearest to `word`, if it is close enough to be a likely typo.
pub(crate) fn nearest<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos_and_ignores_strangers() {
        let keys = ["acls", "groups", "tagOwners", "hosts"];
        assert_eq!(nearest("grops", keys), Some("groups".to_string()));
        assert_eq!(nearest("tagowners", keys), Some("tagOwners".to_string()));
        assert_eq!(nearest("zzzzzzzz", keys), None);
    }
}
