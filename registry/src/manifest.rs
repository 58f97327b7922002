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

/// Parses and validates a manifest pushed with `content_type`.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest> {
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| Error::ManifestInvalid(format!("manifest is not valid JSON: {e}")))?;
    let header = content_type.map(base_type).filter(|t| !t.is_empty());
    match raw.schema_version.as_ref().and_then(|v| v.as_i64()) {
        Some(2) => {}
        Some(1) => {
            return Err(Error::ManifestInvalid(
                "Docker schema 1 manifests are not supported; push schema 2 or OCI".into(),
            ));
        }
        _ => {
            // The 1.1-rc artifact manifest had no schemaVersion.
            let artifact = raw.media_type.as_deref() == Some(media::OCI_ARTIFACT)
                || header == Some(media::OCI_ARTIFACT);
            if !artifact {
                return Err(Error::ManifestInvalid("schemaVersion must be 2".into()));
            }
        }
    }
    let media_type = match (raw.media_type.as_deref(), header) {
        (Some(body_type), Some(h)) if h != body_type && h != "application/json" => {
            return Err(Error::ManifestInvalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {body_type}"
            )));
        }
        (Some(body_type), _) => body_type.to_owned(),
        (None, Some(h)) if h != "application/json" => h.to_owned(),
        (None, _) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
        (None, _) => media::OCI_MANIFEST.to_owned(),
    };
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

/// The media type of stored manifest bytes (already validated when they were pushed).
pub fn stored_media_type(body: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Peek>(body) {
        Ok(Peek {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Peek {
            manifests: Some(_), ..
        }) => media::OCI_INDEX.to_owned(),
        _ => media::OCI_MANIFEST.to_owned(),
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

    #[test]
    fn stored_type() {
        assert_eq!(stored_media_type(image("").as_bytes()), media::OCI_MANIFEST);
        assert_eq!(stored_media_type(br#"{"manifests":[]}"#), media::OCI_INDEX);
    }
}
