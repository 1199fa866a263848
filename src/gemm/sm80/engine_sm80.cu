// The portable engine: the six products wired from the sm80 pieces.
//
// Instantiations (kept explicit so compile time stays visible):
//   up_proj   M  A=X[gather] K   B=W1_e K   UpProjEpilogue<act> x 7
//   down_proj M  A=A         K   B=W2_e K   StoreEpilogue
//   dh        M  A=dO[gather] K  B=W2_e MN  DHEpilogue<act> x 7 x 2 tilings
//   dx_tilde  M  A=dH        K   B=W1_e MN  StoreEpilogue
//   dw2       K  A=dO[gather] MN B=A'   MN  StoreEpilogue  (128 x 256)
//   dw1       K  A=dH        MN  B=X[gather] MN StoreEpilogue  (256 x 128)
// Each product's tile, pipeline depth and CTAs/SM come from the table below
// (products with equal rows and equal template arguments share a kernel).
#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/activation.hpp"
#include "cuda/per_device.hpp"
#include "gemm/common/epilogues.cuh"
#include "gemm/common/launch.cuh"
#include "gemm/engine.hpp"
#include "gemm/sm80/kernel.cuh"

namespace sonicmoe::gemm {
namespace {

using namespace sm80;

// How a product runs: M and N tiles (128 x 128, 128 x 256, or 256 x 128 for
// grouped-K products: grouped-M products are counted in 128-row tiles,
// kGroupedMTile), cp.async stages (2 .. kMaxStages; the launcher lowers it
// where the device's shared memory per block is smaller, e.g. 4 -> 3 at
// 48 KiB stages on an A100), and the CTAs per SM the register budget must
// allow (__launch_bounds__: 2 caps a thread at 128 registers; 128 x 256 and
// 256 x 128 tiles hold 128 accumulators per thread and need 1).
struct Tiling {
  int bm, bn, stages, min_ctas;
  bool overlap;  // the next tile's prologue before this tile's epilogue
  // The depth compiled in (kStages) rather than read at run time. Off where
  // ptxas then spills (the 2-stage dH at 128 registers: 60 bytes) and where
  // it measured slower (the 128 x 128 up-projection: the table's comment).
  bool fixed_depth = true;
};

// The one place to choose. The usual rows:
//   {128, 128, 3, 2}  128 x 128, 3 stages of 32 KiB: two CTAs share an SM's
//                     shared memory and registers (the dH epilogue and the
//                     dW products spill at 128 registers: {128, 128, 3, 1}
//                     for those).
//   {128, 256, 4, 1}  128 x 256, 4 stages of 48 KiB (192 KiB): 85 MACs per
//                     loaded element instead of 64 (128 x 128 is L2-bound,
//                     docs/NOTES.md).
//   {256, 128, 4, 1}  256 x 128, the same stages and intensity with the
//                     roles of M and N swapped (grouped-K products only).
// The grid is what the occupancy query allows: more stages than two CTAs'
// shared memory holds make a min_ctas = 2 kernel run one CTA per SM.
// The dW products were faster at 128 x 256 than at 128 x 128 on every
// canonical shape (H200: dW2 20-45%, dW1 4-14%, and dH 4-11% at one CTA per
// SM). The grouped-M products pick per call (by_weight_size, dh_narrow
// below): two CTAs of 128 x 128 won where the expert's weight matrix is
// small. dH runs so where its reduction (d) is short, on 2 stages, so that
// two CTAs with the H ring fit an SM: one CTA's epilogue (its dH and A'
// stores: docs/NOTES.md) then runs under the other's mainloop. H200, two
// passes, 128 x 256 -> two 128 x 128: 7-12% faster at d = 768 and 1536
// (1.4b-*, 7b-*: 7b-n1024 0.68-0.69 -> 0.59-0.63 ms), 1-12% slower at
// d = 2048 and 2304 (olmoe-7b, qwen3next-80b, kimi-48b), equal or 5%
// slower at d = 4096.
// Each stage copies the gathered operand (X or dO rows by token) 16 bytes
// per thread and row, with its index load: it belongs on the tile's narrow
// side (docs/NOTES.md, on the Hopper engine). dW1 gathers B (X), so it runs
// 256 x 128; dW2 gathers A (dO), which 128 x 256 already keeps narrow.
// Overlapping the next tile's prologue with the epilogue (overlap) pays
// where the K loop is short, where a tile's prologue and epilogue weigh
// most (H200, same runs, 128 x 128: down_proj 7b-n256 (K 256) 207 -> 265
// TFLOPS, 7b-n1024 (K 1024) 268-292 -> 311-331, dX~ 7b-n256 (K 512) 262
// -> 281, up_proj 7b-n1024 (K 1536) 310-324 -> 317-330) and cost a long
// one 2% (dX~ 7b-n1024, K 2048: 323-327 -> 317-319); on 128 x 256 and
// 256 x 128 tiles it gained nothing or lost up to 5% (dX~ 30b-n1024 330
// -> 311): docs/NOTES.md.
// A depth compiled in (fixed_depth) instead of read per K step: H200,
// 7b-n1024, two passes in one run, runtime -> fixed (ms): dX~ 0.914 ->
// 0.862, down_proj 0.464 -> 0.436, dW2 0.487 -> 0.475, dW1 0.993-1.003 ->
// 0.934-0.984, but the 128 x 128 up-projection 0.991-1.002 -> 1.025-1.031,
// so it keeps the runtime depth (as dH's 2-stage tiles, which spill), also
// past kOverlapMaxK (kUpProjLongK): compiled in there, the gated epilogues
// spilled at 128 registers once H went out in h's order without shuffles.
//                                M tile  N tile  stages  CTAs/SM  overlap fixed_depth
constexpr Tiling kNarrowTiling   {128,    128,    3,      2,       true};
constexpr Tiling kNarrowUpProj   {128,    128,    3,      2,       true,   false};
constexpr Tiling kNarrowLongK    {128,    128,    3,      2,       false};
constexpr Tiling kUpProjLongK    {128,    128,    3,      2,       false,  false};
constexpr Tiling kWideTiling     {128,    256,    4,      1,       false};
constexpr Tiling kDhTiling       {128,    256,    4,      1,       false};
constexpr Tiling kDhNarrow       {128,    128,    2,      2,       false,  false};
constexpr Tiling kDw2Tiling      {128,    256,    4,      1,       false};
constexpr Tiling kDw1Tiling      {256,    128,    4,      1,       false};

// Up-projection, down-projection and dX~ at 128 x 256 when the product's
// N x K (one expert's weights) is at least 4M elements, else 128 x 128 with
// two CTAs per SM. Measured on H200 (docs/NOTES.md): 128 x 256 lost 2-9%
// on 7b-n256 and 7b-n1024 (N x K <= 3.1M) and won 3-12% on 30b-n1024 and
// 120b-n2048 (N x K >= 4.2M).
constexpr int64_t kWideFromNK = int64_t{4} << 20;
// 128 x 128 tiles overlap the next prologue up to this K (24 k-tiles).
constexpr int64_t kOverlapMaxK = 1536;
template <Tiling kNarrow = kNarrowTiling, Tiling kLongK = kNarrowLongK, class Fn>
void by_weight_size(int64_t N, int64_t K, Fn&& fn) {
  if (N * K >= kWideFromNK) fn.template operator()<kWideTiling>();
  else if (K > kOverlapMaxK) fn.template operator()<kLongK>();
  else fn.template operator()<kNarrow>();
}

// One CTA's dynamic shared memory: the stages, the loaders' published
// addresses, then the epilogue's region.
template <Tiling C, class Epi>
constexpr int smem_bytes(int stages = C.stages) {
  return stages * kStageBytes<C.bm, C.bn> + kPublishedBytes +
         Epi::template smem_bytes<C.bm, sm80::kThreads>();
}

// dH on two CTAs of 128 x 128 per SM where d is at most kDhNarrowMaxK and
// the device's shared memory holds two of them (not an A100's 164 KiB).
constexpr int64_t kDhNarrowMaxK = 1536;
bool dh_narrow(const LayerDims& L) {
  if (L.d > kDhNarrowMaxK) return false;
  return cuda::per_device<bool>([](int dev) {
    int per_sm = 0;
    cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    // Gated (the larger H ring), plus the 1 KiB the runtime keeps per CTA.
    constexpr int kBytes = smem_bytes<kDhNarrow, DHEpilogue<Activation::SwiGLU>>() + 1024;
    return per_sm >= 2 * kBytes;
  });
}

// SONICMOE_PORTABLE_STAGES=2 or 3 caps every product's depth as a device
// with less shared memory would (an A100 holds 3 stages of 48 KiB), so that
// the runtime-depth kernels run, and are tested, on a Hopper GPU too
// (tools/device_tests.sh). Read once per process; any other value (4, unset,
// not a number) leaves every depth as the Tiling table and the device give it.
int stage_cap() {
  static const int cap = [] {
    const char* v = std::getenv("SONICMOE_PORTABLE_STAGES");
    const int n = v ? std::atoi(v) : kMaxStages;
    return n >= 2 && n <= kMaxStages ? n : kMaxStages;
  }();
  return cap;
}

template <Grouping G, Major MA, Major MB, bool kGatherA, class Epi, Tiling C>
void launch(const char* what, GemmArgs args, const typename Epi::Params& ep, int64_t tile_bound,
            cudaStream_t stream) {
  static_assert(C.stages >= 2 && C.stages <= kMaxStages);
  static_assert(G == Grouping::K || C.bm == kGroupedMTile,
                "grouped-M tiles are counted in kGroupedMTile rows (Engine::m_tile)");
  // The product's depth as a compile-time constant, and the same kernel with
  // a runtime depth for devices whose shared memory per block holds fewer
  // stages (an A100's 163 KiB: 3 of the 48 KiB stages; 99 KiB parts).
  using Kernel = void (*)(GemmArgs, typename Epi::Params);
  const Kernel fixed = grouped_gemm_kernel<G, MA, MB, kGatherA, C.bm, C.bn, Epi, C.min_ctas,
                                           C.overlap, C.fixed_depth ? C.stages : 0>;
  const Kernel lowered =
      grouped_gemm_kernel<G, MA, MB, kGatherA, C.bm, C.bn, Epi, C.min_ctas, C.overlap, 0>;
  static_assert(smem_bytes<C, Epi>() <= 227 * 1024, "shared memory budget of one CTA (H100)");
  // Per instantiation, once per device (the first call pays for it): the
  // stages the device's shared memory per block holds, the kernel for that
  // depth, its dynamic shared-memory limit, and the occupancy.
  struct Config {
    Kernel kernel;
    int stages, smem, blocks_per_sm;
  };
  const Config& cfg = cuda::per_device<Config>([&](int dev) {
    int optin = 0;
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    Config c{fixed, C.stages, 0, 0};
    while (c.stages > 2 && (smem_bytes<C, Epi>(c.stages) > optin || c.stages > stage_cap()))
      --c.stages;
    if (c.stages != C.stages) c.kernel = lowered;
    c.smem = smem_bytes<C, Epi>(c.stages);
    cudaFuncSetAttribute(c.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c.blocks_per_sm, c.kernel, kThreads, c.smem);
    c.blocks_per_sm = std::max(c.blocks_per_sm, 1);
    return c;
  });
  if (tile_bound <= 0) return;
  args.stages = cfg.stages;
  const int64_t grid = std::min<int64_t>(tile_bound, int64_t{sm_count()} * cfg.blocks_per_sm);
  cfg.kernel<<<static_cast<unsigned>(grid), kThreads, cfg.smem, stream>>>(args, ep);
  check_launch(what);
}

class PortableEngine final : public Engine {
 public:
  const char* name() const override { return "portable-sm80"; }
  int m_tile() const override { return kGroupedMTile; }
  int dh_n_tile(const LayerDims& L) const override {
    return dh_narrow(L) ? kDhNarrow.bn : kDhTiling.bn;
  }

  void up_proj(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* x,
               bf16_t* h, bf16_t* a, cudaStream_t st) override {
    const int64_t R = L.R();
    by_weight_size<kNarrowUpProj, kUpProjLongK>(R, L.d, [&]<Tiling C>() {
      GemmArgs g{rows_of(x, L.d, L.T, r.sorted_token), weights_of(w.w1, L.d, R * L.d),
                 grouped_m_schedule(L, r, R, L.d, C.bn)};
      act::dispatch(L.act, [&]<Activation A>() {
        launch<Grouping::M, Major::K, Major::K, true, UpProjEpilogue<A>, C>(
            "up_proj", g, {h, a, w.b1, L.n}, grouped_m_tiles(L, g.schedule, kGroupedMTile), st);
      });
    });
  }

  void down_proj(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* a,
                 bf16_t* y, cudaStream_t st) override {
    by_weight_size(L.d, L.n, [&]<Tiling C>() {
      GemmArgs g{rows_of(a, L.n, L.N), weights_of(w.w2, L.n, L.d * L.n),
                 grouped_m_schedule(L, r, L.d, L.n, C.bn)};
      launch<Grouping::M, Major::K, Major::K, false, StoreEpilogue, C>(
          "down_proj", g, {y, L.d, 0, w.b2}, grouped_m_tiles(L, g.schedule, kGroupedMTile), st);
    });
  }

  void dh(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* dout,
          const bf16_t* h, const float* scores, bf16_t* dh, bf16_t* ap, float* ds_part,
          cudaStream_t st) override {
    auto run = [&]<Tiling C>() {
      GemmArgs g{rows_of(dout, L.d, L.T, r.sorted_token), weights_of(w.w2, L.n, L.d * L.n),
                 grouped_m_schedule(L, r, L.n, L.d, C.bn)};
      act::dispatch(L.act, [&]<Activation A>() {
        launch<Grouping::M, Major::K, Major::MN, true, DHEpilogue<A>, C>(
            "dh", g, {h, scores, dh, ap, ds_part},
            grouped_m_tiles(L, g.schedule, kGroupedMTile), st);
      });
    };
    if (dh_narrow(L)) run.template operator()<kDhNarrow>();
    else run.template operator()<kDhTiling>();
  }

  void dx_tilde(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* dh,
                bf16_t* dxt, cudaStream_t st) override {
    const int64_t R = L.R();
    by_weight_size(L.d, R, [&]<Tiling C>() {
      GemmArgs g{rows_of(dh, R, L.N), weights_of(w.w1, L.d, R * L.d),
                 grouped_m_schedule(L, r, L.d, R, C.bn)};
      launch<Grouping::M, Major::K, Major::MN, false, StoreEpilogue, C>(
          "dx_tilde", g, {dxt, L.d, 0, nullptr}, grouped_m_tiles(L, g.schedule, kGroupedMTile), st);
    });
  }

  void dw2(const LayerDims& L, const RoutingPtrs& r, const bf16_t* dout, const bf16_t* ap,
           bf16_t* dw2, cudaStream_t st) override {
    GemmArgs g{rows_of(dout, L.d, L.T, r.sorted_token), rows_of(ap, L.n, L.N),
               grouped_k_schedule(L, r, L.d, L.n, kDw2Tiling.bm, kDw2Tiling.bn)};
    const int64_t tiles = grouped_k_units(L, g.schedule);
    launch<Grouping::K, Major::MN, Major::MN, false, StoreEpilogue, kDw2Tiling>(
        "dw2", g, {dw2, L.n, L.d * L.n, nullptr}, tiles, st);
  }

  void dw1(const LayerDims& L, const RoutingPtrs& r, const bf16_t* dh, const bf16_t* x, bf16_t* dw1,
           cudaStream_t st) override {
    const int64_t R = L.R();
    GemmArgs g{rows_of(dh, R, L.N), rows_of(x, L.d, L.T, r.sorted_token),
               grouped_k_schedule(L, r, R, L.d, kDw1Tiling.bm, kDw1Tiling.bn)};
    const int64_t tiles = grouped_k_units(L, g.schedule);
    launch<Grouping::K, Major::MN, Major::MN, false, StoreEpilogue, kDw1Tiling>(
        "dw1", g, {dw1, L.d, R * L.d, nullptr}, tiles, st);
  }
};

}  // namespace

Engine& portable_engine() {
  static PortableEngine engine;
  return engine;
}

}  // namespace sonicmoe::gemm
