//! Optional package signatures (`PACKAGE_TRUSTED_KEYS`): minisign ed25519 detached signatures
//! over the package bytes, verified with `minisign-verify` (small, no dependencies, by the
//! author of minisign).
//!
//! Both minisign forms are accepted: the current pre-hashed one (`ED`, BLAKE2b-512 of the
//! file) and the legacy one (`Ed`, the file itself). The trusted comment is covered by the
//! global signature; it is not interpreted.

use minisign_verify::{PublicKey, Signature};

/// Reads one trusted key: the base64 key line (`RW...`) or a path to a minisign `.pub` file.
pub fn load_public_key(entry: &str) -> Result<PublicKey, String> {
    if entry.starts_with('/') || entry.starts_with('.') {
        let text = std::fs::read_to_string(entry)
            .map_err(|e| format!("cannot read the public key file {entry}: {e}"))?;
        return PublicKey::decode(&text)
            .map_err(|e| format!("{entry} is not a minisign public key file: {e}"));
    }
    PublicKey::from_base64(entry).map_err(|e| {
        format!("'{entry}' is not a minisign public key (the base64 line of a .pub file): {e}")
    })
}

/// Why a package's signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Signatures are required and none came.
    #[error(
        "the package has no signature and PACKAGE_TRUSTED_KEYS requires one: send codeSource.signature (the .minisig file's text) or publish <url>.minisig next to the package"
    )]
    Missing,
    /// The signature text is not a minisign signature.
    #[error("the package signature is not a minisign signature: {0}")]
    Malformed(String),
    /// No trusted key verifies it.
    #[error(
        "the package signature does not verify with any key of PACKAGE_TRUSTED_KEYS (wrong key, or the package was changed after signing)"
    )]
    Invalid,
}

/// Checks `signature` (minisign text) over `bytes` against `keys`. No keys: nothing required.
pub fn verify(
    keys: &[PublicKey],
    bytes: &[u8],
    signature: Option<&str>,
) -> Result<(), SignatureError> {
    if keys.is_empty() {
        return Ok(());
    }
    let text = signature.ok_or(SignatureError::Missing)?;
    let sig = Signature::decode(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if keys.iter().any(|k| k.verify(bytes, &sig, true).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keys_means_no_requirement() {
        assert!(verify(&[], b"x", None).is_ok());
    }

    #[test]
    fn bad_keys_are_named() {
        let e = load_public_key("nope").unwrap_err();
        assert!(e.contains("minisign public key"), "{e}");
    }
}
