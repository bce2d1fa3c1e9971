//! The CPU path: rustfft in double precision, threads over batches of segments.
//!
//! Each thread takes a contiguous run of segments, windows a batch of them into one buffer and
//! transforms the whole batch with one rustfft call (rustfft processes a buffer holding many
//! transforms of the plan's length), accumulating |X|² into its own array; the partial sums are
//! added in thread order, so the result does not depend on scheduling. [`power_reference`] is the
//! straightforward one-segment-at-a-time loop of the spec, kept as the oracle the fast path is
//! tested against.

use std::sync::Arc;

use rustfft::{Fft, FftPlanner};

use super::{drift, summarise, Analysis, Backend, Complex32, Complex64, SignalParams};

/// Samples below which one more thread does not pay for itself (spawn and join cost ≈ the FFT of
/// a few thousand points).
const MIN_SAMPLES_PER_THREAD: usize = 1 << 15;
/// Samples windowed and transformed per rustfft call (bounds each thread's buffer to 2 MiB).
const BATCH_SAMPLES: usize = 1 << 17;

/// The averaged, normalised power spectrum P[k] of section 15.2 item 4 and the number of
/// segments M, computed with up to `threads` threads.
pub fn power(samples: &[Complex32], params: &SignalParams, threads: usize) -> (Vec<f64>, usize) {
    let n = params.fft_len;
    let segments = params.segments(samples.len());
    let window = params.window.coefficients(n);
    let gain: f64 = window.iter().sum();
    let fft = FftPlanner::<f64>::new().plan_fft_forward(n);
    let threads = threads
        .min((segments * n).div_ceil(MIN_SAMPLES_PER_THREAD))
        .clamp(1, segments.max(1));
    let per_thread = segments.div_ceil(threads).max(1);
    let used = &samples[..segments * n];
    let partials: Vec<Vec<f64>> = if threads == 1 {
        vec![accumulate(used, n, &window, &fft)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = used
                .chunks(per_thread * n)
                .map(|chunk| {
                    let (window, fft) = (&window, Arc::clone(&fft));
                    scope.spawn(move || accumulate(chunk, n, window, &fft))
                })
                .collect();
            handles
                .into_iter()
                // A panic in a worker thread is a bug; rather than unwinding into the caller's
                // task, that thread's partial sum counts as missing (all zeros) and is logged.
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        tracing::error!("a CPU signal thread panicked");
                        vec![0.0; n]
                    })
                })
                .collect()
        })
    };
    let mut total = vec![0f64; n];
    for part in &partials {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    let scale = 1.0 / (segments.max(1) as f64 * gain * gain);
    for t in &mut total {
        *t *= scale;
    }
    (total, segments)
}

/// Σ_m |FFT(w · segment_m)|² over the whole segments of `chunk`, in batches.
fn accumulate(chunk: &[Complex32], n: usize, window: &[f64], fft: &Arc<dyn Fft<f64>>) -> Vec<f64> {
    let mut acc = vec![0f64; n];
    let batch = (BATCH_SAMPLES / n).max(1) * n;
    let mut buf = vec![Complex64::new(0.0, 0.0); batch.min(chunk.len())];
    let mut scratch = vec![Complex64::new(0.0, 0.0); fft.get_inplace_scratch_len()];
    for part in chunk.chunks(batch) {
        let buf = &mut buf[..part.len()];
        for (seg_out, seg_in) in buf.chunks_exact_mut(n).zip(part.chunks_exact(n)) {
            for ((b, s), w) in seg_out.iter_mut().zip(seg_in).zip(window) {
                *b = Complex64::new(f64::from(s.re) * w, f64::from(s.im) * w);
            }
        }
        fft.process_with_scratch(buf, &mut scratch);
        for spectrum in buf.chunks_exact(n) {
            for (a, x) in acc.iter_mut().zip(spectrum) {
                *a += x.norm_sqr();
            }
        }
    }
    acc
}

/// The spec's definition as a plain loop, one segment at a time on one thread: the oracle.
pub fn power_reference(samples: &[Complex32], params: &SignalParams) -> (Vec<f64>, usize) {
    let n = params.fft_len;
    let window = params.window.coefficients(n);
    let gain: f64 = window.iter().sum();
    let fft = FftPlanner::<f64>::new().plan_fft_forward(n);
    let segments = params.segments(samples.len());
    let mut power = vec![0f64; n];
    let mut buf = vec![Complex64::new(0.0, 0.0); n];
    for seg in samples.chunks_exact(n).take(segments) {
        for ((b, s), w) in buf.iter_mut().zip(seg).zip(&window) {
            *b = Complex64::new(f64::from(s.re), f64::from(s.im)) * *w;
        }
        fft.process(&mut buf);
        for (acc, x) in power.iter_mut().zip(&buf) {
            *acc += x.norm_sqr();
        }
    }
    let scale = 1.0 / (segments.max(1) as f64 * gain * gain);
    (power.into_iter().map(|v| v * scale).collect(), segments)
}

/// The threads the CPU path uses: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs the whole analysis on the CPU, with the drift search when the input asks for one.
pub fn analyze(samples: &[Complex32], params: &SignalParams) -> Analysis {
    let Some(rate) = params.drift_max_hz_per_s else {
        let (power, segments) = power(samples, params, default_threads());
        return summarise(params, &power, segments, Backend::Cpu, None);
    };
    let spectra = segment_spectra(samples, params);
    let segments = spectra.len();
    let n = params.fft_len;
    let mut power = vec![0f64; n];
    for p in &spectra {
        for (a, v) in power.iter_mut().zip(p) {
            *a += v;
        }
    }
    for a in &mut power {
        *a /= segments.max(1) as f64;
    }
    let mut analysis = summarise(params, &power, segments, Backend::Cpu, None);
    let max_bins = drift::max_bins_for(rate, segments, n, params.sample_rate_hz);
    for peak in &mut analysis.peaks {
        let d = drift::best_drift(&spectra, peak.bin, max_bins);
        peak.drift_hz_per_s = Some(drift::drift_rate_hz_per_s(
            d,
            segments,
            n,
            params.sample_rate_hz,
        ));
    }
    let step = drift::drift_rate_hz_per_s(1, segments, n, params.sample_rate_hz);
    analysis.drift_search = Some((step, step * max_bins as f64));
    analysis
}

/// The normalised power spectrum of each segment, |X_m[k]|² / (Σ w)² (what the drift search
/// walks through; their mean is P of section 15.2 item 4).
pub fn segment_spectra(samples: &[Complex32], params: &SignalParams) -> Vec<Vec<f64>> {
    let n = params.fft_len;
    let window = params.window.coefficients(n);
    let gain: f64 = window.iter().sum();
    let fft = FftPlanner::<f64>::new().plan_fft_forward(n);
    let mut buf = vec![Complex64::new(0.0, 0.0); n];
    samples
        .chunks_exact(n)
        .take(params.segments(samples.len()))
        .map(|seg| {
            for ((b, s), w) in buf.iter_mut().zip(seg).zip(&window) {
                *b = Complex64::new(f64::from(s.re), f64::from(s.im)) * *w;
            }
            fft.process(&mut buf);
            buf.iter().map(|x| x.norm_sqr() / (gain * gain)).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::synth::{self, Tone};
    use super::super::{BackendRequest, Window};
    use super::*;

    fn params(n: usize, averages: usize, window: Window) -> SignalParams {
        SignalParams {
            sample_rate_hz: 1_024_000.0,
            fft_len: n,
            window,
            averages,
            peaks: 8,
            threshold_db: 6.0,
            backend: BackendRequest::Any,
            drift_max_hz_per_s: None,
        }
    }

    #[test]
    fn threaded_batches_agree_with_the_reference_loop() {
        let spec = synth::Spec {
            sample_rate_hz: 1_024_000.0,
            len: 1024 * 131 + 5,
            noise_power: 1.0,
            tones: vec![Tone::at_snr(1000.0 * 37.0, -10.0, 1.0)],
            seed: 7,
        };
        let x = synth::generate(&spec);
        for window in [Window::Hann, Window::Rect] {
            let p = params(1024, 140, window);
            let (want, m) = power_reference(&x, &p);
            for threads in [1, 2, 3, 8] {
                let (got, m2) = power(&x, &p, threads);
                assert_eq!(m, m2);
                for (a, b) in want.iter().zip(&got) {
                    assert!((a - b).abs() <= 1e-9 * a.abs().max(1e-30), "{a} vs {b}");
                }
                let ref_out = summarise(&p, &want, m, Backend::Cpu, None);
                let got_out = summarise(&p, &got, m, Backend::Cpu, None);
                let bins = |a: &Analysis| a.peaks.iter().map(|p| p.bin).collect::<Vec<_>>();
                assert_eq!(bins(&ref_out), bins(&got_out));
            }
        }
    }
}
