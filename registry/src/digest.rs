//! Content digests: the `algorithm:hex` grammar of the OCI image spec, parsed once at the
//! edge, and the streaming hashers that compute them. Nothing here touches the disk.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// The digest algorithms drydock accepts (the two the OCI image spec registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Every algorithm, in the order listings use.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A validated digest. Construction goes through [`Digest::from_str`] or a hasher, so a
/// value of this type is always a supported algorithm with well-formed lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest; the message goes to the client in `DIGEST_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DigestError(pub String);

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `data` with the given algorithm.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, data)
    }

    /// The sha256 digest whose raw bytes are `b`.
    pub fn sha256_from_bytes(b: &[u8; 32]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(b),
        }
    }

    /// The 32 raw bytes of a sha256 digest (the GC mark set stores these).
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        match self.algorithm {
            Algorithm::Sha256 => sha256_hex_bytes(&self.hex),
            Algorithm::Sha512 => None,
        }
    }
}

/// The 32 bytes that 64 lowercase hex digits spell; `None` for anything else (another
/// length, uppercase, a non-hex character). A collection decodes every digest it meets a
/// few times over, so this is a table lookup per digit rather than the `hex` crate's
/// general decoder, which showed up at 5% of a collection's CPU.
pub fn sha256_hex_bytes(hex: &str) -> Option<[u8; 32]> {
    const BAD: u8 = 0xff;
    const TABLE: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    // Valid digits are below 16; any BAD (0xff) sets the high bits.
    (bad < 16).then_some(out)
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError(format!("digest {s:?} is not of the form algorithm:hex")))?;
        let algorithm = Algorithm::parse(alg).ok_or_else(|| {
            DigestError(format!(
                "digest algorithm {alg:?} is not supported (use sha256 or sha512)"
            ))
        })?;
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError(format!(
                "{alg} digest must have {} hex characters, got {}",
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError(format!(
                "digest {s:?} must be lowercase hexadecimal"
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A streaming hasher for either algorithm. sha2 picks the CPU's SHA extensions at run
/// time when they are present.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Hashes `r` to its end in 1 MiB reads, handing each read to `also` (a copy, say);
    /// returns how many bytes it read.
    pub(crate) fn read_all(
        &mut self,
        mut r: impl std::io::Read,
        mut also: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            self.update(&buf[..n]);
            also(&buf[..n])?;
            total += n as u64;
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_bytes_agrees_with_hex_and_refuses_the_rest() {
        for seed in 0u8..=255 {
            let raw: Vec<u8> = (0..32u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(seed))
                .collect();
            let text = hex::encode(&raw);
            assert_eq!(sha256_hex_bytes(&text).map(|b| b.to_vec()), Some(raw));
        }
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(sha256_hex_bytes(good).is_some());
        assert_eq!(sha256_hex_bytes(&good.to_uppercase()), None);
        assert_eq!(sha256_hex_bytes(&good[..62]), None);
        assert_eq!(sha256_hex_bytes(&format!("{good}00")), None);
        for (i, bad) in ["g", "/", ":", "G", "\u{0}", "A", "`", "@"]
            .iter()
            .enumerate()
        {
            let mut t = good.to_string();
            t.replace_range(i * 5..i * 5 + 1, bad);
            assert_eq!(sha256_hex_bytes(&t), None, "{t}");
        }
    }

    #[test]
    fn parses_and_rejects() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d, Digest::sha256(b""));
        assert_eq!(d.sha256_bytes().map(|b| b.len()), Some(32));
        for bad in [
            "sha256",
            "sha256:",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000000",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
        let d512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d512.to_string().parse::<Digest>().unwrap(), d512);
    }
}
