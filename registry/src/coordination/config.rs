//! The `database:` section, with the keys GitLab's container registry uses, so one
//! section serves operators of both.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::go_duration;

/// Where replicas keep their coordination (pins, journals, claims, the GC lease).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// Replica mode: coordinate through this PostgreSQL database.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    /// libpq's names: `disable`, `allow`, `prefer` connect without TLS; `require`,
    /// `verify-ca`, `verify-full` connect only with TLS and verify the server's
    /// certificate, its chain and its name, in all three (stricter than libpq's
    /// `require` and `verify-ca`, which skip the name or the whole check).
    pub sslmode: String,
    /// A client certificate (PEM) to present, with `sslkey`.
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    /// The CAs (PEM) that sign the server's certificate; the system's roots otherwise.
    pub sslrootcert: Option<String>,
    /// Time allowed to open a connection (`0s`: no limit).
    #[serde(with = "go_duration")]
    pub connecttimeout: Duration,
    /// GitLab's: how long to wait for connections to close at shutdown (no effect here:
    /// they close with the process).
    #[serde(with = "go_duration")]
    pub draintimeout: Duration,
    /// GitLab's: use server-side prepared statements (drydock always does).
    pub preparedstatements: bool,
    pub pool: PoolConfig,
}

/// Connection pool settings (GitLab's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// Most connections the pool opens (each removal session and the replica's own
    /// presence take one more each, outside the pool).
    pub maxopen: usize,
    /// GitLab's: idle connections kept (here every opened connection is kept).
    pub maxidle: usize,
    /// GitLab's: a connection's longest life (`0s`: unlimited; no effect yet).
    #[serde(with = "go_duration")]
    pub maxlifetime: Duration,
    /// GitLab's: a connection's longest idle time (`0s`: unlimited; no effect yet).
    #[serde(with = "go_duration")]
    pub maxidletime: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            enabled: false,
            host: "localhost".into(),
            port: 5432,
            user: String::new(),
            password: String::new(),
            dbname: String::new(),
            sslmode: "prefer".into(),
            sslcert: None,
            sslkey: None,
            sslrootcert: None,
            connecttimeout: Duration::from_secs(10),
            draintimeout: Duration::ZERO,
            preparedstatements: true,
            pool: PoolConfig::default(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            maxopen: 16,
            maxidle: 16,
            maxlifetime: Duration::ZERO,
            maxidletime: Duration::ZERO,
        }
    }
}

/// The modes that connect without TLS (drydock never negotiates it in them).
const PLAIN_MODES: &[&str] = &["disable", "allow", "prefer"];
const TLS_MODES: &[&str] = &["require", "verify-ca", "verify-full"];

impl DatabaseConfig {
    /// Checks what a connection needs, whether or not the section is enabled (a wrong
    /// value is wrong before it is switched on). Returns the key and what is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("database.{k}");
        if !PLAIN_MODES.contains(&self.sslmode.as_str())
            && !TLS_MODES.contains(&self.sslmode.as_str())
        {
            return Err((
                key("sslmode"),
                format!(
                    "{:?} is not an sslmode; give one of disable, allow, prefer, require, \
                     verify-ca, verify-full",
                    self.sslmode
                ),
            ));
        }
        if !self.uses_tls() {
            for (k, v) in [
                ("sslcert", &self.sslcert),
                ("sslkey", &self.sslkey),
                ("sslrootcert", &self.sslrootcert),
            ] {
                if v.is_some() {
                    return Err((
                        key(k),
                        format!(
                            "is set, but sslmode {:?} connects without TLS; give require or \
                             verify-full",
                            self.sslmode
                        ),
                    ));
                }
            }
        }
        self.tls()?;
        if self.enabled {
            for (k, v) in [
                ("host", &self.host),
                ("user", &self.user),
                ("dbname", &self.dbname),
            ] {
                if v.trim().is_empty() {
                    return Err((key(k), "is empty; replica mode needs it".into()));
                }
            }
            if self.port == 0 {
                return Err((key("port"), "must not be 0".into()));
            }
        }
        if !(1..=1024).contains(&self.pool.maxopen) {
            return Err((
                key("pool.maxopen"),
                format!("{} is out of range; give 1 to 1024", self.pool.maxopen),
            ));
        }
        Ok(())
    }

    /// Whether connections use TLS (and only TLS).
    pub fn uses_tls(&self) -> bool {
        TLS_MODES.contains(&self.sslmode.as_str())
    }

    /// The connection settings for the client.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("drydock")
            .ssl_mode(if self.uses_tls() {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Disable
            });
        if !self.password.is_empty() {
            c.password(&self.password);
        }
        if !self.connecttimeout.is_zero() {
            c.connect_timeout(self.connecttimeout);
        }
        c
    }

    /// The TLS side of every connection: the server's certificate is verified (chain
    /// and name) against `sslrootcert`, or the system's roots; `sslcert` and `sslkey`
    /// are presented when given. Without TLS (`pg_config` asks for none) it is never
    /// used. An error names the key whose file does not load.
    pub fn tls(&self) -> Result<MakeRustlsConnect, (String, String)> {
        let key = |k: &str| format!("database.{k}");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| (key("sslmode"), e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        if self.uses_tls() {
            match &self.sslrootcert {
                Some(path) => {
                    for cert in pem_certs(path).map_err(|e| (key("sslrootcert"), e))? {
                        roots
                            .add(cert)
                            .map_err(|e| (key("sslrootcert"), format!("{path}: {e}")))?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err((
                            key("sslrootcert"),
                            "is not set and the system has no CA certificates; give the CA \
                             that signs the server's certificate"
                                .into(),
                        ));
                    }
                }
            }
        }
        let builder = builder.with_root_certificates(roots);
        let config = match (&self.sslcert, &self.sslkey) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err((key("sslkey"), "is needed with database.sslcert".into()));
            }
            (None, Some(_)) => {
                return Err((key("sslcert"), "is needed with database.sslkey".into()));
            }
            (Some(cert), Some(k)) => {
                let chain = pem_certs(cert).map_err(|e| (key("sslcert"), e))?;
                let private = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| (key("sslkey"), format!("{k}: {e}")))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| (key("sslkey"), format!("does not fit database.sslcert: {e}")))?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The certificates of a PEM file; none is an error.
fn pem_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_required_keys() {
        let mut c = DatabaseConfig::default();
        assert!(c.check().is_ok(), "the default (disabled) section is valid");
        c.enabled = true;
        assert_eq!(c.check().unwrap_err().0, "database.user");
        c.user = "registry".into();
        assert_eq!(c.check().unwrap_err().0, "database.dbname");
        c.dbname = "registry".into();
        assert!(c.check().is_ok());
        c.sslmode = "verify-full".into();
        c.sslrootcert = Some("/nonexistent/ca.pem".into());
        let (k, m) = c.check().unwrap_err();
        assert_eq!(k, "database.sslrootcert");
        assert!(m.contains("/nonexistent/ca.pem"), "{m}");
        c.sslrootcert = None;
        c.sslcert = Some("/client.pem".into());
        assert_eq!(c.check().unwrap_err().0, "database.sslkey");
        c.sslcert = None;
        c.sslmode = "bogus".into();
        assert!(c.check().unwrap_err().1.contains("not an sslmode"));
        c.sslmode = "disable".into();
        c.sslrootcert = Some("/ca.pem".into());
        assert_eq!(c.check().unwrap_err().0, "database.sslrootcert");
        c.sslrootcert = None;
        c.pool.maxopen = 0;
        assert_eq!(c.check().unwrap_err().0, "database.pool.maxopen");
    }

    #[test]
    fn the_section_parses_and_needs_s3_when_enabled() {
        use crate::config::{Config, ConfigError};
        let yaml = |enabled: bool| {
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /r\ndatabase:\n  \
                 enabled: {enabled}\n  host: db.internal\n  port: 6432\n  user: registry\n  \
                 password: secret\n  dbname: registry\n  sslmode: disable\n  \
                 connecttimeout: 5s\n  draintimeout: 2m\n  pool:\n    maxopen: 30\n    \
                 maxidle: 15\n    maxlifetime: 30m\n    maxidletime: 5m\n"
            )
        };
        let l = Config::from_yaml(&yaml(false), "t", Vec::<(String, String)>::new()).unwrap();
        let db = &l.config.database;
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        assert_eq!(
            (db.host.as_str(), db.port, db.pool.maxopen),
            ("db.internal", 6432, 30)
        );
        assert_eq!(db.pool.maxlifetime, Duration::from_secs(1800));
        assert_eq!(db.connecttimeout, Duration::from_secs(5));
        let err = Config::from_yaml(&yaml(true), "t", Vec::<(String, String)>::new()).unwrap_err();
        let ConfigError::Key { path, message } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, "database.enabled");
        assert!(message.contains("storage.s3"), "{message}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
        // On a bucket, replica mode is accepted.
        let on_s3 = yaml(true).replace(
            "  filesystem:\n    rootdirectory: /r\n",
            "  s3:\n    region: r\n    bucket: b\n    accesskey: a\n    secretkey: s\n",
        );
        let l = Config::from_yaml(&on_s3, "t", Vec::<(String, String)>::new()).unwrap();
        assert!(l.config.database.enabled && l.config.storage.s3.is_some());
        let bad = yaml(false).replace(
            "sslmode: disable",
            "sslmode: verify-full\n  sslrootcert: /nonexistent/ca.pem",
        );
        let err = Config::from_yaml(&bad, "t", Vec::<(String, String)>::new()).unwrap_err();
        assert!(err.to_string().contains("database.sslrootcert"), "{err}");
        let typo = yaml(false).replace("dbname:", "dbnmae:");
        assert!(Config::from_yaml(&typo, "t", Vec::<(String, String)>::new()).is_err());
    }
}
