//! Synthetic signals: complex tones at known frequencies and SNR in circular Gaussian noise,
//! with optional linear drift, from a seeded generator (no `rand` dependency: SplitMix64 and
//! Box-Muller are enough for test signals and are stable across versions).

use base64::Engine;

use super::Complex32;

/// One complex tone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tone {
    /// Frequency at t = 0, Hz (negative frequencies are allowed: the input is complex).
    pub freq_hz: f64,
    /// Amplitude: the tone's power per sample is amplitude².
    pub amplitude: f64,
    /// Linear drift, Hz per second (radio-astronomy de-Doppler searches look for this).
    pub drift_hz_per_s: f64,
}

impl Tone {
    /// A steady tone whose per-sample SNR against noise of `noise_power` is `snr_db`
    /// (amplitude² / noise_power = 10^(snr_db / 10)).
    pub fn at_snr(freq_hz: f64, snr_db: f64, noise_power: f64) -> Self {
        Self {
            freq_hz,
            amplitude: (noise_power * 10f64.powf(snr_db / 10.0)).sqrt(),
            drift_hz_per_s: 0.0,
        }
    }

    /// The same tone drifting at `rate` Hz per second.
    pub fn drifting(self, rate: f64) -> Self {
        Self {
            drift_hz_per_s: rate,
            ..self
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Sample rate, Hz.
    pub sample_rate_hz: f64,
    /// Number of complex samples.
    pub len: usize,
    /// Noise power per complex sample, E|n|² (each of I and Q has variance half of it); 0 for
    /// no noise.
    pub noise_power: f64,
    /// Tones added to the noise.
    pub tones: Vec<Tone>,
    /// Seed of the noise.
    pub seed: u64,
}

/// SplitMix64: a small, well-mixed 64-bit generator (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two independent standard normal values (Box-Muller).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let r = (-2.0 * self.next_open01().ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * self.next_open01();
        (r * theta.cos(), r * theta.sin())
    }
}

/// Generates the samples of `spec`.
pub fn generate(spec: &Spec) -> Vec<Complex32> {
    let mut rng = SplitMix64::new(spec.seed);
    let sigma = (spec.noise_power / 2.0).sqrt();
    (0..spec.len)
        .map(|i| {
            let t = i as f64 / spec.sample_rate_hz;
            let (mut re, mut im) = if sigma > 0.0 {
                let (a, b) = rng.normal_pair();
                (a * sigma, b * sigma)
            } else {
                (0.0, 0.0)
            };
            for tone in &spec.tones {
                // Phase of a linear chirp: 2π (f0 t + ½ ḟ t²), reduced mod 1 cycle first so
                // long signals keep their precision.
                let cycles = tone.freq_hz * t + 0.5 * tone.drift_hz_per_s * t * t;
                let ph = 2.0 * std::f64::consts::PI * cycles.rem_euclid(1.0);
                re += tone.amplitude * ph.cos();
                im += tone.amplitude * ph.sin();
            }
            Complex32::new(re as f32, im as f32)
        })
        .collect()
}

/// Interleaved little-endian binary32 I, Q bytes (the `cf32le` layout of section 15.2 item 1).
pub fn to_bytes(samples: &[Complex32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 8);
    for s in samples {
        out.extend_from_slice(&s.re.to_le_bytes());
        out.extend_from_slice(&s.im.to_le_bytes());
    }
    out
}

/// The `samples` field of an `analyze-signal` input: standard padded base64 of [`to_bytes`].
pub fn to_base64(samples: &[Complex32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(to_bytes(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_has_the_asked_power_and_tones_their_amplitude() {
        let x = generate(&Spec {
            sample_rate_hz: 1000.0,
            len: 200_000,
            noise_power: 2.0,
            tones: vec![],
            seed: 1,
        });
        let p: f64 = x.iter().map(|s| f64::from(s.norm_sqr())).sum::<f64>() / x.len() as f64;
        assert!((p - 2.0).abs() < 0.03, "{p}");
        let t = Tone::at_snr(10.0, -10.0, 1.0);
        assert!((t.amplitude * t.amplitude - 0.1).abs() < 1e-12);
        let y = generate(&Spec {
            sample_rate_hz: 1000.0,
            len: 10,
            noise_power: 0.0,
            tones: vec![Tone::at_snr(250.0, 0.0, 1.0)],
            seed: 1,
        });
        // A quarter of the sample rate: +90° per sample.
        assert!(
            (y[1].im - 1.0).abs() < 1e-6 && y[1].re.abs() < 1e-6,
            "{:?}",
            y[1]
        );
    }
}
