//! TLS on the listener (`http.tls`): rustls with its default aws-lc-rs provider,
//! HTTP/2 and HTTP/1.1 over ALPN, client certificates verified against `clientcas`
//! (required or optional), and certificates, keys and CAs re-read on [`Tls::reload`]
//! (SIGHUP) without touching open connections: each connection is accepted with the
//! configuration of its moment ([`Tls::acceptor`]), and files that no longer load leave
//! the old configuration serving. The handshake runs in the connection's own task,
//! under the connection's `http.timeouts.header` wait and `http.max_connections` slot
//! ([`crate::server`]).

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The listener's TLS configuration, swapped whole on reload.
pub struct Tls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificate", &self.files.certificate)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `http.tls`; an error names the key whose file could not be used.
    pub fn from_config(files: &TlsConfig) -> Result<Arc<Tls>, String> {
        let config = build(files)?;
        Ok(Arc::new(Tls {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Re-reads the certificate, key and client CAs. New connections use them; open
    /// ones keep what they were accepted with. On error the old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = Arc::new(build(&self.files)?);
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// An acceptor with the configuration of this moment (a later reload does not
    /// touch the connection it accepts).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }
}

/// What the handshake of a connection settled: whether the client chose HTTP/2, and
/// the user a verified client certificate names (its subject's common name).
pub fn negotiated(conn: &rustls::ServerConnection) -> (bool, Option<Arc<str>>) {
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let user = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(common_name)
        .map(Arc::from);
    (h2, user)
}

fn key_error(key: &str, e: impl std::fmt::Display) -> String {
    format!("configuration key http.tls.{key}: {e}")
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| key_error(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(key_error(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// A rustls configuration from the files `files` names.
fn build(files: &TlsConfig) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match files.minimumtls.as_deref() {
        Some("tls1.3") => &[&rustls::version::TLS13],
        // Validated at load; tls1.2 is the default.
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let chain = read_certs(&files.certificate, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| key_error("key", format!("{}: {e}", files.key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| key_error("minimumtls", e))?;
    let builder = if files.clientcas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in &files.clientcas {
            for cert in read_certs(path, "clientcas")? {
                roots
                    .add(cert)
                    .map_err(|e| key_error("clientcas", format!("{}: {e}", path.display())))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = match files.clientauth.as_deref() {
            Some("verify-client-cert-if-given") => verifier.allow_unauthenticated(),
            _ => verifier,
        };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| key_error("clientcas", e))?)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| key_error("key", format!("does not fit http.tls.certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The common name of a certificate's subject (the user a client certificate names).
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let subject = cert.subject();
    // The subject without its outer SEQUENCE: wrap it again for the parser.
    let mut wrapped = vec![0x30];
    let len = subject.len();
    if len < 0x80 {
        wrapped.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        wrapped.push(0x80 | bytes.len() as u8);
        wrapped.extend(bytes);
    }
    wrapped.extend_from_slice(subject);
    let cn_oid = yasna::models::ObjectIdentifier::from_slice(&[2, 5, 4, 3]);
    yasna::parse_ber(&wrapped, |r| {
        let mut cn = None;
        r.read_sequence_of(|r| {
            r.read_set_of(|r| {
                r.read_sequence(|r| {
                    let oid = r.next().read_oid()?;
                    let value = r.next().read_tagged_der()?;
                    if oid == cn_oid && cn.is_none() {
                        cn = String::from_utf8(value.value().to_vec()).ok();
                    }
                    Ok(())
                })
            })
        })?;
        Ok(cn)
    })
    .ok()
    .flatten()
    .filter(|cn| !cn.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "drydock");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "no cn");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
    }
}
