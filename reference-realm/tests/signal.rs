//! The analyze-signal DSP against synthetic signals: detection at −10 dB per-sample SNR, the
//! documented false-alarm rate in pure noise, and the GPU path against the CPU path (skipped,
//! saying so, without a GPU; `MTOR_REQUIRE_GPU=1` turns the skip into a failure).

mod common;

use mtor_realm::intents;
use mtor_realm::signal::gpu::{self, GpuEngine};
use mtor_realm::signal::synth::{self, Tone};
use mtor_realm::signal::{
    cpu, false_alarm_probability, Analysis, BackendRequest, SignalParams, Window, AGREEMENT_DB,
};
use serde_json::json;

const RATE: f64 = 1_024_000.0;

fn params(fft_len: usize, averages: usize, window: Window, threshold_db: f64) -> SignalParams {
    SignalParams {
        sample_rate_hz: RATE,
        fft_len,
        window,
        averages,
        peaks: 8,
        threshold_db,
        backend: BackendRequest::Any,
        drift_max_hz_per_s: None,
    }
}

fn noise(len: usize, seed: u64, tones: Vec<Tone>) -> Vec<mtor_realm::signal::Complex32> {
    synth::generate(&synth::Spec {
        sample_rate_hz: RATE,
        len,
        noise_power: 1.0,
        tones,
        seed,
    })
}

#[test]
fn finds_a_tone_at_minus_10_db_per_sample_snr_in_its_bin() {
    let n = 1024;
    let bin_hz = RATE / n as f64; // 1 kHz
    for (seed, bin, window) in [
        (1u64, 100i64, Window::Hann),
        (2, -250, Window::Hann),
        (3, 333, Window::Rect),
        (4, 7, Window::Rect),
    ] {
        let tone = Tone::at_snr(bin as f64 * bin_hz, -10.0, 1.0);
        let x = noise(n * 8, seed, vec![tone]);
        let a = cpu::analyze(&x, &params(n, 8, window, 6.0));
        let want = bin.rem_euclid(n as i64) as usize;
        let top = a.peaks.first().unwrap_or_else(|| panic!("no peak: {a:?}"));
        assert_eq!(top.bin, want, "seed {seed}: {a:?}");
        assert!((top.freq_hz - bin as f64 * bin_hz).abs() < 1e-6);
        // −10 dB per sample, coherent gain over 1024 samples: ≈ 20 dB above the floor.
        assert!(top.snr_db > 12.0, "{a:?}");
        // The tone is the only thing reported: nothing else in 8-average noise at 6 dB.
        assert_eq!(a.peaks.len(), 1, "{a:?}");
    }
    // Between two bins (the worst case for a Hann window: −1.4 dB scalloping) it lands on one
    // of the two neighbours.
    let tone = Tone::at_snr(100.5 * bin_hz, -10.0, 1.0);
    let a = cpu::analyze(
        &noise(n * 8, 9, vec![tone]),
        &params(n, 8, Window::Hann, 6.0),
    );
    assert!(
        matches!(a.peaks.first().map(|p| p.bin), Some(100 | 101)),
        "{a:?}"
    );
}

#[test]
fn finds_a_drifting_tone_near_its_mean_frequency() {
    // 200 Hz/s over 8 ms moves 1.6 Hz: well inside one 1 kHz bin, so it stays found.
    let n = 1024;
    let tone = Tone::at_snr(50_000.0, -10.0, 1.0).drifting(200.0);
    let a = cpu::analyze(
        &noise(n * 8, 5, vec![tone]),
        &params(n, 8, Window::Hann, 6.0),
    );
    assert_eq!(a.peaks.first().map(|p| p.bin), Some(50), "{a:?}");
}

#[test]
fn pure_noise_stays_within_the_documented_false_alarm_rate() {
    let n = 1024;
    for (averages, threshold_db) in [(1usize, 6.0f64), (4, 6.0), (1, 13.0), (16, 6.0)] {
        let pfa = false_alarm_probability(averages, threshold_db);
        let trials = 48u64;
        let mut crossings = 0usize;
        let mut peaks = 0usize;
        for seed in 0..trials {
            let x = noise(n * averages, 1000 + seed, vec![]);
            let p = params(n, averages, Window::Hann, threshold_db);
            let (power, m) = cpu::power(&x, &p, 2);
            let mut sorted = power.clone();
            let floor = mtor_realm::signal::median(&mut sorted);
            let limit = floor * 10f64.powf(threshold_db / 10.0);
            crossings += power.iter().filter(|v| **v >= limit).count();
            let mut all = p.clone();
            all.peaks = 64;
            peaks += mtor_realm::signal::summarise(
                &all,
                &power,
                m,
                mtor_realm::signal::Backend::Cpu,
                None,
            )
            .peaks
            .len();
        }
        let bins = (trials as usize * n) as f64;
        // Measured rate against the documented one, with 5 binomial standard deviations (and
        // at least 3 bins) of slack for the random draw and the median's sampling error.
        let slack = 5.0 * (bins * pfa * (1.0 - pfa)).sqrt() + 3.0;
        let expected = bins * pfa;
        assert!(
            (crossings as f64) <= expected + slack,
            "M={averages} t={threshold_db}: {crossings} crossings, documented {expected:.1}"
        );
        assert!(
            peaks <= crossings,
            "a peak is a crossing that is also a local maximum"
        );
        if pfa < 1e-6 {
            assert_eq!(
                peaks, 0,
                "M={averages} t={threshold_db}: noise peaks reported"
            );
        } else {
            // Not vacuous: where the rate is high, noise does cross, near the documented rate.
            assert!(
                (crossings as f64) >= expected - slack,
                "M={averages} t={threshold_db}: {crossings} crossings, documented {expected:.1}"
            );
        }
    }
}

#[test]
fn gpu_backend_request_without_a_gpu_is_a_retryable_worker_error() {
    let x = noise(64, 1, vec![]);
    let input = json!({"sample_rate_hz": RATE, "encoding": "cf32le-base64",
        "samples": synth::to_base64(&x), "fft_len": 16, "window": "hann", "averages": 4,
        "peaks": 2, "backend": "cuda"});
    let e = intents::analyze_signal(&input, None).expect_err("no GPU given");
    assert_eq!((e.code, e.retryable), ("WORKER_ERROR", true));
    assert_eq!(
        intents::lane("analyze-signal", &input),
        intents::GPU_SIGNAL_LANE
    );
    let gpu_caps = json!({"gpu": {"name": "X", "memory_bytes": 1, "compute_capability": "9.0"}});
    assert!(intents::worker_lanes(["analyze-signal"], "k", &gpu_caps)
        .contains(&intents::GPU_SIGNAL_LANE.to_owned()));
    assert!(
        !intents::worker_lanes(["analyze-signal"], "k", &serde_json::Value::Null)
            .contains(&intents::GPU_SIGNAL_LANE.to_owned())
    );
    // backend cpu and any run here, on the CPU.
    for b in ["cpu", "any"] {
        let mut i = input.clone();
        i["backend"] = json!(b);
        let out = intents::analyze_signal(&i, None).map(|o| o.output);
        assert_eq!(out.map(|o| o["backend"].clone()), Ok(json!("cpu")));
    }
}

/// The GPU, or `None` after printing why the GPU tests are skipped (a failure instead when
/// `MTOR_REQUIRE_GPU=1`, so a GPU runner cannot pass by skipping).
fn gpu_or_skip(test: &str) -> Option<GpuEngine> {
    match GpuEngine::open(0) {
        Ok(e) => Some(e),
        Err(e) => {
            if std::env::var("MTOR_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: MTOR_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            eprintln!(
                "SKIPPED {test}: no usable GPU ({e}); set MTOR_REQUIRE_GPU=1 to fail instead"
            );
            None
        }
    }
}

fn assert_agree(cpu: &Analysis, gpu: &Analysis, threshold_db: f64) {
    assert_eq!(cpu.spectra_averaged, gpu.spectra_averaged);
    assert_eq!(cpu.bin_hz, gpu.bin_hz);
    assert!(
        (cpu.noise_floor_db - gpu.noise_floor_db).abs() <= AGREEMENT_DB,
        "{cpu:?} vs {gpu:?}"
    );
    for p in cpu.peaks.iter().filter(|p| p.snr_db >= threshold_db + 0.1) {
        let q = gpu.peaks.iter().find(|q| q.bin == p.bin);
        let q = q.unwrap_or_else(|| panic!("GPU lacks bin {}: {gpu:?}", p.bin));
        assert!(
            (p.power_db - q.power_db).abs() <= AGREEMENT_DB,
            "{p:?} vs {q:?}"
        );
    }
}

#[test]
fn gpu_path_agrees_with_the_cpu_path() {
    let Some(engine) = gpu_or_skip("gpu_path_agrees_with_the_cpu_path") else {
        return;
    };
    for (n, averages, window) in [
        (16usize, 4096usize, Window::Hann),
        (1024, 64, Window::Rect),
        (4096, 40, Window::Hann),
        (65536, 3, Window::Hann),
    ] {
        let bin_hz = RATE / n as f64;
        let tones = vec![
            Tone::at_snr(3.0 * bin_hz, -10.0, 1.0),
            Tone::at_snr(-(n as f64 / 4.0) * bin_hz, 0.0, 1.0),
        ];
        // A ragged tail: samples past the last whole segment must be ignored by both.
        let x = noise(n * averages + 3, 77, tones);
        let p = params(n, averages, window, 6.0);
        let c = cpu::analyze(&x, &p);
        let g = match engine.analyze(&x, &p) {
            Ok(g) => g,
            Err(e) => panic!("GPU analysis failed: {e}"),
        };
        assert_eq!(g.backend, mtor_realm::signal::Backend::Cuda);
        assert_agree(&c, &g, 6.0);
    }
    let info = engine.info();
    assert!(!info.name.is_empty() && info.memory_bytes > 0);
    eprintln!("GPU path checked on {info:?}");
}

#[test]
fn gpu_probe_never_panics_and_says_why() {
    // Whatever this machine has, probing returns; without CUDA it names the missing library.
    match gpu::engine_for(gpu::GpuMode::Auto) {
        Ok(Some(e)) => eprintln!("GPU present: {:?}", e.info()),
        Ok(None) => {
            let why = GpuEngine::open(0).map(|_| ()).expect_err("auto found none");
            eprintln!("no GPU here: {why}");
            assert!(!why.to_string().is_empty());
            assert!(gpu::engine_for(gpu::GpuMode::Require).is_err());
        }
        Err(e) => panic!("auto must not fail: {e}"),
    }
    assert!(matches!(gpu::engine_for(gpu::GpuMode::Off), Ok(None)));
}

#[test]
fn drift_search_recovers_the_drift_rate_of_each_tone() {
    // L 256 at 25.6 kHz: 100 Hz bins, 10 ms segments; 64 segments span 0.63 s, so one bin of
    // total drift is 158.7 Hz/s.
    let (n, m, rate) = (256usize, 64usize, 25_600.0f64);
    let step = mtor_realm::signal::drift::drift_rate_hz_per_s(1, m, n, rate);
    let seg_s = n as f64 / rate;
    // Place a tone drifting `bins` bins over the observation so that its mid-observation
    // frequency is `mid_bin`.
    let tone = |mid_bin: f64, bins: f64, snr_db: f64| {
        let r = bins * step;
        let f_mid = mid_bin * rate / n as f64;
        Tone::at_snr(f_mid - r * (m as f64 / 2.0) * seg_s, snr_db, 1.0).drifting(r)
    };
    let x = synth::generate(&synth::Spec {
        sample_rate_hz: rate,
        len: n * m,
        noise_power: 1.0,
        tones: vec![
            tone(60.0, 20.0, 0.0),
            tone(-50.0, -12.0, 0.0),
            tone(10.0, 0.0, -3.0),
        ],
        seed: 11,
    });
    let mut p = params(n, m, Window::Hann, 6.0);
    p.sample_rate_hz = rate;
    p.peaks = 64;
    p.drift_max_hz_per_s = Some(40.0 * step);
    let a = cpu::analyze(&x, &p);
    common::assert_valid("intents/analyze-signal.output", &a.to_json());
    let (got_step, max) = a.drift_search.expect("drift search ran");
    assert!((got_step - step).abs() < 1e-9 && (max - 40.0 * step).abs() < 1e-6);
    // For each tone, the strongest peak inside its smear reports its drift within one step.
    for (lo, hi, want_bins) in [
        (48usize, 72usize, 20.0),
        (256 - 58, 256 - 42, -12.0),
        (8, 12, 0.0),
    ] {
        let peak = a
            .peaks
            .iter()
            .find(|q| (lo..=hi).contains(&q.bin))
            .unwrap_or_else(|| panic!("no peak in {lo}..={hi}: {a:?}"));
        let d = peak.drift_hz_per_s.expect("drift reported");
        assert!(
            (d - want_bins * step).abs() <= step + 1e-9,
            "bin {}: drift {d} Hz/s, want {} Hz/s",
            peak.bin,
            want_bins * step
        );
    }
    // Without a drift search nothing of it appears in the output.
    p.drift_max_hz_per_s = None;
    let plain = cpu::analyze(&x, &p).to_json();
    common::assert_valid("intents/analyze-signal.output", &plain);
    assert!(plain.get("drift_step_hz_per_s").is_none());
    assert!(plain["peaks"][0].get("drift_hz_per_s").is_none());
    // A drift search with backend cuda is refused: this realm runs it on the CPU.
    let input = json!({"sample_rate_hz": rate, "encoding": "cf32le-base64",
        "samples": synth::to_base64(&x[..n * 2]), "fft_len": n, "window": "hann", "averages": 2,
        "peaks": 2, "backend": "cuda", "drift_max_hz_per_s": 100.0});
    assert!(intents::check_input("analyze-signal", &input).is_err());
}
