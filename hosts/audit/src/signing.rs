//! Ed25519 keys for digests (through `ring`).

use crate::AuditError;
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::fmt;

/// A key digests are signed with: a 32-byte Ed25519 seed. Its `Debug` shows only the
/// public key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key().to_string())
            .finish()
    }
}

impl SigningKey {
    /// A key from its seed written as 64 hex digits (surrounding white space ignored);
    /// `from` names where the text came from, for the error.
    pub fn from_seed_hex(text: &str, from: &str) -> Result<Self, AuditError> {
        let problem = |problem: &str| AuditError::Key {
            from: from.to_owned(),
            problem: problem.to_owned(),
        };
        let seed = hex::decode(text.trim())
            .map_err(|_| problem("expected 64 hex digits (a 32-byte Ed25519 seed)"))?;
        if seed.len() != 32 {
            return Err(problem(&format!(
                "expected a 32-byte Ed25519 seed, found {} bytes",
                seed.len()
            )));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| problem("not an Ed25519 seed"))?;
        Ok(SigningKey { pair })
    }

    /// Reads a key file written by [`SigningKey::generate`] (its seed in hex).
    pub fn from_file(path: &std::path::Path) -> Result<Self, AuditError> {
        let from = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AuditError::Key {
            from: from.clone(),
            problem: e.to_string(),
        })?;
        Self::from_seed_hex(&text, &from)
    }

    /// A new random key and its seed in hex (to be kept secret).
    pub fn generate() -> Result<(Self, String), AuditError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| AuditError::Key {
                from: "the system's random source".into(),
                problem: "no random bytes".into(),
            })?;
        let text = hex::encode(seed);
        let key = Self::from_seed_hex(&text, "a generated seed")?;
        Ok((key, text))
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(hex::encode(self.pair.public_key().as_ref()))
    }

    /// The signature of `message`, in hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// An Ed25519 public key, in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(pub String);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PublicKey {
    /// Whether `signature` (hex) is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        let (Ok(key), Ok(signature)) = (hex::decode(&self.0), hex::decode(signature)) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, key)
            .verify(message, &signature)
            .is_ok()
    }
}
