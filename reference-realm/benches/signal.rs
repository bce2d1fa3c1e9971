//! Criterion benchmarks of the analyze-signal CPU path: the threaded batched path against the
//! plain one-segment-at-a-time reference loop, and the whole analysis (summary included), on
//! synthetic noise with one tone. Throughput is in complex samples. The GPU path has its own
//! command, `mtor-realm bench-signal --gpu require`, since criterion cannot skip without a GPU.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mtor_realm::signal::synth::{self, Tone};
use mtor_realm::signal::{cpu, BackendRequest, SignalParams, Window};

fn params(fft_len: usize, averages: usize) -> SignalParams {
    SignalParams {
        sample_rate_hz: 1e6,
        fft_len,
        window: Window::Hann,
        averages,
        peaks: 8,
        threshold_db: 6.0,
        backend: BackendRequest::Cpu,
        drift_max_hz_per_s: None,
    }
}

fn bench(c: &mut Criterion) {
    let threads = cpu::default_threads();
    let mut group = c.benchmark_group("analyze-signal-cpu");
    group.sample_size(10);
    // 256 Ki complex samples (2 MiB) each: long enough to time, short enough for a small VM.
    for (fft_len, averages) in [(1024usize, 256usize), (4096, 64), (65536, 4)] {
        let x = synth::generate(&synth::Spec {
            sample_rate_hz: 1e6,
            len: fft_len * averages,
            noise_power: 1.0,
            tones: vec![Tone::at_snr(12_345.0, -10.0, 1.0)],
            seed: 1,
        });
        let p = params(fft_len, averages);
        group.throughput(Throughput::Elements(x.len() as u64));
        let id = format!("L{fft_len}xM{averages}");
        group.bench_with_input(BenchmarkId::new("reference-1-thread", &id), &x, |b, x| {
            b.iter(|| cpu::power_reference(x, &p))
        });
        group.bench_with_input(BenchmarkId::new("batched-1-thread", &id), &x, |b, x| {
            b.iter(|| cpu::power(x, &p, 1))
        });
        group.bench_with_input(
            BenchmarkId::new(format!("batched-{threads}-threads"), &id),
            &x,
            |b, x| b.iter(|| cpu::power(x, &p, threads)),
        );
        group.bench_with_input(BenchmarkId::new("whole-analysis", &id), &x, |b, x| {
            b.iter(|| cpu::analyze(x, &p))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
