//! A sha256 whose running state can be saved and restored, so that a resumable writer
//! continues hashing after a restart without reading back what it wrote (on S3 the parts
//! of an unfinished multipart upload cannot be read at all). The state is RustCrypto's
//! own serialization (`SerializableState`), kept as base64 in the writer's state record.

use base64::Engine as _;
use sha2_resumable::Digest as _;
use sha2_resumable::digest::common::hazmat::{SerializableState, SerializedState};

use crate::digest::Digest;

#[derive(Clone, Default)]
pub(crate) struct ResumableSha256(sha2_resumable::Sha256);

impl ResumableSha256 {
    pub(crate) fn new() -> ResumableSha256 {
        ResumableSha256::default()
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The state as base64 text.
    pub(crate) fn save(&self) -> String {
        let state = self.0.serialize();
        base64::engine::general_purpose::STANDARD.encode(state.as_slice())
    }

    /// A state [`ResumableSha256::save`] made; `None` when the text is not one.
    pub(crate) fn restore(text: &str) -> Option<ResumableSha256> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        let state = SerializedState::<sha2_resumable::Sha256>::try_from(raw.as_slice()).ok()?;
        sha2_resumable::Sha256::deserialize(&state)
            .ok()
            .map(ResumableSha256)
    }

    pub(crate) fn finish(self) -> Digest {
        let out = self.0.finalize();
        let mut raw = [0u8; 32];
        raw.copy_from_slice(out.as_slice());
        Digest::sha256_from_bytes(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_continues_where_it_stopped() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = Digest::sha256(&data);
        for cut in [0, 1, 63, 64, 65, 100_000, data.len()] {
            let mut h = ResumableSha256::new();
            h.update(&data[..cut]);
            let saved = h.save();
            let mut h = ResumableSha256::restore(&saved).unwrap();
            h.update(&data[cut..]);
            assert_eq!(h.finish(), whole, "cut at {cut}");
        }
        assert!(ResumableSha256::restore("not base64!").is_none());
        assert!(ResumableSha256::restore("AAAA").is_none());
    }
}
