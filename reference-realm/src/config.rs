//! The realm's configuration and its first-start bootstrap (data directory, keys, token).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::identity::{self, IdentityError, KeyPair};

/// Errors of configuration and bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value the realm cannot use.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The setting (flag or environment variable).
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A key or token file could not be created or read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The data directory could not be created or read.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Frame and admission limits, advertised in the manifest and `session.ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame in bytes.
    pub max_frame_bytes: usize,
    /// Deepest accepted JSON nesting (the envelope object is depth 1).
    pub max_depth: usize,
    /// Sustained frames per second per connection.
    pub rate_per_s: u32,
    /// Frames a connection may send in a burst above the rate.
    pub burst: u32,
    /// Intents the queue holds (queued, not running) before QUEUE_FULL.
    pub queue_capacity: usize,
    /// Queued plus running intents one wallet may have.
    pub per_wallet_inflight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1_048_576,
            max_depth: 32,
            rate_per_s: 100,
            burst: 200,
            queue_capacity: 10_000,
            per_wallet_inflight: 64,
        }
    }
}

/// Lease and heartbeat timing, advertised in the manifest and `worker.enrolled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a dispatch is leased before it lapses (extended by progress).
    pub lease_ms: u64,
    /// How often workers must send `worker.heartbeat`.
    pub heartbeat_interval_ms: u64,
    /// Dispatch attempts before an intent is dead-lettered.
    pub max_attempts: u32,
    /// Extra time after a lease's deadline before it is treated as lapsed (clock skew, latency).
    pub grace_ms: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            lease_ms: 10_000,
            heartbeat_interval_ms: 500,
            max_attempts: 3,
            grace_ms: 2_000,
        }
    }
}

/// Everything a running realm needs to know, resolved from flags, environment and data dir.
#[derive(Debug, Clone)]
pub struct RealmConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the database, keys and token.
    pub data_dir: PathBuf,
    /// Human-readable realm name (manifest).
    pub name: String,
    /// The sysop's public key (wallet with the `sysop` role).
    pub sysop_key: String,
    /// The auditor's public key, if any.
    pub auditor_key: Option<String>,
    /// The enrolment token workers must present.
    pub enrol_token: String,
    /// The realm's own key pair (its id is the public key).
    pub realm_key: KeyPair,
    /// Frame and admission limits.
    pub limits: Limits,
    /// Lease timing.
    pub lease: LeaseSettings,
    /// Realm fee in basis points of each capture.
    pub fee_bps: u32,
}

/// What bootstrap did on first start, for the start-up banner.
#[derive(Debug, Clone, Default)]
pub struct BootstrapReport {
    /// The realm key file, and whether it was just created.
    pub realm_key_file: PathBuf,
    /// True when the realm key was created now.
    pub realm_key_created: bool,
    /// The sysop secret key file, when the realm generated the sysop key.
    pub sysop_key_file: Option<PathBuf>,
    /// True when the sysop key was created now.
    pub sysop_key_created: bool,
    /// The enrolment token file, when the token came from the data dir.
    pub token_file: Option<PathBuf>,
}

/// The settings a caller (the command line) gives; `None` means "environment, then default".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--enrol-token`.
    pub enrol_token: Option<String>,
    /// `--sysop-key`.
    pub sysop_key: Option<String>,
    /// `--lease-ms`; without it `MTOR_LEASE_MS`, then the default (tests and the harness shorten it).
    pub lease_ms: Option<u64>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The realm key file inside a data dir.
pub fn realm_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("realm.key")
}

/// The sysop secret key file inside a data dir (only when the realm generated it).
pub fn sysop_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("sysop.key")
}

/// The enrolment token file inside a data dir.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("enrol-token")
}

/// The database file inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("realm.db")
}

impl RealmConfig {
    /// Resolves the configuration (flags, then `MTOR_*` environment, then defaults) and creates
    /// on first start the realm key, the sysop key pair (unless a sysop key is configured) and
    /// the enrolment token file (unless a token is configured).
    pub fn resolve(o: Overrides) -> Result<(Self, BootstrapReport), ConfigError> {
        let listen_text = o
            .listen
            .or_else(|| env_nonempty("MTOR_LISTEN"))
            .unwrap_or_else(|| "127.0.0.1:7700".to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|e| ConfigError::Invalid {
            setting: "listen (--listen / MTOR_LISTEN)",
            reason: format!("{listen_text:?}: {e}"),
        })?;
        let data_dir = o
            .data_dir
            .or_else(|| env_nonempty("MTOR_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("./realm-data"));
        std::fs::create_dir_all(&data_dir).map_err(|source| ConfigError::Io {
            path: data_dir.clone(),
            source,
        })?;
        let mut report = BootstrapReport::default();

        let realm_key_file = realm_key_path(&data_dir);
        if crate::defect::on(crate::defect::Defect::NewKeyOnRestart) {
            // Seeded defect `new-key-on-restart`: the key file is thrown away at every start.
            let _ = std::fs::remove_file(&realm_key_file);
        }
        let (realm_key, created) = KeyPair::load_or_create(&realm_key_file)?;
        report.realm_key_file = realm_key_file;
        report.realm_key_created = created;

        let sysop_key = match o.sysop_key.or_else(|| env_nonempty("MTOR_SYSOP_KEY")) {
            Some(key) => {
                let key = key.trim().to_owned();
                if !identity::is_key(&key) {
                    return Err(ConfigError::Invalid {
                        setting: "sysop key (--sysop-key / MTOR_SYSOP_KEY)",
                        reason: "must be 64 lowercase hex chars (an ed25519 public key)".to_owned(),
                    });
                }
                key
            }
            None => {
                let path = sysop_key_path(&data_dir);
                let (pair, created) = KeyPair::load_or_create(&path)?;
                report.sysop_key_file = Some(path);
                report.sysop_key_created = created;
                pair.public_hex()
            }
        };

        let auditor_key = env_nonempty("MTOR_AUDITOR_KEY").map(|k| k.trim().to_owned());
        if let Some(key) = &auditor_key {
            if !identity::is_key(key) {
                return Err(ConfigError::Invalid {
                    setting: "MTOR_AUDITOR_KEY",
                    reason: "must be 64 lowercase hex chars".to_owned(),
                });
            }
        }

        let enrol_token = match o.enrol_token.or_else(|| env_nonempty("MTOR_ENROL_TOKEN")) {
            Some(token) => token.trim().to_owned(),
            None => {
                let path = token_path(&data_dir);
                let token = if path.exists() {
                    std::fs::read_to_string(&path)
                        .map_err(|source| ConfigError::Io {
                            path: path.clone(),
                            source,
                        })?
                        .trim()
                        .to_owned()
                } else {
                    let token = identity::random_hex(32)?;
                    identity::write_secret_file(&path, &format!("{token}\n"))?;
                    token
                };
                report.token_file = Some(path);
                token
            }
        };
        // The wire allows 16..256 chars; a shorter token would be guessable anyway.
        if !(16..=256).contains(&enrol_token.len()) || enrol_token.chars().any(char::is_control) {
            return Err(ConfigError::Invalid {
                setting: "enrolment token (--enrol-token / MTOR_ENROL_TOKEN)",
                reason: "must be 16..256 printable characters".to_owned(),
            });
        }

        let name =
            env_nonempty("MTOR_REALM_NAME").unwrap_or_else(|| "MTOR reference realm".to_owned());
        let mut lease = LeaseSettings::default();
        let lease_ms = match o.lease_ms {
            Some(ms) => Some(ms),
            // ENV-10: the harness shortens the lease so that its lease cases run in seconds.
            None => env_nonempty("MTOR_LEASE_MS")
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|e| ConfigError::Invalid {
                        setting: "lease_ms (--lease-ms / MTOR_LEASE_MS)",
                        reason: format!("{v:?}: {e}"),
                    })
                })
                .transpose()?,
        };
        if let Some(ms) = lease_ms {
            if !(100..=600_000).contains(&ms) {
                return Err(ConfigError::Invalid {
                    setting: "lease_ms (--lease-ms / MTOR_LEASE_MS)",
                    reason: "must be 100..600000".to_owned(),
                });
            }
            lease.lease_ms = ms;
            lease.grace_ms = lease.grace_ms.min(ms / 2);
        }
        Ok((
            Self {
                listen,
                data_dir,
                name,
                sysop_key,
                auditor_key,
                enrol_token,
                realm_key,
                limits: Limits::default(),
                lease,
                fee_bps: 500,
            },
            report,
        ))
    }

    /// The realm id (its public key).
    pub fn realm_id(&self) -> String {
        self.realm_key.public_hex()
    }
}
