//! Registry operations built on [`crate::client::Conn`]: blob uploads (monolithic: a POST
//! then a PUT with the body; chunked: PATCHes then a PUT; cross-repository mounts),
//! manifests, and a small random image. Only what every distribution registry implements; in particular no
//! `POST ?digest=`, which Distribution 2.8 does not support.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::client::{
    self as h, Conn, Payload, expect, expect_reply, header_str, location_path, with_query,
};
use anyhow::{Context, anyhow, bail};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// What a client pulling an image says it accepts.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hv(s: &str) -> anyhow::Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(|e| anyhow!("header value {s:?}: {e}"))
}

pub fn accept_manifests() -> (HeaderName, HeaderValue) {
    (header::ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS))
}

/// `POST /v2/<repo>/blobs/uploads/`; returns the session's `Location` path.
pub async fn start_upload(c: &mut Conn, repo: &str) -> anyhow::Result<String> {
    let path = c.target().path(&format!("/v2/{repo}/blobs/uploads/"));
    let resp = c
        .send(
            Method::POST,
            &path,
            &[(header::CONTENT_LENGTH, HeaderValue::from_static("0"))],
            h::empty(),
        )
        .await?;
    let hdrs = expect(&format!("POST {path}"), resp, StatusCode::ACCEPTED).await?;
    let loc = header_str(&hdrs, "location").ok_or_else(|| anyhow!("POST {path}: no Location"))?;
    Ok(location_path(loc))
}

/// `PUT <location>&digest=` with `body`; expects 201.
pub async fn finish_upload(
    c: &mut Conn,
    location: &str,
    digest: &str,
    body: Payload,
) -> anyhow::Result<()> {
    let path = with_query(location, "digest", digest);
    let len = body
        .length()
        .ok_or_else(|| anyhow!("PUT {path}: a body of unknown length"))?;
    let reply = c
        .request(
            Method::PUT,
            &path,
            &[
                (header::CONTENT_LENGTH, hv(&len.to_string())?),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
            ],
            body,
        )
        .await?;
    let hdrs = expect_reply(&format!("PUT {path}"), reply, StatusCode::CREATED)?;
    if let Some(d) = header_str(&hdrs, "docker-content-digest")
        && d != digest
    {
        bail!("PUT {path}: the registry says the digest is {d}");
    }
    Ok(())
}

/// `PATCH <location>` with one chunk that starts at `start`; returns the next
/// `Location`.
pub async fn patch_chunk(
    c: &mut Conn,
    location: &str,
    start: u64,
    body: Payload,
) -> anyhow::Result<String> {
    let len = body
        .length()
        .ok_or_else(|| anyhow!("PATCH {location}: a chunk of unknown length"))?;
    let reply = c
        .request(
            Method::PATCH,
            location,
            &[
                (header::CONTENT_LENGTH, hv(&len.to_string())?),
                (
                    header::CONTENT_RANGE,
                    hv(&format!("{start}-{}", start + len - 1))?,
                ),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
            ],
            body,
        )
        .await?;
    let hdrs = expect_reply(&format!("PATCH {location}"), reply, StatusCode::ACCEPTED)?;
    let loc =
        header_str(&hdrs, "location").ok_or_else(|| anyhow!("PATCH {location}: no Location"))?;
    Ok(location_path(loc))
}

/// `HEAD /v2/<repo>/blobs/<digest>`: whether the registry has it.
pub async fn blob_exists(c: &mut Conn, repo: &str, digest: &str) -> anyhow::Result<bool> {
    let path = c.target().path(&format!("/v2/{repo}/blobs/{digest}"));
    let resp = c.send(Method::HEAD, &path, &[], h::empty()).await?;
    let status = resp.status();
    h::drain(resp).await?;
    match status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        s => bail!("HEAD {path}: {s}"),
    }
}

/// Uploads a small blob held in memory (POST + PUT).
pub async fn push_blob_bytes(
    c: &mut Conn,
    repo: &str,
    digest: &str,
    data: Bytes,
) -> anyhow::Result<()> {
    let loc = start_upload(c, repo).await?;
    finish_upload(c, &loc, digest, Payload::Body(h::full(data))).await
}

/// Links a blob from another repository (`POST ?mount=&from=`); falls back to an upload
/// when the registry opens a session instead.
pub async fn mount_or_push(
    c: &mut Conn,
    repo: &str,
    from: &str,
    digest: &str,
    data: &Bytes,
) -> anyhow::Result<()> {
    let path = c.target().path(&format!(
        "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
    ));
    let resp = c
        .send(
            Method::POST,
            &path,
            &[(header::CONTENT_LENGTH, HeaderValue::from_static("0"))],
            h::empty(),
        )
        .await?;
    let status = resp.status();
    let hdrs = resp.headers().clone();
    h::drain(resp).await?;
    match status {
        StatusCode::CREATED => Ok(()),
        StatusCode::ACCEPTED => {
            let loc =
                header_str(&hdrs, "location").ok_or_else(|| anyhow!("POST {path}: no Location"))?;
            let loc = location_path(loc);
            finish_upload(c, &loc, digest, Payload::Body(h::full(data.clone()))).await
        }
        s => bail!("POST {path}: {s}"),
    }
}

/// `PUT /v2/<repo>/manifests/<reference>`; returns the digest the registry reports.
pub async fn put_manifest(
    c: &mut Conn,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Bytes,
) -> anyhow::Result<String> {
    let path = c
        .target()
        .path(&format!("/v2/{repo}/manifests/{reference}"));
    let len = body.len();
    let resp = c
        .send(
            Method::PUT,
            &path,
            &[
                (header::CONTENT_TYPE, hv(media_type)?),
                (header::CONTENT_LENGTH, hv(&len.to_string())?),
            ],
            h::full(body),
        )
        .await?;
    let hdrs = expect(&format!("PUT {path}"), resp, StatusCode::CREATED).await?;
    header_str(&hdrs, "docker-content-digest")
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("PUT {path}: no Docker-Content-Digest"))
}

/// `GET` a small body and check its sha256.
pub async fn get_verified(
    c: &mut Conn,
    path: &str,
    accept: Option<(HeaderName, HeaderValue)>,
    digest: &str,
) -> anyhow::Result<Bytes> {
    let hdrs: Vec<_> = accept.into_iter().collect();
    let resp = c.send(Method::GET, path, &hdrs, h::empty()).await?;
    let status = resp.status();
    let body = h::collect(resp).await?;
    if status != StatusCode::OK {
        bail!("GET {path}: {status}");
    }
    let got = sha256_digest(&body);
    if got != digest {
        bail!("GET {path}: content hashes to {got}, wanted {digest}");
    }
    Ok(body)
}

/// A blob held in memory with its digest.
#[derive(Clone)]
pub struct Blob {
    pub digest: String,
    pub data: Bytes,
}

impl Blob {
    pub fn new(data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            digest: sha256_digest(&data),
            data,
        }
    }

    pub fn random(rng: &mut fastrand::Rng, len: usize) -> Blob {
        let mut v = vec![0u8; len];
        rng.fill(&mut v);
        Blob::new(v)
    }
}

/// A small image: config, layers, and the manifest naming them.
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

impl Image {
    pub fn random(rng: &mut fastrand::Rng, layers: usize, layer_bytes: usize) -> Image {
        let layers: Vec<Blob> = (0..layers)
            .map(|_| Blob::random(rng, layer_bytes))
            .collect();
        Image::from_layers(rng, layers)
    }

    pub fn from_layers(rng: &mut fastrand::Rng, layers: Vec<Blob>) -> Image {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": [format!("BENCH={:016x}", rng.u64(..))] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = Blob::new(config.to_string());
        let manifest = manifest_json(&config, &layers);
        Image {
            config,
            layers,
            manifest: Blob::new(manifest),
        }
    }

    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.layers.iter().chain(std::iter::once(&self.config))
    }
}

pub fn manifest_json(config: &Blob, layers: &[Blob]) -> String {
    let desc = |media: &str, b: &Blob| serde_json::json!({ "mediaType": media, "digest": b.digest, "size": b.data.len() });
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Pushes an image like docker does: HEAD each blob, upload the missing ones, then the
/// manifest under `tag`. Returns the number of requests sent.
pub async fn push_image(c: &mut Conn, repo: &str, img: &Image, tag: &str) -> anyhow::Result<u32> {
    let mut requests = 0;
    for b in img.blobs() {
        requests += 1;
        if !blob_exists(c, repo, &b.digest).await? {
            push_blob_bytes(c, repo, &b.digest, b.data.clone()).await?;
            requests += 2;
        }
    }
    let d = put_manifest(c, repo, tag, OCI_MANIFEST, img.manifest.data.clone())
        .await
        .context("manifest")?;
    requests += 1;
    if d != img.manifest.digest {
        bail!(
            "the registry named the manifest {d}, it hashes to {}",
            img.manifest.digest
        );
    }
    Ok(requests)
}

/// Pulls an image by tag and verifies every digest. Returns the number of requests.
pub async fn pull_image(c: &mut Conn, repo: &str, img: &Image, tag: &str) -> anyhow::Result<u32> {
    let path = c.target().path(&format!("/v2/{repo}/manifests/{tag}"));
    get_verified(c, &path, Some(accept_manifests()), &img.manifest.digest).await?;
    let mut requests = 1;
    for b in img.blobs() {
        let path = c.target().path(&format!("/v2/{repo}/blobs/{}", b.digest));
        get_verified(c, &path, None, &b.digest).await?;
        requests += 1;
    }
    Ok(requests)
}
