//! `workmanager pack --sign-key`: a minisign signature of the package, the form the daemon
//! verifies (`PACKAGE_TRUSTED_KEYS`, `crate::signature`) and `minisign -V` accepts.
//!
//! Keys are minisign secret key files without a password (`minisign -G -W`); a password-
//! protected key is refused with what to do instead (its scrypt decryption is not done here).
//! The signature is minisign's legacy `Ed` form (ed25519 over the file itself) with a trusted
//! comment naming the file, signed by the global signature.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::client::CliError;

/// Bytes of a decoded minisign secret key: algorithms (6), salt (32), scrypt limits (16),
/// then key id (8), secret key (64) and checksum (32).
const SECRET_KEY_LEN: usize = 158;

/// A minisign secret key, decoded.
pub struct SigningKey {
    key_id: [u8; 8],
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Reads a minisign secret key file's text.
    pub fn parse(text: &str, path: &str) -> Result<SigningKey, CliError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| {
                CliError::usage(format!("{path} is empty; expected a minisign secret key"))
            })?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| CliError::usage(format!("{path} is not a minisign secret key: {e}")))?;
        if raw.len() != SECRET_KEY_LEN || &raw[..2] != b"Ed" {
            return Err(CliError::usage(format!(
                "{path} is not a minisign ed25519 secret key (made by `minisign -G`)"
            )));
        }
        if raw[2..4] != [0, 0] {
            return Err(CliError::usage(format!(
                "{path} is password-protected; `workmanager pack --sign-key` takes keys made with `minisign -G -W` (no password). Or pack without it and sign with `minisign -Sm PACKAGE -s {path}`"
            )));
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[54..62]);
        let (seed, public) = (&raw[62..94], &raw[94..126]);
        // ring checks that the public half belongs to the seed: a damaged key is refused here.
        let pair = Ed25519KeyPair::from_seed_and_public_key(seed, public).map_err(|_| {
            CliError::usage(format!("{path}: the secret and public halves of the key do not match; the key file is damaged"))
        })?;
        Ok(SigningKey { key_id, pair })
    }

    /// The matching public key as the base64 line of a minisign `.pub` file.
    pub fn public_key(&self) -> String {
        let mut bin = b"Ed".to_vec();
        bin.extend_from_slice(&self.key_id);
        bin.extend_from_slice(self.pair.public_key().as_ref());
        base64::engine::general_purpose::STANDARD.encode(bin)
    }

    /// The `.minisig` text for `data` (a file called `file_name`).
    pub fn sign(&self, data: &[u8], file_name: &str) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let sig = self.pair.sign(data);
        let mut block = b"Ed".to_vec();
        block.extend_from_slice(&self.key_id);
        block.extend_from_slice(sig.as_ref());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The trusted comment is one line: no control characters from the file name.
        let name: String = file_name.chars().filter(|c| !c.is_control()).collect();
        let trusted = format!("timestamp:{now}\tfile:{name}");
        let mut global = sig.as_ref().to_vec();
        global.extend_from_slice(trusted.as_bytes());
        let global = self.pair.sign(&global);
        format!(
            "untrusted comment: signature from workmanager pack\n{}\ntrusted comment: {trusted}\n{}\n",
            b64(&block),
            b64(global.as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key as `minisign -G -W` writes it, from a fixed seed.
    fn key_text(encrypted: bool) -> String {
        let seed = [7u8; 32];
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let mut raw = b"Ed".to_vec();
        raw.extend_from_slice(if encrypted { b"Sc" } else { &[0, 0] });
        raw.extend_from_slice(b"B2");
        raw.extend_from_slice(&[0u8; 48]);
        raw.extend_from_slice(b"keyid_01");
        raw.extend_from_slice(&seed);
        raw.extend_from_slice(pair.public_key().as_ref());
        raw.extend_from_slice(&[0u8; 32]);
        format!(
            "untrusted comment: minisign encrypted secret key\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn signatures_verify_with_the_daemons_verifier() {
        let key = SigningKey::parse(&key_text(false), "k").unwrap();
        let text = key.sign(b"package bytes", "w.nupkg");
        let pk = minisign_verify::PublicKey::from_base64(&key.public_key()).unwrap();
        let sig = minisign_verify::Signature::decode(&text).unwrap();
        pk.verify(b"package bytes", &sig, true).unwrap();
        assert!(pk.verify(b"other bytes", &sig, true).is_err());
        assert!(SigningKey::parse(&key_text(true), "k").is_err());
    }
}
