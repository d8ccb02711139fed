//! The API tokens file (`[auth] tokens_file`): `[[token]]` entries of name, role and the
//! token's SHA-256 (the token itself is never stored), and `token add`, which appends one.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads figures, gateways, alarms.
    Viewer,
    /// Viewer, and operational changes (anything but GET that is not admin).
    Operator,
    /// Operator, and registry changes.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("{s:?}: expected viewer, operator or admin")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// One `[[token]]` of the tokens file: the token itself is never stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it; goes to the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// Why a tokens file is unusable or a token could not be added.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Read or write failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid tokens file.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why (names the key).
        message: String,
    },
}

/// Reads and checks a tokens file.
pub fn load_tokens(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let invalid = |message: String| TokenError::Invalid {
        path: path.into(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(TokenError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let f: TokensFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or("").matches('\n').count() + 1);
        invalid(format!("line {}: {}", line.unwrap_or(1), e.message()))
    })?;
    for (i, t) in f.token.iter().enumerate() {
        if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "token[{i}].sha256 ({}): not 64 hex digits",
                t.name
            )));
        }
        if t.name.is_empty() {
            return Err(invalid(format!("token[{i}].name: is empty")));
        }
    }
    Ok(f.token)
}

/// SHA-256 of `token`, lowercase hex.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes a new random token for `name` with `role`, appends its hash to `path` (created
/// if absent) and returns the token: the only time it is ever shown.
pub fn add_token(path: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    use rand::RngCore;
    use std::io::Write;
    let invalid = |message: String| TokenError::Invalid {
        path: path.into(),
        message,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'))
    {
        return Err(invalid(format!(
            "name {name:?}: use letters, digits and _ . - @"
        )));
    }
    let existing = load_tokens(path)?;
    if existing.iter().any(|t| t.name == name) {
        return Err(invalid(format!("a token named {name:?} already exists")));
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!(
        "qn_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let io = |source| TokenError::Io {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let entry = format!(
        "\n[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        hash_token(&token)
    );
    f.write_all(entry.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(token)
}

pub(super) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2)?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tokens_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[[token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        let e = load_tokens(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("`root`"), "{e}");
        std::fs::write(
            &path,
            "[[token]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        let e = load_tokens(&path).unwrap_err().to_string();
        assert!(e.contains("token[0].sha256"), "{e}");
    }
}
