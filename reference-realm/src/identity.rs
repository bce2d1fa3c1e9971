//! Identities: ed25519 key pairs, key files, session challenges and signed REST requests.
//!
//! A wallet IS its public key (64 lowercase hex chars); a session proves possession of the
//! secret by signing the exact message of [`session_message`]. Workers prove their own key the
//! same way after presenting the sysop's enrolment token. Signed REST requests cover
//! [`rest_message`].

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Errors of key handling and signature checks.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key is not 64 lowercase hex characters, or not a valid curve point.
    #[error("invalid public key: {0}")]
    BadKey(String),
    /// A signature is not 128 lowercase hex characters.
    #[error("malformed signature")]
    BadSignatureFormat,
    /// The signature does not verify against the key and message.
    #[error("signature does not verify")]
    BadSignature,
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// A key file could not be read or written.
    #[error("key file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold a 32-byte hex seed.
    #[error("key file {0} does not hold a 64-hex-char secret seed")]
    BadKeyFile(PathBuf),
}

/// An ed25519 key pair held by this process (realm, sysop, worker or wallet).
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, even in debug logs.
        f.debug_struct("KeyPair")
            .field("public", &self.public_hex())
            .finish()
    }
}

impl KeyPair {
    /// A fresh key pair from the OS random source.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key pair of a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Parses a 64-hex-char seed (surrounding whitespace ignored).
    pub fn from_seed_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        let seed: [u8; 32] = bytes.try_into().ok()?;
        Some(Self::from_seed(seed))
    }

    /// The public key as 64 lowercase hex chars (the wallet / worker / realm id).
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Signs `message` and returns the signature as 128 lowercase hex chars.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    /// Reads a key file written by [`KeyPair::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_seed_hex(&text).ok_or_else(|| IdentityError::BadKeyFile(path.to_path_buf()))
    }

    /// Writes the secret seed as hex to a new file readable only by its owner (mode 0600).
    /// Refuses to overwrite an existing file, so that a key is never lost by accident.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        write_secret_file(path, &format!("{}\n", hex::encode(self.signing.to_bytes())))
    }

    /// Loads the key at `path`, or creates and saves a new one; the flag says it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), IdentityError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok((key, true))
    }
}

/// Writes `content` to a new file with mode 0600 (creating parent directories).
pub fn write_secret_file(path: &Path, content: &str) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(content.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// True when `key` has the wire shape of a key: 64 lowercase hex chars.
pub fn is_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True when `id` matches the `uid` pattern `^[A-Za-z0-9_-]{1,64}$`.
pub fn is_uid(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Verifies a hex signature over `message` by the hex public `key`.
pub fn verify(key: &str, message: &[u8], signature: &str) -> Result<(), IdentityError> {
    if !is_key(key) {
        return Err(IdentityError::BadKey(
            "not 64 lowercase hex chars".to_owned(),
        ));
    }
    let key_bytes: [u8; 32] = hex::decode(key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| IdentityError::BadKey("not hex".to_owned()))?;
    let verifying =
        VerifyingKey::from_bytes(&key_bytes).map_err(|e| IdentityError::BadKey(e.to_string()))?;
    let is_sig = signature.len() == 128
        && signature
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_sig {
        return Err(IdentityError::BadSignatureFormat);
    }
    let sig_bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(IdentityError::BadSignatureFormat)?;
    // verify_strict refuses weak keys and malleable signatures, which plain verify accepts.
    verifying
        .verify_strict(message, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| IdentityError::BadSignature)
}

/// The message a session proof signs: `"MTOR/1 session\n" + realm_id + "\n" + nonce + "\n" + key`.
pub fn session_message(realm_id: &str, nonce: &str, key: &str) -> String {
    format!("MTOR/1 session\n{realm_id}\n{nonce}\n{key}")
}

/// The message a signed REST request signs:
/// `"MTOR/1 rest\n" + METHOD + "\n" + PATH_AND_QUERY + "\n" + TIMESTAMP`.
pub fn rest_message(method: &str, path_and_query: &str, timestamp: &str) -> String {
    format!("MTOR/1 rest\n{method}\n{path_and_query}\n{timestamp}")
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> Result<String, IdentityError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// A fresh identifier that sorts roughly by creation time: 12 hex chars of milliseconds since
/// the epoch, then 16 random hex chars. Falls back to a counter when randomness fails, because an
/// id must never stop the realm.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let tail = random_u64()
        .map(|r| format!("{r:016x}"))
        .unwrap_or_else(|| format!("{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed)));
    format!("{:012x}{tail}", ms & 0xffff_ffff_ffff)
}

/// Eight bytes from the OS random source, drawn 4 KiB at a time per thread: the realm makes an
/// id for every event it sends, and a `getrandom` syscall each was measurable under load.
fn random_u64() -> Option<u64> {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (buf, at) = &mut *pool;
        if *at + 8 > buf.len() {
            buf.resize(4096, 0);
            getrandom::fill(buf).ok()?;
            *at = 0;
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&buf[*at..*at + 8]);
        *at += 8;
        Some(u64::from_le_bytes(bytes))
    })
}

/// Parses an RFC 3339 UTC timestamp (`...Z`) into a [`SystemTime`].
pub fn parse_ts(ts: &str) -> Option<SystemTime> {
    if !ts.ends_with('Z') {
        return None;
    }
    humantime::parse_rfc3339_weak(ts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_proof_round_trip_and_tamper() {
        let Ok(k) = KeyPair::generate() else {
            return;
        };
        let realm = "a".repeat(64);
        let nonce = "b".repeat(64);
        let msg = session_message(&realm, &nonce, &k.public_hex());
        let sig = k.sign_hex(msg.as_bytes());
        assert!(verify(&k.public_hex(), msg.as_bytes(), &sig).is_ok());
        let other = session_message(&realm, &"c".repeat(64), &k.public_hex());
        assert!(matches!(
            verify(&k.public_hex(), other.as_bytes(), &sig),
            Err(IdentityError::BadSignature)
        ));
        assert!(matches!(
            verify(&k.public_hex(), msg.as_bytes(), &sig.to_uppercase()),
            Err(IdentityError::BadSignatureFormat)
        ));
    }

    #[test]
    fn ids_have_uid_shape_and_timestamps_parse() {
        let id = new_id();
        assert!(is_uid(&id), "{id}");
        assert_ne!(id, new_id());
        assert!(parse_ts("2025-01-31T12:34:56.789Z").is_some());
        assert!(parse_ts("2025-01-31T12:34:56").is_none());
    }
}
