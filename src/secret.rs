//! A secret (a client secret, an admin token): its `Debug` and `Display` never reveal it, it has
//! no `Serialize` and no `==` (the admin API compares tokens' digests in constant time, `admin::auth`), its memory is
//! zeroed when it is dropped (`secrecy`), and reading it takes an explicit call to
//! [`Secret::expose`].

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value itself: call only where it is sent to where it belongs.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// A short, non-reversible fingerprint (for cache keys and "which secret" diagnostics).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.expose().as_bytes());
        hex::encode(&digest[..6])
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn a_secret_is_never_shown_by_debug_or_display() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?} {s} {:#?}", s).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
        assert_ne!(s.fingerprint(), Secret::new("other").fingerprint());
    }
}
