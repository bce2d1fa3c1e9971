//! Signal analysis for the `analyze-signal` intent (protocol section 15.2).
//!
//! - this module: the checked parameters, decoding of the samples, and the summary (noise
//!   floor, peaks) that both paths share, so the CPU and the GPU differ only in how they compute
//!   the averaged power spectrum;
//! - [`cpu`]: the CPU path (rustfft, double precision, threads over batches of segments) and a
//!   straightforward single-threaded reference it is tested against;
//! - [`gpu`]: the CUDA path (cudarc, dynamically loaded: NVRTC kernels and cuFFT), which falls
//!   back to the CPU when no usable GPU is found;
//! - [`synth`]: a synthetic signal generator (tones at known frequency and SNR in Gaussian noise,
//!   optional drift) for tests and benchmarks.

pub mod cpu;
pub mod drift;
pub mod gpu;
pub mod synth;

use base64::Engine;
use serde_json::{json, Value};

pub use rustfft::num_complex::{Complex32, Complex64};

/// Agreement of two conforming computations of one input (section 15.2 item 9, SIG-9): the noise floor and every
/// peak's power agree within this many dB.
pub const AGREEMENT_DB: f64 = 0.05;

/// Why an `analyze-signal` input cannot be analysed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The window function applied to each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Periodic Hann: w[n] = 0.5 − 0.5 cos(2πn / L).
    Hann,
    /// Rectangular: w[n] = 1.
    Rect,
}

impl Window {
    /// The `len` coefficients of the window.
    pub fn coefficients(self, len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| match self {
                Self::Hann => {
                    0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / len as f64).cos()
                }
                Self::Rect => 1.0,
            })
            .collect()
    }
}

/// Where a client asks its analysis to be computed (`input.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendRequest {
    /// Wherever the worker prefers (the default).
    Any,
    /// On a CPU.
    Cpu,
    /// On a CUDA device: dispatched only to workers that reported a GPU (SIG-10).
    Cuda,
}

/// Where an analysis was computed (`output.backend`, SIG-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A CPU.
    Cpu,
    /// A CUDA device.
    Cuda,
}

impl Backend {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The parameters of one `analyze-signal` run, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalParams {
    /// Sample rate in Hz.
    pub sample_rate_hz: f64,
    /// FFT length L (a power of two, 16..65536).
    pub fft_len: usize,
    /// Window function.
    pub window: Window,
    /// Most spectra to average.
    pub averages: usize,
    /// Most peaks to report.
    pub peaks: usize,
    /// Least SNR of a reported peak, dB.
    pub threshold_db: f64,
    /// Where the client asks for it to run.
    pub backend: BackendRequest,
    /// Search each peak's drift rate up to this many Hz/s (section 15.2 item 11), if asked.
    pub drift_max_hz_per_s: Option<f64>,
}

impl SignalParams {
    /// M: the number of segments averaged for `samples` complex samples (section 15.2 item 2).
    pub fn segments(&self, samples: usize) -> usize {
        (samples / self.fft_len).min(self.averages)
    }
}

/// The requested backend of an `analyze-signal` input, without checking anything else (used
/// for dispatch lanes, which must not fail).
pub fn requested_backend(input: &Value) -> BackendRequest {
    match input.get("backend").and_then(Value::as_str) {
        Some("cuda") => BackendRequest::Cuda,
        Some("cpu") => BackendRequest::Cpu,
        _ => BackendRequest::Any,
    }
}

/// Checks an `analyze-signal` input and decodes its samples (section 15.2 item 1, SIG-2).
pub fn decode(input: &Value) -> Result<(SignalParams, Vec<Complex32>), BadInput> {
    let bad = |m: &str| BadInput(m.to_owned());
    let num = |k: &str| input.get(k).and_then(Value::as_f64);
    let int = |k: &str| input.get(k).and_then(Value::as_u64);
    let sample_rate_hz = num("sample_rate_hz")
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| bad("sample_rate_hz must be a positive number"))?;
    if input.get("encoding").and_then(Value::as_str) != Some("cf32le-base64") {
        return Err(bad("encoding must be cf32le-base64"));
    }
    let fft_len = int("fft_len")
        .filter(|n| (16..=65_536).contains(n) && n.is_power_of_two())
        .ok_or_else(|| bad("fft_len must be a power of two in 16..65536"))?
        as usize;
    let window = match input.get("window").and_then(Value::as_str) {
        Some("hann") => Window::Hann,
        Some("rect") => Window::Rect,
        _ => return Err(bad("window must be hann or rect")),
    };
    let averages = int("averages")
        .filter(|n| (1..=4096).contains(n))
        .ok_or_else(|| bad("averages must be in 1..4096"))? as usize;
    let peaks = int("peaks")
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| bad("peaks must be in 1..64"))? as usize;
    let threshold_db = match input.get("threshold_db") {
        None => 6.0,
        Some(v) => v
            .as_f64()
            .filter(|t| t.is_finite())
            .ok_or_else(|| bad("threshold_db must be a number"))?,
    };
    let backend = match input.get("backend").map(Value::as_str) {
        None | Some(Some("any")) => BackendRequest::Any,
        Some(Some("cpu")) => BackendRequest::Cpu,
        Some(Some("cuda")) => BackendRequest::Cuda,
        _ => return Err(bad("backend must be any, cpu or cuda")),
    };
    let drift_max_hz_per_s = match input.get("drift_max_hz_per_s") {
        None => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| bad("drift_max_hz_per_s must be a positive number"))?,
        ),
    };
    if drift_max_hz_per_s.is_some() {
        if averages.saturating_mul(fft_len) > drift::MAX_CELLS {
            return Err(BadInput(format!(
                "a drift search keeps every spectrum: averages × fft_len must be at most {}",
                drift::MAX_CELLS
            )));
        }
        if backend == BackendRequest::Cuda {
            // This realm runs the drift search on the CPU; SIG-8 forbids calling that cuda.
            return Err(bad(
                "this realm runs the drift search on the CPU: use backend any or cpu",
            ));
        }
    }
    let text = input
        .get("samples")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("samples must be a base64 string"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| BadInput(format!("samples are not base64: {e}")))?;
    let samples = samples_from_bytes(&bytes)?;
    if samples.len() < fft_len {
        return Err(BadInput(format!(
            "{} samples are fewer than fft_len {fft_len}",
            samples.len()
        )));
    }
    Ok((
        SignalParams {
            sample_rate_hz,
            fft_len,
            window,
            averages,
            peaks,
            threshold_db,
            backend,
            drift_max_hz_per_s,
        },
        samples,
    ))
}

/// Decodes interleaved little-endian binary32 I, Q pairs, refusing a ragged length or a
/// non-finite value.
pub fn samples_from_bytes(bytes: &[u8]) -> Result<Vec<Complex32>, BadInput> {
    if bytes.len() % 8 != 0 {
        return Err(BadInput(
            "samples must be whole I,Q pairs of little-endian f32 (8 bytes each)".to_owned(),
        ));
    }
    let samples: Vec<Complex32> = bytes
        .chunks_exact(8)
        .map(|c| {
            let re = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let im = f32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            Complex32::new(re, im)
        })
        .collect();
    if samples
        .iter()
        .any(|s| !s.re.is_finite() || !s.im.is_finite())
    {
        return Err(BadInput("samples hold NaN or infinite values".to_owned()));
    }
    Ok(samples)
}

/// One reported peak.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// Bin index k.
    pub bin: usize,
    /// Signed frequency of the bin (section 15.2 item 5).
    pub freq_hz: f64,
    /// Averaged bin power, dB.
    pub power_db: f64,
    /// `power_db − noise_floor_db`.
    pub snr_db: f64,
    /// Its drift rate, Hz/s, when a drift search was asked for (section 15.2 item 11).
    pub drift_hz_per_s: Option<f64>,
}

/// The result of one analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// L.
    pub fft_len: usize,
    /// `sample_rate_hz / L`.
    pub bin_hz: f64,
    /// M.
    pub spectra_averaged: usize,
    /// Noise floor estimate (median bin power), dB.
    pub noise_floor_db: f64,
    /// Peaks, strongest first.
    pub peaks: Vec<Peak>,
    /// Where the spectrum was computed.
    pub backend: Backend,
    /// When a drift search ran: (step, largest rate searched), Hz/s.
    pub drift_search: Option<(f64, f64)>,
}

impl Analysis {
    /// The intent's output object (`analyze-signal.output.schema.json`).
    pub fn to_json(&self) -> Value {
        let peaks: Vec<Value> = self
            .peaks
            .iter()
            .map(|p| {
                let mut v = json!({"bin": p.bin, "freq_hz": p.freq_hz, "power_db": p.power_db, "snr_db": p.snr_db});
                if let Some(d) = p.drift_hz_per_s {
                    v["drift_hz_per_s"] = json!(d);
                }
                v
            })
            .collect();
        let mut out = json!({
            "fft_len": self.fft_len,
            "bin_hz": self.bin_hz,
            "spectra_averaged": self.spectra_averaged,
            "noise_floor_db": self.noise_floor_db,
            "peaks": peaks,
            "backend": self.backend.as_str(),
        });
        if let Some((step, max)) = self.drift_search {
            out["drift_step_hz_per_s"] = json!(step);
            out["drift_max_searched_hz_per_s"] = json!(max);
        }
        out
    }
}

/// Power in dB, floored at 1e-30 (section 15.2 item 4).
pub fn db(power: f64) -> f64 {
    10.0 * power.max(1e-30).log10()
}

/// The median of `values` (even length: the mean of the two middle values), by selection
/// rather than a full sort. `values` is reordered.
pub fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (left, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        return upper;
    }
    // Everything left of the n/2-th element is no greater: its maximum is the (n/2 − 1)-th.
    let lower = left.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lower + upper) / 2.0
}

/// The signed frequency of bin `k` of `n` (section 15.2 item 5: the upper half of the bins are
/// negative frequencies of complex input).
pub fn bin_freq_hz(k: usize, n: usize, bin_hz: f64) -> f64 {
    let signed = if k < n / 2 {
        k as f64
    } else {
        k as f64 - n as f64
    };
    signed * bin_hz
}

/// Whether bin `k` of `power` is a local maximum (section 15.2 item 7, circular neighbours).
pub fn is_local_max(power: &[f64], k: usize) -> bool {
    let n = power.len();
    let prev = power[(k + n - 1) % n];
    let next = power[(k + 1) % n];
    power[k] > prev && power[k] >= next
}

/// Noise floor and peaks of an averaged, normalised power spectrum P (section 15.2 items 6-7).
/// `candidates`, when given, are the bins a device already found to be local maxima above the
/// threshold (a superset is fine: every candidate is checked again here, in double precision);
/// otherwise every bin is scanned.
pub fn summarise(
    params: &SignalParams,
    power: &[f64],
    segments: usize,
    backend: Backend,
    candidates: Option<&[usize]>,
) -> Analysis {
    let n = power.len();
    let noise_floor_db = db(median(&mut power.to_vec()));
    let bin_hz = params.sample_rate_hz / n as f64;
    let keep = |k: &usize| {
        *k < n && is_local_max(power, *k) && db(power[*k]) - noise_floor_db >= params.threshold_db
    };
    let mut found: Vec<usize> = match candidates {
        Some(c) => c.iter().copied().filter(keep).collect(),
        None => (0..n).filter(keep).collect(),
    };
    // Strongest first; ties: smaller bin first (total order, so any candidate order gives the
    // same list).
    found.sort_by(|a, b| power[*b].total_cmp(&power[*a]).then(a.cmp(b)));
    found.dedup();
    found.truncate(params.peaks);
    let peaks = found
        .into_iter()
        .map(|k| {
            let power_db = db(power[k]);
            Peak {
                bin: k,
                freq_hz: bin_freq_hz(k, n, bin_hz),
                power_db,
                snr_db: power_db - noise_floor_db,
                drift_hz_per_s: None,
            }
        })
        .collect();
    Analysis {
        fft_len: n,
        bin_hz,
        spectra_averaged: segments,
        noise_floor_db,
        peaks,
        backend,
        drift_search: None,
    }
}

/// The documented false-alarm rate (section 15.2 item 10): the probability that one bin of pure complex
/// Gaussian noise, averaged over `averages` spectra, lies `threshold_db` or more above the
/// median of its spectrum.
///
/// Each bin of an averaged noise spectrum is Gamma(M, 1)/M distributed (a mean of M
/// exponentials) whatever the window; its median m_M is found by bisection and
/// P[Gamma(M, 1) > x] = e^(−x) Σ_{j<M} x^j / j! with x = M · m_M · 10^(threshold/10). The rate
/// of reported peaks is at most this (a peak must also be a local maximum). It ignores the
/// sampling error of the median estimated from L bins, which is small for L ≥ 256.
pub fn false_alarm_probability(averages: usize, threshold_db: f64) -> f64 {
    let m = averages.max(1) as f64;
    // Survival function of Gamma(M, 1) at x, summed in log space so large M does not underflow.
    let survival = |x: f64| -> f64 {
        if x <= 0.0 {
            return 1.0;
        }
        let mut log_term = -x; // j = 0
        let mut total = log_term.exp();
        for j in 1..averages.max(1) {
            log_term += x.ln() - (j as f64).ln();
            total += log_term.exp();
        }
        total.min(1.0)
    };
    // Median of Gamma(M, 1): survival = 0.5, between M − 1 and M + 1 ... bracket generously.
    let (mut lo, mut hi) = (0.0f64, m + 10.0 * m.sqrt() + 10.0);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if survival(mid) > 0.5 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let median = (lo + hi) / 2.0;
    survival(median * 10f64.powf(threshold_db / 10.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_lengths() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn device_candidates_give_the_same_peaks_as_a_full_scan() {
        // The GPU path hands summarise its peak candidates; any superset of the true peaks, in
        // any order and with repeats, must give exactly the full scan's list.
        let x = synth::generate(&synth::Spec {
            sample_rate_hz: 1024.0,
            len: 1024 * 4,
            noise_power: 1.0,
            tones: vec![
                synth::Tone::at_snr(100.0, -5.0, 1.0),
                synth::Tone::at_snr(-300.0, -8.0, 1.0),
            ],
            seed: 3,
        });
        let p = SignalParams {
            sample_rate_hz: 1024.0,
            fft_len: 1024,
            window: Window::Hann,
            averages: 4,
            peaks: 5,
            threshold_db: 6.0,
            backend: BackendRequest::Any,
            drift_max_hz_per_s: None,
        };
        let (power, m) = cpu::power(&x, &p, 1);
        let full = summarise(&p, &power, m, Backend::Cuda, None);
        assert!(full.peaks.len() >= 2, "{full:?}");
        let mut candidates: Vec<usize> = (0..1024).rev().collect();
        candidates.extend([100, 100, 5000]);
        let from_device = summarise(&p, &power, m, Backend::Cuda, Some(&candidates));
        assert_eq!(full, from_device);
        let bins: Vec<usize> = full.peaks.iter().map(|p| p.bin).collect();
        assert_eq!(&bins[..2], &[100, 1024 - 300]);
    }

    #[test]
    fn false_alarm_probability_of_one_spectrum_is_closed_form() {
        // M = 1: exponential, median ln 2, P[X > g ln 2] = 2^(−g).
        let g = 10f64.powf(0.6);
        let want = 2f64.powf(-g);
        assert!((false_alarm_probability(1, 6.0) - want).abs() < 1e-9);
        // More averages make the same threshold much rarer in noise.
        assert!(false_alarm_probability(16, 6.0) < 1e-9);
        assert!(false_alarm_probability(4096, 1.0) < 1e-30);
    }

    #[test]
    fn backend_field_is_checked() {
        let mut input = json!({"sample_rate_hz": 1.0, "encoding": "cf32le-base64",
            "samples": synth::to_base64(&[Complex32::new(0.0, 0.0); 16]),
            "fft_len": 16, "window": "rect", "averages": 1, "peaks": 1});
        assert!(decode(&input).is_ok());
        input["backend"] = json!("cuda");
        assert_eq!(
            decode(&input).map(|(p, _)| p.backend),
            Ok(BackendRequest::Cuda)
        );
        input["backend"] = json!("tpu");
        assert!(decode(&input).is_err());
    }
}
