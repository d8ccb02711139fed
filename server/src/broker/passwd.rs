//! Users of the embedded broker from a Mosquitto password file (`mosquitto_passwd`), so one
//! file serves both brokers: `user:$7$<iterations>$<salt b64>$<hash b64>` (PBKDF2-HMAC-SHA512,
//! Mosquitto 2) or `user:$6$<salt b64>$<hash b64>` (SHA-512 of password and salt, Mosquitto 1.x).

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};

/// A user's stored password hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2-HMAC-SHA512 with `iterations`, output as long as `hash`.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The users of a password file; the passwords themselves are never held.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Passwd {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for Passwd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Passwd").field("users", &names).finish()
    }
}

/// The most PBKDF2 iterations accepted: a hostile file must not stall every login.
const MAX_ITERATIONS: u32 = 1_000_000;

impl Passwd {
    /// Parses a password file; errors name the 1-based line (never the hash).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            let (user, hash) = line.split_once(':').ok_or_else(|| bad("no ':'"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            users.insert(user.to_string(), parse_hash(hash).map_err(|e| bad(&e))?);
        }
        Ok(Passwd { users })
    }

    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether `user` exists and `password` is theirs (constant-time comparison).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(h) = self.users.get(user) else {
            return false;
        };
        let (computed, stored) = match h {
            Hash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password.as_bytes());
                d.update(salt);
                (d.finalize().to_vec(), hash)
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => (
                pbkdf2_sha512(password.as_bytes(), salt, *iterations, hash.len()),
                hash,
            ),
        };
        computed.len() == stored.len()
            && computed
                .iter()
                .zip(stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| "not base64".to_string())
}

fn parse_hash(h: &str) -> Result<Hash, String> {
    let parts: Vec<&str> = h.split('$').collect();
    match parts.as_slice() {
        ["", "6", salt, hash] => Ok(Hash::Sha512 {
            salt: b64(salt)?,
            hash: b64(hash)?,
        }),
        ["", "7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| "iterations not a number".to_string())?;
            if !(1..=MAX_ITERATIONS).contains(&iterations) {
                return Err(format!("iterations must be 1..={MAX_ITERATIONS}"));
            }
            let hash = b64(hash)?;
            if hash.is_empty() || hash.len() > 256 {
                return Err("hash length out of range".into());
            }
            Ok(Hash::Pbkdf2 {
                iterations,
                salt: b64(salt)?,
                hash,
            })
        }
        _ => Err("not a $6$ or $7$ hash (make it with mosquitto_passwd)".into()),
    }
}

/// PBKDF2 (RFC 8018) with HMAC-SHA512, `len` bytes of output.
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block: u32 = 1;
    while out.len() < len {
        let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(password) else {
            return Vec::new();
        };
        mac.update(salt);
        mac.update(&block.to_be_bytes());
        let mut u = mac.finalize().into_bytes();
        let mut t = u;
        for _ in 1..iterations {
            let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(password) else {
                return Vec::new();
            };
            mac.update(&u);
            u = mac.finalize().into_bytes();
            for (x, y) in t.iter_mut().zip(u.iter()) {
                *x ^= y;
            }
        }
        let need = len - out.len();
        out.extend_from_slice(t.get(..need.min(t.len())).unwrap_or(&t));
        block = block.wrapping_add(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_passwd_hashes_verify() {
        // Made by `mosquitto_passwd -b` (2.0.11): user gw-1, password pw1.
        let p = Passwd::parse(
            "gw-1:$7$101$b12B+HWCeHydcLvN$Yb4+F2rJFZl+Rmw4wG/O5h5tpfKzFBd7LvDGKu3DyMhNrG+jEHyt3N5F2FThytE6d7bo0Guwd7PwEAOk3Ma/MA==\n",
        )
        .unwrap();
        assert!(p.verify("gw-1", "pw1"));
        assert!(!p.verify("gw-1", "pw2"));
        assert!(!p.verify("gw-2", "pw1"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn rfc_6070_style_vector() {
        // PBKDF2-HMAC-SHA512("password", "salt", 1, 64), a published test vector.
        let out = pbkdf2_sha512(b"password", b"salt", 1, 64);
        assert_eq!(
            out.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
             c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(Passwd::parse("x\n").unwrap_err().starts_with("line 1"));
        assert!(Passwd::parse("\nu:$9$a$b\n")
            .unwrap_err()
            .starts_with("line 2"));
        assert!(Passwd::parse("u:$7$0$YQ==$YQ==\n")
            .unwrap_err()
            .contains("iterations"));
        assert!(Passwd::parse("# comment\n\n").unwrap().is_empty());
    }
}
