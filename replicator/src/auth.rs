//! Peer authentication: both nodes hold the same secret key (`--auth-key-file`);
//! each proves it to the other with an HMAC-SHA256 over the nonce the other
//! sent in its Hello, so a recorded proof is useless on another connection.
//! The key never crosses the wire.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::protocol::{Role, NONCE_LEN, PROOF_LEN};

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

    /// The proof a node of `role` and `node_id` sends for the peer's `nonce`.
    pub fn proof(&self, nonce: &[u8; NONCE_LEN], node_id: &[u8; 16], role: Role) -> [u8; PROOF_LEN] {
        self.mac(nonce, node_id, role).finalize().into_bytes().into()
    }

    /// Whether `proof` is what a holder of this key sends for `nonce`
    /// (compared in constant time).
    pub fn verify(&self, proof: &[u8; PROOF_LEN], nonce: &[u8; NONCE_LEN], node_id: &[u8; 16], role: Role) -> bool {
        self.mac(nonce, node_id, role).verify_slice(proof).is_ok()
    }

    fn mac(&self, nonce: &[u8; NONCE_LEN], node_id: &[u8; 16], role: Role) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"lockstep peer auth v1\0");
        mac.update(nonce);
        mac.update(node_id);
        mac.update(&[role as u8]);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_with_the_same_key_nonce_and_sender() {
        let key = AuthKey::new(b"0123456789abcdef-secret").expect("key");
        let other = AuthKey::new(b"0123456789abcdef-other!").expect("key");
        let (nonce, id) = ([7u8; NONCE_LEN], [1u8; 16]);
        let proof = key.proof(&nonce, &id, Role::Primary);
        assert!(key.verify(&proof, &nonce, &id, Role::Primary));
        assert!(!other.verify(&proof, &nonce, &id, Role::Primary));
        assert!(!key.verify(&proof, &[8u8; NONCE_LEN], &id, Role::Primary));
        assert!(!key.verify(&proof, &nonce, &[2u8; 16], Role::Primary));
        assert!(!key.verify(&proof, &nonce, &id, Role::Secondary));
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
