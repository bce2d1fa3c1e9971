//! The intents this realm serves: their prices and the worker-side code that runs them.
//!
//! - `cert.probe`: deterministic, so the harness can check it: digest = hex SHA-256 of
//!   `"cert.probe\n" + nonce`, optional `work_ms` sleep, optional forced failure.
//! - `analyze-signal`: averaged power spectrum of complex float samples (CPU path, rustfft),
//!   noise floor = median bin power, peaks = local maxima at least `threshold_db` above it.

use std::time::Duration;

use base64::Engine;
use rustfft::num_complex::Complex64;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

/// The dispatch lane of an intent: its name, or for a pinned probe `cert.probe@<worker_key>`.
/// The queue matches lanes against the lanes a worker serves ([`worker_lanes`]), so a pinned
/// probe reaches only workers of its key without the queue knowing about pins.
pub fn lane(name: &str, input: &Value) -> String {
    match pinned_key(name, input) {
        Some(key) => format!("{name}@{key}"),
        None => name.to_owned(),
    }
}

/// The lanes a worker with `key` serving `intents` takes from: its intents, plus the lane of
/// probes pinned to its key when it serves `cert.probe`.
pub fn worker_lanes<S: AsRef<str>>(intents: impl IntoIterator<Item = S>, key: &str) -> Vec<String> {
    let mut lanes: Vec<String> = intents.into_iter().map(|s| s.as_ref().to_owned()).collect();
    if lanes.iter().any(|n| n == "cert.probe") {
        lanes.push(format!("cert.probe@{key}"));
    }
    lanes
}

/// Semantic input checks beyond the schema (admission check 2a, `BAD_INPUT`): for
/// `analyze-signal`, the samples must decode to whole finite complex values, at least `fft_len`.
pub fn check_input(name: &str, input: &Value) -> Result<(), String> {
    match name {
        "analyze-signal" => signal_params(input).map(|_| ()).map_err(|e| e.message),
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

/// Runs one task on this worker.
pub async fn run(intent: &str, input: &Value, worker_id: &str) -> Result<TaskOutput, TaskError> {
    match intent {
        "cert.probe" => cert_probe(input, worker_id).await,
        "analyze-signal" => {
            let input = input.clone();
            tokio::task::spawn_blocking(move || analyze_signal(&input))
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

/// The parameters of one `analyze-signal` run, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalParams {
    /// Sample rate in Hz.
    pub sample_rate_hz: f64,
    /// FFT length (power of two, 16..65536).
    pub fft_len: usize,
    /// Hann (true) or rectangular window.
    pub hann: bool,
    /// Most spectra to average.
    pub averages: usize,
    /// Most peaks to report.
    pub peaks: usize,
    /// Peak threshold above the noise floor, dB.
    pub threshold_db: f64,
}

fn signal_params(input: &Value) -> Result<(SignalParams, Vec<Complex64>), TaskError> {
    let num = |k: &str| input.get(k).and_then(Value::as_f64);
    let int = |k: &str| input.get(k).and_then(Value::as_u64);
    let sample_rate_hz = num("sample_rate_hz")
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| TaskError::bad_input("sample_rate_hz must be a positive number"))?;
    if input.get("encoding").and_then(Value::as_str) != Some("cf32le-base64") {
        return Err(TaskError::bad_input("encoding must be cf32le-base64"));
    }
    let fft_len = int("fft_len")
        .filter(|n| (16..=65_536).contains(n) && n.is_power_of_two())
        .ok_or_else(|| TaskError::bad_input("fft_len must be a power of two in 16..65536"))?
        as usize;
    let hann = match input.get("window").and_then(Value::as_str) {
        Some("hann") => true,
        Some("rect") => false,
        _ => return Err(TaskError::bad_input("window must be hann or rect")),
    };
    let averages = int("averages")
        .filter(|n| (1..=4096).contains(n))
        .ok_or_else(|| TaskError::bad_input("averages must be in 1..4096"))?
        as usize;
    let peaks = int("peaks")
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| TaskError::bad_input("peaks must be in 1..64"))? as usize;
    let threshold_db = num("threshold_db").unwrap_or(6.0);
    let text = input
        .get("samples")
        .and_then(Value::as_str)
        .ok_or_else(|| TaskError::bad_input("samples must be a base64 string"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| TaskError::bad_input(format!("samples are not base64: {e}")))?;
    if bytes.len() % 8 != 0 {
        return Err(TaskError::bad_input(
            "samples must be whole I,Q pairs of little-endian f32 (8 bytes each)",
        ));
    }
    // Samples arrive as binary32 but are analysed in double precision (SIG-7).
    let samples: Vec<Complex64> = bytes
        .chunks_exact(8)
        .map(|c| {
            let re = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let im = f32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            Complex64::new(f64::from(re), f64::from(im))
        })
        .collect();
    if samples
        .iter()
        .any(|s| !s.re.is_finite() || !s.im.is_finite())
    {
        return Err(TaskError::bad_input("samples hold NaN or infinite values"));
    }
    if samples.len() < fft_len {
        return Err(TaskError::bad_input(format!(
            "{} samples are fewer than fft_len {fft_len}",
            samples.len()
        )));
    }
    Ok((
        SignalParams {
            sample_rate_hz,
            fft_len,
            hann,
            averages,
            peaks,
            threshold_db,
        },
        samples,
    ))
}

/// Runs `analyze-signal` on the CPU, following section 15.2 of the protocol exactly.
pub fn analyze_signal(input: &Value) -> Result<TaskOutput, TaskError> {
    let (p, samples) = signal_params(input)?;
    let n = p.fft_len;
    // Periodic Hann: w[n] = 0.5 - 0.5 cos(2 pi n / L).
    let window: Vec<f64> = (0..n)
        .map(|i| {
            if p.hann {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()
            } else {
                1.0
            }
        })
        .collect();
    // Normalised by (sum w)^2 so that a unit tone centred on a bin reads 0 dB.
    let gain: f64 = window.iter().sum();
    let fft = rustfft::FftPlanner::<f64>::new().plan_fft_forward(n);
    let segments = (samples.len() / n).min(p.averages);
    let mut power = vec![0f64; n];
    let mut buf = vec![Complex64::new(0.0, 0.0); n];
    for seg in samples.chunks_exact(n).take(segments) {
        for ((b, s), w) in buf.iter_mut().zip(seg).zip(&window) {
            *b = s * *w;
        }
        fft.process(&mut buf);
        for (acc, x) in power.iter_mut().zip(&buf) {
            *acc += x.norm_sqr();
        }
    }
    let scale = 1.0 / (segments.max(1) as f64 * gain * gain);
    let pw: Vec<f64> = power.iter().map(|v| v * scale).collect();
    let db = |v: f64| 10.0 * v.max(1e-30).log10();
    let mut sorted = pw.clone();
    sorted.sort_by(f64::total_cmp);
    // L is even (a power of two >= 16): the median is the mean of the two middle values.
    let median = (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
    let noise_floor_db = db(median);
    let bin_hz = p.sample_rate_hz / n as f64;
    let mut peaks: Vec<(usize, f64)> = (0..n)
        .filter(|&k| {
            let prev = pw[(k + n - 1) % n];
            let next = pw[(k + 1) % n];
            pw[k] > prev && pw[k] >= next && db(pw[k]) - noise_floor_db >= p.threshold_db
        })
        .map(|k| (k, db(pw[k])))
        .collect();
    // Strongest first; the sort is stable, so equal powers keep the smaller bin first.
    peaks.sort_by(|a, b| b.1.total_cmp(&a.1));
    peaks.truncate(p.peaks);
    let peaks: Vec<Value> = peaks
        .into_iter()
        .map(|(k, pdb)| {
            // Complex input: the upper half of the bins are negative frequencies.
            let signed = if k < n / 2 {
                k as f64
            } else {
                k as f64 - n as f64
            };
            json!({
                "bin": k,
                "freq_hz": signed * bin_hz,
                "power_db": pdb,
                "snr_db": pdb - noise_floor_db,
            })
        })
        .collect();
    Ok(TaskOutput {
        output: json!({
            "fft_len": n,
            "bin_hz": bin_hz,
            "spectra_averaged": segments,
            "noise_floor_db": noise_floor_db,
            "peaks": peaks,
            "backend": "cpu",
        }),
        units: signal_units(samples.len() as u64),
    })
}

#[cfg(test)]
mod tests {
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
        let lanes = worker_lanes(["cert.probe", "analyze-signal"], key);
        assert!(lanes.contains(&lane("cert.probe", &pinned)));
        assert!(!worker_lanes(["cert.probe"], "other").contains(&lane("cert.probe", &pinned)));
        assert_eq!(
            worker_lanes(["analyze-signal"], key),
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
        let out = match analyze_signal(&input) {
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
        let out = analyze_signal(&input).map_err(|e| e.to_string());
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
