// mmcl-nn's CUDA kernels, compiled by NVRTC at run time (see mod.rs).
#define FULL_MASK 0xffffffffu
#define LOWEST (-3.402823466e38f)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// The row kernels run one warp per row: blockDim (32, ROWS_PER_BLOCK); a whole warp shares
// its row, so the early return keeps the shuffles' warps complete.

extern "C" __global__ void mmcl_softmax_fwd(const float* x, float* y, int rows, int n) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * n;
    float* yr = y + (size_t)row * n;
    float m = LOWEST;
    for (int j = threadIdx.x; j < n; j += 32) m = fmaxf(m, xr[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += 32) {
        float e = expf(xr[j] - m);
        yr[j] = e;
        s += e;
    }
    float inv = 1.0f / warp_sum(s);
    for (int j = threadIdx.x; j < n; j += 32) yr[j] *= inv;
}

extern "C" __global__ void mmcl_softmax_bwd(const float* y, const float* g, float* dx, int rows,
                                            int n) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    size_t base = (size_t)row * n;
    float d = 0.0f;
    for (int j = threadIdx.x; j < n; j += 32) d += g[base + j] * y[base + j];
    d = warp_sum(d);
    for (int j = threadIdx.x; j < n; j += 32) dx[base + j] = y[base + j] * (g[base + j] - d);
}

__device__ __forceinline__ void row_stats(const float* xr, int n, float eps, float* mean,
                                          float* rstd) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += 32) s += xr[j];
    float m = warp_sum(s) / n;
    float v = 0.0f;
    for (int j = threadIdx.x; j < n; j += 32) {
        float c = xr[j] - m;
        v += c * c;
    }
    *mean = m;
    *rstd = 1.0f / sqrtf(warp_sum(v) / n + eps);
}

extern "C" __global__ void mmcl_layer_norm_fwd(const float* x, const float* w, const float* b,
                                               float* y, int rows, int n, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * n;
    float* yr = y + (size_t)row * n;
    float mean, rstd;
    row_stats(xr, n, eps, &mean, &rstd);
    for (int j = threadIdx.x; j < n; j += 32) yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
}

// dx of every row, and each row's mean and 1/std into stats[2 * row ..] for the weight and
// bias gradients.
extern "C" __global__ void mmcl_layer_norm_bwd(const float* x, const float* w, const float* g,
                                               float* dx, float* stats, int rows, int n,
                                               float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    size_t base = (size_t)row * n;
    float mean, rstd;
    row_stats(x + base, n, eps, &mean, &rstd);
    float sum_gw = 0.0f, sum_gw_centered = 0.0f;
    for (int j = threadIdx.x; j < n; j += 32) {
        float gw = g[base + j] * w[j];
        sum_gw += gw;
        sum_gw_centered += gw * (x[base + j] - mean);
    }
    float a = warp_sum(sum_gw) / n;
    float c = warp_sum(sum_gw_centered) * rstd / n;
    for (int j = threadIdx.x; j < n; j += 32) {
        float xhat = (x[base + j] - mean) * rstd;
        dx[base + j] = rstd * (g[base + j] * w[j] - a - xhat * c);
    }
    if (threadIdx.x == 0) {
        stats[2 * (size_t)row] = mean;
        stats[2 * (size_t)row + 1] = rstd;
    }
}

// Partial sums over chunks of rows of g * xhat (first n) and g (next n): partials[chunk][2n].
extern "C" __global__ void mmcl_layer_norm_param_partials(const float* x, const float* g,
                                                          const float* stats, float* partials,
                                                          int rows, int n, int chunk_rows) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int chunk = blockIdx.y;
    if (j >= n) return;
    int end = min((chunk + 1) * chunk_rows, rows);
    float dw = 0.0f, db = 0.0f;
    for (int r = chunk * chunk_rows; r < end; ++r) {
        size_t i = (size_t)r * n + j;
        float xhat = (x[i] - stats[2 * (size_t)r]) * stats[2 * (size_t)r + 1];
        dw += g[i] * xhat;
        db += g[i];
    }
    partials[(size_t)chunk * 2 * n + j] = dw;
    partials[(size_t)chunk * 2 * n + n + j] = db;
}

// Partial column sums over chunks of rows: partials[chunk][n].
extern "C" __global__ void mmcl_column_partials(const float* g, float* partials, int rows, int n,
                                                int chunk_rows) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int chunk = blockIdx.y;
    if (j >= n) return;
    int end = min((chunk + 1) * chunk_rows, rows);
    float s = 0.0f;
    for (int r = chunk * chunk_rows; r < end; ++r) s += g[(size_t)r * n + j];
    partials[(size_t)chunk * n + j] = s;
}

// out[j] = sum over chunks, in chunk order, of partials[chunk][j].
extern "C" __global__ void mmcl_sum_chunks(const float* partials, float* out, int chunks,
                                           int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; ++c) s += partials[(size_t)c * width + j];
    out[j] = s;
}

__device__ __forceinline__ float normal_cdf(float v) {
    return 0.5f * (1.0f + erff(v * 0.70710678118654752f));
}

extern "C" __global__ void mmcl_bias_gelu_fwd(const float* x, const float* b, float* y,
                                              long long total, int h) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float v = x[i] + b[i % h];
        y[i] = v * normal_cdf(v);
    }
}

extern "C" __global__ void mmcl_bias_gelu_bwd(const float* x, const float* b, const float* g,
                                              float* dx, long long total, int h) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float v = x[i] + b[i % h];
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = g[i] * (normal_cdf(v) + v * pdf);
    }
}
