//! `storage.s3`: CNCF Distribution's keys, parsed once into a typed [`S3Config`].
//! Distribution accepts booleans and numbers as YAML values or as strings (what
//! `REGISTRY_STORAGE_S3_*` variables give), so this does too. Credentials come from the
//! keys or, when both are absent, from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (and `AWS_SESSION_TOKEN`).

use serde_yaml_ng::Value;

/// S3's smallest part (every part of a multipart upload but the last).
pub const MIN_CHUNK_SIZE: u64 = 5 << 20;
/// Distribution's default part size.
pub const DEFAULT_CHUNK_SIZE: u64 = 10 << 20;
/// S3's largest part.
pub const MAX_CHUNK_SIZE: u64 = 5 << 30;

#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub region: String,
    /// `scheme://host[:port]` of an S3-compatible server; `None` for AWS.
    pub regionendpoint: Option<String>,
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (`""`: none).
    pub rootdirectory: String,
    pub accesskey: Option<String>,
    pub secretkey: Option<String>,
    pub sessiontoken: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of `bucket.endpoint/key`.
    pub forcepathstyle: bool,
    /// `https` for an endpoint given without a scheme (and for AWS).
    pub secure: bool,
    /// Do not verify the server's TLS certificate.
    pub skipverify: bool,
    /// Part size of multipart uploads: what a writer buffers at most.
    pub chunksize: u64,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("region", &self.region)
            .field("regionendpoint", &self.regionendpoint)
            .field("bucket", &self.bucket)
            .field("rootdirectory", &self.rootdirectory)
            .field("accesskey", &self.accesskey.as_ref().map(|_| "<set>"))
            .field("secretkey", &self.secretkey.as_ref().map(|_| "<set>"))
            .field("forcepathstyle", &self.forcepathstyle)
            .field("secure", &self.secure)
            .field("skipverify", &self.skipverify)
            .field("chunksize", &self.chunksize)
            .finish()
    }
}

/// A key of `storage.s3` that cannot be honoured: its dotted path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key {key}: {message}")]
pub struct S3ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> S3ConfigError {
    S3ConfigError {
        key: format!("storage.s3.{key}"),
        message: message.into(),
    }
}

/// Keys Distribution's s3 driver has that drydock does not act on: refusing them is
/// safer than ignoring an encryption or storage-class setting.
const REFUSED: [&str; 9] = [
    "encrypt",
    "keyid",
    "storageclass",
    "objectacl",
    "v4auth",
    "multipartcopychunksize",
    "multipartcopymaxconcurrency",
    "multipartcopythresholdsize",
    "loglevel",
];

fn string(v: &Value, key: &str) -> Result<String, S3ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(err(key, "expected a string")),
    }
}

fn boolean(v: &Value, key: &str) -> Result<bool, S3ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(err(key, format!("{s:?} is not a boolean"))),
        },
        _ => Err(err(key, "expected a boolean")),
    }
}

fn number(v: &Value, key: &str) -> Result<u64, S3ConfigError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| err(key, format!("{n} is not a size"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| err(key, format!("{s:?} is not a size in bytes"))),
        _ => Err(err(key, "expected a size in bytes")),
    }
}

impl S3Config {
    /// Parses the `storage.s3` mapping; `env` gives the process environment (for the
    /// credential variables).
    pub fn from_yaml(
        value: &Value,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<S3Config, S3ConfigError> {
        let map = value
            .as_mapping()
            .ok_or_else(|| err("", "expected a mapping"))?;
        let mut c = S3Config {
            region: String::new(),
            regionendpoint: None,
            bucket: String::new(),
            rootdirectory: String::new(),
            accesskey: None,
            secretkey: None,
            sessiontoken: None,
            forcepathstyle: false,
            secure: true,
            skipverify: false,
            chunksize: DEFAULT_CHUNK_SIZE,
        };
        for (k, v) in map {
            let Some(key) = k.as_str() else {
                return Err(err("", "keys must be strings"));
            };
            if v.is_null() {
                continue;
            }
            match key {
                "region" => c.region = string(v, key)?,
                "regionendpoint" => {
                    let s = string(v, key)?;
                    c.regionendpoint = (!s.is_empty()).then_some(s)
                }
                "bucket" => c.bucket = string(v, key)?,
                "rootdirectory" => c.rootdirectory = string(v, key)?.trim_matches('/').to_owned(),
                "accesskey" => c.accesskey = Some(string(v, key)?).filter(|s| !s.is_empty()),
                "secretkey" => c.secretkey = Some(string(v, key)?).filter(|s| !s.is_empty()),
                "sessiontoken" => c.sessiontoken = Some(string(v, key)?).filter(|s| !s.is_empty()),
                "forcepathstyle" => c.forcepathstyle = boolean(v, key)?,
                "secure" => c.secure = boolean(v, key)?,
                "skipverify" => c.skipverify = boolean(v, key)?,
                "chunksize" => c.chunksize = number(v, key)?,
                k if REFUSED.contains(&k) => {
                    return Err(err(k, "is not supported by drydock's s3 driver"));
                }
                // Distribution's tuning knobs with no meaning here.
                "maxrequestspersecond" | "maxretries" | "usedualstack" | "accelerate" => {}
                k => return Err(err(k, "is not a key of storage.s3")),
            }
        }
        if c.bucket.is_empty() {
            return Err(err("bucket", "is required"));
        }
        if c.region.is_empty() {
            return Err(err("region", "is required"));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&c.chunksize) {
            return Err(err(
                "chunksize",
                format!(
                    "{} is out of range; give {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes",
                    c.chunksize
                ),
            ));
        }
        if let Some(e) = &c.regionendpoint
            && e.contains("://")
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(err(
                "regionendpoint",
                format!("{e:?} is not an http(s) URL"),
            ));
        }
        match (&c.accesskey, &c.secretkey) {
            (Some(_), None) => return Err(err("secretkey", "is required with accesskey")),
            (None, Some(_)) => return Err(err("accesskey", "is required with secretkey")),
            (Some(_), Some(_)) => {}
            (None, None) => {
                let env: std::collections::HashMap<String, String> = env.into_iter().collect();
                let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
                c.accesskey = get("AWS_ACCESS_KEY_ID");
                c.secretkey = get("AWS_SECRET_ACCESS_KEY");
                c.sessiontoken = get("AWS_SESSION_TOKEN");
                if c.accesskey.is_none() || c.secretkey.is_none() {
                    return Err(err(
                        "accesskey",
                        "no credentials: set accesskey and secretkey, or AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY",
                    ));
                }
            }
        }
        Ok(c)
    }

    /// The endpoint requests go to, with its scheme (`https://s3.<region>.amazonaws.com`
    /// for AWS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        match &self.regionendpoint {
            Some(e) if e.contains("://") => e.trim_end_matches('/').to_owned(),
            Some(e) => format!("{scheme}://{}", e.trim_end_matches('/')),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, env: &[(&str, &str)]) -> Result<S3Config, S3ConfigError> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        S3Config::from_yaml(&v, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn distributions_keys_parse_into_typed_values() {
        let c = parse(
            "region: us-east-1\nregionendpoint: http://127.0.0.1:7480\nbucket: b\n\
             rootdirectory: /reg/\naccesskey: AK\nsecretkey: SK\nforcepathstyle: 'true'\n\
             secure: false\nskipverify: true\nchunksize: '5242880'\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.endpoint(), "http://127.0.0.1:7480");
        assert_eq!(c.bucket, "b");
        assert_eq!(c.rootdirectory, "reg");
        assert_eq!(c.accesskey.as_deref(), Some("AK"));
        assert_eq!(c.secretkey.as_deref(), Some("SK"));
        assert!(c.forcepathstyle && !c.secure && c.skipverify);
        assert_eq!(c.chunksize, 5 << 20);
        assert!(!format!("{c:?}").contains("SK"), "secrets stay out of logs");
    }

    #[test]
    fn defaults_and_credentials_from_the_environment() {
        let c = parse(
            "region: eu-west-1\nbucket: b\n",
            &[("AWS_ACCESS_KEY_ID", "EA"), ("AWS_SECRET_ACCESS_KEY", "ES")],
        )
        .unwrap();
        assert_eq!(c.endpoint(), "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(c.chunksize, DEFAULT_CHUNK_SIZE);
        assert_eq!(c.rootdirectory, "");
        assert!(!c.forcepathstyle && c.secure && !c.skipverify);
        assert_eq!(
            (c.accesskey.as_deref(), c.secretkey.as_deref()),
            (Some("EA"), Some("ES"))
        );
        let c = parse(
            "region: r\nbucket: b\nregionendpoint: rgw.local:7480\nsecure: false\n\
             accesskey: A\nsecretkey: S\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.endpoint(), "http://rgw.local:7480");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("region: r\n", "storage.s3.bucket"),
            ("bucket: b\n", "storage.s3.region"),
            (
                "region: r\nbucket: b\nchunksize: 1024\n",
                "storage.s3.chunksize",
            ),
            (
                "region: r\nbucket: b\nchunksize: ten\n",
                "storage.s3.chunksize",
            ),
            ("region: r\nbucket: b\nsecure: maybe\n", "storage.s3.secure"),
            (
                "region: r\nbucket: b\nencrypt: true\n",
                "storage.s3.encrypt",
            ),
            ("region: r\nbucket: b\nbogus: 1\n", "storage.s3.bogus"),
            (
                "region: r\nbucket: b\naccesskey: A\n",
                "storage.s3.secretkey",
            ),
            ("region: r\nbucket: b\n", "storage.s3.accesskey"),
            (
                "region: r\nbucket: b\nregionendpoint: ftp://x\naccesskey: A\nsecretkey: S\n",
                "storage.s3.regionendpoint",
            ),
        ];
        for (yaml, key) in cases {
            let e = parse(yaml, &[]).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
    }
}
