// analyze-signal device code (protocol section 15.2). Compiled at run time by NVRTC through
// cudarc (reference-realm/src/signal/gpu.rs), and to PTX in CI without a GPU
// (reference-realm/tests/nvrtc_ptx.rs). No #include: NVRTC provides float2 and atomicAdd.
//
// Layout: a batch of `segs` segments of `len` complex samples (float2), segment after segment.
// `len` is a power of two (16..65536), so `i & (len - 1)` is the index within a segment.

// data[i] *= w[i mod len] for the first `total` samples (grid-stride loop: any grid size works).
extern "C" __global__ void window_batch(float2* data, const float* w, unsigned int len,
                                        unsigned long long total)
{
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const float s = w[i & (len - 1)];
        float2 v = data[i];
        v.x *= s;
        v.y *= s;
        data[i] = v;
    }
}

// acc[k] += sum over segments m of |spec[m * len + k]|^2. grid.x covers the bins (adjacent
// threads read adjacent bins: coalesced), grid.y splits the segments into chunks of `chunk`,
// so a short FFT with many segments still fills the device; atomics join the chunks.
extern "C" __global__ void power_accumulate(const float2* spec, float* acc, unsigned int len,
                                            unsigned int segs, unsigned int chunk)
{
    const unsigned int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= len) {
        return;
    }
    const unsigned int first = blockIdx.y * chunk;
    const unsigned int last = min(first + chunk, segs);
    if (first >= last) {
        return;
    }
    float sum = 0.0f;
    for (unsigned int m = first; m < last; ++m) {
        const float2 v = spec[(unsigned long long)m * len + k];
        sum += v.x * v.x + v.y * v.y;
    }
    atomicAdd(&acc[k], sum);
}

// Local maxima of the (circular) power spectrum p at or above min_power (section 15.2 item 7):
// p[k] > p[k-1] and p[k] >= p[k+1]. Their bins go to bins[0..cap) in any order; *count ends as
// the number found, which may exceed cap (the host then scans every bin itself).
extern "C" __global__ void find_peaks(const float* p, unsigned int len, float min_power,
                                      unsigned int* count, unsigned int* bins, unsigned int cap)
{
    const unsigned int stride = gridDim.x * blockDim.x;
    for (unsigned int k = blockIdx.x * blockDim.x + threadIdx.x; k < len; k += stride) {
        const float v = p[k];
        const float prev = p[(k + len - 1) & (len - 1)];
        const float next = p[(k + 1) & (len - 1)];
        if (v > prev && v >= next && v >= min_power) {
            const unsigned int slot = atomicAdd(count, 1u);
            if (slot < cap) {
                bins[slot] = k;
            }
        }
    }
}
