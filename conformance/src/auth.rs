//! Test helpers for authentication and TLS: an htpasswd file of bcrypt entries, a
//! certificate authority generated in the test (rcgen) with server, client and
//! token-signing certificates, JWTs signed by a key the test controls, and Basic
//! credentials. Nothing is mocked: these are the files an operator would write.

use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use registry::config::{Config, HtpasswdConfig, TokenConfig, TokenServerConfig};

/// The users every auth test knows: `(name, password)`.
pub const ADMIN: (&str, &str) = ("root", "root-pw");
pub const ALICE: (&str, &str) = ("alice", "alice-pw");
pub const READER: (&str, &str) = ("reader", "reader-pw");

/// `Authorization: Basic …` for a user.
pub fn basic(user: (&str, &str)) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", user.0, user.1).as_bytes())
    )
}

/// Writes an htpasswd file (bcrypt, cost 4 to keep tests quick) for `users`.
pub fn write_htpasswd(path: &Path, users: &[(&str, &str)]) {
    let mut text = String::new();
    for (u, p) in users {
        let h = bcrypt::hash(p, 4).expect("bcrypt");
        text.push_str(&format!("{u}:{h}\n"));
    }
    std::fs::write(path, text).expect("write htpasswd");
}

/// The policy the auth tests use: `root` is an admin, `alice` may do everything,
/// `reader` may only pull, anonymous clients may pull `public/*`.
pub const POLICY: &str = "\
admins: [root]
groups:
  writers: [alice]
authenticated: []
rules:
- repositories: '**'
  groups: {writers: [pull, push, delete]}
  users: {reader: [pull]}
- repositories: 'public/*'
  anonymous: [pull]
  groups: {writers: [pull, push, delete]}
  users: {reader: [pull]}
- branches: '*'
  groups: {writers: [pull, push, delete]}
  users: {reader: [pull]}
";

/// Turns on htpasswd auth with [`POLICY`] and the three users, files under `dir`.
pub fn enable_htpasswd(config: &mut Config, dir: &Path) {
    let path = dir.join("htpasswd");
    write_htpasswd(&path, &[ADMIN, ALICE, READER]);
    use_htpasswd(config, path);
}

/// Turns on htpasswd auth with [`POLICY`] and an htpasswd file already written.
pub fn use_htpasswd(config: &mut Config, path: PathBuf) {
    config.auth.htpasswd = Some(HtpasswdConfig {
        realm: "drydock-test".into(),
        path,
    });
    config.access = serde_yaml_ng::from_str(POLICY).expect("policy");
}

/// Turns on the built-in token service on top of [`enable_htpasswd`]: a P-256 key
/// generated here, realm `/token`, service `drydock-test`, issuer `drydock-test-issuer`.
pub fn enable_token_service(config: &mut Config, dir: &Path) {
    enable_htpasswd(config, dir);
    let key = rcgen::KeyPair::generate().expect("key");
    let key_path = dir.join("token-key.pem");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    config.auth.token = Some(TokenConfig {
        realm: "/token".into(),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        rootcertbundle: None,
        jwks: None,
        signingalgorithms: Vec::new(),
    });
    config.auth.tokenserver = Some(TokenServerConfig {
        key: key_path,
        certificate: None,
        expiration: "5m".into(),
        refreshexpiration: "1h".into(),
    });
}

pub const SERVICE: &str = "drydock-test";
pub const ISSUER: &str = "drydock-test-issuer";

/// A certificate authority made in the test.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    pub key: rcgen::KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.pem()).expect("write CA");
        path.to_owned()
    }

    fn issue(
        &self,
        cn: &str,
        sans: Vec<String>,
        key: rcgen::KeyPair,
        eku: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Issued {
        let mut p = rcgen::CertificateParams::new(sans).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_owned());
        p.extended_key_usages = eku;
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            key,
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self) -> Issued {
        self.issue(
            "drydock test server",
            vec!["127.0.0.1".into(), "localhost".into()],
            rcgen::KeyPair::generate().expect("key"),
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A client certificate whose common name is `user`.
    pub fn client(&self, user: &str) -> Issued {
        self.issue(
            user,
            Vec::new(),
            rcgen::KeyPair::generate().expect("key"),
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// A token-signing certificate with a key of `alg` (rcgen's P-256, Ed25519 or RSA).
    pub fn signer(&self, alg: &'static rcgen::SignatureAlgorithm) -> Issued {
        let key = rcgen::KeyPair::generate_for(alg).expect("signing key");
        self.issue("token signer", Vec::new(), key, Vec::new())
    }
}

impl Issued {
    /// Writes `cert.pem` and `key.pem` under `dir` with `prefix`; returns their paths.
    pub fn write(&self, dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{prefix}.crt"));
        let k = dir.join(format!("{prefix}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

/// A token the way an external token service makes one.
pub struct TokenSpec<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub subject: &'a str,
    /// `(type, name, actions)`.
    pub access: Vec<(&'a str, &'a str, Vec<&'a str>)>,
    /// Seconds from now (negative: already expired).
    pub expires_in: i64,
}

impl<'a> TokenSpec<'a> {
    pub fn new(access: Vec<(&'a str, &'a str, Vec<&'a str>)>) -> TokenSpec<'a> {
        TokenSpec {
            issuer: ISSUER,
            audience: SERVICE,
            subject: "ext-user",
            access,
            expires_in: 300,
        }
    }

    /// Signs with `key` (PEM, PKCS#8) as `alg`, naming the key by `x5c` chain or `kid`.
    pub fn sign(
        &self,
        alg: jsonwebtoken::Algorithm,
        key_pem: &str,
        x5c: Option<Vec<Vec<u8>>>,
        kid: Option<&str>,
    ) -> String {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let access: Vec<serde_json::Value> = self
            .access
            .iter()
            .map(|(t, n, a)| serde_json::json!({"type": t, "name": n, "actions": a}))
            .collect();
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now - 1,
            "jti": format!("t{now}"),
            "access": access,
        });
        let mut h = jsonwebtoken::Header::new(alg);
        h.x5c = x5c.map(|c| c.iter().map(|d| BASE64.encode(d)).collect());
        h.kid = kid.map(str::to_owned);
        let key = match alg {
            jsonwebtoken::Algorithm::ES256 => {
                jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes())
            }
            jsonwebtoken::Algorithm::EdDSA => {
                jsonwebtoken::EncodingKey::from_ed_pem(key_pem.as_bytes())
            }
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()),
        }
        .expect("encoding key");
        jsonwebtoken::encode(&h, &claims, &key).expect("sign token")
    }
}

/// Serves TLS with a certificate for `127.0.0.1`/`localhost` from `ca`, files under
/// `dir` (`server.crt`, `server.key`).
pub fn enable_tls(config: &mut Config, dir: &Path, ca: &Ca) {
    let (certificate, key) = ca.server().write(dir, "server");
    config.http.tls = Some(registry::config::TlsConfig {
        certificate,
        key,
        clientcas: Vec::new(),
        clientauth: None,
        minimumtls: None,
    });
}

/// A client that trusts only `ca` (no system roots), presenting `identity` (a client
/// certificate) when given; HTTP/2 when the server offers it.
pub fn tls_client(ca: &Ca, identity: Option<&Issued>) -> reqwest::Client {
    tls_client_builder(ca, identity)
        .build()
        .expect("TLS client")
}

/// [`tls_client`]'s builder, for tests that adjust it (versions, HTTP/1.1 only).
pub fn tls_client_builder(ca: &Ca, identity: Option<&Issued>) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA certificate"),
        )
        .redirect(reqwest::redirect::Policy::none());
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity"));
    }
    b
}

/// A `--cert-dir` for containers/image clients (skopeo, podman): the CA as `ca.crt`, and
/// with `client`, its certificate and key as `client.cert` / `client.key`.
pub fn cert_dir(dir: &Path, ca: &Ca, client: Option<&Issued>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("cert dir");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca.crt");
    if let Some(c) = client {
        std::fs::write(dir.join("client.cert"), &c.cert_pem).expect("write client.cert");
        std::fs::write(dir.join("client.key"), &c.key_pem).expect("write client.key");
    }
    dir.to_owned()
}
