//! The lists a report carries of what a sweep removed. A collection can remove a
//! hundred thousand items; as `repo@sha256:…` strings they would take ~110 bytes each,
//! so they are kept as a shared repository name and the digest's raw bytes (~56 bytes),
//! and become strings only when written out. On the wire they are plain strings.

use std::fmt;
use std::sync::Arc;

use registry::Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Compact {
    Sha256([u8; 32]),
    /// Another algorithm, or a string that is not a digest (kept as it came).
    Text(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    repo: Option<Arc<str>>,
    digest: Compact,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.repo {
            f.write_str(r)?;
            f.write_str("@")?;
        }
        match &self.digest {
            Compact::Sha256(b) => {
                let mut hex = [0u8; 64];
                // 32 bytes always fit 64 hex digits, and hex digits are UTF-8.
                let _ = hex::encode_to_slice(b, &mut hex);
                f.write_str("sha256:")?;
                f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
            }
            Compact::Text(t) => f.write_str(t),
        }
    }
}

fn compact(d: &str) -> Compact {
    match d.strip_prefix("sha256:") {
        Some(hex) => match registry::digest::sha256_hex_bytes(hex) {
            Some(b) => Compact::Sha256(b),
            None => Compact::Text(d.into()),
        },
        None => Compact::Text(d.into()),
    }
}

fn of(d: &Digest) -> Compact {
    match d.sha256_bytes() {
        Some(b) => Compact::Sha256(b),
        None => Compact::Text(d.to_string().into()),
    }
}

/// A list of removed items (`repo@digest` or `digest`), in chunks: the sweep's workers
/// each fill their own, and joining them moves chunks instead of copying items.
#[derive(Debug, Default, Clone)]
pub struct Items(Vec<Vec<Item>>);

impl PartialEq for Items {
    fn eq(&self, other: &Items) -> bool {
        self.len() == other.len() && self.items().eq(other.items())
    }
}

impl Eq for Items {}

impl Items {
    fn add(&mut self, item: Item) {
        match self.0.last_mut() {
            Some(last) => last.push(item),
            None => self.0.push(vec![item]),
        }
    }

    /// Adds `repo@digest` (`repo` shared between the items of one repository).
    pub fn push_in(&mut self, repo: &Arc<str>, digest: &Digest) {
        self.add(Item {
            repo: Some(repo.clone()),
            digest: of(digest),
        });
    }

    /// Adds a bare digest.
    pub fn push(&mut self, digest: &Digest) {
        self.add(Item {
            repo: None,
            digest: of(digest),
        });
    }

    /// Moves `other`'s items to the end of this list.
    pub fn append(&mut self, mut other: Items) {
        for chunk in &mut other.0 {
            chunk.shrink_to_fit();
        }
        self.0.append(&mut other.0);
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn items(&self) -> impl Iterator<Item = &Item> + '_ {
        self.0.iter().flatten()
    }

    /// The items as strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        self.items().map(|i| i.to_string())
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.iter().collect()
    }

    pub fn contains(&self, item: &str) -> bool {
        self.iter().any(|i| i == item)
    }
}

/// Each item is formatted straight into the output: no string per item (a report can
/// list a hundred thousand).
impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Items {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.items())
    }
}

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        Ok(Items(vec![
            strings
                .iter()
                .map(|s| match s.rsplit_once('@') {
                    Some((repo, digest)) => Item {
                        repo: Some(repo.into()),
                        digest: compact(digest),
                    },
                    None => Item {
                        repo: None,
                        digest: compact(s),
                    },
                })
                .collect(),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        let d: Digest = "sha256:ab0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855e"
            .parse()
            .unwrap();
        let mut items = Items::default();
        items.push_in(&Arc::from("library/alpine"), &d);
        items.push(&d);
        let want = vec![format!("library/alpine@{d}"), d.to_string()];
        assert_eq!(items.to_strings(), want);
        let json = serde_json::to_string(&items).unwrap();
        assert_eq!(json, serde_json::to_string(&want).unwrap());
        let back: Items = serde_json::from_str(&json).unwrap();
        assert_eq!(back, items);
        assert!(back.contains(&d.to_string()));
        // Anything else survives as text.
        let odd: Items = serde_json::from_str(r#"["r@sha512:00", "x"]"#).unwrap();
        assert_eq!(odd.to_strings(), vec!["r@sha512:00", "x"]);
    }
}
