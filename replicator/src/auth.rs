//! Peer authentication: both nodes hold the same secret key (`--auth-key-file`);
//! each proves it to the other with an HMAC-SHA256 over the handshake
//! transcript (both Hellos, each carrying a fresh nonce), so a recorded proof
//! is useless on another connection and no Hello field can be altered on
//! the way. Session keys derived the same way authenticate every later
//! frame ([`crate::session::channel`]). The key never crosses the wire.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::protocol::PROOF_LEN;

/// Keys shorter than this are refused: they could be guessed.
pub const KEY_LEN_MIN: usize = 16;

/// A shared secret read from a key file.
#[derive(Clone)]
pub struct AuthKey(Vec<u8>);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthKey({})", self.key_id())
    }
}

impl AuthKey {
    /// Reads the key file: its bytes without trailing whitespace, at least
    /// [`KEY_LEN_MIN`] of them.
    pub fn from_file(path: &Path) -> Result<AuthKey, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading the key file {}: {e}", path.display()))?;
        let len = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        AuthKey::new(&bytes[..len]).map_err(|e| format!("the key file {}: {e}", path.display()))
    }

    pub fn new(key: &[u8]) -> Result<AuthKey, String> {
        if key.len() < KEY_LEN_MIN {
            return Err(format!("a key must be at least {KEY_LEN_MIN} bytes long, not {}", key.len()));
        }
        Ok(AuthKey(key.to_vec()))
    }

    /// A short, public name for the key (the start of its SHA-256), for
    /// messages: two nodes with different key ids hold different keys.
    pub fn key_id(&self) -> String {
        Sha256::digest(&self.0)[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The proof the dialer (`dialer`) or the listener of a connection
    /// sends: an HMAC over the handshake `transcript` (both Hellos whole,
    /// so every field of both is covered) and the sender's side, so a proof
    /// is worth nothing on another connection or reflected back.
    pub fn proof(&self, transcript: &[u8; 32], dialer: bool) -> [u8; PROOF_LEN] {
        self.mac(b"lockstep peer auth v2\0", transcript, dialer).finalize().into_bytes().into()
    }

    /// Whether `proof` is what a holder of this key sends on this side of
    /// the connection whose handshake transcript is `transcript` (compared
    /// in constant time).
    pub fn verify(&self, proof: &[u8; PROOF_LEN], transcript: &[u8; 32], dialer: bool) -> bool {
        self.mac(b"lockstep peer auth v2\0", transcript, dialer).verify_slice(proof).is_ok()
    }

    /// The key that authenticates the frames one side sends after the
    /// handshake (each direction has its own).
    pub fn session_key(&self, transcript: &[u8; 32], dialer: bool) -> [u8; 32] {
        self.mac(b"lockstep session key v2\0", transcript, dialer).finalize().into_bytes().into()
    }

    fn mac(&self, label: &[u8], transcript: &[u8; 32], dialer: bool) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(label);
        mac.update(transcript);
        mac.update(&[u8::from(dialer)]);
        mac
    }
}

/// The transcript of a handshake: a hash of the dialer's and the
/// listener's Hello payloads, exactly as they crossed the wire.
pub fn transcript(dialer_hello: &[u8], listener_hello: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"lockstep handshake transcript v2\0");
    for hello in [dialer_hello, listener_hello] {
        h.update((hello.len() as u64).to_le_bytes());
        h.update(hello);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_with_the_same_key_transcript_and_side() {
        let key = AuthKey::new(b"0123456789abcdef-secret").expect("key");
        let other = AuthKey::new(b"0123456789abcdef-other!").expect("key");
        let t = transcript(b"dialer hello", b"listener hello");
        let proof = key.proof(&t, true);
        assert!(key.verify(&proof, &t, true));
        assert!(!other.verify(&proof, &t, true));
        assert!(!key.verify(&proof, &t, false), "a proof reflected to its sender verified");
        assert!(!key.verify(&proof, &transcript(b"dialer hellO", b"listener hello"), true));
        assert_ne!(t, transcript(b"dialer hello", b"listener hellO"));
        // The length prefix keeps the two Hellos apart.
        assert_ne!(transcript(b"ab", b"c"), transcript(b"a", b"bc"));
        assert_ne!(key.session_key(&t, true), key.session_key(&t, false));
        assert_ne!(key.session_key(&t, true), other.session_key(&t, true));
        assert_ne!(key.key_id(), other.key_id());
    }

    #[test]
    fn short_keys_are_refused_and_trailing_newlines_ignored() {
        assert!(AuthKey::new(b"short").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, b"0123456789abcdef\n").expect("write");
        let from_file = AuthKey::from_file(&path).expect("key file");
        assert_eq!(from_file.key_id(), AuthKey::new(b"0123456789abcdef").expect("key").key_id());
    }
}
