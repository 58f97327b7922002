//! Bearer tokens: JWTs as CNCF Distribution's token specification describes them,
//! verified with `jsonwebtoken` (signatures by `ring`) against keys the operator trusts:
//! a token's `x5c` chain must end at a certificate of `auth.token.rootcertbundle`
//! (checked by `rustls-webpki`), or its `kid` must name a key of `auth.token.jwks`, a
//! bundle certificate's key (by its libtrust key ID, as Distribution names them) or the
//! built-in token server's own key. `aud` must be the service, `iss` the issuer,
//! `exp`/`nbf` hold with a small leeway. Also the signing half for the built-in server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use data_encoding::{BASE32_NOPAD, BASE64};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::access::{Action, Actions};
use crate::config::TokenConfig;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claims drydock reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// What a verified token lets its bearer do.
#[derive(Debug, Clone)]
pub struct Grant {
    pub subject: String,
    /// (type, name, actions), one entry per (type, name): a token names a few, and a
    /// scan of them allocates nothing on the hot path (a map keyed by owned strings did).
    entries: Vec<(String, String, Actions)>,
    pub exp: u64,
}

impl Grant {
    pub fn from_claims(c: &Claims) -> Grant {
        let mut entries: HashMap<(String, String), Actions> = HashMap::new();
        for e in &c.access {
            let mut a = Actions::NONE;
            for s in &e.actions {
                a = a.union(Actions::of(&Action::parse_many(s)));
            }
            let slot = entries.entry((e.kind.clone(), e.name.clone())).or_default();
            *slot = slot.union(a);
        }
        Grant {
            subject: c.sub.clone(),
            entries: entries.into_iter().map(|((k, n), a)| (k, n, a)).collect(),
            exp: c.exp,
        }
    }

    /// The actions granted on `kind:name`.
    pub fn actions(&self, kind: &str, name: &str) -> Actions {
        self.entries
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .map_or(Actions::NONE, |(_, _, a)| *a)
    }

    /// Whether the token holds `registry:<name>:*` (Distribution's `catalog`, drydock's
    /// `admin`).
    pub fn has_registry(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, n, _)| k == "registry" && n == name)
    }
}

/// Keys tokens may be signed with.
struct Keys {
    anchors: Vec<CertificateDer<'static>>,
    by_kid: HashMap<String, (DecodingKey, Family)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        EdDSA => Some(Family::Ed),
        HS256 | HS384 | HS512 => None,
    }
}

fn spki_key(spki_der: &[u8]) -> Result<(DecodingKey, Family), String> {
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        BASE64.encode(spki_der)
    );
    let p = pem.as_bytes();
    // Classified by the key's algorithm OID; only one of these accepts a given key.
    if let Ok(k) = DecodingKey::from_ec_pem(p) {
        return Ok((k, Family::Ec));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(p) {
        return Ok((k, Family::Ed));
    }
    DecodingKey::from_rsa_pem(p)
        .map(|k| (k, Family::Rsa))
        .map_err(|e| format!("unsupported public key: {e}"))
}

/// Distribution's (libtrust's) key ID of a public key: the first 240 bits of the
/// SHA-256 of its DER SubjectPublicKeyInfo, base32, in groups of four joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(spki_der);
    let b = BASE32_NOPAD.encode(&h[..30]);
    b.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn load_keys(c: &TokenConfig, own: Option<&SigningKey>) -> Result<Keys, String> {
    let mut anchors = Vec::new();
    let mut by_kid = HashMap::new();
    if let Some(p) = &c.rootcertbundle {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("auth.token.rootcertbundle {}: {e}", p.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("auth.token.rootcertbundle {}: {e}", p.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "auth.token.rootcertbundle {}: no certificates",
                p.display()
            ));
        }
        for cert in certs {
            let ee = webpki::EndEntityCert::try_from(&cert)
                .map_err(|e| format!("auth.token.rootcertbundle: {e}"))?;
            let spki = ee.subject_public_key_info();
            if let Ok(k) = spki_key(spki.as_ref()) {
                by_kid.insert(libtrust_kid(spki.as_ref()), k);
            }
            anchors.push(cert);
        }
    }
    if let Some(p) = &c.jwks {
        let text = std::fs::read_to_string(p)
            .map_err(|e| format!("auth.token.jwks {}: {e}", p.display()))?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
            .map_err(|e| format!("auth.token.jwks {}: {e}", p.display()))?;
        for k in &set.keys {
            let Some(kid) = &k.common.key_id else {
                return Err(format!(
                    "auth.token.jwks {}: every key needs a kid",
                    p.display()
                ));
            };
            let fam = match &k.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Family::Rsa,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                    return Err(format!(
                        "auth.token.jwks {}: key {kid} is symmetric; only public keys are trusted",
                        p.display()
                    ));
                }
            };
            let dk = DecodingKey::from_jwk(k)
                .map_err(|e| format!("auth.token.jwks {} key {kid}: {e}", p.display()))?;
            by_kid.insert(kid.clone(), (dk, fam));
        }
    }
    if let Some(own) = own {
        by_kid.insert(own.kid.clone(), (own.decoding.clone(), own.family));
    }
    Ok(Keys { anchors, by_kid })
}

/// Accepts any extended key usage: a token-signing certificate is trusted by its chain
/// to the bundle, and token servers' certificates rarely carry a purpose.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// Verifies bearer tokens.
pub struct Verifier {
    config: TokenConfig,
    own: Option<Arc<SigningKey>>,
    keys: RwLock<Arc<Keys>>,
    algorithms: Vec<Algorithm>,
}

impl Verifier {
    pub fn new(config: &TokenConfig, own: Option<Arc<SigningKey>>) -> Result<Verifier, String> {
        let keys = load_keys(config, own.as_deref())?;
        let algorithms = if config.signingalgorithms.is_empty() {
            use Algorithm::*;
            vec![
                RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
            ]
        } else {
            let mut v = Vec::new();
            for a in &config.signingalgorithms {
                let alg: Algorithm = a
                    .parse()
                    .map_err(|_| format!("auth.token.signingalgorithms: unknown {a:?}"))?;
                if family(alg).is_none() {
                    return Err(format!(
                        "auth.token.signingalgorithms: {a} is symmetric; only signatures are accepted"
                    ));
                }
                v.push(alg);
            }
            v
        };
        Ok(Verifier {
            config: config.clone(),
            own,
            keys: RwLock::new(Arc::new(keys)),
            algorithms,
        })
    }

    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    /// Re-reads the bundle and the JWKS; keeps the old keys when they no longer load.
    pub fn reload(&self) -> Result<(), String> {
        let keys = load_keys(&self.config, self.own.as_deref())?;
        if let Ok(mut w) = self.keys.write() {
            *w = Arc::new(keys);
        }
        Ok(())
    }

    /// Verifies `token`; the error says why it was refused.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let fam = family(header.alg).ok_or("symmetric algorithms are not accepted")?;
        let keys = self
            .keys
            .read()
            .map_err(|_| "key store poisoned".to_owned())?
            .clone();
        let from_kid = header.kid.as_ref().and_then(|k| keys.by_kid.get(k));
        let key = match (from_kid, &header.x5c) {
            (Some((k, f)), _) => {
                if *f != fam {
                    return Err("the key named by kid does not fit the algorithm".into());
                }
                k.clone()
            }
            (None, Some(chain)) => chain_key(&keys.anchors, chain, fam)?,
            (None, None) => {
                return Err(match header.kid {
                    Some(k) => format!("unknown key {k:?}"),
                    None => "the token names no key (x5c or kid)".into(),
                });
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[&self.config.service]);
        v.set_issuer(&[&self.config.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

/// The public key of the first certificate of an `x5c` chain that ends at an anchor.
fn chain_key(
    anchors: &[CertificateDer<'static>],
    chain: &[String],
    fam: Family,
) -> Result<DecodingKey, String> {
    if anchors.is_empty() {
        return Err("x5c given but no rootcertbundle is configured".into());
    }
    let ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| BASE64.decode(c.as_bytes()).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("x5c: {e}"))?;
    let (leaf, intermediates) = ders.split_first().ok_or("x5c is empty")?;
    let ta: Vec<_> = anchors
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .collect();
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("x5c: {e}"))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &ta,
        intermediates,
        UnixTime::now(),
        AnyUsage,
        None,
        None,
    )
    .map_err(|e| format!("x5c chain: {e}"))?;
    let (k, f) = spki_key(ee.subject_public_key_info().as_ref())?;
    if f != fam {
        return Err("the x5c key does not fit the algorithm".into());
    }
    Ok(k)
}

/// The built-in token server's key.
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    family: Family,
    x5c: Option<Vec<String>>,
}

impl SigningKey {
    /// Loads a PKCS#8 PEM key (EC P-256 → ES256, Ed25519 → EdDSA, RSA → RS256) and, when
    /// given, its certificate (sent as `x5c`).
    pub fn load(key: &Path, certificate: Option<&Path>) -> Result<SigningKey, String> {
        use ring::signature::{self, KeyPair};
        let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{}: not a PKCS#8 PEM key: {e}", key.display()))?;
        let der = der.secret_pkcs8_der();
        let rng = ring::rand::SystemRandom::new();
        let (alg, family, public) = if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &rng,
        ) {
            (
                Algorithm::ES256,
                Family::Ec,
                k.public_key().as_ref().to_vec(),
            )
        } else if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            (
                Algorithm::EdDSA,
                Family::Ed,
                k.public_key().as_ref().to_vec(),
            )
        } else if let Ok(k) = signature::RsaKeyPair::from_pkcs8(der) {
            (Algorithm::RS256, Family::Rsa, k.public().as_ref().to_vec())
        } else {
            return Err(format!(
                "{}: the key is not EC P-256, Ed25519 or RSA",
                key.display()
            ));
        };
        let encoding = match family {
            Family::Ec => EncodingKey::from_ec_pem(&pem),
            Family::Ed => EncodingKey::from_ed_pem(&pem),
            Family::Rsa => EncodingKey::from_rsa_pem(&pem),
        }
        .map_err(|e| format!("{}: {e}", key.display()))?;
        let decoding = match family {
            Family::Ec => DecodingKey::from_ec_der(&public),
            Family::Ed => DecodingKey::from_ed_der(&public),
            Family::Rsa => DecodingKey::from_rsa_der(&public),
        };
        let kid = {
            use sha2::Digest as _;
            format!(
                "drydock-{}",
                hex::encode(&sha2::Sha256::digest(&public)[..12])
            )
        };
        let x5c = match certificate {
            Some(p) => {
                let certs: Vec<String> = CertificateDer::pem_file_iter(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?
                    .map(|c| c.map(|c| BASE64.encode(c.as_ref())))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                Some(certs)
            }
            None => None,
        };
        Ok(SigningKey {
            alg,
            kid,
            encoding,
            decoding,
            family,
            x5c,
        })
    }

    /// Signs `claims`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        let mut h = Header::new(self.alg);
        h.typ = Some("JWT".into());
        h.kid = Some(self.kid.clone());
        h.x5c = self.x5c.clone();
        jsonwebtoken::encode(&h, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies a token this key signed for audience `aud` (refresh tokens).
    pub fn verify_own<T: for<'de> Deserialize<'de>>(
        &self,
        token: &str,
        aud: &str,
        issuer: &str,
    ) -> Result<T, String> {
        let mut v = Validation::new(self.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[aud]);
        v.set_issuer(&[issuer]);
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}
