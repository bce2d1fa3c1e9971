//! The CUDA path of `analyze-signal`: cudarc with dynamic loading, NVRTC-compiled kernels
//! (`kernels.cu`: windowing, power accumulation, peak finding) and batched cuFFT transforms.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcufft` on first use and *panics* when one is
//! missing, so [`GpuEngine::open`] first checks that each library can be loaded (cudarc's own
//! non-panicking `is_culib_present` probes) and only then makes its first cudarc call; every
//! call into cudarc also runs under `catch_unwind`, so a missing symbol (an old driver) becomes a
//! [`GpuError`], never a panic in a worker.
//!
//! Pipeline per task: the samples go in batches of whole segments through two slots (each its
//! own stream, pinned staging buffer, device buffers and cuFFT plan), so the copy of one batch
//! overlaps the transform of the previous one; windowing is in place, the FFT out of place, and
//! every batch's |X|² is added into one accumulator on the device. Only the averaged spectrum
//! (L floats) and the peak candidates come back. Plans and buffers are kept per (L, batch) and
//! reused by later tasks.
//!
//! Precision: single precision on the device (cuFFT C2C), the summary in double precision on the
//! host; SIG-9 states the agreement with the CPU path that this gives.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cudarc::cufft::{sys::cufftType, sys::float2, CudaFft, FftDirection};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{summarise, Analysis, Backend, Complex32, SignalParams};

/// The kernel source, checked in and compiled by NVRTC at run time.
pub const KERNELS_CU: &str = include_str!("kernels.cu");
/// The entry points `kernels.cu` must define.
pub const KERNEL_NAMES: [&str; 3] = ["window_batch", "power_accumulate", "find_peaks"];
/// The PTX parameter types of each entry point, in order, as the launches in this file push
/// them (device pointers are `u64`). The NVRTC test checks the compiled PTX against this, so a
/// kernel signature and its launch cannot drift apart unnoticed without a GPU.
pub const KERNEL_PARAMS: [(&str, &[&str]); 3] = [
    ("window_batch", &["u64", "u64", "u32", "u64"]),
    ("power_accumulate", &["u64", "u64", "u32", "u32", "u32"]),
    ("find_peaks", &["u64", "u32", "f32", "u64", "u64", "u32"]),
];

/// Most samples per batch slot (32 MiB of complex f32): bounds device and pinned memory.
const BATCH_SAMPLES: usize = 1 << 22;
/// Segments one `power_accumulate` thread sums before an atomic add.
const POWER_CHUNK: u32 = 16;
/// Peak candidates the device reports; beyond this the host scans every bin.
const PEAK_CAP: usize = 4096;
/// Threads per block for the element-wise kernels.
const BLOCK: u32 = 256;
/// Plans and buffers kept for reuse.
const MAX_PLANS: usize = 4;

/// Whether a worker uses a GPU (`mtor-realm worker --gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMode {
    /// Use the GPU when one is usable, else the CPU (one log line says why).
    Auto,
    /// Never use a GPU.
    Off,
    /// Use the GPU; refuse to start without one.
    Require,
}

impl std::str::FromStr for GpuMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            "require" => Ok(Self::Require),
            other => Err(format!("--gpu must be auto, off or require, not {other:?}")),
        }
    }
}

/// Why the GPU path is not available or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// A CUDA library cannot be loaded.
    #[error(
        "{0} not found by the dynamic loader (install it or add its directory to LD_LIBRARY_PATH)"
    )]
    MissingLibrary(&'static str),
    /// A CUDA driver call failed (no device, out of memory, launch failure...).
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// NVRTC could not compile the kernels.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// A cuFFT call failed.
    #[error("cuFFT: {0}")]
    Fft(String),
    /// cudarc panicked (e.g. a symbol missing from an old driver); caught here.
    #[error("CUDA binding panicked in {0}")]
    Panicked(String),
}

fn driver_err(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Driver(e.to_string())
}

fn fft_err(e: cudarc::cufft::result::CufftError) -> GpuError {
    GpuError::Fft(e.to_string())
}

/// Runs `f`, turning a panic inside cudarc into [`GpuError::Panicked`].
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        Err(GpuError::Panicked(format!("{what}: {msg}")))
    })
}

/// Whether NVRTC can be loaded (all the kernel compile check needs: no driver, no GPU).
pub fn nvrtc_present() -> bool {
    // SAFETY: `is_culib_present` only dlopens candidate names of libnvrtc and drops the handle;
    // running that library's initialisers is what loading it for use would do anyway.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The first CUDA library the GPU path needs that cannot be loaded, if any.
pub fn missing_library() -> Option<&'static str> {
    // SAFETY: as in `nvrtc_present`: each probe dlopens and drops, and calls nothing in it.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Some("the NVIDIA driver library (libcuda.so)");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Some("NVRTC (libnvrtc.so.13)");
        }
        if !cudarc::cufft::sys::is_culib_present() {
            return Some("cuFFT (libcufft.so.12)");
        }
    }
    None
}

/// Compiles `kernels.cu` to PTX with NVRTC, for `arch` (e.g. `compute_90`) or NVRTC's default.
pub fn compile_ptx(arch: Option<&str>) -> Result<String, GpuError> {
    if !nvrtc_present() {
        return Err(GpuError::MissingLibrary("NVRTC (libnvrtc.so.13)"));
    }
    guarded("NVRTC compile", || {
        let opts = cudarc::nvrtc::CompileOptions {
            name: Some("kernels.cu".to_owned()),
            options: arch
                .map(|a| vec![format!("--gpu-architecture={a}")])
                .unwrap_or_default(),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(KERNELS_CU, opts)
            .map(|ptx| ptx.to_src())
            .map_err(|e| GpuError::Nvrtc(e.to_string()))
    })
}

/// What a worker reports about its GPU when it enrols (`capabilities.gpu`, SIG-10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// Device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory, bytes.
    pub memory_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

impl GpuInfo {
    /// The `capabilities.gpu` object of `worker.register`.
    pub fn to_json(&self) -> Value {
        let (major, minor) = self.compute_capability;
        json!({"name": self.name, "memory_bytes": self.memory_bytes,
               "compute_capability": format!("{major}.{minor}")})
    }
}

/// One pipeline slot: its stream, staging and device buffers, and cuFFT plan.
struct Slot {
    stream: Arc<CudaStream>,
    staging: PinnedHostSlice<float2>,
    input: CudaSlice<float2>,
    spectra: CudaSlice<float2>,
    fft: CudaFft,
}

/// Buffers and plans for one (L, batch).
struct Plan {
    slots: Vec<Slot>,
    window: CudaSlice<f32>,
    window_kind: Option<super::Window>,
    acc: CudaSlice<f32>,
    count: CudaSlice<u32>,
    bins: CudaSlice<u32>,
}

/// An opened GPU: context, compiled kernels, and the plans kept for reuse.
pub struct GpuEngine {
    info: GpuInfo,
    ctx: Arc<CudaContext>,
    window_fn: CudaFunction,
    power_fn: CudaFunction,
    peaks_fn: CudaFunction,
    plans: Mutex<HashMap<(usize, usize), Plan>>,
}

impl std::fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEngine")
            .field("info", &self.info)
            .finish()
    }
}

/// Timings of [`GpuEngine::bench`].
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The device.
    pub info: GpuInfo,
    /// Complex samples per second through window + FFT + power, data already on the device.
    pub device_samples_per_s: f64,
    /// Achieved device memory bandwidth of that pipeline, GB/s, by the traffic model
    /// [`BYTES_PER_SAMPLE`].
    pub device_gb_per_s: f64,
    /// Complex samples per second for the whole analysis from host memory (copies included).
    pub end_to_end_samples_per_s: f64,
}

/// Device memory traffic per complex sample of the pipeline, bytes: window (read and write
/// 8 + 8), out-of-place FFT (read 8, write 8; one pass, true for L up to a few thousand, so
/// an underestimate for longer FFTs), power (read 8). The window coefficients stay in cache.
pub const BYTES_PER_SAMPLE: f64 = 40.0;

static SHARED: OnceLock<Result<Arc<GpuEngine>, GpuError>> = OnceLock::new();

/// The process's GPU engine for `mode`: opened once and shared by every worker of the process.
/// `Auto` logs one line saying which path analyze-signal takes and why; `Require` turns the
/// reason into an error.
pub fn engine_for(mode: GpuMode) -> Result<Option<Arc<GpuEngine>>, GpuError> {
    if mode == GpuMode::Off {
        return Ok(None);
    }
    let opened = SHARED.get_or_init(|| {
        let r = GpuEngine::open(0).map(Arc::new);
        match &r {
            Ok(e) => info!(gpu = %e.info.name, memory_bytes = e.info.memory_bytes,
                compute_capability = ?e.info.compute_capability, "analyze-signal runs on the GPU"),
            Err(e) if mode == GpuMode::Auto => {
                info!("no usable GPU ({e}); analyze-signal runs on the CPU")
            }
            Err(_) => {}
        }
        r
    });
    match (opened, mode) {
        (Ok(e), _) => Ok(Some(Arc::clone(e))),
        (Err(e), GpuMode::Require) => Err(e.clone()),
        (Err(_), _) => Ok(None),
    }
}

impl GpuEngine {
    /// Opens device `ordinal`: checks the libraries, creates the context, compiles and loads
    /// the kernels for the device's architecture.
    pub fn open(ordinal: usize) -> Result<Self, GpuError> {
        if let Some(lib) = missing_library() {
            return Err(GpuError::MissingLibrary(lib));
        }
        guarded("opening the GPU", || {
            let ctx = CudaContext::new(ordinal).map_err(driver_err)?;
            let (major, minor) = ctx.compute_capability().map_err(driver_err)?;
            let info = GpuInfo {
                name: ctx.name().map_err(driver_err)?,
                memory_bytes: ctx.total_mem().map_err(driver_err)? as u64,
                compute_capability: (major, minor),
            };
            let ptx = compile_ptx(Some(&format!("compute_{major}{minor}")))?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(driver_err)?;
            let load = |name: &str| module.load_function(name).map_err(driver_err);
            Ok(Self {
                window_fn: load(KERNEL_NAMES[0])?,
                power_fn: load(KERNEL_NAMES[1])?,
                peaks_fn: load(KERNEL_NAMES[2])?,
                info,
                ctx,
                plans: Mutex::new(HashMap::new()),
            })
        })
    }

    /// The device.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Runs the whole analysis on the GPU.
    pub fn analyze(
        &self,
        samples: &[Complex32],
        params: &SignalParams,
    ) -> Result<Analysis, GpuError> {
        let n = params.fft_len;
        let segments = params.segments(samples.len());
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        guarded("analyze-signal on the GPU", || {
            let batch = (BATCH_SAMPLES / n).clamp(1, segments.max(1).next_power_of_two());
            let plan = self.plan(&mut plans, n, batch)?;
            self.load_window(plan, params.window)?;
            let raw = self.accumulate(plan, &samples[..segments * n], n, batch)?;
            // The threshold in raw units (scaling by 1 / (M gain²) does not move the median's
            // rank); lowered a hair so that float rounding never drops a bin the exact check
            // on the host would keep.
            let mut sorted: Vec<f64> = raw.iter().map(|v| f64::from(*v)).collect();
            let median = super::median(&mut sorted);
            let min_raw = median * 10f64.powf(params.threshold_db / 10.0) * (1.0 - 1e-4);
            let candidates = self.peak_candidates(plan, n, min_raw as f32)?;
            let window = params.window.coefficients(n);
            let gain: f64 = window.iter().sum();
            let scale = 1.0 / (segments.max(1) as f64 * gain * gain);
            let power: Vec<f64> = raw.iter().map(|v| f64::from(*v) * scale).collect();
            Ok(summarise(
                params,
                &power,
                segments,
                Backend::Cuda,
                candidates.as_deref(),
            ))
        })
    }

    /// The plan for (n, batch), made on first use; a few are kept.
    fn plan<'a>(
        &self,
        plans: &'a mut HashMap<(usize, usize), Plan>,
        n: usize,
        batch: usize,
    ) -> Result<&'a mut Plan, GpuError> {
        if !plans.contains_key(&(n, batch)) {
            if plans.len() >= MAX_PLANS {
                plans.clear();
            }
            let mut slots = Vec::with_capacity(2);
            for _ in 0..2 {
                let stream = self.ctx.new_stream().map_err(driver_err)?;
                // SAFETY: `alloc_pinned` leaves the memory unset; it is filled with zeros
                // right here, before anything reads it.
                let mut staging =
                    unsafe { self.ctx.alloc_pinned::<float2>(batch * n) }.map_err(driver_err)?;
                staging
                    .as_mut_slice()
                    .map_err(driver_err)?
                    .fill(float2 { x: 0.0, y: 0.0 });
                let input = stream
                    .alloc_zeros::<float2>(batch * n)
                    .map_err(driver_err)?;
                let spectra = stream
                    .alloc_zeros::<float2>(batch * n)
                    .map_err(driver_err)?;
                let len = i32::try_from(n).map_err(|_| GpuError::Fft("FFT too long".into()))?;
                let fft = CudaFft::plan_1d(
                    len,
                    cufftType::CUFFT_C2C,
                    i32::try_from(batch).unwrap_or(i32::MAX),
                    Arc::clone(&stream),
                )
                .map_err(fft_err)?;
                slots.push(Slot {
                    stream,
                    staging,
                    input,
                    spectra,
                    fft,
                });
            }
            let s = Arc::clone(&slots[0].stream);
            let plan = Plan {
                window: s.alloc_zeros::<f32>(n).map_err(driver_err)?,
                window_kind: None,
                acc: s.alloc_zeros::<f32>(n).map_err(driver_err)?,
                count: s.alloc_zeros::<u32>(1).map_err(driver_err)?,
                bins: s.alloc_zeros::<u32>(PEAK_CAP).map_err(driver_err)?,
                slots,
            };
            plans.insert((n, batch), plan);
        }
        plans
            .get_mut(&(n, batch))
            .ok_or_else(|| GpuError::Driver("plan vanished".into()))
    }

    fn load_window(&self, plan: &mut Plan, window: super::Window) -> Result<(), GpuError> {
        if plan.window_kind != Some(window) {
            let n = plan.window.len();
            let w: Vec<f32> = window.coefficients(n).iter().map(|v| *v as f32).collect();
            plan.slots[0]
                .stream
                .memcpy_htod(&w, &mut plan.window)
                .map_err(driver_err)?;
            plan.window_kind = Some(window);
        }
        Ok(())
    }

    /// Σ_m |FFT(w · segment_m)|² (unscaled) over the whole segments in `samples`.
    fn accumulate(
        &self,
        plan: &mut Plan,
        samples: &[Complex32],
        n: usize,
        batch: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let Plan {
            slots, window, acc, ..
        } = plan;
        slots[0].stream.memset_zeros(acc).map_err(driver_err)?;
        let len = n as u32;
        for (i, chunk) in samples.chunks(batch * n).enumerate() {
            let slot = &mut slots[i % 2];
            // Waits until this slot's previous copy has left the staging buffer.
            let host = slot.staging.as_mut_slice().map_err(driver_err)?;
            for (h, s) in host.iter_mut().zip(chunk) {
                *h = float2 { x: s.re, y: s.im };
            }
            // The tail of a short last batch holds stale data: transformed, never summed.
            slot.stream
                .memcpy_htod(&slot.staging, &mut slot.input)
                .map_err(driver_err)?;
            let segs = (chunk.len() / n) as u32;
            let total = chunk.len() as u64;
            let blocks = total.div_ceil(u64::from(BLOCK)).min(65_535) as u32;
            let mut launch = slot.stream.launch_builder(&self.window_fn);
            launch
                .arg(&mut slot.input)
                .arg(&*window)
                .arg(&len)
                .arg(&total);
            // SAFETY: the arguments match `window_batch(float2*, const float*, unsigned int,
            // unsigned long long)`; `input` holds batch·n ≥ total samples and `window` n.
            unsafe { launch.launch(grid(blocks, 1)) }.map_err(driver_err)?;
            slot.fft
                .exec_c2c(&mut slot.input, &mut slot.spectra, FftDirection::Forward)
                .map_err(fft_err)?;
            let chunk_segs = POWER_CHUNK;
            let mut launch = slot.stream.launch_builder(&self.power_fn);
            launch
                .arg(&slot.spectra)
                .arg(&mut *acc)
                .arg(&len)
                .arg(&segs)
                .arg(&chunk_segs);
            // SAFETY: the arguments match `power_accumulate(const float2*, float*, unsigned
            // int, unsigned int, unsigned int)`; `spectra` holds ≥ segs·n values, `acc` n, and
            // the kernel reads only bins < len of segments < segs.
            unsafe { launch.launch(grid(len.div_ceil(BLOCK), segs.div_ceil(chunk_segs).max(1))) }
                .map_err(driver_err)?;
        }
        self.ctx.synchronize().map_err(driver_err)?;
        slots[0].stream.clone_dtoh(&*acc).map_err(driver_err)
    }

    /// The device's peak candidates (local maxima ≥ `min_raw`), or `None` when more than
    /// [`PEAK_CAP`] were found and the host must scan.
    fn peak_candidates(
        &self,
        plan: &mut Plan,
        n: usize,
        min_raw: f32,
    ) -> Result<Option<Vec<usize>>, GpuError> {
        let stream = Arc::clone(&plan.slots[0].stream);
        stream.memset_zeros(&mut plan.count).map_err(driver_err)?;
        let (len, cap) = (n as u32, PEAK_CAP as u32);
        let mut launch = stream.launch_builder(&self.peaks_fn);
        launch
            .arg(&plan.acc)
            .arg(&len)
            .arg(&min_raw)
            .arg(&mut plan.count)
            .arg(&mut plan.bins)
            .arg(&cap);
        // SAFETY: the arguments match `find_peaks(const float*, unsigned int, float, unsigned
        // int*, unsigned int*, unsigned int)`; `acc` holds n values, `bins` PEAK_CAP.
        unsafe { launch.launch(grid(len.div_ceil(BLOCK).min(65_535), 1)) }.map_err(driver_err)?;
        let count = stream.clone_dtoh(&plan.count).map_err(driver_err)?;
        let count = count.first().copied().unwrap_or(0) as usize;
        if count > PEAK_CAP {
            return Ok(None);
        }
        let bins = stream.clone_dtoh(&plan.bins).map_err(driver_err)?;
        Ok(Some(bins[..count].iter().map(|b| *b as usize).collect()))
    }

    /// Times the pipeline on `batch` segments of `fft_len` noise samples, `iters` times:
    /// device-resident (window + FFT + power) and end to end (from host memory).
    pub fn bench(
        &self,
        fft_len: usize,
        batch: usize,
        iters: usize,
    ) -> Result<BenchReport, GpuError> {
        let samples = super::synth::generate(&super::synth::Spec {
            sample_rate_hz: 1e6,
            len: fft_len * batch,
            noise_power: 1.0,
            tones: vec![],
            seed: 1,
        });
        let params = SignalParams {
            sample_rate_hz: 1e6,
            fft_len,
            window: super::Window::Hann,
            averages: batch,
            peaks: 8,
            threshold_db: 6.0,
            backend: super::BackendRequest::Cuda,
            drift_max_hz_per_s: None,
        };
        let iters = iters.max(1);
        // Warm-up: plans, buffers and the window are made once.
        self.analyze(&samples, &params)?;
        let t = Instant::now();
        for _ in 0..iters {
            self.analyze(&samples, &params)?;
        }
        let end_to_end = (samples.len() * iters) as f64 / t.elapsed().as_secs_f64();
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let device = guarded("GPU benchmark", || {
            let slot_batch = (BATCH_SAMPLES / fft_len).clamp(1, batch.next_power_of_two());
            let plan = self.plan(&mut plans, fft_len, slot_batch)?;
            let Plan {
                slots, window, acc, ..
            } = plan;
            let slot = &mut slots[0];
            let segs = slot_batch.min(batch) as u32;
            let len = fft_len as u32;
            let total = u64::from(segs) * u64::from(len);
            let blocks = total.div_ceil(u64::from(BLOCK)).min(65_535) as u32;
            self.ctx.synchronize().map_err(driver_err)?;
            let t = Instant::now();
            for _ in 0..iters {
                let mut launch = slot.stream.launch_builder(&self.window_fn);
                launch
                    .arg(&mut slot.input)
                    .arg(&*window)
                    .arg(&len)
                    .arg(&total);
                // SAFETY: as in `accumulate`.
                unsafe { launch.launch(grid(blocks, 1)) }.map_err(driver_err)?;
                slot.fft
                    .exec_c2c(&mut slot.input, &mut slot.spectra, FftDirection::Forward)
                    .map_err(fft_err)?;
                let mut launch = slot.stream.launch_builder(&self.power_fn);
                launch
                    .arg(&slot.spectra)
                    .arg(&mut *acc)
                    .arg(&len)
                    .arg(&segs)
                    .arg(&POWER_CHUNK);
                // SAFETY: as in `accumulate`.
                unsafe {
                    launch.launch(grid(len.div_ceil(BLOCK), segs.div_ceil(POWER_CHUNK).max(1)))
                }
                .map_err(driver_err)?;
            }
            self.ctx.synchronize().map_err(driver_err)?;
            Ok((total as usize * iters) as f64 / t.elapsed().as_secs_f64())
        })?;
        Ok(BenchReport {
            info: self.info.clone(),
            device_samples_per_s: device,
            device_gb_per_s: device * BYTES_PER_SAMPLE / 1e9,
            end_to_end_samples_per_s: end_to_end,
        })
    }
}

fn grid(x: u32, y: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x.max(1), y.max(1), 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs the analysis on `engine` when given, falling back to the CPU (with a warning) when the
/// GPU fails, so a flaky device costs speed, not a task.
pub fn analyze_with(
    engine: Option<&GpuEngine>,
    samples: &[Complex32],
    params: &SignalParams,
) -> Analysis {
    if let Some(engine) = engine {
        match engine.analyze(samples, params) {
            Ok(a) => return a,
            Err(e) => warn!(error = %e, "GPU analysis failed; falling back to the CPU"),
        }
    }
    super::cpu::analyze(samples, params)
}
