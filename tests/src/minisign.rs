//! A minisign signer for tests (the daemon only verifies): ed25519 keys from `ring`, the
//! legacy `Ed` form (a signature over the file itself), which `minisign -V` and the daemon
//! accept. The key id is fixed; the trusted comment is `test`.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const KEY_ID: [u8; 8] = *b"wmtestk1";

/// A signing key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Default for Signer {
    fn default() -> Self {
        Signer::new()
    }
}

impl Signer {
    /// A fresh random key.
    pub fn new() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generating an ed25519 key");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("reading the new key");
        Signer { key }
    }

    /// The public key as the base64 line of a minisign `.pub` file.
    pub fn public_key(&self) -> String {
        let mut bin = b"Ed".to_vec();
        bin.extend_from_slice(&KEY_ID);
        bin.extend_from_slice(self.key.public_key().as_ref());
        base64::engine::general_purpose::STANDARD.encode(bin)
    }

    /// A `.minisig` file's text for `data`.
    pub fn sign(&self, data: &[u8]) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let sig = self.key.sign(data);
        let mut line = b"Ed".to_vec();
        line.extend_from_slice(&KEY_ID);
        line.extend_from_slice(sig.as_ref());
        let comment = "test";
        let mut global = sig.as_ref().to_vec();
        global.extend_from_slice(comment.as_bytes());
        let global = self.key.sign(&global);
        format!(
            "untrusted comment: signature from workmanager tests\n{}\ntrusted comment: {comment}\n{}\n",
            b64(&line),
            b64(global.as_ref())
        )
    }
}
