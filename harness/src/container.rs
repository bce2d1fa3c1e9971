//! Container targets (`mtor-cert run --image NAME:TAG`) and the faults that need a container engine.
//!
//! The harness drives the engine through the `docker` CLI (or the program named by `MTOR_DOCKER`),
//! every call with a deadline. Not through the testcontainers crate: every version of it pulls a
//! TLS stack (rustls, ring) and, since 0.27, gRPC (tonic, prost) into the harness whatever its
//! features, roughly doubling the dependency tree of a harness that speaks no TLS; it exposes no
//! network disconnect (partitions would need its bollard client underneath anyway); and its
//! cleanup on drop runs on a spawned task, which an interrupted process never runs. The CLI is
//! what the applicant already has beside their engine, honours `DOCKER_HOST` and contexts, and
//! needs no dependency.
//!
//! What the harness starts (a private network per run, the realm container) carries the labels
//! [`LABEL_RUN`] and [`LABEL_PID`] and is always removed: by [`RealmContainer::remove`] at the end
//! of the run, else by its `Drop` (an error, a panic, or the run future dropped on SIGINT, SIGTERM
//! or SIGHUP). Only a SIGKILL of the harness itself can leave them; the labels find them then.
//! The harness never pulls: it certifies the image the engine already holds, by its id.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::target::{Manifest, Target, TargetError, SPAWN_LEASE_MS};
use crate::wire::{fill_random, Identity};

/// Label on everything a run creates; its value is the run's container id prefix.
pub const LABEL_RUN: &str = "org.mtor.cert.run";
/// Label holding the harness's process id, to find what a SIGKILLed harness left.
pub const LABEL_PID: &str = "org.mtor.cert.pid";
/// The realm's port inside the container when neither the manifest nor the image says otherwise.
pub const DEFAULT_PORT: u16 = 7700;
/// Image label: the arguments (after the image's entrypoint, split on whitespace, no shell) that
/// run one worker node from the image, with `{realm}` (the realm's ws:// address on the run's
/// network) and `{enrol_token}` filled in. The worker's identity comes in `MTOR_WORKER_KEY` (hex
/// secret seed), so the harness can pin probes to it.
pub const LABEL_WORKER: &str = "org.mtor.cert.worker";

/// Deadline of one engine command that should be quick (inspect, kill, start, rm).
const QUICK: Duration = Duration::from_secs(30);

/// Why the container engine could not do what the harness asked.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No CLI, or no engine answering it: the `--image` target cannot be used at all.
    #[error("no container engine reachable: {0}")]
    Unavailable(String),
    /// The image is not in the engine (the harness never pulls).
    #[error("image `{0}` is not in the container engine (mtor-cert never pulls): build it (ci/build-images.sh for the reference realm) or `docker pull` it first")]
    NoImage(String),
    /// An engine command failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An engine command did not finish in time.
    #[error("`{command}` did not finish within {within:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// Its deadline.
        within: Duration,
    },
    /// The realm in the container did not become ready (it exited, or never answered health).
    #[error("{0}")]
    NotReady(String),
    /// The engine answered something the harness cannot use, or a fault did not take effect.
    #[error("{0}")]
    Unexpected(String),
}

/// The container engine, through its CLI.
#[derive(Debug, Clone)]
pub struct Docker {
    program: String,
}

/// What the engine says about the image under test.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The reference given (`NAME:TAG`).
    pub reference: String,
    /// The image id (`sha256:...`): what was certified.
    pub id: String,
    /// TCP ports the image exposes.
    pub exposed: Vec<u16>,
    /// Whether it declares a HEALTHCHECK.
    pub healthcheck: bool,
    /// `Config.User` (empty: root).
    pub user: String,
    /// Whether its environment already sets `MTOR_DATA_DIR`.
    pub sets_data_dir: bool,
    /// How to run a worker node from it ([`LABEL_WORKER`]), when it says.
    pub worker: Option<String>,
    /// The engine's version.
    pub engine: String,
}

impl Default for Docker {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Docker {
    /// `MTOR_DOCKER` if set, else `docker` on `PATH`.
    pub fn from_env() -> Self {
        Self {
            program: std::env::var("MTOR_DOCKER")
                .ok()
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| "docker".to_owned()),
        }
    }

    fn shown(&self, args: &[&str]) -> String {
        format!("{} {}", self.program, args.join(" "))
    }

    fn spawn_error(&self, e: &std::io::Error) -> ContainerError {
        if e.kind() == std::io::ErrorKind::NotFound {
            ContainerError::Unavailable(format!(
                "the container CLI `{}` was not found (install Docker, or set MTOR_DOCKER to its path)",
                self.program
            ))
        } else {
            ContainerError::Unavailable(format!("cannot run `{}`: {e}", self.program))
        }
    }

    /// Runs one engine command and returns its trimmed stdout.
    pub async fn exec(&self, args: &[&str], within: Duration) -> Result<String, ContainerError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| self.spawn_error(&e))?;
        match tokio::time::timeout(within, child.wait_with_output()).await {
            Err(_) => Err(ContainerError::Timeout {
                command: self.shown(args),
                within,
            }),
            Ok(Err(e)) => Err(ContainerError::Failed {
                command: self.shown(args),
                stderr: e.to_string(),
            }),
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            }
            Ok(Ok(out)) => Err(ContainerError::Failed {
                command: self.shown(args),
                stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
            }),
        }
    }

    /// [`Docker::exec`] without an async runtime: for the preflight and for `Drop`.
    pub fn exec_blocking(&self, args: &[&str], within: Duration) -> Result<String, ContainerError> {
        let mut child = std::process::Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(&e))?;
        // Readers on their own threads, so a chatty command cannot block on a full pipe.
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        };
        let out = reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + within;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ContainerError::Timeout {
                        command: self.shown(args),
                        within,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    return Err(ContainerError::Failed {
                        command: self.shown(args),
                        stderr: e.to_string(),
                    })
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if status.success() {
            Ok(stdout.trim().to_owned())
        } else {
            Err(ContainerError::Failed {
                command: self.shown(args),
                stderr: one_line(&stderr),
            })
        }
    }

    /// Checks that an engine answers and that it holds `image`, before anything is created.
    /// Blocking and bounded (15 s a command), so `--image` fails fast without an engine.
    pub fn preflight(&self, image: &str) -> Result<ImageInfo, ContainerError> {
        let within = Duration::from_secs(15);
        let engine =
            match self.exec_blocking(&["version", "--format", "{{.Server.Version}}"], within) {
                Ok(v) => v,
                Err(ContainerError::Failed { stderr, .. }) => {
                    let host = std::env::var("DOCKER_HOST")
                        .map(|h| format!(" (DOCKER_HOST={h})"))
                        .unwrap_or_default();
                    return Err(ContainerError::Unavailable(format!("{stderr}{host}")));
                }
                Err(ContainerError::Timeout { command, within }) => {
                    return Err(ContainerError::Unavailable(format!(
                        "`{command}` got no answer within {within:?}"
                    )))
                }
                Err(e) => return Err(e),
            };
        let text = match self.exec_blocking(
            &["image", "inspect", "--format", "{{json .}}", image],
            within,
        ) {
            Ok(t) => t,
            Err(ContainerError::Failed { stderr, .. })
                if stderr.to_ascii_lowercase().contains("no such image") =>
            {
                return Err(ContainerError::NoImage(image.to_owned()))
            }
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            ContainerError::Unexpected(format!("`image inspect {image}` is not JSON: {e}"))
        })?;
        let config = &v["Config"];
        let exposed = config["ExposedPorts"]
            .as_object()
            .map(|ports| {
                ports
                    .keys()
                    .filter_map(|k| k.strip_suffix("/tcp").and_then(|p| p.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        let healthcheck = config["Healthcheck"]["Test"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(Value::as_str)
            .is_some_and(|first| first != "NONE");
        let sets_data_dir = config["Env"].as_array().is_some_and(|env| {
            env.iter()
                .filter_map(Value::as_str)
                .any(|e| e.starts_with("MTOR_DATA_DIR="))
        });
        let worker = config["Labels"][LABEL_WORKER]
            .as_str()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_owned);
        Ok(ImageInfo {
            worker,
            reference: image.to_owned(),
            id: v["Id"].as_str().unwrap_or_default().to_owned(),
            exposed,
            healthcheck,
            user: config["User"].as_str().unwrap_or_default().to_owned(),
            sets_data_dir,
            engine,
        })
    }
}

fn show_nets(nets: &[(String, String)]) -> String {
    if nets.is_empty() {
        return "no network".into();
    }
    nets.iter()
        .map(|(n, ip)| format!("{n} ({ip})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_line(text: &str) -> String {
    let t: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    t.join(" / ")
}

/// The container state as the engine reports it (`docker inspect` `.State`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// `created`, `running`, `paused`, `exited`, `dead`...
    pub status: String,
    /// Main process id on the host (0 when not running).
    pub pid: u64,
    /// Exit code of the last run (137 after SIGKILL).
    pub exit_code: i64,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// `starting`, `healthy`, `unhealthy`; empty without a HEALTHCHECK.
    pub health: String,
}

impl State {
    fn parse(text: &str) -> Result<Self, ContainerError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ContainerError::Unexpected(format!("container state is not JSON: {e}")))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Ok(Self {
            status: s("Status"),
            pid: v["Pid"].as_u64().unwrap_or(0),
            exit_code: v["ExitCode"].as_i64().unwrap_or(0),
            started_at: s("StartedAt"),
            finished_at: s("FinishedAt"),
            health: v["Health"]["Status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// One line for fault proofs.
    pub fn line(&self) -> String {
        let health = if self.health.is_empty() {
            String::new()
        } else {
            format!(", health {}", self.health)
        };
        match self.status.as_str() {
            "running" | "paused" => format!(
                "{}, pid {}, started {}{health}",
                self.status, self.pid, self.started_at
            ),
            _ => format!(
                "{}, exit code {}, finished {}",
                self.status, self.exit_code, self.finished_at
            ),
        }
    }
}

/// The realm container of one run, its private network, and the guarantee that both go away.
#[derive(Debug)]
pub struct RealmContainer {
    docker: Docker,
    /// The container's name (`mtor-cert-<run>-realm`).
    pub name: String,
    /// The run's private network (`mtor-cert-<run>`).
    pub network: String,
    /// The image under test.
    pub image: ImageInfo,
    /// The realm's port on 127.0.0.1 (fixed for the run, so it survives restarts).
    pub host_port: u16,
    /// The realm's port inside the container.
    pub port: u16,
    /// Where the container's output is saved when it is removed.
    pub log: PathBuf,
    /// The enrolment token the realm was given (for worker containers).
    enrol_token: String,
    network_made: AtomicBool,
    container_made: AtomicBool,
    removed: AtomicBool,
    /// Worker containers started on the run's network (removed with the realm).
    workers: Mutex<Vec<String>>,
    /// Worker containers ever started, for unique names.
    started_workers: AtomicUsize,
}

impl RealmContainer {
    fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{LABEL_RUN}={}", self.network),
            "--label".into(),
            format!("{LABEL_PID}={}", std::process::id()),
        ]
    }

    /// The realm container's state.
    pub async fn state(&self) -> Result<State, ContainerError> {
        self.state_of(&self.name).await
    }

    /// The state of one of the run's containers.
    pub async fn state_of(&self, name: &str) -> Result<State, ContainerError> {
        let text = self
            .docker
            .exec(&["inspect", "--format", "{{json .State}}", name], QUICK)
            .await?;
        State::parse(&text)
    }

    /// The networks `name` is attached to, each with its address there.
    pub async fn addresses(&self, name: &str) -> Result<Vec<(String, String)>, ContainerError> {
        let text = self
            .docker
            .exec(
                &[
                    "inspect",
                    "--format",
                    "{{json .NetworkSettings.Networks}}",
                    name,
                ],
                QUICK,
            )
            .await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            ContainerError::Unexpected(format!("container networks are not JSON: {e}"))
        })?;
        Ok(v.as_object()
            .map(|nets| {
                nets.iter()
                    .map(|(net, cfg)| {
                        (
                            net.clone(),
                            cfg["IPAddress"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Starts a worker node from the image on the run's network (the multi-node topology), with
    /// the identity `secret_hex`, as [`LABEL_WORKER`] says. Returns the container's name.
    pub async fn start_worker(&self, secret_hex: &str) -> Result<String, ContainerError> {
        let Some(template) = self.image.worker.clone() else {
            return Err(ContainerError::Unexpected(format!(
                "image {} has no {LABEL_WORKER} label: it does not say how to run a worker",
                self.image.reference
            )));
        };
        let ip = self
            .addresses(&self.name)
            .await?
            .into_iter()
            .find(|(net, _)| *net == self.network)
            .map(|(_, ip)| ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                ContainerError::Unexpected(format!(
                    "the realm container has no address on {}",
                    self.network
                ))
            })?;
        // By address: a FROM-scratch static binary may have no name resolution at all.
        let realm = format!("ws://{ip}:{}", self.port);
        let n = self.started_workers.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("{}-worker-{n}", self.network);
        // Listed before it exists, so no failure below can leave it unremoved.
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        let mut args: Vec<String> = vec![
            "create".into(),
            "--name".into(),
            name.clone(),
            "--network".into(),
            self.network.clone(),
            "--pull".into(),
            "never".into(),
            "--env".into(),
            format!("MTOR_WORKER_KEY={secret_hex}"),
            // The image's HEALTHCHECK probes a realm; a worker node serves no /v1/health.
            "--no-healthcheck".into(),
        ];
        args.extend(self.labels());
        args.push(self.image.id.clone());
        args.extend(template.split_whitespace().map(|a| {
            a.replace("{realm}", &realm)
                .replace("{enrol_token}", &self.enrol_token)
        }));
        let made = self
            .docker
            .exec(&args.iter().map(String::as_str).collect::<Vec<_>>(), QUICK)
            .await;
        if let Err(e @ ContainerError::Failed { .. }) = made {
            // Certainly not created: nothing to remove later.
            self.workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|w| *w != name);
            return Err(e);
        }
        made?;
        self.docker.exec(&["start", &name], QUICK).await?;
        Ok(name)
    }

    /// Fault: freezes `name` (the cgroup freezer: no CPU, its sockets stay open). Returns the
    /// proof that it took effect.
    pub async fn pause(&self, name: &str) -> Result<String, ContainerError> {
        self.docker.exec(&["pause", name], QUICK).await?;
        let state = self.state_of(name).await?;
        if state.status != "paused" {
            return Err(ContainerError::Unexpected(format!(
                "{name} is {} after docker pause",
                state.status
            )));
        }
        Ok(format!("docker pause {name}: now {}", state.line()))
    }

    /// Heals [`RealmContainer::pause`].
    pub async fn unpause(&self, name: &str) -> Result<String, ContainerError> {
        self.docker.exec(&["unpause", name], QUICK).await?;
        let state = self.state_of(name).await?;
        if state.status != "running" {
            return Err(ContainerError::Unexpected(format!(
                "{name} is {} after docker unpause",
                state.status
            )));
        }
        Ok(format!("docker unpause {name}: now {}", state.line()))
    }

    /// Fault: cuts `name` off the run's network (a partition: its packets go nowhere and its
    /// connections see no close). Returns the proof that it took effect.
    pub async fn disconnect(&self, name: &str) -> Result<String, ContainerError> {
        let before = self.addresses(name).await?;
        self.docker
            .exec(
                &["network", "disconnect", "--force", &self.network, name],
                QUICK,
            )
            .await?;
        let after = self.addresses(name).await?;
        if after.iter().any(|(net, _)| *net == self.network) {
            return Err(ContainerError::Unexpected(format!(
                "{name} is still on {} after docker network disconnect",
                self.network
            )));
        }
        Ok(format!(
            "docker network disconnect {} {name}: attached to {} before, to {} now",
            self.network,
            show_nets(&before),
            show_nets(&after)
        ))
    }

    /// Heals [`RealmContainer::disconnect`].
    pub async fn connect(&self, name: &str) -> Result<String, ContainerError> {
        self.docker
            .exec(&["network", "connect", &self.network, name], QUICK)
            .await?;
        let after = self.addresses(name).await?;
        if !after.iter().any(|(net, _)| *net == self.network) {
            return Err(ContainerError::Unexpected(format!(
                "{name} is not on {} after docker network connect",
                self.network
            )));
        }
        Ok(format!(
            "docker network connect {} {name}: attached to {} now",
            self.network,
            show_nets(&after)
        ))
    }

    /// Saves a worker container's output beside the realm's and removes it.
    pub async fn remove_worker(&self, name: &str) -> String {
        let short = name
            .strip_prefix(&format!("{}-", self.network))
            .unwrap_or(name);
        let log = self.log.with_file_name(format!("{short}.log"));
        self.save_log(name, &log).await;
        match self
            .docker
            .exec(&["rm", "--force", "--volumes", name], QUICK)
            .await
        {
            Ok(_) => {
                self.workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|w| w != name);
                format!("container {name} removed (output in {})", log.display())
            }
            Err(e) => format!("container {name} NOT removed: {e}"),
        }
    }

    async fn save_log(&self, name: &str, path: &Path) {
        let Ok(file) = std::fs::File::create(path) else {
            return;
        };
        let Ok(err) = file.try_clone() else {
            return;
        };
        let mut cmd = tokio::process::Command::new(&self.docker.program);
        cmd.args(["logs", "--timestamps", name])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true);
        if let Ok(mut child) = cmd.spawn() {
            let _ = tokio::time::timeout(QUICK, child.wait()).await;
        }
    }

    /// Waits until the container runs, its `/v1/health` answers 200 on the published port and,
    /// when the image has a HEALTHCHECK, the engine calls it healthy.
    pub async fn wait_ready(&self, within: Duration) -> Result<State, ContainerError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::from("no answer yet");
        loop {
            let state = self.state().await?;
            if matches!(state.status.as_str(), "exited" | "dead") {
                return Err(ContainerError::NotReady(format!(
                    "container {} stopped before it was ready ({}); its output: {}",
                    self.name,
                    state.line(),
                    self.tail_log().await
                )));
            }
            if state.status == "running" {
                match health_status(self.host_port).await {
                    Ok(200) if !self.image.healthcheck || state.health == "healthy" => {
                        return Ok(state)
                    }
                    Ok(code) => {
                        last = format!(
                            "GET /v1/health answered {code}, engine health `{}`",
                            state.health
                        )
                    }
                    Err(e) => last = format!("GET /v1/health: {e}"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ContainerError::NotReady(format!(
                    "container {} was not ready within {within:?} ({last}); its output: {}",
                    self.name,
                    self.tail_log().await
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn tail_log(&self) -> String {
        self.docker
            .exec(&["logs", "--tail", "5", &self.name], QUICK)
            .await
            .map(|t| one_line(&t))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Fault: SIGKILL the realm's container, then wait until the engine reports it stopped.
    /// Returns the proof (state, exit code) that it took effect.
    pub async fn kill(&self, within: Duration) -> Result<String, ContainerError> {
        let before = self.state().await?;
        self.docker
            .exec(&["kill", "--signal", "KILL", &self.name], QUICK)
            .await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.state().await?;
            if matches!(now.status.as_str(), "exited" | "dead") {
                return Ok(format!(
                    "docker kill --signal KILL {}: was {} ; now {}",
                    self.name,
                    before.line(),
                    now.line()
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ContainerError::Unexpected(format!(
                    "container {} still {} {within:?} after SIGKILL",
                    self.name, now.status
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Heals [`RealmContainer::kill`]: starts the same container (same data, same port) and
    /// waits until it is ready. Returns the proof.
    pub async fn restart(&self, within: Duration) -> Result<String, ContainerError> {
        self.docker.exec(&["start", &self.name], QUICK).await?;
        let state = self.wait_ready(within).await?;
        Ok(format!(
            "docker start {}: {} ; GET /v1/health answered 200 on 127.0.0.1:{}",
            self.name,
            state.line(),
            self.host_port
        ))
    }

    /// Saves the container's output, then removes the container (with its anonymous volumes)
    /// and the network. Idempotent; returns what it did.
    pub async fn remove(&self) -> String {
        if self.removed.swap(true, Ordering::SeqCst) {
            return "already removed".into();
        }
        let mut done = Vec::new();
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for w in workers {
            done.push(self.remove_worker(&w).await);
        }
        if self.container_made.load(Ordering::SeqCst) {
            self.save_log(&self.name, &self.log).await;
            done.push(
                match self
                    .docker
                    .exec(&["rm", "--force", "--volumes", &self.name], QUICK)
                    .await
                {
                    Ok(_) => format!(
                        "container {} removed (output in {})",
                        self.name,
                        self.log.display()
                    ),
                    Err(e) => format!("container {} NOT removed: {e}", self.name),
                },
            );
        }
        if self.network_made.load(Ordering::SeqCst) {
            done.push(
                match self
                    .docker
                    .exec(&["network", "rm", &self.network], QUICK)
                    .await
                {
                    Ok(_) => format!("network {} removed", self.network),
                    Err(e) => format!("network {} NOT removed: {e}", self.network),
                },
            );
        }
        done.join("; ")
    }

    fn remove_blocking(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for w in workers {
            if let Err(e) = self
                .docker
                .exec_blocking(&["rm", "--force", "--volumes", &w], QUICK)
            {
                tracing::error!(container = %w, error = %e, "could not remove a worker container");
            }
        }
        if self.container_made.load(Ordering::SeqCst) {
            if let Err(e) = self
                .docker
                .exec_blocking(&["rm", "--force", "--volumes", &self.name], QUICK)
            {
                tracing::error!(container = %self.name, error = %e, "could not remove the realm container");
            }
        }
        if self.network_made.load(Ordering::SeqCst) {
            if let Err(e) = self
                .docker
                .exec_blocking(&["network", "rm", &self.network], QUICK)
            {
                tracing::error!(network = %self.network, error = %e, "could not remove the run's network");
            }
        }
    }
}

impl Drop for RealmContainer {
    fn drop(&mut self) {
        // The guarantee: whatever ended the run (error, panic, interrupt), nothing is left behind.
        self.remove_blocking();
    }
}

/// One GET of `/v1/health` on 127.0.0.1:`port`, returning the status code (bounded: 2 s).
async fn health_status(port: u16) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!(
                "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let mut got = 0;
        // Only the status line is needed.
        while got < head.len() && !head[..got].contains(&b'\n') {
            let n = s.read(&mut head[got..]).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let line = String::from_utf8_lossy(&head[..got]).into_owned();
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status line (got {:?})", line.trim()))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `image` as the realm under test: a private network for the run, the container on it
/// with fresh credentials in the spec's `MTOR_*` variables (section 17), the realm's port
/// published on 127.0.0.1 only, and a wait for health within `ready`.
pub async fn start_realm(
    docker: &Docker,
    image: ImageInfo,
    manifest: &Manifest,
    work_dir: &Path,
    ready: Duration,
) -> Result<Target, TargetError> {
    let err = |e: ContainerError| TargetError::Spawn(e.to_string());
    let work_dir = std::path::absolute(work_dir)
        .map_err(|e| TargetError::Io(work_dir.display().to_string(), e))?;
    let mut run = [0u8; 4];
    fill_random(&mut run);
    let base = format!("mtor-cert-{}", hex::encode(run));
    let port = manifest
        .image
        .as_ref()
        .and_then(|i| i.port)
        .or_else(|| (image.exposed.len() == 1).then(|| image.exposed[0]))
        .unwrap_or(DEFAULT_PORT);
    let host_port = free_port().map_err(|e| TargetError::Io("pick a free port".into(), e))?;
    let mut guard = RealmContainer {
        docker: docker.clone(),
        name: format!("{base}-realm"),
        network: base,
        image,
        host_port,
        port,
        log: work_dir.join("realm.log"),
        enrol_token: String::new(),
        network_made: AtomicBool::new(false),
        container_made: AtomicBool::new(false),
        removed: AtomicBool::new(false),
        workers: Mutex::new(Vec::new()),
        started_workers: AtomicUsize::new(0),
    };
    // From here on, `guard` removes whatever was made if a later step fails.
    let mut args: Vec<String> = vec!["network".into(), "create".into()];
    args.extend(guard.labels());
    args.push(guard.network.clone());
    let made = docker
        .exec(&args.iter().map(String::as_str).collect::<Vec<_>>(), QUICK)
        .await;
    // A command that timed out may still have taken effect: remove it then too.
    guard.network_made.store(
        !matches!(made, Err(ContainerError::Failed { .. })),
        Ordering::SeqCst,
    );
    made.map_err(err)?;

    let sysop = Identity::generate().map_err(|e| TargetError::Spawn(e.to_string()))?;
    let auditor = Identity::generate().map_err(|e| TargetError::Spawn(e.to_string()))?;
    let mut token_bytes = [0u8; 24];
    fill_random(&mut token_bytes);
    let enrol_token = format!("cert-{}", hex::encode(token_bytes));
    guard.enrol_token = enrol_token.clone();
    let mut env = vec![
        format!("MTOR_LISTEN=0.0.0.0:{port}"),
        format!("MTOR_ENROL_TOKEN={enrol_token}"),
        format!("MTOR_SYSOP_KEY={}", sysop.public_hex()),
        format!("MTOR_AUDITOR_KEY={}", auditor.public_hex()),
        format!("MTOR_LEASE_MS={SPAWN_LEASE_MS}"),
    ];
    // The image's own data directory wins (it owns it); otherwise the spec's variable is required.
    if !guard.image.sets_data_dir {
        env.push("MTOR_DATA_DIR=/data".into());
    }
    let mut args: Vec<String> = vec![
        "create".into(),
        "--name".into(),
        guard.name.clone(),
        "--network".into(),
        guard.network.clone(),
        "--network-alias".into(),
        "realm".into(),
        "--publish".into(),
        format!("127.0.0.1:{host_port}:{port}"),
        "--pull".into(),
        "never".into(),
    ];
    args.extend(guard.labels());
    if guard.image.healthcheck {
        // The image's own check, probed often, so readiness (and recovery) is seen quickly.
        args.extend(["--health-interval".into(), "1s".into()]);
    }
    for e in env {
        args.extend(["--env".into(), e]);
    }
    args.push(guard.image.id.clone());
    let made = docker
        .exec(&args.iter().map(String::as_str).collect::<Vec<_>>(), QUICK)
        .await;
    guard.container_made.store(
        !matches!(made, Err(ContainerError::Failed { .. })),
        Ordering::SeqCst,
    );
    made.map_err(err)?;
    docker
        .exec(&["start", &guard.name], QUICK)
        .await
        .map_err(err)?;
    guard.wait_ready(ready).await.map_err(err)?;
    let http_base = format!("http://127.0.0.1:{host_port}");
    let ws_base = format!("ws://127.0.0.1:{host_port}");
    Ok(Target {
        description: format!(
            "image {} ({}), container {} on network {}, port {} published on 127.0.0.1:{host_port}, engine {}",
            guard.image.reference,
            guard.image.id,
            guard.name,
            guard.network,
            port,
            guard.image.engine
        ),
        http_base,
        ws_base,
        kind: "image",
        enrol_token: Some(enrol_token),
        sysop: Some(sysop),
        funded_wallet: None,
        auditor: Some(auditor),
        process: None,
        container: Some(guard),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_prove_what_happened() {
        let killed = State::parse(
            r#"{"Status":"exited","Running":false,"Pid":0,"ExitCode":137,"StartedAt":"a","FinishedAt":"b"}"#,
        )
        .expect("parses");
        assert_eq!(killed.line(), "exited, exit code 137, finished b");
        let up = State::parse(
            r#"{"Status":"running","Pid":42,"ExitCode":0,"StartedAt":"a","FinishedAt":"b","Health":{"Status":"healthy"}}"#,
        )
        .expect("parses");
        assert_eq!(up.line(), "running, pid 42, started a, health healthy");
        assert!(State::parse("nope").is_err());
    }

    #[test]
    fn a_missing_cli_is_unavailable_not_a_crash() {
        let docker = Docker {
            program: "/nonexistent/docker-cli".into(),
        };
        let e = docker.preflight("x:1").expect_err("no cli");
        assert!(matches!(e, ContainerError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("MTOR_DOCKER"), "{e}");
    }
}
