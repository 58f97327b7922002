//! Manifest parsing and validation: the media types drydock accepts (OCI image manifest
//! and index, Docker schema 2 manifest and manifest list, the OCI 1.1-rc artifact
//! manifest), and what a manifest references (blobs, child manifests, `subject`).
//! The bytes are stored exactly as the client sent them; this module only reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{Error, Result};

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Layers that live elsewhere (`urls`) and need not be in the registry.
    pub const FOREIGN_LAYERS: [&str; 3] = [
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ];
}

/// A content descriptor as it appears in manifests and in the referrers response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    blobs: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry needs to know of a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    /// For referrers: `artifactType`, else the config's media type.
    pub artifact_type: Option<String>,
    /// Blobs it references that must be in the repository (config, layers, blobs).
    pub blobs: Vec<Digest>,
    /// Manifests it references (index / manifest list entries).
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.media_type == media::OCI_INDEX || self.media_type == media::DOCKER_LIST
    }
}

fn base_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn descriptor_digest(d: &Descriptor, field: &str) -> Result<Digest> {
    if d.size < 0 {
        return Err(Error::ManifestInvalid(format!(
            "{field} descriptor {} has a negative size",
            d.digest
        )));
    }
    d.digest.parse::<Digest>().map_err(|e| {
        Error::ManifestInvalid(format!("{field} descriptor has an invalid digest: {}", e.0))
    })
}

/// The media type stored bytes read as: their `mediaType`, else an index when they have
/// a `manifests` array, else an OCI image manifest. Only the bytes count, so every later
/// reader (GET, the collector, deletes, referrers) sees what the push was checked as.
fn body_media_type(media_type: Option<&str>, has_manifests: bool) -> &str {
    match media_type {
        Some(t) => t,
        None if has_manifests => media::OCI_INDEX,
        None => media::OCI_MANIFEST,
    }
}

/// Parses and validates a manifest pushed with `content_type`. The type comes from the
/// bytes alone (see [`body_media_type`]); a `Content-Type` that names another type is
/// refused rather than trusted, because nothing but the bytes is stored: for every
/// `content_type`, a successful `parse(body, content_type)` equals `parse(body, None)`.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest> {
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| Error::ManifestInvalid(format!("manifest is not valid JSON: {e}")))?;
    let header = content_type
        .map(base_type)
        .filter(|t| !t.is_empty() && *t != "application/json");
    let media_type = body_media_type(raw.media_type.as_deref(), raw.manifests.is_some()).to_owned();
    match (header, raw.media_type.as_deref()) {
        (Some(h), Some(body_type)) if h != body_type => {
            return Err(Error::ManifestInvalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {body_type}"
            )));
        }
        (Some(h), None) if h != media_type => {
            return Err(Error::ManifestInvalid(format!(
                "the manifest has no mediaType, so it reads as {media_type}, not as its \
                 Content-Type {h}: put \"mediaType\": \"{h}\" in the manifest"
            )));
        }
        _ => {}
    }
    match raw.schema_version.as_ref().and_then(|v| v.as_i64()) {
        Some(2) => {}
        Some(1) => {
            return Err(Error::ManifestInvalid(
                "Docker schema 1 manifests are not supported; push schema 2 or OCI".into(),
            ));
        }
        // The 1.1-rc artifact manifest had no schemaVersion.
        _ if media_type == media::OCI_ARTIFACT => {}
        _ => return Err(Error::ManifestInvalid("schemaVersion must be 2".into())),
    }
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut artifact_type = raw.artifact_type.clone();
    match media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            let config = raw.config.as_ref().ok_or_else(|| {
                Error::ManifestInvalid("an image manifest needs a config descriptor".into())
            })?;
            let layers = raw.layers.as_ref().ok_or_else(|| {
                Error::ManifestInvalid("an image manifest needs a layers array".into())
            })?;
            if raw.manifests.is_some() {
                return Err(Error::ManifestInvalid(
                    "an image manifest cannot have a manifests array".into(),
                ));
            }
            blobs.push(descriptor_digest(config, "config")?);
            for l in layers {
                let d = descriptor_digest(l, "layer")?;
                let foreign = media::FOREIGN_LAYERS.contains(&l.media_type.as_str())
                    && l.urls.as_ref().is_some_and(|u| !u.is_empty());
                if !foreign {
                    blobs.push(d);
                }
            }
            if artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
        }
        media::OCI_INDEX | media::DOCKER_LIST => {
            let manifests = raw
                .manifests
                .as_ref()
                .ok_or_else(|| Error::ManifestInvalid("an index needs a manifests array".into()))?;
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(Error::ManifestInvalid(
                    "an index cannot have config or layers".into(),
                ));
            }
            for m in manifests {
                children.push(descriptor_digest(m, "manifests")?);
            }
        }
        media::OCI_ARTIFACT => {
            for b in raw.blobs.iter().flatten() {
                blobs.push(descriptor_digest(b, "blobs")?);
            }
        }
        media::DOCKER_V1 | media::DOCKER_V1_SIGNED => {
            return Err(Error::ManifestInvalid(
                "Docker schema 1 manifests are not supported; push schema 2 or OCI".into(),
            ));
        }
        other => {
            return Err(Error::ManifestInvalid(format!(
                "media type {other:?} is not a manifest type this registry accepts"
            )));
        }
    }
    let subject = match &raw.subject {
        Some(s) => Some(descriptor_digest(s, "subject")?),
        None => None,
    };
    Ok(Manifest {
        media_type,
        artifact_type,
        blobs,
        children,
        subject,
        annotations: raw.annotations,
    })
}

/// What stored manifest bytes reference, as every reader of the store must see it (the
/// collector, deletes, referrers). Bytes that do not parse as a manifest this registry
/// accepts — written by another tool, a schema 1 manifest from an older registry, or
/// damaged — reference every digest they mention: a reader that cannot tell what they
/// need must keep all of it ("fail closed"), never free it.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// Blobs (config, layers, artifact blobs); for unreadable bytes, every digest named.
    pub blobs: Vec<Digest>,
    /// Child manifests; for unreadable bytes, every digest named.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// The bytes did not parse; the lists are every digest they mention.
    pub unreadable: bool,
}

/// The references of stored manifest bytes (see [`References`]).
pub fn references(body: &[u8]) -> References {
    match parse(body, None) {
        Ok(m) => References {
            blobs: m.blobs,
            children: m.children,
            subject: m.subject,
            unreadable: false,
        },
        Err(_) => {
            let all = mentioned_digests(body);
            References {
                blobs: all.clone(),
                children: all,
                subject: None,
                unreadable: true,
            }
        }
    }
}

/// Every `sha256:<64 hex>` and `sha512:<128 hex>` in `body`, in order, without
/// duplicates.
pub fn mentioned_digests(body: &[u8]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (prefix, len) in [(&b"sha256:"[..], 64usize), (&b"sha512:"[..], 128)] {
        let mut i = 0;
        while let Some(at) = find(&body[i..], prefix) {
            let start = i + at + prefix.len();
            let hex = body.get(start..start + len);
            let boundary = body.get(start + len).is_none_or(|c| !c.is_ascii_hexdigit());
            if let Some(hex) = hex
                && boundary
                && hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                && let Ok(d) = format!(
                    "{}{}",
                    String::from_utf8_lossy(prefix),
                    String::from_utf8_lossy(hex)
                )
                .parse::<Digest>()
                && seen.insert(d.clone())
            {
                out.push(d);
            }
            i = start;
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The media type of stored manifest bytes (already validated when they were pushed):
/// the same rule [`parse`] checked the push with.
pub fn stored_media_type(body: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Peek>(body) {
        Ok(p) => body_media_type(p.media_type.as_deref(), p.manifests.is_some()).to_owned(),
        Err(_) => media::OCI_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":3}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest_references() {
        let m = parse(image("").as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let with_subject = image(&format!(
            r#","subject":{{"mediaType":"{}","digest":"{D1}","size":1}}"#,
            media::OCI_MANIFEST
        ));
        let m = parse(with_subject.as_bytes(), None).unwrap();
        assert_eq!(m.subject.unwrap().to_string(), D1);
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("{".into(), None),
            ("[]".into(), None),
            (image(""), Some(media::OCI_INDEX)),
            (r#"{"schemaVersion":1,"name":"x"}"#.into(), None),
            (
                r#"{"schemaVersion":2,"mediaType":"text/plain"}"#.into(),
                None,
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{}"}}"#,
                    media::OCI_INDEX
                ),
                None,
            ),
            (image("").replace(D2, "sha256:zz"), None),
        ];
        for (body, ct) in cases {
            assert!(
                matches!(parse(body.as_bytes(), ct), Err(Error::ManifestInvalid(_))),
                "{body} {ct:?}"
            );
        }
    }

    /// Every body and Content-Type a push may send: what a push is accepted as is what
    /// every later reader (which has only the bytes) reads.
    #[test]
    fn a_push_reads_back_as_it_was_accepted() {
        let blobs =
            format!(r#"[{{"mediaType":"application/octet-stream","digest":"{D1}","size":1}}]"#);
        let descr = format!(
            r#"{{"mediaType":"{}","digest":"{D2}","size":1}}"#,
            media::OCI_MANIFEST
        );
        let bodies = vec![
            image(""),
            image("").replace(&format!(r#""mediaType":"{}","#, media::OCI_MANIFEST), ""),
            format!(r#"{{"schemaVersion":2,"manifests":[{descr}]}}"#),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{descr}]}}"#,
                media::OCI_INDEX
            ),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{descr}]}}"#,
                media::DOCKER_LIST
            ),
            // The issue's flow 3: an artifact manifest without mediaType.
            format!(r#"{{"artifactType":"application/x-sig","blobs":{blobs}}}"#),
            format!(r#"{{"schemaVersion":2,"artifactType":"application/x-sig","blobs":{blobs}}}"#),
            format!(
                r#"{{"mediaType":"{}","artifactType":"application/x-sig","blobs":{blobs},"subject":{descr}}}"#,
                media::OCI_ARTIFACT
            ),
        ];
        let types = [
            None,
            Some("application/json"),
            Some(media::OCI_MANIFEST),
            Some(media::OCI_INDEX),
            Some(media::OCI_ARTIFACT),
            Some(media::DOCKER_MANIFEST),
            Some(media::DOCKER_LIST),
            Some("application/vnd.oci.artifact.manifest.v1+json; charset=utf-8"),
        ];
        let mut accepted = 0;
        for body in &bodies {
            for ct in types {
                let Ok(pushed) = parse(body.as_bytes(), ct) else {
                    continue;
                };
                accepted += 1;
                let read = parse(body.as_bytes(), None)
                    .unwrap_or_else(|e| panic!("accepted with {ct:?} but unreadable: {e} {body}"));
                assert_eq!(pushed.media_type, read.media_type, "{body} {ct:?}");
                assert_eq!(pushed.media_type, stored_media_type(body.as_bytes()));
                assert_eq!(pushed.blobs, read.blobs);
                assert_eq!(pushed.children, read.children);
                assert_eq!(pushed.subject, read.subject);
                assert_eq!(pushed.artifact_type, read.artifact_type);
                let r = references(body.as_bytes());
                assert!(!r.unreadable);
                assert_eq!((r.blobs, r.children), (read.blobs, read.children));
            }
        }
        assert!(accepted >= 12, "only {accepted} pushes accepted");
        // Flow 3 is refused with a message that says what to do.
        let e = parse(
            format!(r#"{{"artifactType":"a/b","blobs":{blobs}}}"#).as_bytes(),
            Some(media::OCI_ARTIFACT),
        );
        assert!(matches!(e, Err(Error::ManifestInvalid(m)) if m.contains("no mediaType")));
    }

    #[test]
    fn unreadable_bytes_reference_every_digest_they_mention() {
        let d3 = format!("sha512:{}", "3".repeat(128));
        let schema1 = format!(
            r#"{{"schemaVersion":1,"name":"x","fsLayers":[{{"blobSum":"{D1}"}},{{"blobSum":"{D2}"}},{{"blobSum":"{D1}"}}],"x":"{d3}","y":"sha256:{}","z":"sha256:{}"}}"#,
            "a".repeat(65),
            "b".repeat(63)
        );
        let r = references(schema1.as_bytes());
        assert!(r.unreadable);
        let want: Vec<Digest> = [D1, D2, d3.as_str()]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(r.blobs, want);
        assert_eq!(r.children, want);
        assert!(references(b"\xff\x00 not json").blobs.is_empty());
    }

    #[test]
    fn stored_type() {
        assert_eq!(stored_media_type(image("").as_bytes()), media::OCI_MANIFEST);
        assert_eq!(stored_media_type(br#"{"manifests":[]}"#), media::OCI_INDEX);
    }
}
