// The GPU runner: random inputs generated on the device, the library timed
// with CUDA events on one stream, the check reading back only what it needs,
// and the dense cuBLAS reference of equal FLOPs measured in the same run.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.hpp"
#include "gpu_util.cuh"
#include "layer.hpp"
#include "random.hpp"
#include "runner.hpp"

namespace sonicmoe::bench {

namespace {

// ---------------------------------------------------------------- kernels --

// Rows of a bf16 or f32 tensor, widened to float on the device: the host
// then only copies (a dsv3-685b expert slice is 44M elements).
template <class T>
__global__ void gather_rows_kernel(const T* src, int64_t cols, const int32_t* rows,
                                   int64_t num_rows, float* dst) {
  const int64_t total = num_rows * cols, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[i] = static_cast<float>(src[int64_t(rows[r]) * cols + c]);
  }
}

void fill_inputs(const BenchLayer& L, uint64_t seed, cudaStream_t s) {
  fill_normal(L.x, seed, Field::X, 1.0f, s);
  fill_normal(L.w1, seed, Field::W1, kWeightStd, s);
  fill_normal(L.b1, seed, Field::B1, kBiasStd, s);
  fill_normal(L.w2, seed, Field::W2, kWeightStd, s);
  fill_normal(L.b2, seed, Field::B2, kBiasStd, s);
  fill_normal(L.dout, seed, Field::Dout, 1.0f, s);
  fill_logits(L.logits, seed, L.problem().E, static_cast<float>(L.problem().expert_bias_std), s);
}

// ------------------------------------------------------------------ timing --

// Events around each run, all runs queued back to back and read after one
// synchronisation, so that no host round trip sits between runs. host_us:
// the host's time to enqueue one run; when it approaches the device time,
// the device waits for launches inside the timed runs.
template <class F>
std::vector<double> time_runs(int iters, cudaStream_t s, F&& f, double* host_us = nullptr) {
  std::vector<EventPair> ev(iters);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(ev[i].start, s));
    f();
    CUDA_CHECK(cudaEventRecord(ev[i].stop, s));
  }
  if (host_us)
    *host_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                   .count() / std::max(iters, 1);
  CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<double> ms(iters);
  for (int i = 0; i < iters; ++i) {
    float v = 0;
    CUDA_CHECK(cudaEventElapsedTime(&v, ev[i].start, ev[i].stop));
    ms[i] = v;
  }
  return ms;
}

// ------------------------------------------------------------ read-back --

// Rows of a device tensor as float; the gather runs on the device so that
// only the rows cross PCIe.
std::vector<float> device_rows(const DevTensor& t, const std::vector<int32_t>& rows) {
  if (!t.t.present() || rows.empty()) return {};
  const Device dev = t.t.device;
  const int64_t cols = t.t.numel() / t.t.shape[0], n = static_cast<int64_t>(rows.size());
  Buffer idx(dev, rows.size() * sizeof(int32_t)), dst(dev, size_t(n * cols) * sizeof(float));
  idx.upload(rows.data());
  const auto* r = static_cast<const int32_t*>(idx.get());
  auto* out = static_cast<float*>(dst.get());
  if (t.t.dtype == DType::BF16)
    gather_rows_kernel<<<grid_for(n * cols), 256>>>(static_cast<const __nv_bfloat16*>(t.t.data),
                                                    cols, r, n, out);
  else
    gather_rows_kernel<<<grid_for(n * cols), 256>>>(static_cast<const float*>(t.t.data), cols, r,
                                                    n, out);
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> host(n * cols);
  dst.download(host.data());  // a synchronous copy: it waits for the gather
  return host;
}

std::vector<int32_t> device_all_ints(const DevTensor& t) {
  std::vector<int32_t> v(t.t.numel());
  t.buf->download(v.data());
  return v;
}

class DeviceLayerAccess final : public LayerAccess {
 public:
  explicit DeviceLayerAccess(const BenchLayer& layer) : L_(layer) {}
  std::vector<float> x_rows(const std::vector<int32_t>& r) override { return device_rows(L_.x, r); }
  std::vector<float> dout_rows(const std::vector<int32_t>& r) override { return device_rows(L_.dout, r); }
  testing::ExpertTensors expert_params(int32_t e) override {
    return {device_rows(L_.w1, {e}), device_rows(L_.b1, {e}), device_rows(L_.w2, {e}),
            device_rows(L_.b2, {e})};
  }
  std::vector<float> logits_rows(const std::vector<int32_t>& r) override { return device_rows(L_.logits, r); }
  std::vector<int32_t> expert_ids() override { return device_all_ints(L_.expert_ids); }
  std::vector<float> scores() override {
    std::vector<float> v(L_.scores.t.numel());
    L_.scores.buf->download(v.data());
    return v;
  }
  std::vector<float> out_rows(const std::vector<int32_t>& r) override { return device_rows(L_.out, r); }
  std::vector<float> dx_rows(const std::vector<int32_t>& r) override { return device_rows(L_.dx, r); }
  std::vector<float> dscores_rows(const std::vector<int32_t>& r) override { return device_rows(L_.dscores, r); }
  std::vector<float> dlogits_rows(const std::vector<int32_t>& r) override { return device_rows(L_.dlogits, r); }
  testing::ExpertTensors expert_grads(int32_t e) override {
    return {device_rows(L_.dw1, {e}), device_rows(L_.db1, {e}), device_rows(L_.dw2, {e}),
            device_rows(L_.db2, {e})};
  }
  RoundedPairs rounded_pairs() override {
    std::vector<float> score(L_.round_score.t.numel());
    L_.round_score.buf->download(score.data());
    return collect_pairs(device_all_ints(L_.round_token), device_all_ints(L_.round_expert), score,
                         device_all_ints(L_.num_pairs)[0]);
  }

 private:
  const BenchLayer& L_;
};

// ------------------------------------------------------- dense reference --

// A dense bf16 layer of the forward's FLOPs: (TK x H)(H x R) then
// (TK x I)(I x H), fp32 accumulation, as two cublasGemmEx calls. Weights
// are stored [out, in] like the experts', so both products are "TN" in
// cuBLAS's column-major terms. Returns the median ms, or -1 when it does
// not fit in the free memory.
double dense_reference_ms(const Problem& p, const RunSettings& st, cudaStream_t s,
                          const std::string& tag) {
  const int64_t M = p.pairs(), d = p.H, R = p.R(), n = p.I;
  const Device dev{DeviceType::CUDA, 0};
  const double bytes = 2.0 * (M * d + R * d + M * R + M * n + d * n + M * d);
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (bytes > 0.95 * double(free_b)) {
    progress(tag, "dense reference: skipped, needs " + gib(bytes) + ", " + gib(double(free_b)) +
                      " free");
    return -1;
  }
  progress(tag, "dense reference: cuBLAS bf16 (" + std::to_string(M) + "x" + std::to_string(d) +
                    ")(" + std::to_string(d) + "x" + std::to_string(R) + ") + (" +
                    std::to_string(M) + "x" + std::to_string(n) + ")(" + std::to_string(n) + "x" +
                    std::to_string(d) + "), " + std::to_string(st.warmup) + " warm-up, " +
                    std::to_string(st.iters) + " timed");
  using testing::make;
  // Random operands, never zeros: tensor cores draw less power, and clock
  // higher, on zeros.
  const DevTensor a = make(dev, DType::BF16, {M, d}), b1 = make(dev, DType::BF16, {R, d}),
                  c1 = make(dev, DType::BF16, {M, R}), a2 = make(dev, DType::BF16, {M, n}),
                  b2 = make(dev, DType::BF16, {d, n}), c2 = make(dev, DType::BF16, {M, d});
  fill_normal(a, p.seed, Field::DenseA, 1.0f, s);
  fill_normal(b1, p.seed, Field::DenseB1, kWeightStd, s);
  fill_normal(a2, p.seed, Field::DenseA2, 1.0f, s);
  fill_normal(b2, p.seed, Field::DenseB2, kWeightStd, s);

  cublasHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasCreate(&handle));
  struct Destroy {
    cublasHandle_t h;
    ~Destroy() { cublasDestroy(h); }
  } destroy{handle};
  CUBLAS_CHECK(cublasSetStream(handle, s));
  const float alpha = 1.0f, beta = 0.0f;
  auto gemms = [&] {
    // C1^T [R, M] = B1 [R, d] . A^T: column-major m = R, n = M, k = d.
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(R), int(M), int(d), &alpha,
                              b1.t.data, CUDA_R_16BF, int(d), a.t.data, CUDA_R_16BF, int(d),
                              &beta, c1.t.data, CUDA_R_16BF, int(R), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    // C2^T [d, M] = B2 [d, n] . A2^T: m = d, n = M, k = n.
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(d), int(M), int(n), &alpha,
                              b2.t.data, CUDA_R_16BF, int(n), a2.t.data, CUDA_R_16BF, int(n),
                              &beta, c2.t.data, CUDA_R_16BF, int(d), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  };
  for (int i = 0; i < st.warmup; ++i) gemms();
  heat(s, st.heat_ms, gemms);  // at its own sustained-load clock, as the layer is
  return median(time_runs(st.iters, s, gemms));
}

}  // namespace

RunResult run_gpu(const Problem& p, const RunSettings& st) {
  const std::string tag = p.name + "/cuda";
  const Device dev{DeviceType::CUDA, 0};
  CUDA_CHECK(cudaSetDevice(0));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  RunResult r;
  r.problem = p;
  r.device = prop.name;

  // First contact with the library: a build without a GPU backend throws
  // Error(Unsupported) here, before anything is allocated.
  const WorkspaceSizes ws = query_workspaces(p, dev);
  const double need = double(layer_bytes(p, ws));
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (need > 0.97 * double(free_b))
    throw std::runtime_error(p.name + " needs " + gib(need) + " of GPU memory; " + r.device +
                             " has " + gib(double(free_b)) + " free of " + gib(double(total_b)));
  StreamHandle stream;
  const Stream s = stream.s;
  {
    progress(tag, "setup: " + gib(need) + " on " + r.device + ", random inputs on the device (seed " +
                      std::to_string(p.seed) + ")");
    const BenchLayer L(p, dev, ws);
    fill_inputs(L, p.seed, stream.s);
    CUDA_CHECK(cudaStreamSynchronize(stream.s));

    progress(tag, "warm-up: " + std::to_string(st.warmup) + " x (forward + backward)");
    for (int i = 0; i < st.warmup; ++i) {
      L.forward(s);
      L.backward(s);
    }
    CUDA_CHECK(cudaStreamSynchronize(stream.s));
    if (st.heat_ms > 0) {
      progress(tag, "heat: forward + backward for " + std::to_string(int(st.heat_ms)) +
                        " ms of device time (the clock under sustained load)");
      heat(stream.s, st.heat_ms, [&] {
        L.forward(s);
        L.backward(s);
      });
    }
    progress(tag, "forward timing: " + std::to_string(st.iters) + " runs, CUDA events");
    double fwd_host = 0, bwd_host = 0;
    r.fwd_ms = median(time_runs(st.iters, stream.s, [&] { L.forward(s); }, &fwd_host));
    progress(tag, "backward timing: " + std::to_string(st.iters) + " runs, CUDA events");
    r.bwd_ms = median(time_runs(st.iters, stream.s, [&] { L.backward(s); }, &bwd_host));
    char buf[128];
    std::snprintf(buf, sizeof buf, "host enqueue per run: forward %.1f us, backward %.1f us",
                  fwd_host, bwd_host);
    progress(tag, buf);
    if (p.rounded()) {
      r.round_ms = median(time_runs(st.iters, stream.s, [&] { L.round(s); }));
      r.computed_pairs = L.computed_pairs();  // the timed runs' count: same inputs every run
      progress(tag, routing_name(p.routing) + ": " + std::to_string(r.computed_pairs) +
                        " pairs computed of " + std::to_string(p.pairs()) +
                        " top-K pairs; round_routing " + std::to_string(*r.round_ms) +
                        " ms; router_backward skipped (not defined for added pairs)");
    }

    if (p.check != CheckMode::None) {
      progress(tag, "check: forward + backward once more on poisoned outputs");
      CUDA_CHECK(cudaDeviceSynchronize());
      L.poison_outputs();
      L.forward(s);
      L.backward(s);
      CUDA_CHECK(cudaStreamSynchronize(stream.s));
      DeviceLayerAccess access(L);
      r.errors = run_check(p, access, st.tol, tag);
      r.checked = true;
    }
  }  // the layer's memory is freed: the dense operands need up to ~10 GiB more
  const double dense = dense_reference_ms(p, st, stream.s, tag);
  if (dense > 0) r.dense_ms = dense;
  return r;
}

}  // namespace sonicmoe::bench
