//! Secrets at rest: AES-256-GCM with keys from configuration (`secrets.keys`,
//! `secrets.active_key`). A [`Sealed`] value carries the id of the key that sealed it, a random
//! 96-bit nonce and the ciphertext (with its tag); the associated data binds it to what it
//! belongs to (a company's client secret cannot be moved to another company).
//!
//! Keys rotate: new secrets are sealed with the active key, and any configured key opens what it
//! sealed; [`KeyRing::needs_reseal`] says which stored values to re-encrypt.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::SecretsConfig;
use crate::secret::Secret;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An encrypted value as stored (JSON): `{"key_id","nonce","ciphertext"}`, both base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "no encryption key is configured: set `secrets.keys` and `secrets.active_key` before storing a client secret"
    )]
    NoKey,
    #[error(
        "the secret was sealed with key {0:?}, which is not in `secrets.keys` (keep old keys until `outlook-sync admin reseal` has run)"
    )]
    UnknownKey(String),
    #[error(
        "the secret sealed with key {0:?} cannot be opened (corrupt, or sealed for something else)"
    )]
    Corrupt(String),
    #[error("invalid key configuration: {0}")]
    Config(String),
    #[error(
        "no secrets keys are configured in this process (secrets.keys), so the company's sealed client secret cannot be opened: configure the same keys as the workers"
    )]
    NotConfigured,
}

/// The configured keys. Cheap to share behind an `Arc`; `Debug` shows key ids only.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: HashMap<String, Aes256Gcm>,
    active: Option<String>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing")
            .field("keys", &ids)
            .field("active", &self.active)
            .finish()
    }
}

impl KeyRing {
    /// The keys of a (validated) configuration.
    pub fn from_config(cfg: &SecretsConfig) -> Result<KeyRing, CryptoError> {
        let mut keys = HashMap::new();
        for k in &cfg.keys {
            let bytes = B64
                .decode(k.key_base64.trim())
                .map_err(|_| CryptoError::Config(format!("key {:?} is not base64", k.id)))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| CryptoError::Config(format!("key {:?} is not 32 bytes", k.id)))?;
            keys.insert(k.id.clone(), cipher);
        }
        let active = (!cfg.active_key.is_empty()).then(|| cfg.active_key.clone());
        if let Some(a) = &active
            && !keys.contains_key(a)
        {
            return Err(CryptoError::Config(format!(
                "active key {a:?} is not configured"
            )));
        }
        Ok(KeyRing { keys, active })
    }

    /// The id new secrets are sealed with, if any key is configured.
    pub fn active_key_id(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// Encrypts `secret` with the active key; `aad` names what it belongs to.
    pub fn seal(&self, secret: &Secret, aad: &str) -> Result<Sealed, CryptoError> {
        let id = self.active.as_ref().ok_or(CryptoError::NoKey)?;
        let cipher = &self.keys[id];
        let nonce_bytes: [u8; 12] = rand::random();
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Corrupt(id.clone()))?;
        Ok(Sealed {
            key_id: id.clone(),
            nonce: B64.encode(nonce_bytes),
            ciphertext: B64.encode(ciphertext),
        })
    }

    /// Decrypts a value sealed by any configured key for the same `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<Secret, CryptoError> {
        if self.keys.is_empty() {
            return Err(CryptoError::NotConfigured);
        }
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || CryptoError::Corrupt(sealed.key_id.clone());
        let nonce = B64.decode(&sealed.nonce).map_err(|_| corrupt())?;
        if nonce.len() != 12 {
            return Err(corrupt());
        }
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| corrupt())?;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| corrupt())
    }

    /// Whether a value sealed with `key_id` should be re-encrypted with the active key.
    pub fn needs_reseal(&self, key_id: &str) -> bool {
        self.active.as_deref().is_some_and(|a| a != key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretKeyConfig;

    fn key(id: &str, byte: u8) -> SecretKeyConfig {
        SecretKeyConfig {
            id: id.into(),
            key_base64: B64.encode([byte; 32]),
        }
    }

    fn ring(keys: &[SecretKeyConfig], active: &str) -> KeyRing {
        KeyRing::from_config(&SecretsConfig {
            keys: keys.to_vec(),
            active_key: active.into(),
        })
        .unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_associated_data() {
        let r = ring(&[key("k1", 1)], "k1");
        let s = Secret::new("hunter2-client-secret");
        let sealed = r.seal(&s, "company:acme").unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(
            r.open(&sealed, "company:acme").unwrap().expose(),
            s.expose()
        );
        assert_eq!(
            r.open(&sealed, "company:other").err(),
            Some(CryptoError::Corrupt("k1".into()))
        );
        // Two seals of one secret differ (random nonce).
        assert_ne!(r.seal(&s, "company:acme").unwrap(), sealed);
        let other = ring(&[key("k1", 2)], "k1");
        assert!(other.open(&sealed, "company:acme").is_err());
    }

    #[test]
    fn keys_rotate_old_values_open_and_new_ones_use_the_active_key() {
        let old = ring(&[key("k1", 1)], "k1");
        let sealed = old.seal(&Secret::new("v"), "a").unwrap();
        let rotated = ring(&[key("k1", 1), key("k2", 2)], "k2");
        assert_eq!(rotated.open(&sealed, "a").unwrap().expose(), "v");
        assert!(rotated.needs_reseal("k1"));
        assert_eq!(rotated.seal(&Secret::new("v"), "a").unwrap().key_id, "k2");
        let dropped = ring(&[key("k2", 2)], "k2");
        assert_eq!(
            dropped.open(&sealed, "a").err(),
            Some(CryptoError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn without_a_key_sealing_is_refused_naming_the_configuration_keys() {
        let err = KeyRing::default()
            .seal(&Secret::new("v"), "a")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secrets.keys") && err.contains("secrets.active_key"),
            "{err}"
        );
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let r = ring(&[key("k1", 7)], "k1");
        let shown = format!("{r:?} {:?}", key("k1", 7));
        assert!(shown.contains("k1"));
        assert!(!shown.contains(&B64.encode([7u8; 32])), "{shown}");
    }
}
