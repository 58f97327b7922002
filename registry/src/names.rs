//! Repository names, tags and references, validated with the distribution spec's grammar.
//! Once parsed they cannot name a path outside the storage root: no `..`, no empty or
//! absolute components, nothing but `[a-z0-9._-/]` in names and `[A-Za-z0-9._-]` in tags.

use std::fmt;

use crate::digest::Digest;

/// Longest repository name accepted (Distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() {
            return Err(NameError("repository name is empty".into()));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError(format!(
                "repository name is {} characters long; the limit is {MAX_NAME_LEN}",
                s.len()
            )));
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(NameError(format!(
                    "repository name {s:?} is invalid: component {component:?} must match \
                     [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*"
                )));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
        let rest_ok = b
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-');
        if !first_ok || !rest_ok || b.len() > 128 {
            return Err(NameError(format!(
                "tag {s:?} is invalid: it must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
            )));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/ubuntu",
            "a.b_c__d---e/f0",
            "x/y/z/blobs/uploads",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "..",
            "a/../b",
            "A",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a.-b",
            "-a",
            "a b",
            long.as_str(),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        assert!(Tag::parse("v1.0_rc-1").is_ok());
        assert!(Tag::parse("_x").is_ok());
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        for bad in ["", ".a", "-a", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
    }
}
