//! The realm under test: an address (`--realm URL`), a command the harness starts (`--spawn`), or by
//! default the reference realm built beside `mtor-cert`. Also the applicant's manifest (TOML).
//!
//! A spawned realm runs in its own process group and is always stopped (TERM, then KILL) when the
//! target is dropped, also when the run fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::{fill_random, Identity};

/// The applicant's manifest: who the realm is, where it listens, and the credentials the harness
/// needs for the cases that enrol workers, fund wallets or read the audit log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The realm's identity.
    #[serde(default)]
    pub realm: RealmInfo,
    /// Where it listens (for `--realm`, overridden by the flag).
    #[serde(default)]
    pub endpoints: Endpoints,
    /// Credentials for the harness's own workers, funding and audit.
    #[serde(default)]
    pub credentials: Credentials,
    /// How to start and stop it (for `--spawn`, overridden by the flag's command).
    #[serde(default)]
    pub spawn: Option<SpawnInfo>,
    /// How to run it from a container image (for `--image`, overridden by the flag's image).
    #[serde(default)]
    pub image: Option<ImageSpec>,
}

/// `[realm]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealmInfo {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// SPDX licence id.
    #[serde(default)]
    pub licence: String,
}

/// `[endpoints]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// Base URL, `http://host:port` or `ws://host:port`.
    #[serde(default)]
    pub base: Option<String>,
}

/// `[credentials]`; secrets are hex ed25519 seeds (32 bytes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Worker enrolment token the realm accepts.
    #[serde(default)]
    pub enrol_token: Option<String>,
    /// The sysop's secret seed (lets the harness mint into its test wallets).
    #[serde(default)]
    pub sysop_secret: Option<String>,
    /// A funded wallet's secret seed, when no sysop credentials are given.
    #[serde(default)]
    pub wallet_secret: Option<String>,
    /// The auditor's secret seed, for the audit export.
    #[serde(default)]
    pub auditor_secret: Option<String>,
}

/// `[image]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The image, `NAME:TAG` or an image id, already in the local engine.
    #[serde(default)]
    pub name: Option<String>,
    /// The realm's port inside the container (default: the image's one exposed port, else 7700).
    #[serde(default)]
    pub port: Option<u16>,
    /// Seconds to wait for the container to be healthy.
    #[serde(default = "default_image_ready")]
    pub ready_timeout_s: u64,
}

/// `[spawn]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnInfo {
    /// Command with placeholders `{port}`, `{listen}`, `{data_dir}`, `{enrol_token}`, `{sysop_key}`.
    pub command: String,
    /// Seconds to wait for `/v1/health` to answer.
    #[serde(default = "default_ready")]
    pub ready_timeout_s: u64,
}

fn default_ready() -> u64 {
    30
}

/// Longer than for a process: the engine adds its own start-up and health-check interval.
pub fn default_image_ready() -> u64 {
    60
}

/// The lease length handed to a spawned realm in `MTOR_LEASE_MS` (ENV-10): short, so that the
/// cases that wait for leases to lapse run in seconds. Cases never assume it; they read the lease
/// the realm advertises.
pub const SPAWN_LEASE_MS: u64 = 1000;

/// Why a target could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The manifest is unreadable or invalid.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// Path.
        path: String,
        /// Precise reason, with line and column when the TOML parser gives them.
        message: String,
    },
    /// The target description is unusable.
    #[error("{0}")]
    Usage(String),
    /// The realm could not be started.
    #[error("cannot start the realm: {0}")]
    Spawn(String),
    /// Local I/O failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Self, TargetError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TargetError::Manifest {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&shown, &text)
    }

    /// Parses and checks a manifest's text.
    pub fn parse(path: &str, text: &str) -> Result<Self, TargetError> {
        let err = |message: String| TargetError::Manifest {
            path: path.to_owned(),
            message,
        };
        let manifest: Manifest = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let c = &manifest.credentials;
        for (name, secret) in [
            ("credentials.sysop_secret", &c.sysop_secret),
            ("credentials.wallet_secret", &c.wallet_secret),
            ("credentials.auditor_secret", &c.auditor_secret),
        ] {
            if let Some(s) = secret {
                seed(s).map_err(|m| err(format!("{name}: {m}")))?;
            }
        }
        if let Some(token) = &c.enrol_token {
            if token.len() < 16 || token.len() > 256 {
                return Err(err(format!(
                    "credentials.enrol_token: must be 16 to 256 characters, is {}",
                    token.len()
                )));
            }
        }
        if let Some(base) = &manifest.endpoints.base {
            Target::normalise(base).map_err(|m| err(format!("endpoints.base: {m}")))?;
        }
        Ok(manifest)
    }
}

/// Decodes a hex ed25519 seed.
pub fn seed(hex_text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_text.trim()).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("must be 32 bytes (64 hex characters), is {} bytes", b.len()))
}

/// The realm's addresses and the credentials the run may use.
#[derive(Debug)]
pub struct Target {
    /// `http://host:port`.
    pub http_base: String,
    /// `ws://host:port`.
    pub ws_base: String,
    /// One line for reports.
    pub description: String,
    /// `url`, `spawn`.
    pub kind: &'static str,
    /// Worker enrolment token, when known.
    pub enrol_token: Option<String>,
    /// The sysop, when known.
    pub sysop: Option<Identity>,
    /// A funded wallet, when known.
    pub funded_wallet: Option<Identity>,
    /// The auditor, when known.
    pub auditor: Option<Identity>,
    /// The spawned realm, if the harness started it. Behind a lock so that a case can kill and
    /// restart it (the `process-kill` kind) while the run holds the target.
    pub process: Option<tokio::sync::Mutex<Spawned>>,
    /// The realm's container, if the harness started it from an image.
    pub container: Option<crate::container::RealmContainer>,
}

/// A realm process the harness started.
#[derive(Debug)]
pub struct Spawned {
    child: tokio::process::Child,
    /// Its process id (the process group id too).
    pub pid: u32,
    /// The command line after substitution.
    pub command: String,
    /// Where its output goes.
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The environment handed to it.
    env: Vec<(String, String)>,
}

impl Target {
    /// Accepts `ws://h:p`, `http://h:p` (with or without a trailing slash) and `h:p`.
    pub fn normalise(url: &str) -> Result<(String, String), String> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or(url)
            .trim_end_matches('/');
        if url.starts_with("wss://") || url.starts_with("https://") {
            return Err(format!(
                "`{url}`: TLS endpoints are not supported yet; certify the realm on a private address"
            ));
        }
        if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
            return Err(format!("`{url}` is not ws://HOST:PORT or http://HOST:PORT"));
        }
        Ok((format!("http://{rest}"), format!("ws://{rest}")))
    }

    /// A realm that is already running at `url`.
    pub fn at_url(url: &str, manifest: &Manifest) -> Result<Self, TargetError> {
        let (http_base, ws_base) = Self::normalise(url).map_err(TargetError::Usage)?;
        let ident = |s: &Option<String>| {
            s.as_deref()
                .and_then(|h| seed(h).ok())
                .map(Identity::from_seed)
        };
        Ok(Self {
            description: format!("realm at {ws_base}"),
            http_base,
            ws_base,
            kind: "url",
            enrol_token: manifest.credentials.enrol_token.clone(),
            sysop: ident(&manifest.credentials.sysop_secret),
            funded_wallet: ident(&manifest.credentials.wallet_secret),
            auditor: ident(&manifest.credentials.auditor_secret),
            process: None,
            container: None,
        })
    }

    /// Starts `command` (placeholders substituted, credentials in the environment) and waits until
    /// its health endpoint answers.
    pub async fn spawn(
        command: &str,
        work_dir: &Path,
        ready: Duration,
    ) -> Result<Self, TargetError> {
        let port = free_port().map_err(|e| TargetError::Io("pick a free port".into(), e))?;
        // Absolute, so the realm finds it whatever its own working directory.
        let work_dir = &std::path::absolute(work_dir)
            .map_err(|e| TargetError::Io(work_dir.display().to_string(), e))?;
        let data_dir = work_dir.join("realm-data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| TargetError::Io(data_dir.display().to_string(), e))?;
        let sysop = Identity::generate().map_err(|e| TargetError::Spawn(e.to_string()))?;
        let auditor = Identity::generate().map_err(|e| TargetError::Spawn(e.to_string()))?;
        let mut token_bytes = [0u8; 24];
        fill_random(&mut token_bytes);
        let enrol_token = format!("cert-{}", hex::encode(token_bytes));
        let listen = format!("127.0.0.1:{port}");
        let data = data_dir.display().to_string();
        let line = command
            .replace("{port}", &port.to_string())
            .replace("{listen}", &listen)
            .replace("{data_dir}", &shell_quote(&data))
            .replace("{enrol_token}", &enrol_token)
            .replace("{sysop_key}", &sysop.public_hex());
        let env = vec![
            ("MTOR_LISTEN".to_owned(), listen.clone()),
            ("MTOR_DATA_DIR".to_owned(), data.clone()),
            ("MTOR_ENROL_TOKEN".to_owned(), enrol_token.clone()),
            ("MTOR_SYSOP_KEY".to_owned(), sysop.public_hex()),
            ("MTOR_AUDITOR_KEY".to_owned(), auditor.public_hex()),
            ("MTOR_LEASE_MS".to_owned(), SPAWN_LEASE_MS.to_string()),
        ];
        let log = work_dir.join("realm.log");
        let process = start(&line, &log, &data_dir, &env)?;
        let (http_base, ws_base) = Self::normalise(&listen).map_err(TargetError::Usage)?;
        let target = Self {
            description: format!("spawned: {line}"),
            http_base,
            ws_base,
            kind: "spawn",
            enrol_token: Some(enrol_token),
            sysop: Some(sysop),
            funded_wallet: None,
            auditor: Some(auditor),
            process: Some(tokio::sync::Mutex::new(process)),
            container: None,
        };
        target.wait_ready(ready).await?;
        Ok(target)
    }

    /// Waits until `/v1/health` accepts a TCP connection and answers, or the process exits.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + within;
        let host = self.http_base.trim_start_matches("http://").to_owned();
        loop {
            if let Some(p) = &self.process {
                let p = p.lock().await;
                if let Some(status) = p.exited() {
                    return Err(TargetError::Spawn(format!(
                        "`{}` exited ({status}) before it was ready; see {}",
                        p.command,
                        p.log.display()
                    )));
                }
            }
            if tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(&host),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TargetError::Spawn(format!(
                    "nothing answered on {host} within {within:?}; see {}",
                    match &self.process {
                        Some(p) => p.lock().await.log.display().to_string(),
                        None => String::new(),
                    }
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Spawned {
    /// Exit status if the process has ended.
    pub fn exited(&self) -> Option<String> {
        // `try_wait` needs `&mut`; probing through /proc keeps this `&self` and cheap.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok();
        match stat {
            None => Some("gone".into()),
            Some(s) if s.split_whitespace().nth(2) == Some("Z") => Some("exited".into()),
            Some(_) => None,
        }
    }

    /// Waits for the process to end (after a signal); its exit status.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Sends `signal` to the realm's whole process group (the realm and anything it started).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // Never signal group 0 or 1: that would be the harness's own group, or everything.
        if pid <= 1 {
            return false;
        }
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal).is_ok()
    }

    /// Stops the realm: TERM, up to `grace` to exit, then KILL. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited: {status}");
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => format!("stopped by SIGTERM: {status}"),
            _ => {
                self.signal(nix::sys::signal::Signal::SIGKILL);
                match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
                    Ok(Ok(status)) => format!("killed after {grace:?}: {status}"),
                    _ => "did not exit even after SIGKILL".into(),
                }
            }
        }
    }

    /// Restarts the same command on the same data directory (after a crash fault).
    pub fn restart(&mut self) -> Result<(), TargetError> {
        let next = start(&self.command, &self.log, &self.data_dir, &self.env)?;
        *self = next;
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Guaranteed cleanup even when the run panics or errors out: never leave a realm behind.
        if self.exited().is_none() {
            self.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn start(
    line: &str,
    log: &Path,
    data_dir: &Path,
    env: &[(String, String)],
) -> Result<Spawned, TargetError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| TargetError::Io(log.display().to_string(), e))?;
    let err = out
        .try_clone()
        .map_err(|e| TargetError::Io(log.display().to_string(), e))?;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec {line}"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| TargetError::Spawn(format!("`{line}`: {e}")))?;
    let pid = child
        .id()
        .ok_or_else(|| TargetError::Spawn(format!("`{line}` exited immediately")))?;
    Ok(Spawned {
        child,
        pid,
        command: line.to_owned(),
        log: log.to_owned(),
        data_dir: data_dir.to_owned(),
        env: env.to_vec(),
    })
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The reference realm binary: beside this executable, else on `PATH`.
pub fn reference_realm_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("mtor-realm")));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mtor-realm"))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalise() {
        assert_eq!(
            Target::normalise("ws://127.0.0.1:7700/").expect("ok"),
            ("http://127.0.0.1:7700".into(), "ws://127.0.0.1:7700".into())
        );
        assert!(Target::normalise("127.0.0.1:1").is_ok());
        assert!(Target::normalise("https://x:1")
            .expect_err("tls")
            .contains("TLS"));
        assert!(Target::normalise("ws://host/path").is_err());
    }

    #[test]
    fn manifests_get_precise_errors() {
        let ok = "[realm]\nname = \"r\"\n[credentials]\nenrol_token = \"0123456789abcdef\"\n";
        assert!(Manifest::parse("m.toml", ok).is_ok());
        let bad = [
            ("[realm]\nnmae = \"r\"\n", "unknown field `nmae`"),
            (
                "[credentials]\nsysop_secret = \"zz\"\n",
                "credentials.sysop_secret: not hex",
            ),
            ("[credentials]\nsysop_secret = \"00\"\n", "must be 32 bytes"),
            ("[credentials]\nenrol_token = \"short\"\n", "16 to 256"),
            ("[endpoints]\nbase = \"ftp://x\"\n", "endpoints.base"),
            ("[realm\n", "m.toml"),
        ];
        for (text, want) in bad {
            let e = Manifest::parse("m.toml", text).expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn quoting_protects_odd_paths() {
        assert_eq!(shell_quote("/tmp/a"), "/tmp/a");
        assert_eq!(shell_quote("/tmp/a b'c"), "'/tmp/a b'\\''c'");
    }
}
