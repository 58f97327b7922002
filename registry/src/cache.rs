//! In-memory caches in front of the store's small reads: link files (tags, manifest
//! revisions, layer links), pool blob sizes and manifest bodies. Only positive answers
//! are cached, and every write and removal of the store (API deletes, tag moves, the
//! collector's sweep) invalidates what it changed, so a cached answer is never staler
//! than the disk. A fill that raced with an invalidation is dropped: readers note the
//! generation before reading the disk and insert only if no invalidation happened since.
//! The check and the insert are one step under the entry's map lock, and an
//! invalidation bumps the generation before it removes the entry under that same lock:
//! either the fill sees the bump, or the removal sees the entry.
//! Each map is bounded; when full it is emptied (entries are cheap to refill).
//!
//! Correct only while one process writes the root — the root lock guarantees it.
//! Replicas on one bucket keep none ([`crate::Store::with_liveness`] on a shared
//! protocol): a tag moved, a manifest deleted or a blob swept by another replica would
//! be answered from a stale entry (and a stale blob size is a HEAD that says a swept
//! blob exists, which the claim protocol relies on never happening).
//!
//! A process that serves no reads (the offline collector, CLI maintenance) uses
//! [`Cache::off`]: it holds nothing, so its removals have nothing to invalidate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use crate::digest::Digest;

const MAX_LINKS: usize = 200_000;
const MAX_SIZES: usize = 200_000;
const MAX_MANIFEST_BYTES: usize = 64 << 20;
/// Tag names held over all cached tag listings.
const MAX_LISTED_TAGS: usize = 500_000;
/// A larger catalog is read from disk on every request rather than held.
const MAX_CATALOG: usize = 1_000_000;

/// A manifest as served: media type and exact bytes.
#[derive(Clone, Debug)]
pub struct CachedManifest {
    pub media_type: String,
    pub body: Bytes,
}

#[derive(Default)]
pub struct Cache {
    /// Holds nothing: fills are dropped and invalidations return at once.
    off: bool,
    generation: AtomicU64,
    links: DashMap<String, Digest>,
    sizes: DashMap<Digest, u64>,
    manifests: DashMap<Digest, CachedManifest>,
    manifest_bytes: AtomicUsize,
    /// Sorted tag listings by repository name.
    tag_lists: DashMap<String, Arc<[String]>>,
    listed_tags: AtomicUsize,
    /// Every repository, sorted bytewise.
    catalog: std::sync::RwLock<Option<Arc<[String]>>>,
    /// Lookups answered and not, by kind (`LOOKUP_KINDS`), for the metrics.
    hits: [AtomicU64; 5],
    misses: [AtomicU64; 5],
}

/// The kinds of lookup the cache counts, in the order of its counters.
const LOOKUP_KINDS: [&str; 5] = ["link", "size", "manifest", "tags", "catalog"];

/// Hit and miss counts of one kind of lookup.
#[derive(Debug, Clone, Copy)]
pub struct Lookups {
    pub kind: &'static str,
    pub hits: u64,
    pub misses: u64,
}

impl Cache {
    /// A cache that holds nothing, for a process that serves no reads.
    pub fn off() -> Cache {
        Cache {
            off: true,
            ..Cache::default()
        }
    }

    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Counts a lookup of kind `k` (an index into `LOOKUP_KINDS`) and passes it on.
    fn counted<T>(&self, k: usize, found: Option<T>) -> Option<T> {
        let c = if found.is_some() {
            &self.hits[k]
        } else {
            &self.misses[k]
        };
        c.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Hits and misses so far, by kind.
    pub fn lookups(&self) -> Vec<Lookups> {
        LOOKUP_KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| Lookups {
                kind,
                hits: self.hits[i].load(Ordering::Relaxed),
                misses: self.misses[i].load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The generation to pass to a later `fill_*` call; read it before the disk.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a fill read at generation `since` may go in: never in an off cache, so
    /// every `fill_*` (they all ask this) leaves it empty.
    fn unchanged(&self, since: u64) -> bool {
        !self.off && self.generation.load(Ordering::SeqCst) == since
    }

    /// Inserts `value` if no invalidation happened since `since`, checking under the
    /// entry's lock; returns whether the key is new.
    fn fill<K: std::hash::Hash + Eq + Clone, V>(
        &self,
        map: &DashMap<K, V>,
        key: K,
        value: V,
        since: u64,
    ) -> bool {
        let entry = map.entry(key);
        if !self.unchanged(since) {
            return false;
        }
        match entry {
            dashmap::Entry::Occupied(mut o) => {
                o.insert(value);
                false
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(value);
                true
            }
        }
    }

    pub fn link(&self, path: &str) -> Option<Digest> {
        self.counted(0, self.links.get(path).map(|d| d.clone()))
    }

    pub fn fill_link(&self, path: &str, digest: &Digest, since: u64) {
        if self.links.len() >= MAX_LINKS {
            self.links.clear();
        }
        self.fill(&self.links, path.to_owned(), digest.clone(), since);
    }

    /// Call after the link at `path` was written or removed on disk.
    pub fn invalidate_link(&self, path: &str) {
        if self.off {
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.links.remove(path);
    }

    pub fn size(&self, digest: &Digest) -> Option<u64> {
        self.counted(1, self.sizes.get(digest).map(|s| *s))
    }

    pub fn fill_size(&self, digest: &Digest, size: u64, since: u64) {
        if self.sizes.len() >= MAX_SIZES {
            self.sizes.clear();
        }
        self.fill(&self.sizes, digest.clone(), size, since);
    }

    pub fn manifest(&self, digest: &Digest) -> Option<CachedManifest> {
        self.counted(2, self.manifests.get(digest).map(|m| m.clone()))
    }

    pub fn fill_manifest(&self, digest: &Digest, m: CachedManifest, since: u64) {
        let n = m.body.len();
        if self.manifest_bytes.load(Ordering::Relaxed) + n > MAX_MANIFEST_BYTES {
            self.manifests.clear();
            self.manifest_bytes.store(0, Ordering::Relaxed);
        }
        if self.fill(&self.manifests, digest.clone(), m, since) {
            self.manifest_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A repository's tags in listing order, if cached.
    pub fn tag_list(&self, repo: &str) -> Option<Arc<[String]>> {
        self.counted(3, self.tag_lists.get(repo).map(|l| l.clone()))
    }

    pub fn fill_tag_list(&self, repo: &str, tags: Arc<[String]>, since: u64) {
        if self.listed_tags.load(Ordering::Relaxed) + tags.len() > MAX_LISTED_TAGS {
            self.tag_lists.clear();
            self.listed_tags.store(0, Ordering::Relaxed);
        }
        let n = tags.len();
        if self.fill(&self.tag_lists, repo.to_owned(), tags, since) {
            self.listed_tags.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Call after a tag of `repo` was created, moved or removed on disk.
    pub fn invalidate_tag_list(&self, repo: &str) {
        if self.off {
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some((_, l)) = self.tag_lists.remove(repo) {
            self.listed_tags.fetch_sub(l.len(), Ordering::Relaxed);
        }
    }

    /// The catalog, if cached.
    pub fn catalog(&self) -> Option<Arc<[String]>> {
        let found = self.catalog.read().ok().and_then(|c| c.clone());
        self.counted(4, found)
    }

    pub fn fill_catalog(&self, repos: Arc<[String]>, since: u64) {
        if repos.len() > MAX_CATALOG {
            return;
        }
        // The check runs under the write lock, so an invalidation either comes before
        // it (the fill is dropped) or waits for the store and then drops the listing.
        if let Ok(mut c) = self.catalog.write()
            && self.unchanged(since)
        {
            *c = Some(repos);
        }
    }

    /// Call after a link was written under `repo`, which may have created it: the
    /// cached catalog is dropped unless it lists `repo` already.
    pub fn note_repository(&self, repo: &str) {
        let listed = match self.catalog.read() {
            Ok(c) => c
                .as_ref()
                .is_none_or(|l| l.binary_search_by(|r| r.as_str().cmp(repo)).is_ok()),
            Err(_) => false,
        };
        if !listed {
            self.invalidate_catalog();
        }
    }

    /// Call after a repository was created or removed on disk.
    pub fn invalidate_catalog(&self) {
        if self.off {
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.catalog.write() {
            *c = None;
        }
    }

    /// Call after a pool blob was removed on disk.
    pub fn invalidate_blob(&self, digest: &Digest) {
        if self.off {
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.sizes.remove(digest);
        if let Some((_, m)) = self.manifests.remove(digest) {
            self.manifest_bytes
                .fetch_sub(m.body.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = Cache::default();
        let d = Digest::sha256(b"x");
        let g = c.generation();
        c.invalidate_link("p");
        c.fill_link("p", &d, g);
        assert!(c.link("p").is_none());
        let g = c.generation();
        c.fill_link("p", &d, g);
        assert_eq!(c.link("p"), Some(d.clone()));
        c.invalidate_link("p");
        assert!(c.link("p").is_none());
        c.fill_size(&d, 5, c.generation());
        c.invalidate_blob(&d);
        assert!(c.size(&d).is_none());
    }

    #[test]
    fn an_off_cache_holds_nothing() {
        let c = Cache::off();
        let d = Digest::sha256(b"x");
        c.fill_link("p", &d, c.generation());
        c.fill_size(&d, 5, c.generation());
        c.fill_tag_list("r", Arc::from(vec!["t".to_owned()]), c.generation());
        c.fill_catalog(Arc::from(vec!["r".to_owned()]), c.generation());
        assert!(c.link("p").is_none());
        assert!(c.size(&d).is_none());
        assert!(c.tag_list("r").is_none());
        assert!(c.catalog().is_none());
        assert!(c.is_off());
        assert!(!Cache::default().is_off());
    }
}
