//! The intents this realm serves: their prices and the worker-side code that runs them.
//!
//! - `cert.probe`: deterministic, so the harness can check it: digest = hex SHA-256 of
//!   `"cert.probe\n" + nonce`, optional `work_ms` sleep, optional forced failure.
//! - `analyze-signal`: averaged power spectrum of complex float samples, noise floor = median
//!   bin power, peaks = local maxima at least `threshold_db` above it; the DSP lives in
//!   [`crate::signal`] (CPU path on rustfft, CUDA path on cudarc).

use std::time::Duration;

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::signal::{self, BackendRequest};

/// An intent the realm serves, with its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntentSpec {
    /// The intent name.
    pub name: &'static str,
    /// Price of one work unit in micro-tokens.
    pub unit_price: u64,
    /// The least a submit must offer (`max_cost`) to be admitted.
    pub min_cost: u64,
    /// One line for the manifest.
    pub description: &'static str,
}

/// Every intent this realm knows.
pub const CATALOG: &[IntentSpec] = &[
    IntentSpec {
        name: "cert.probe",
        unit_price: 1_000,
        min_cost: 1_000,
        description: "Certification probe: echoes the nonce with its SHA-256 digest",
    },
    IntentSpec {
        name: "analyze-signal",
        unit_price: 10,
        min_cost: 10,
        description: "FFT power spectrum, noise floor and peaks of complex f32 samples",
    },
];

/// The catalogue entry of `name`.
pub fn spec(name: &str) -> Option<&'static IntentSpec> {
    CATALOG.iter().find(|s| s.name == name)
}

/// The cost the realm expects for this input (units × unit price), used at admission to refuse
/// a `max_cost` that could never pay (COST_TOO_LOW).
pub fn estimated_cost(name: &str, input: &Value) -> Option<u64> {
    let spec = spec(name)?;
    let units = match name {
        "analyze-signal" => {
            let len = input
                .get("samples")
                .and_then(Value::as_str)
                .map_or(0, str::len) as u64;
            // Decoded bytes of padded base64, then 8 bytes (two f32) per complex sample.
            let pad = input
                .get("samples")
                .and_then(Value::as_str)
                .map_or(0, |s| s.bytes().rev().take_while(|b| *b == b'=').count())
                as u64;
            let bytes = (len / 4 * 3).saturating_sub(pad);
            signal_units(bytes / 8)
        }
        _ => 1,
    };
    Some(units.saturating_mul(spec.unit_price).max(spec.min_cost))
}

/// The worker key a `cert.probe` input pins its dispatch to (PRB-6), if any.
pub fn pinned_key<'a>(name: &str, input: &'a Value) -> Option<&'a str> {
    if crate::defect::on(crate::defect::Defect::PinIgnored) {
        return None;
    }
    (name == "cert.probe")
        .then(|| input.get("worker_key").and_then(Value::as_str))
        .flatten()
}

/// The lane of `analyze-signal` inputs that ask for `backend: "cuda"` (SIG-10).
pub const GPU_SIGNAL_LANE: &str = "analyze-signal@cuda";

/// The dispatch lane of an intent: its name; for a pinned probe `cert.probe@<worker_key>`; for
/// an analysis that asks for a GPU [`GPU_SIGNAL_LANE`]. The queue matches lanes against the
/// lanes a worker serves ([`worker_lanes`]), so such work reaches only the workers that can take
/// it without the queue knowing about pins or GPUs.
pub fn lane(name: &str, input: &Value) -> String {
    if let Some(key) = pinned_key(name, input) {
        return format!("{name}@{key}");
    }
    if name == "analyze-signal" && signal::requested_backend(input) == BackendRequest::Cuda {
        return GPU_SIGNAL_LANE.to_owned();
    }
    name.to_owned()
}

/// Whether enrolment `capabilities` declare a GPU (`{"gpu": {...}}`).
pub fn has_gpu(capabilities: &Value) -> bool {
    capabilities.get("gpu").is_some_and(Value::is_object)
}

/// The lanes a worker with `key` and `capabilities` serving `intents` takes from: its intents,
/// plus the lane of probes pinned to its key when it serves `cert.probe`, plus
/// [`GPU_SIGNAL_LANE`] when it serves `analyze-signal` and declared a GPU.
pub fn worker_lanes<S: AsRef<str>>(
    intents: impl IntoIterator<Item = S>,
    key: &str,
    capabilities: &Value,
) -> Vec<String> {
    let mut lanes: Vec<String> = intents.into_iter().map(|s| s.as_ref().to_owned()).collect();
    if lanes.iter().any(|n| n == "cert.probe") {
        lanes.push(format!("cert.probe@{key}"));
    }
    if has_gpu(capabilities) && lanes.iter().any(|n| n == "analyze-signal") {
        lanes.push(GPU_SIGNAL_LANE.to_owned());
    }
    lanes
}

/// Semantic input checks beyond the schema (admission check 2a, `BAD_INPUT`): for
/// `analyze-signal`, the samples must decode to whole finite complex values, at least `fft_len`.
pub fn check_input(name: &str, input: &Value) -> Result<(), String> {
    match name {
        "analyze-signal" => signal::decode(input).map(|_| ()).map_err(|e| e.0),
        _ => Ok(()),
    }
}

fn signal_units(samples: u64) -> u64 {
    samples.div_ceil(1024).max(1)
}

/// Why a task failed on the worker, as reported in `task.failure`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskError {
    /// One of `WORKER_ERROR`, `BAD_INPUT`, `UNSUPPORTED`, `OUT_OF_MEMORY`, `TIMEOUT`.
    pub code: &'static str,
    /// Explanation.
    pub message: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

impl TaskError {
    fn bad_input(message: impl Into<String>) -> Self {
        Self {
            code: "BAD_INPUT",
            message: message.into(),
            retryable: false,
        }
    }
}

/// A finished task: its output and the work units it used.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    /// The intent's output object.
    pub output: Value,
    /// Work units used, for pricing.
    pub units: u64,
}

/// Runs one task on this worker; `gpu` is the worker's GPU, if it uses one.
pub async fn run(
    intent: &str,
    input: &Value,
    worker_id: &str,
    gpu: Option<Arc<signal::gpu::GpuEngine>>,
) -> Result<TaskOutput, TaskError> {
    match intent {
        "cert.probe" => cert_probe(input, worker_id).await,
        "analyze-signal" => {
            let input = input.clone();
            tokio::task::spawn_blocking(move || analyze_signal(&input, gpu.as_deref()))
                .await
                .map_err(|e| TaskError {
                    code: "WORKER_ERROR",
                    message: format!("analysis thread failed: {e}"),
                    retryable: true,
                })?
        }
        other => Err(TaskError {
            code: "UNSUPPORTED",
            message: format!("this worker does not run {other}"),
            retryable: false,
        }),
    }
}

/// The `cert.probe` digest: lowercase hex SHA-256 of `"cert.probe\n" + nonce`.
pub fn probe_digest(nonce: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"cert.probe\n");
    h.update(nonce.as_bytes());
    hex::encode(h.finalize())
}

async fn cert_probe(input: &Value, worker_id: &str) -> Result<TaskOutput, TaskError> {
    let nonce = input
        .get("nonce")
        .and_then(Value::as_str)
        .filter(|n| (1..=128).contains(&n.chars().count()))
        .ok_or_else(|| TaskError::bad_input("nonce must be a string of 1..128 chars"))?;
    let work_ms = input
        .get("work_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(5_000);
    if work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
    }
    if input.get("fail").and_then(Value::as_bool).unwrap_or(false) {
        return Err(TaskError {
            code: "WORKER_ERROR",
            message: "cert.probe asked to fail".to_owned(),
            retryable: false,
        });
    }
    Ok(TaskOutput {
        output: json!({ "nonce": nonce, "digest": probe_digest(nonce), "worker_id": worker_id }),
        units: 1,
    })
}

/// Runs `analyze-signal`: decodes and checks the input, then computes on `gpu` when given and
/// the input allows it, else on the CPU (section 15.2).
///
/// An input asking for `backend: "cuda"` never silently runs on the CPU (SIG-8): without a GPU,
/// or when the GPU fails, it fails with a retryable `WORKER_ERROR` so another GPU worker may
/// take it. An input asking for `"any"` falls back to the CPU when the GPU fails.
pub fn analyze_signal(
    input: &Value,
    gpu: Option<&signal::gpu::GpuEngine>,
) -> Result<TaskOutput, TaskError> {
    let (p, samples) = signal::decode(input).map_err(|e| TaskError::bad_input(e.0))?;
    // The drift search runs on the CPU (decode refuses it with backend cuda), so with a drift
    // search even a GPU worker computes on the CPU and says so.
    let gpu = gpu.filter(|_| p.drift_max_hz_per_s.is_none());
    let analysis = match (p.backend, gpu) {
        (BackendRequest::Cpu, _) | (BackendRequest::Any, None) => {
            signal::cpu::analyze(&samples, &p)
        }
        (BackendRequest::Any, Some(engine)) => {
            signal::gpu::analyze_with(Some(engine), &samples, &p)
        }
        (BackendRequest::Cuda, Some(engine)) => {
            engine.analyze(&samples, &p).map_err(|e| TaskError {
                code: "WORKER_ERROR",
                message: format!("GPU analysis failed: {e}"),
                retryable: true,
            })?
        }
        (BackendRequest::Cuda, None) => {
            return Err(TaskError {
                code: "WORKER_ERROR",
                message: "this worker has no usable GPU for backend cuda".to_owned(),
                retryable: true,
            })
        }
    };
    Ok(TaskOutput {
        output: analysis.to_json(),
        units: signal_units(samples.len() as u64),
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    #[test]
    fn probe_digest_matches_definition() {
        // sha256("cert.probe\nabc"), computed independently with coreutils sha256sum.
        assert_eq!(
            probe_digest("abc"),
            "b4d7e3be33038e0efdf8194f1db285d3486d203617769510c79bc0925dbacbe4"
        );
    }

    #[test]
    fn pinned_probes_get_their_own_lane() {
        let key = "d854bbf4fbe483d6d1435553d322637496bea629c45345fe32a6d4972e941875";
        let pinned = json!({"nonce": "n", "worker_key": key});
        assert_eq!(lane("cert.probe", &json!({"nonce": "n"})), "cert.probe");
        assert_eq!(lane("cert.probe", &pinned), format!("cert.probe@{key}"));
        // Only cert.probe knows pins.
        assert_eq!(lane("analyze-signal", &pinned), "analyze-signal");
        let none = Value::Null;
        let lanes = worker_lanes(["cert.probe", "analyze-signal"], key, &none);
        assert!(lanes.contains(&lane("cert.probe", &pinned)));
        assert!(
            !worker_lanes(["cert.probe"], "other", &none).contains(&lane("cert.probe", &pinned))
        );
        assert_eq!(
            worker_lanes(["analyze-signal"], key, &none),
            vec!["analyze-signal"]
        );
    }

    #[test]
    fn worked_example_of_the_spec() {
        let input = json!({
            "sample_rate_hz": 48000, "encoding": "cf32le-base64",
            "samples": "iLl8P3t70TwUIDI/ifwwP713Pr0NRX0/a8kmv8tyOj9bunK/r+ZLPF73L7+spTK/1JqqvYMNdb9GgDs/bKIuv71Zaj/7krK93KEpP8oGLz+rOHo8jml/P9JZLr96zCw/cQx8vxhyoTxdez2/8ggfv7n84zynrXC/PhQtPzJ8Pr+hmHs/V1yuuyUcPT//Mjg/kDy3vGTAcz/Srju/qqVEP70rhb+hgUg8VY8vv4oWSL891x47s0dvv0g8Gz/AIjm/NKR+P/pfJ73MYjs/3zg0Pxj7lb1YTIU/rHMsv0kgQT9zj22/AGCUPB1+M78QpkW/5hX8PE7qg7+JOS8/aDVFvw==",
            "fft_len": 16, "window": "hann", "averages": 2, "peaks": 4, "threshold_db": 6
        });
        let out = match analyze_signal(&input, None) {
            Ok(o) => o.output,
            Err(e) => panic!("{e}"),
        };
        let close = |v: &Value, want: f64| (v.as_f64().unwrap_or(f64::NAN) - want).abs() < 0.01;
        assert_eq!(out["spectra_averaged"], json!(2));
        assert_eq!(out["bin_hz"], json!(3000.0));
        assert!(close(&out["noise_floor_db"], -33.72), "{out}");
        assert_eq!(out["peaks"].as_array().map(Vec::len), Some(1), "{out}");
        assert_eq!(out["peaks"][0]["bin"], json!(2));
        assert_eq!(out["peaks"][0]["freq_hz"], json!(6000.0));
        assert!(close(&out["peaks"][0]["power_db"], -0.16), "{out}");
        assert!(close(&out["peaks"][0]["snr_db"], 33.56), "{out}");
    }

    #[test]
    fn tone_is_found_at_its_bin() {
        let n = 256usize;
        let rate = 25_600.0f64; // 100 Hz per bin
        let tone_bin = 20.0f64;
        let mut bytes = Vec::new();
        for i in 0..(n * 4) {
            let ph = 2.0 * std::f64::consts::PI * tone_bin * i as f64 / n as f64;
            // A small deterministic dither so the noise floor is not -300 dB.
            let d = ((i * 7919) % 101) as f64 / 101.0 * 1e-3;
            bytes.extend_from_slice(&((ph.cos() + d) as f32).to_le_bytes());
            bytes.extend_from_slice(&((ph.sin() - d) as f32).to_le_bytes());
        }
        let input = json!({
            "sample_rate_hz": rate, "encoding": "cf32le-base64",
            "samples": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "fft_len": n, "window": "hann", "averages": 8, "peaks": 3
        });
        let out = analyze_signal(&input, None).map_err(|e| e.to_string());
        let out = out.as_ref().map(|o| &o.output);
        let Ok(out) = out else { panic!("{out:?}") };
        assert_eq!(out["spectra_averaged"], json!(4));
        assert_eq!(out["peaks"][0]["bin"], json!(20));
        assert_eq!(out["peaks"][0]["freq_hz"], json!(2000.0));
        assert!(out["peaks"][0]["power_db"].as_f64().unwrap_or(-99.0) > -1.0);
        // Fewer samples than fft_len, or a ragged byte count, are bad input.
        let short = json!({"sample_rate_hz": 1.0, "encoding": "cf32le-base64", "samples": "AAAAAAAAAAA=",
                           "fft_len": 16, "window": "rect", "averages": 1, "peaks": 1});
        assert!(check_input("analyze-signal", &short).is_err());
        assert_eq!(estimated_cost("analyze-signal", &input), Some(10));
    }
}
