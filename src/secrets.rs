//! Secrets at rest: root passwords and panel credentials, sealed with XChaCha20-Poly1305.
//!
//! The key lives outside the database: `PROVISIONER_SECRET_KEY` (base64 of 32 bytes) or a key
//! file (`PROVISIONER_SECRET_KEY_FILE`, or for SQLite a `<database>.key` file generated with
//! mode 0600 on first start). Each sealed value stores the id of the key that sealed it, so keys
//! can be rotated: the new key seals, old keys listed in `PROVISIONER_SECRET_KEY_PREVIOUS`
//! (comma-separated) still open what they sealed. The associated data binds a sealed value to
//! the row it belongs to, so ciphertexts cannot be swapped between instances.
//!
//! Plain secrets only exist as [`SecretString`], whose `Debug` and `Display` print
//! `[redacted]`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// Environment variable holding the primary key (base64, 32 bytes).
pub const KEY_ENV: &str = "PROVISIONER_SECRET_KEY";
/// Environment variable naming a file that holds the primary key (base64, 32 bytes).
pub const KEY_FILE_ENV: &str = "PROVISIONER_SECRET_KEY_FILE";
/// Environment variable holding earlier keys (comma-separated base64) still able to open.
pub const PREVIOUS_KEYS_ENV: &str = "PROVISIONER_SECRET_KEY_PREVIOUS";

const NONCE_LEN: usize = 24;

/// Why a key could not be loaded or a secret not opened. Never contains key material or
/// plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The configured key is not base64 of exactly 32 bytes.
    #[error("{source_name} is not a valid key: expected base64 of exactly 32 bytes (generate one with `head -c 32 /dev/urandom | base64`)")]
    BadKey {
        /// Where the key came from (variable or file), never the key.
        source_name: String,
    },
    /// The key file could not be read or written.
    #[error("cannot use key file {path}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// No key is configured and none may be generated (PostgreSQL).
    #[error("no secret key configured: set {KEY_ENV} (base64 of 32 bytes) or {KEY_FILE_ENV}; PostgreSQL deployments must configure the key explicitly so every daemon shares it")]
    NoKey,
    /// The key file is missing but the database holds secrets sealed with it.
    #[error("the key file {path} does not exist, but the database holds secrets sealed with key {ids}: restore the file from the backup made with the database (or set {KEY_ENV} / {KEY_FILE_ENV}); a new key would leave them unreadable, so none is generated", path = path.display())]
    KeyMissing {
        /// The key file expected.
        path: PathBuf,
        /// The key ids the database needs.
        ids: String,
    },
    /// A sealed value names a key that is not configured.
    #[error("the secret was sealed with key {0}, which is not configured (add it to {PREVIOUS_KEYS_ENV})")]
    UnknownKey(String),
    /// The sealed value is corrupt, or belongs to another row.
    #[error("the secret cannot be opened: corrupt, tampered with, or stored for another record")]
    Corrupt,
}

/// A secret in memory. `Debug` and `Display` never show it; [`SecretString::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    /// The secret itself, for the one place that needs it (a provider call, `--show-secrets`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A sealed secret as stored: the id of the key that sealed it and base64(nonce ‖ ciphertext).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the sealing key.
    pub key_id: String,
    /// base64 of the 24-byte nonce followed by the ciphertext and tag.
    pub ciphertext: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field(
                "ciphertext",
                &format_args!("[{} bytes]", self.ciphertext.len()),
            )
            .finish()
    }
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The configured keys: one that seals, any number that can still open.
pub struct Keyring {
    primary: Key,
    previous: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn key_id(bytes: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"provisioner key id\0")
        .chain_update(bytes)
        .finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn parse_key(text: &str, source_name: &str) -> Result<Key, SecretError> {
    let bad = || SecretError::BadKey {
        source_name: source_name.to_owned(),
    };
    let bytes = B64.decode(text.trim()).map_err(|_| bad())?;
    if bytes.len() != 32 {
        return Err(bad());
    }
    let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| bad())?;
    Ok(Key {
        id: key_id(&bytes),
        cipher,
    })
}

impl Keyring {
    /// A keyring with one key given as base64 (for tests and tools).
    ///
    /// # Errors
    /// [`SecretError::BadKey`] when it is not base64 of 32 bytes.
    pub fn from_base64(key: &str) -> Result<Keyring, SecretError> {
        Ok(Keyring {
            primary: parse_key(key, "the key")?,
            previous: Vec::new(),
        })
    }

    /// Loads the keys from the environment, or from `default_file` — created with a fresh
    /// random key and mode 0600 when it does not exist — when `default_file` is given and no key
    /// is configured. Returns the keyring and, when a file was generated, its path.
    ///
    /// # Errors
    /// [`SecretError`] when a configured key is malformed, the file cannot be used, or no key is
    /// configured and `default_file` is `None`.
    pub fn load(default_file: Option<&Path>) -> Result<(Keyring, Option<PathBuf>), SecretError> {
        let mut generated = None;
        let primary = if let Ok(k) = std::env::var(KEY_ENV) {
            parse_key(&k, KEY_ENV)?
        } else if let Some(path) = std::env::var_os(KEY_FILE_ENV) {
            read_key_file(Path::new(&path))?
        } else if let Some(path) = default_file {
            if !path.exists() {
                write_new_key_file(path)?;
                generated = Some(path.to_owned());
            }
            read_key_file(path)?
        } else {
            return Err(SecretError::NoKey);
        };
        let previous = match std::env::var(PREVIOUS_KEYS_ENV) {
            Ok(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|k| parse_key(k, PREVIOUS_KEYS_ENV))
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => Vec::new(),
        };
        Ok((Keyring { primary, previous }, generated))
    }

    /// The key file that SQLite databases use when no key is configured: `<file>.key`.
    #[must_use]
    pub fn default_file(database_url: &str) -> Option<PathBuf> {
        if !database_url.starts_with("sqlite:") {
            return None;
        }
        let options =
            <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(database_url).ok();
        options.map(|o| {
            let mut name = o.get_filename().as_os_str().to_owned();
            name.push(".key");
            PathBuf::from(name)
        })
    }

    /// Finds the key for the secrets of the database at `database_url` without writing
    /// anything: configured (`PROVISIONER_SECRET_KEY`, `…_FILE`), or for SQLite the file beside
    /// the database, which [`KeySource::finish`] generates if it does not exist yet.
    ///
    /// # Errors
    /// When a configured key is malformed, the file cannot be read, or PostgreSQL has none.
    pub fn prepare(database_url: &str) -> Result<KeySource, SecretError> {
        let default_file = Keyring::default_file(database_url);
        let configured =
            std::env::var_os(KEY_ENV).is_some() || std::env::var_os(KEY_FILE_ENV).is_some();
        match default_file {
            Some(path) if !configured && !path.exists() => Ok(KeySource::Generate(path)),
            other => Ok(KeySource::Ready(Arc::new(
                Keyring::load(other.as_deref())?.0,
            ))),
        }
    }

    /// The id of the key that seals new secrets.
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// Seals `secret`, bound to `context` (e.g. `instance:42`): opening needs the same context.
    pub fn seal(&self, secret: &SecretString, context: &str) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .primary
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Sealed {
            key_id: self.primary.id.clone(),
            ciphertext: B64.encode(blob),
        }
    }

    /// Opens a sealed secret stored for `context`.
    ///
    /// # Errors
    /// [`SecretError::UnknownKey`] when the sealing key is not configured,
    /// [`SecretError::Corrupt`] when the value does not authenticate (wrong context, tampering).
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<SecretString, SecretError> {
        let key = std::iter::once(&self.primary)
            .chain(&self.previous)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SecretError::UnknownKey(sealed.key_id.clone()))?;
        let blob = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| SecretError::Corrupt)?;
        if blob.len() < NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain)
            .map(SecretString)
            .map_err(|_| SecretError::Corrupt)
    }
}

/// Where the key comes from, before anything is written.
#[derive(Debug)]
pub enum KeySource {
    /// Configured, or the key file exists.
    Ready(Arc<Keyring>),
    /// No key yet: a SQLite database's key file is to be generated at this path.
    Generate(PathBuf),
}

impl KeySource {
    /// The keyring, generating the key file if there is none — unless the database already
    /// holds secrets (sealed with `in_use`), which a new key could never open: then the missing
    /// key is an error naming it, and nothing is written. With a configured key, secrets sealed
    /// by keys it does not hold are reported in the log (they cannot be opened until the key is
    /// listed in `PROVISIONER_SECRET_KEY_PREVIOUS`).
    ///
    /// # Errors
    /// [`SecretError::KeyMissing`], or when the key file cannot be written.
    pub fn finish(self, in_use: &[String]) -> Result<Arc<Keyring>, SecretError> {
        match self {
            KeySource::Ready(ring) => {
                let unknown: Vec<&str> = in_use
                    .iter()
                    .map(String::as_str)
                    .filter(|id| {
                        *id != ring.primary.id && !ring.previous.iter().any(|k| k.id == *id)
                    })
                    .collect();
                if !unknown.is_empty() {
                    tracing::warn!(
                        keys = %unknown.join(", "),
                        "the database holds secrets sealed with keys that are not configured; they cannot be opened until those keys are listed in {PREVIOUS_KEYS_ENV}"
                    );
                }
                Ok(ring)
            }
            KeySource::Generate(path) => {
                if !in_use.is_empty() {
                    return Err(SecretError::KeyMissing {
                        path,
                        ids: in_use.join(", "),
                    });
                }
                write_new_key_file(&path)?;
                tracing::warn!(
                    path = %path.display(),
                    "generated a new secret key for stored credentials; back this file up with the database, without it stored passwords cannot be read"
                );
                Ok(Arc::new(Keyring {
                    primary: read_key_file(&path)?,
                    previous: Vec::new(),
                }))
            }
        }
    }
}

fn read_key_file(path: &Path) -> Result<Key, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    parse_key(&text, &format!("key file {}", path.display()))
}

fn write_new_key_file(path: &Path) -> Result<(), SecretError> {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let fail = |source| SecretError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    writeln!(file, "{}", B64.encode(key)).map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// A new API token (`pvt_` and 43 characters of base64url over 32 random bytes) and the
/// SHA-256 kept of it.
pub fn new_api_token() -> (SecretString, String) {
    use base64::Engine as _;
    let bytes = XChaCha20Poly1305::generate_key(&mut OsRng);
    let token = format!(
        "pvt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = api_token_hash(&token);
    (SecretString::new(token), hash)
}

/// The SHA-256 (hex) under which an API token is stored and looked up. Tokens carry 256
/// random bits, so a fast hash is enough: nothing is left to guess.
pub fn api_token_hash(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn sealed_secrets_open_only_in_their_context() {
        let ring = Keyring::from_base64(KEY_A).unwrap();
        let secret = SecretString::new("hunter2-root-password");
        let sealed = ring.seal(&secret, "instance:42");
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(sealed.key_id, ring.primary_id());
        assert_eq!(ring.open(&sealed, "instance:42").unwrap(), secret);
        assert!(matches!(
            ring.open(&sealed, "instance:43"),
            Err(SecretError::Corrupt)
        ));
        let other = Keyring::from_base64(KEY_B).unwrap();
        assert!(matches!(
            other.open(&sealed, "instance:42"),
            Err(SecretError::UnknownKey(_))
        ));
    }

    #[test]
    fn secrets_never_print() {
        let secret = SecretString::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "[redacted] [redacted]");
        let ring = Keyring::from_base64(KEY_A).unwrap();
        let sealed = ring.seal(&secret, "x");
        assert!(!format!("{sealed:?} {ring:?}").contains(KEY_A));
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        let err = Keyring::from_base64("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("exactly 32 bytes"));
        assert!(!err.contains("c2hvcnQ"));
    }

    #[test]
    fn a_generated_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.key");
        write_new_key_file(&path).unwrap();
        let first = read_key_file(&path).unwrap().id;
        assert_eq!(read_key_file(&path).unwrap().id, first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(write_new_key_file(&path).is_err(), "never overwrites a key");
    }
}
