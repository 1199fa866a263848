// The Hopper engine: the six products on TMA + wgmma (compiled for sm_90a only).
//
// Instantiations (G: grouping; A/B: majorness and source; 128 x 256 tiles,
// 4 stages of 48 KiB):
//   up_proj   M  A=X[gather] K Copy   B=W1_e K Tma    UpProjEpilogue<act> x 7
//   down_proj M  A=A         K Tma    B=W2_e K Tma    StoreEpilogue
//   dh        M  A=dO[gather] K Copy  B=W2_e MN Tma   DHEpilogue<act> x 7
//   dx_tilde  M  A=dH        K Tma    B=W1_e MN Tma   StoreEpilogue
//   dw2       K  A=dO[gather] MN Copy B=A'   MN Tma   StoreEpilogue
//   dw1^T     K  A=X[gather] MN Copy  B=dH   MN Tma   TransposedStoreEpilogue
// All six run on 2-CTA clusters sharing their TMA operand by multicast
// (W1_e, W2_e, W2_e, W1_e, A', dH). down_proj and dX~ were solo until their
// weight re-reads showed on the H100's lower bandwidth: pairs there took
// dX~ 120b-n2048 from 0.59 to 0.88 of dense (docs/NOTES.md), and were
// neutral on H200 kernels. With SONICMOE_HOPPER_SCHEDULE=pingpong
// the four grouped-M products run ping-pong 128 x 128 tiles instead
// (MSchedule below).
#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/activation.hpp"
#include "cuda/per_device.hpp"
#include "gemm/common/epilogues.cuh"
#include "gemm/common/launch.cuh"
#include "gemm/engine.hpp"
#include "gemm/sm90/epilogue_transposed.cuh"
#include "gemm/sm90/kernel.cuh"
#include "gemm/sm90/tma.hpp"
#include "gemm/sm90/trace_host.cuh"

namespace sonicmoe::gemm {
namespace {

using namespace sm90;

// Tile widths: 256 columns halve the re-reads of the row operand (gathered
// X or dO, or the activations) against 128; the L2 -> SM traffic of 128 x 128
// tiles caps the layer well below the tensor cores (docs/NOTES.md).
constexpr int kWideN = 256, kWideStages = 4;

// tile_bound: an upper bound of the scheduled tiles (pairs of tiles with
// 2-CTA clusters). The grid is persistent: as many CTAs (clusters) as can
// be resident at once, so that no wave waits for another.
template <Grouping G, Major MA, Src SA, Major MB, Src SB, int kBN, int kStages, class Epi,
          int kTileM = kBM, bool kPingPong = false, int kCluster = 1>
void launch(const char* what, const GemmArgs& args, const CUtensorMap& map_a,
            const CUtensorMap& map_b, const typename Epi::Params& ep, int64_t tile_bound,
            cudaStream_t stream) {
  using K = Kernel<G, MA, SA, MB, SB, kBN, kStages, Epi, kTileM, kPingPong, kCluster>;
  auto kernel = grouped_gemm_kernel<K>;
  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = kCluster;
  cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = K::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  // Function attributes and residency are per device: found once on each.
  // A GPC's SMs hold whole clusters only, so fewer than sm_count / 2 pairs
  // may be resident; a grid past that would run a second, partial wave.
  const int resident = cuda::per_device<int>([&](int) {
    cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, K::kSmemBytes);
    int clusters = sm_count() / kCluster;
    if (e == cudaSuccess && kCluster > 1) {
      cfg.gridDim = dim3(kCluster * clusters);
      e = cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg);
    }
    if (e != cudaSuccess || clusters < 1)
      throw Error(Status::CudaError, std::string("sonicmoe: ") + what +
                                         " launch settings: " + cudaGetErrorString(e));
    return clusters;
  });
  if (tile_bound <= 0) return;
  cfg.gridDim = dim3(static_cast<unsigned>(kCluster * std::min<int64_t>(tile_bound, resident)));
  trace::before_launch(stream);
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args, map_a, map_b, ep);
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: launching ") + what + " failed: " + cudaGetErrorString(e));
  check_launch(what);
  trace::after_launch(what, cfg.gridDim.x, stream);
}

const CUtensorMap kNoMap{};

// How the grouped-M products run: N tile, stages, consumer schedule, CTAs
// per cluster.
//   cooperative  both consumer warpgroups on one 128 x 256 tile, 4 stages of
//                48 KiB, CTAs in pairs that share the expert's weight tile
//                by TMA multicast (the default)
//   solo         the same without the pairs: SONICMOE_HOPPER_CLUSTER=1
//   ping-pong    each warpgroup on its own 128 x 128 tile, 6 stages of 32
//                KiB. Measured slower on H200 (docs/NOTES.md) except dH on
//                7b-n256 (3%), so it is opt-in:
//                SONICMOE_HOPPER_SCHEDULE=pingpong
// Both variables are read once per process (tools/device_tests.sh runs the
// GPU tests with each).
struct MSchedule {
  int bn, stages;
  bool ping_pong;
  int cluster;
};
constexpr MSchedule kCooperative{kWideN, kWideStages, false, 2},
    kSolo{kWideN, kWideStages, false, 1}, kPingPong{128, 6, true, 1};

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == value;
}
bool ping_pong_requested() {
  static const bool on = env_is("SONICMOE_HOPPER_SCHEDULE", "pingpong");
  return on;
}
// CTAs per cluster of every product (1 or 2).
int cluster_size() {
  static const int n = env_is("SONICMOE_HOPPER_CLUSTER", "1") ? 1 : 2;
  return n;
}
// Calls fn.template operator()<S>() with the process's grouped-M schedule.
template <class Fn>
void with_m_schedule(Fn&& fn) {
  if (ping_pong_requested()) fn.template operator()<kPingPong>();
  else if (cluster_size() == 1) fn.template operator()<kSolo>();
  else fn.template operator()<kCooperative>();
}
// Calls fn.template operator()<C>() with the process's cluster size.
template <class Fn>
void with_cluster(Fn&& fn) {
  if (cluster_size() == 1) fn.template operator()<1>();
  else fn.template operator()<2>();
}

// A grouped-M launch with schedule S on kCluster-CTA clusters (tiles of kBM
// rows, scheduled kCluster at a time).
template <MSchedule S, int kCluster, Major MA, Src SA, Major MB, class Epi>
void launch_m(const char* what, const LayerDims& L, const GemmArgs& g, const CUtensorMap& map_a,
              const CUtensorMap& map_b, const typename Epi::Params& ep, cudaStream_t st) {
  launch<Grouping::M, MA, SA, MB, Src::Tma, S.bn, S.stages, Epi, kBM, S.ping_pong, kCluster>(
      what, g, map_a, map_b, ep, grouped_m_tiles(L, g.schedule, kBM * kCluster), st);
}

class HopperEngine final : public Engine {
 public:
  const char* name() const override { return "hopper-sm90a"; }
  int m_tile() const override { return kBM; }
  int dh_n_tile(const LayerDims&) const override {
    return ping_pong_requested() ? kPingPong.bn : kCooperative.bn;
  }

  void up_proj(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* x,
               bf16_t* h, bf16_t* a, cudaStream_t st) override {
    if (L.N == 0) return;
    const int64_t R = L.R();
    with_m_schedule([&]<MSchedule S>() {
      const GemmArgs g{rows_of(x, L.d, L.T, r.sorted_token), Operand{},
                       grouped_m_schedule(L, r, R, L.d, S.bn)};
      const CUtensorMap mb = tma_experts_3d(w.w1, L.E, R, L.d, S.bn / S.cluster);
      act::dispatch(L.act, [&]<Activation A>() {
        launch_m<S, S.cluster, Major::K, Src::Copy, Major::K, UpProjEpilogue<A>>(
            "up_proj", L, g, kNoMap, mb, {h, a, w.b1, L.n}, st);
      });
    });
  }

  void down_proj(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* a,
                 bf16_t* y, cudaStream_t st) override {
    if (L.N == 0) return;
    with_m_schedule([&]<MSchedule S>() {
      const GemmArgs g{Operand{}, Operand{}, grouped_m_schedule(L, r, L.d, L.n, S.bn)};
      const CUtensorMap ma = tma_rows_2d(a, L.N, L.n, kBM);
      const CUtensorMap mb = tma_experts_3d(w.w2, L.E, L.d, L.n, S.bn / S.cluster);
      launch_m<S, S.cluster, Major::K, Src::Tma, Major::K, StoreEpilogue>(
          "down_proj", L, g, ma, mb, {y, L.d, 0, w.b2}, st);
    });
  }

  void dh(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* dout,
          const bf16_t* h, const float* scores, bf16_t* dh, bf16_t* ap, float* ds_part,
          cudaStream_t st) override {
    if (L.N == 0) return;
    with_m_schedule([&]<MSchedule S>() {
      const GemmArgs g{rows_of(dout, L.d, L.T, r.sorted_token), Operand{},
                       grouped_m_schedule(L, r, L.n, L.d, S.bn)};
      const CUtensorMap mb = tma_experts_3d(w.w2, L.E, L.d, L.n, 64);
      act::dispatch(L.act, [&]<Activation A>() {
        launch_m<S, S.cluster, Major::K, Src::Copy, Major::MN, DHEpilogue<A>>(
            "dh", L, g, kNoMap, mb, {h, scores, dh, ap, ds_part}, st);
      });
    });
  }

  void dx_tilde(const LayerDims& L, const RoutingPtrs& r, const Weights& w, const bf16_t* dh,
                bf16_t* dxt, cudaStream_t st) override {
    if (L.N == 0) return;
    const int64_t R = L.R();
    with_m_schedule([&]<MSchedule S>() {
      const GemmArgs g{Operand{}, Operand{}, grouped_m_schedule(L, r, L.d, R, S.bn)};
      const CUtensorMap ma = tma_rows_2d(dh, L.N, R, kBM);
      const CUtensorMap mb = tma_experts_3d(w.w1, L.E, R, L.d, 64);
      launch_m<S, S.cluster, Major::K, Src::Tma, Major::MN, StoreEpilogue>(
          "dx_tilde", L, g, ma, mb, {dxt, L.d, 0, nullptr}, st);
    });
  }

  // Grouped-K: the gathered operand comes by cp.async (which also masks the
  // expert edge), the contiguous one by TMA. With no pairs nothing is loaded
  // and the map stays empty.
  void dw2(const LayerDims& L, const RoutingPtrs& r, const bf16_t* dout, const bf16_t* ap,
           bf16_t* dw2, cudaStream_t st) override {
    const GemmArgs g{rows_of(dout, L.d, L.T, r.sorted_token), Operand{},
                     grouped_k_schedule(L, r, L.d, L.n, kBM, kWideN)};
    const CUtensorMap mb = L.N > 0 ? tma_rows_2d(ap, L.N, L.n, 64) : kNoMap;
    // Pairs split M (d) and share A' by multicast.
    with_cluster([&]<int C>() {
      launch<Grouping::K, Major::MN, Src::Copy, Major::MN, Src::Tma, kWideN, kWideStages,
             StoreEpilogue, kBM, false, C>("dw2", g, kNoMap, mb, {dw2, L.n, L.d * L.n, nullptr},
                                           grouped_k_units(L, g.schedule, C, 1), st);
    });
  }

  void dw1(const LayerDims& L, const RoutingPtrs& r, const bf16_t* dh, const bf16_t* x, bf16_t* dw1,
           cudaStream_t st) override {
    const int64_t R = L.R();
    // Computed as dW1^T = X^T dH, dW2's shape: the gathered X on the
    // tile's 128-row side (M = d), dH by TMA on its 256-column side (N =
    // R), shared by the pair; the epilogue stores the tile transposed.
    // Against dW1 = dH^T X on 256 x 128 tiles (the gathered X then also
    // 128 wide, but two m64n128 wgmmas per warpgroup and k16 instead of
    // one m64n256): H200 120b-n2048 7.78 -> 7.26 ms (docs/NOTES.md).
    const GemmArgs g{rows_of(x, L.d, L.T, r.sorted_token), Operand{},
                     grouped_k_schedule(L, r, L.d, R, kBM, kWideN)};
    const CUtensorMap mb = L.N > 0 ? tma_rows_2d(dh, L.N, R, 64) : kNoMap;
    // Pairs split M (d) and share dH by multicast.
    with_cluster([&]<int C>() {
      launch<Grouping::K, Major::MN, Src::Copy, Major::MN, Src::Tma, kWideN, kWideStages,
             TransposedStoreEpilogue, kBM, false, C>("dw1", g, kNoMap, mb, {dw1, L.d, R * L.d},
                                                      grouped_k_units(L, g.schedule, C, 1), st);
    });
  }
};

}  // namespace

Engine* hopper_engine() {
  static HopperEngine engine;
  return &engine;
}

}  // namespace sonicmoe::gemm
