//! Names in the artifacts tree, validated once at the edge: a [`Segment`] is a branch,
//! tag, job or format name, a [`FilePath`] a file's path inside a format. Neither can
//! name anything outside its folder: no empty components, no `.`-prefixed components
//! (so no `..`, and no clash with the tree's own `.link`/`.tag.json` files), nothing but
//! a small ASCII alphabet. Percent-encoded bytes are not decoded: `%2e%2e` is invalid.

use std::fmt;

use crate::names::NameError;

/// Longest branch, tag, job or format name.
pub const MAX_SEGMENT: usize = 128;
/// Longest component of a file path (a file system's `NAME_MAX`).
pub const MAX_FILE_COMPONENT: usize = 255;
/// Longest file path inside a format, and most components in it.
pub const MAX_FILE_PATH: usize = 1024;
pub const MAX_FILE_DEPTH: usize = 32;

/// Tag names that would collide with a branch's own endpoints.
pub const RESERVED_TAGS: [&str; 2] = ["policy", "usage"];
/// Job names that would collide with a tag's own endpoints.
pub const RESERVED_JOBS: [&str; 2] = ["released", "locked"];

/// A branch, tag, job or format name: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Segment(String);

impl Segment {
    /// Parses a name; `what` ("branch", "tag", …) goes into the error message.
    pub fn parse(what: &str, s: &str) -> Result<Segment, NameError> {
        if !valid_component(s, MAX_SEGMENT, b"._-") {
            return Err(NameError(format!(
                "{what} name {s:?} is invalid: it must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"
            )));
        }
        Ok(Segment(s.to_owned()))
    }

    /// A tag name: a segment that is not one of [`RESERVED_TAGS`].
    pub fn parse_tag(s: &str) -> Result<Segment, NameError> {
        if RESERVED_TAGS.contains(&s) {
            return Err(NameError(format!(
                "tag name {s:?} is reserved (it names a branch endpoint)"
            )));
        }
        Segment::parse("tag", s)
    }

    /// A job name: a segment that is not one of [`RESERVED_JOBS`].
    pub fn parse_job(s: &str) -> Result<Segment, NameError> {
        if RESERVED_JOBS.contains(&s) {
            return Err(NameError(format!(
                "job name {s:?} is reserved (it names a tag endpoint)"
            )));
        }
        Segment::parse("job", s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[A-Za-z0-9_+]` then `[A-Za-z0-9._+~-]`, up to `max` bytes. `extra` are the
/// punctuation bytes allowed after the first byte besides letters and digits.
fn valid_component(s: &str, max: usize, extra: &[u8]) -> bool {
    let b = s.as_bytes();
    let first_ok = b.first().is_some_and(|&x| {
        x.is_ascii_alphanumeric() || x == b'_' || (x == b'+' && extra.contains(&b'+'))
    });
    first_ok
        && b.len() <= max
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || extra.contains(&x))
}

/// A file's path inside a format: 1 to 32 `/`-separated components, each
/// `[A-Za-z0-9_+][A-Za-z0-9._+~-]{0,254}` (a segment's alphabet plus `+` and `~`, which
/// package names use: `libstdc++-8.5.0.rpm`, `pkg_1.0~rc1.deb`), at most 1024 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilePath(String);

impl FilePath {
    pub fn parse(s: &str) -> Result<FilePath, NameError> {
        let bad = |why: &str| NameError(format!("file path {s:?} is invalid: {why}"));
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_FILE_PATH {
            return Err(bad("it is longer than 1024 bytes"));
        }
        let mut depth = 0;
        for c in s.split('/') {
            depth += 1;
            if !valid_component(c, MAX_FILE_COMPONENT, b"._+~-") {
                return Err(bad(&format!(
                    "component {c:?} must match [A-Za-z0-9_+][A-Za-z0-9._+~-]{{0,254}}"
                )));
            }
        }
        if depth > MAX_FILE_DEPTH {
            return Err(bad("it has more than 32 components"));
        }
        Ok(FilePath(s.to_owned()))
    }

    /// Parses already-split components.
    pub fn from_components(c: &[&str]) -> Result<FilePath, NameError> {
        FilePath::parse(&c.join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// This path with `child` appended.
    pub fn join(&self, child: &str) -> Result<FilePath, NameError> {
        FilePath::parse(&format!("{}/{child}", self.0))
    }
}

/// One format of one job: `branch/tag/job/format`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FormatId {
    pub branch: Segment,
    pub tag: Segment,
    pub job: Segment,
    pub format: Segment,
}

impl fmt::Display for FormatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.branch, self.tag, self.job, self.format
        )
    }
}

macro_rules! display_as_str {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}
display_as_str!(Segment);
display_as_str!(FilePath);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        for ok in ["main", "v1.2.3", "_x", "a-b_c.d", "0", &"a".repeat(128)] {
            assert!(Segment::parse("branch", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-a",
            "a/b",
            "a b",
            "a+b",
            "%2e%2e",
            "a\\b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(Segment::parse("branch", bad).is_err(), "{bad:?}");
        }
        assert!(Segment::parse_tag("policy").is_err());
        assert!(Segment::parse_tag("usage").is_err());
        assert!(Segment::parse_job("released").is_err());
        assert!(Segment::parse_job("locked").is_err());
        assert!(Segment::parse_job("policy").is_ok());
    }

    #[test]
    fn file_paths() {
        for ok in [
            "foo.rpm",
            "x86_64/libstdc++-8.5.0-4.el8.x86_64.rpm",
            "pool/main/p/pkg_1.0~rc1_amd64.deb",
            "+plus",
            "a/b/c/d",
            "link",
            &"a".repeat(255),
        ] {
            assert!(FilePath::parse(ok).is_ok(), "{ok}");
        }
        let deep = vec!["a"; 33].join("/");
        let long = vec!["a".repeat(200); 6].join("/");
        for bad in [
            "",
            "/",
            "/abs",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            ".link",
            "a/.link",
            ".tmp-x",
            "~home",
            "a b",
            "a%2fb",
            "%2e%2e/x",
            "a\0b",
            "a\\..\\b",
            &"a".repeat(256),
            deep.as_str(),
            long.as_str(),
        ] {
            assert!(FilePath::parse(bad).is_err(), "{bad:?}");
        }
        let p = FilePath::parse("a/b.rpm").unwrap();
        assert_eq!(p.file_name(), "b.rpm");
        assert_eq!(p.join("c").unwrap().as_str(), "a/b.rpm/c");
        assert!(p.join("..").is_err());
    }
}
