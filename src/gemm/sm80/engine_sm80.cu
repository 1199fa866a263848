// The portable engine: the six products wired from the sm80 pieces.
//
// Instantiations (kept explicit so compile time stays visible); CTAs/SM is
// the register budget (2: 128 registers per thread), 1 where 2 spills:
//   up_proj   M  A=X[gather] K   B=W1_e K   UpProjEpilogue<act> x 7   2
//   down_proj M  A=A         K   B=W2_e K   StoreEpilogue             2
//   dh        M  A=dO[gather] K  B=W2_e MN  DHEpilogue<act> x 7       1
//   dx_tilde  M  A=dH        K   B=W1_e MN  StoreEpilogue             2
//   dw2       K  A=dO[gather] MN B=A'   MN  StoreEpilogue             1
//   dw1       K  A=dH        MN  B=X[gather] MN StoreEpilogue         (same kernel)
#include <algorithm>
#include <string>

#include "common/activation.hpp"
#include "gemm/common/launch.cuh"
#include "gemm/engine.hpp"
#include "gemm/sm80/kernel.cuh"

namespace sonicmoe::gemm {
namespace {

using namespace sm80;

template <Grouping G, Major MA, Major MB, bool kGatherA, class Epi, int kMinCtas>
void launch(const char* what, const GemmArgs& args, const typename Epi::Params& ep,
            int64_t tile_bound, cudaStream_t stream) {
  auto kernel = grouped_gemm_kernel<G, MA, MB, kGatherA, Epi, kMinCtas>;
  constexpr int smem = kMainloopSmem + Epi::template smem_bytes<kBM>();
  static_assert(smem <= 227 * 1024, "shared memory budget of one CTA");
  // Per instantiation: raise the dynamic shared-memory limit and read the
  // occupancy once (the first call of a process pays for it).
  static const int blocks_per_sm = [&] {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int blocks = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem);
    return std::max(blocks, 1);
  }();
  if (tile_bound <= 0) return;
  const int64_t grid = std::min<int64_t>(tile_bound, int64_t{sm_count()} * blocks_per_sm);
  kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(args, ep);
  check_launch(what);
}

class PortableEngine final : public Engine {
 public:
  const char* name() const override { return "portable-sm80"; }
  int m_tile() const override { return kBM; }
  int dh_n_tile() const override { return kBN; }

  void up_proj(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* x,
               bf16_t* h, bf16_t* a, cudaStream_t st) override {
    const int64_t R = L.R();
    GemmArgs g{rows_of(x, L.d, L.T, r.sorted_token), weights_of(w.w1, L.d, R * L.d),
               grouped_m_schedule(L, r, R, L.d, kBN)};
    act::dispatch(L.act, [&]<Activation A>() {
      using Epi = UpProjEpilogue<A>;
      launch<Grouping::M, Major::K, Major::K, true, Epi, 2>(
          "up_proj", g, {h, a, w.b1, L.n}, grouped_m_tiles(L, g.schedule, kBM), st);
    });
  }

  void down_proj(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* a,
                 bf16_t* y, cudaStream_t st) override {
    GemmArgs g{rows_of(a, L.n, L.N), weights_of(w.w2, L.n, L.d * L.n),
               grouped_m_schedule(L, r, L.d, L.n, kBN)};
    launch<Grouping::M, Major::K, Major::K, false, StoreEpilogue, 2>(
        "down_proj", g, {y, L.d, 0, w.b2}, grouped_m_tiles(L, g.schedule, kBM), st);
  }

  void dh(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* dout,
          const bf16_t* h, const float* scores, bf16_t* dh, bf16_t* ap, float* ds_part,
          cudaStream_t st) override {
    GemmArgs g{rows_of(dout, L.d, L.T, r.sorted_token), weights_of(w.w2, L.n, L.d * L.n),
               grouped_m_schedule(L, r, L.n, L.d, kBN)};
    act::dispatch(L.act, [&]<Activation A>() {
      using Epi = DHEpilogue<A>;
      launch<Grouping::M, Major::K, Major::MN, true, Epi, 1>(
          "dh", g, {h, scores, r.sorted_pair, dh, ap, ds_part}, grouped_m_tiles(L, g.schedule, kBM),
          st);
    });
  }

  void dx_tilde(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* dh,
                bf16_t* dxt, cudaStream_t st) override {
    const int64_t R = L.R();
    GemmArgs g{rows_of(dh, R, L.N), weights_of(w.w1, L.d, R * L.d),
               grouped_m_schedule(L, r, L.d, R, kBN)};
    launch<Grouping::M, Major::K, Major::MN, false, StoreEpilogue, 2>(
        "dx_tilde", g, {dxt, L.d, 0, nullptr}, grouped_m_tiles(L, g.schedule, kBM), st);
  }

  void dw2(const LayerDims& L, const RoutingPtrs& r, const bf16_t* dout, const bf16_t* ap,
           bf16_t* dw2, cudaStream_t st) override {
    GemmArgs g{rows_of(dout, L.d, L.T, r.sorted_token), rows_of(ap, L.n, L.N),
               grouped_k_schedule(L, r, L.d, L.n, kBM, kBN)};
    const int64_t tiles = grouped_k_tiles(L, g.schedule);
    launch<Grouping::K, Major::MN, Major::MN, false, StoreEpilogue, 1>(
        "dw2", g, {dw2, L.n, L.d * L.n, nullptr}, tiles, st);
  }

  void dw1(const LayerDims& L, const RoutingPtrs& r, const bf16_t* dh, const bf16_t* x, bf16_t* dw1,
           cudaStream_t st) override {
    const int64_t R = L.R();
    GemmArgs g{rows_of(dh, R, L.N), rows_of(x, L.d, L.T, r.sorted_token),
               grouped_k_schedule(L, r, R, L.d, kBM, kBN)};
    const int64_t tiles = grouped_k_tiles(L, g.schedule);
    launch<Grouping::K, Major::MN, Major::MN, false, StoreEpilogue, 1>(
        "dw1", g, {dw1, L.d, R * L.d, nullptr}, tiles, st);
  }
};

}  // namespace

Engine& portable_engine() {
  static PortableEngine engine;
  return engine;
}

}  // namespace sonicmoe::gemm
