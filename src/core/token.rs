//! Bearer tokens: generation, hashing and comparison.
//!
//! Tokens are credentials, so the store keeps only their SHA-256, comparisons run in
//! constant time, and the `Debug` form of a token never shows it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token opens; the prefix makes a leaked token recognisable in a secret scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// An Application's API token: event ingest, stats, export and monitor management.
    Application,
    /// A Heartbeat's ping token, carried in the ping URL.
    Heartbeat,
    /// The dashboard admin token.
    Admin,
}

impl TokenKind {
    /// The prefix that new tokens of this kind start with.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Application => "hsa_",
            TokenKind::Heartbeat => "hsh_",
            TokenKind::Admin => "hsx_",
        }
    }
}

/// Why a token could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random source failed.
    #[error("the operating system random source failed: {0}")]
    Random(String),
}

/// A secret token; its `Debug` output is redacted so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Wraps a token given by a user (bring-your-own token, token files).
    pub fn from_string(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// A new token: the kind's prefix and 160 bits from the OS random source, base32-like.
    pub fn generate(kind: TokenKind) -> Result<Self, TokenError> {
        let mut bytes = [0u8; 20];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Self(format!("{}{}", kind.prefix(), encode_base32(&bytes))))
    }

    /// The secret text, for the few places that must hand it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which the store indexes this token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// A random identifier (128 bits, hex) for objects that need a stable opaque id.
pub fn random_id() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// SHA-256 of a token: what the store keeps instead of the token itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TokenHash(#[serde(with = "hex_bytes")] pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl TokenHash {
    /// Hashes presented token text.
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// Constant-time equality, so response timing tells nothing about a stored hash.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

fn encode_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_prefixed_long_and_distinct() {
        let a = Token::generate(TokenKind::Application).unwrap();
        let b = Token::generate(TokenKind::Application).unwrap();
        assert!(a.expose().starts_with("hsa_"));
        assert_eq!(a.expose().len(), 4 + 32);
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
    }

    #[test]
    fn hashes_compare_by_value() {
        let t = Token::from_string("hsa_abc");
        assert!(t.hash().ct_eq(&TokenHash::of("hsa_abc")));
        assert!(!t.hash().ct_eq(&TokenHash::of("hsa_abd")));
    }
}
