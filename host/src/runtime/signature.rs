//! Signed guests: detached Ed25519 signatures over a guest's exact bytes.
//!
//! When the operator configures trusted public keys, a guest loads only with a valid
//! `<name>.wasm.sig` from one of them; this is checked before anything parses the
//! module. Keys live in the host's own configuration, not beside the guests, so whoever
//! can edit the guests' ConfigMap cannot also decide which keys are trusted.
//!
//! Formats are plain hex so they survive ConfigMaps and copy-paste: a public key is 64
//! hex digits (one per line in the trusted-keys file, `#` starts a comment), a secret key
//! 64 hex digits (the Ed25519 seed), a signature 128 hex digits.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

/// Why a guest's signature was not accepted, or key material not read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "{0}: unsigned; trusted keys are configured, so every guest needs a .sig beside it (see `wasm-device-plugin sign`)"
    )]
    Missing(PathBuf),
    #[error(
        "{0}: the signature does not verify with any trusted key (tampered, or signed by another key)"
    )]
    Invalid(PathBuf),
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// The public keys guests must be signed with.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// Reads a trusted-keys file: one hex public key per line; blank lines and `#`
    /// comments are ignored. A file with no key is an error (it would trust nothing).
    pub fn read(path: &Path) -> Result<Self, SignatureError> {
        let malformed = |reason: String| SignatureError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| malformed(format!("cannot read: {e}")))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bytes: [u8; 32] = unhex(line).and_then(|b| b.try_into().ok()).ok_or_else(|| {
                malformed(format!("line {}: not a 64-digit hex public key", n + 1))
            })?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|e| {
                malformed(format!("line {}: not an Ed25519 public key: {e}", n + 1))
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(malformed("no public key in the file".into()));
        }
        Ok(Self { keys })
    }

    /// Checks `<wasm>.sig` against `bytes` (the guest exactly as it will be loaded).
    pub fn verify(&self, wasm: &Path, bytes: &[u8]) -> Result<(), SignatureError> {
        let sig_path = signature_path(wasm);
        let text = match std::fs::read_to_string(&sig_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignatureError::Missing(wasm.to_owned()));
            }
            Err(e) => {
                return Err(SignatureError::Malformed {
                    path: sig_path,
                    reason: format!("cannot read: {e}"),
                });
            }
        };
        let signature = unhex(text.trim())
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| SignatureError::Malformed {
                path: sig_path.clone(),
                reason: "not a 128-digit hex Ed25519 signature".into(),
            })?;
        if self
            .keys
            .iter()
            .any(|k| k.verify_strict(bytes, &signature).is_ok())
        {
            Ok(())
        } else {
            Err(SignatureError::Invalid(wasm.to_owned()))
        }
    }
}

/// `<guest>.wasm.sig`.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// A new key pair from the system's randomness: (secret hex, public hex).
pub fn generate() -> std::io::Result<(String, String)> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let key = SigningKey::from_bytes(&seed);
    Ok((hex(&seed), hex(key.verifying_key().as_bytes())))
}

/// Signs `bytes` with the secret key in hex; returns the signature in hex.
pub fn sign(secret_hex: &str, bytes: &[u8]) -> Result<String, String> {
    let seed: [u8; 32] = unhex(secret_hex.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or("the secret key must be 64 hex digits")?;
    let key = SigningKey::from_bytes(&seed);
    Ok(hex(&key.sign(bytes).to_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_guests_verify_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate().unwrap();
        let (_, other_public) = generate().unwrap();
        let keys = dir.path().join("trusted");
        std::fs::write(&keys, format!("# ops team\n{public}\n")).unwrap();
        let trusted = TrustedKeys::read(&keys).unwrap();
        let wasm = dir.path().join("g.wasm");
        let bytes = b"\0asm\x0d\0\x01\0guest".to_vec();
        std::fs::write(&wasm, &bytes).unwrap();

        assert_eq!(
            trusted.verify(&wasm, &bytes),
            Err(SignatureError::Missing(wasm.clone()))
        );
        std::fs::write(signature_path(&wasm), sign(&secret, &bytes).unwrap()).unwrap();
        assert_eq!(trusted.verify(&wasm, &bytes), Ok(()));

        let mut tampered = bytes.clone();
        tampered[9] ^= 1;
        assert_eq!(
            trusted.verify(&wasm, &tampered),
            Err(SignatureError::Invalid(wasm.clone()))
        );

        std::fs::write(&keys, format!("{other_public}\n")).unwrap();
        let others = TrustedKeys::read(&keys).unwrap();
        assert_eq!(
            others.verify(&wasm, &bytes),
            Err(SignatureError::Invalid(wasm.clone()))
        );

        std::fs::write(signature_path(&wasm), "zz").unwrap();
        assert!(matches!(
            trusted.verify(&wasm, &bytes),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn key_files_must_hold_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("trusted");
        std::fs::write(&keys, "# nothing\n").unwrap();
        assert!(matches!(
            TrustedKeys::read(&keys),
            Err(SignatureError::Malformed { .. })
        ));
        std::fs::write(&keys, "abc\n").unwrap();
        assert!(matches!(
            TrustedKeys::read(&keys),
            Err(SignatureError::Malformed { .. })
        ));
    }
}
