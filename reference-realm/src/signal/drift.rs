//! Drift-rate (de-Doppler) search: for each reported peak, the straight track through the time
//! series of spectra that collects the most power (section 15.2 item 11).
//!
//! A tone whose frequency drifts linearly (a transmitter on a rotating planet, seen from
//! another) smears over the bins it crosses in the averaged spectrum. Over the M per-segment
//! spectra P_m it follows a straight line, so the search sums P_m along every straight track
//! whose total drift is D bins (D in −D_max..D_max) and whose middle lies within the smear around
//! the peak, and keeps the best. This is the brute-force form of the incoherent de-Doppler
//! search that radio SETI pipelines run as a tree (Taylor 1974); at the sizes this realm accepts
//! ([`MAX_CELLS`], [`MAX_DRIFT_BINS`]) brute force is cheap enough and obviously correct.

/// Most cells (segments × bins) of per-segment spectra kept for a drift search (32 MiB of f64).
pub const MAX_CELLS: usize = 1 << 22;
/// Most total drift searched, in bins over the whole observation, each way.
pub const MAX_DRIFT_BINS: usize = 64;

/// The best track through `spectra` (M spectra of L bins) for the peak at `bin`: its total
/// drift in bins over the M − 1 steps, searching |D| ≤ `max_bins`. Track: bin
/// c + round(D · (m / (M − 1) − ½)) of spectrum m (circular), for middles c within |D|/2 + 1
/// bins of `bin`. Ties: the smaller |D|, then the negative one, then the middle nearest `bin`, then the
/// lower middle.
pub fn best_drift(spectra: &[Vec<f64>], bin: usize, max_bins: usize) -> i64 {
    let m_count = spectra.len();
    let Some(n) = spectra.first().map(Vec::len) else {
        return 0;
    };
    if m_count < 2 || n == 0 {
        return 0;
    }
    let steps = (m_count - 1) as f64;
    let max = max_bins.min(MAX_DRIFT_BINS) as i64;
    let mut best = (f64::NEG_INFINITY, 0i64);
    // Order of visit = tie order: |D| ascending, negative first; middles nearest first.
    let mut drifts = vec![0i64];
    for d in 1..=max {
        drifts.extend([-d, d]);
    }
    for d in drifts {
        let reach = d.abs() / 2 + 1;
        let mut offsets = vec![0i64];
        for o in 1..=reach {
            offsets.extend([-o, o]);
        }
        for o in offsets {
            let centre = bin as i64 + o;
            let score: f64 = spectra
                .iter()
                .enumerate()
                .map(|(m, p)| {
                    let shift = (d as f64 * (m as f64 / steps - 0.5)).round() as i64;
                    p[(centre + shift).rem_euclid(n as i64) as usize]
                })
                .sum();
            if score > best.0 {
                best = (score, d);
            }
        }
    }
    best.1
}

/// Hz per second of a total drift of `bins` bins over `segments` spectra of `fft_len` samples
/// at `sample_rate_hz`: the observation spans (M − 1) segment times between first and last.
pub fn drift_rate_hz_per_s(bins: i64, segments: usize, fft_len: usize, sample_rate_hz: f64) -> f64 {
    if segments < 2 {
        return 0.0;
    }
    let bin_hz = sample_rate_hz / fft_len as f64;
    let span_s = (segments - 1) as f64 * fft_len as f64 / sample_rate_hz;
    bins as f64 * bin_hz / span_s
}

/// The largest whole number of bins a drift of `rate` Hz/s moves over the observation, capped
/// at [`MAX_DRIFT_BINS`].
pub fn max_bins_for(rate: f64, segments: usize, fft_len: usize, sample_rate_hz: f64) -> usize {
    let per_bin = drift_rate_hz_per_s(1, segments, fft_len, sample_rate_hz);
    if per_bin <= 0.0 || !rate.is_finite() {
        return 0;
    }
    ((rate.abs() / per_bin).floor() as usize).min(MAX_DRIFT_BINS)
}
