// The canonical MoE layer shapes, copied from ../shared/bench_configs.json so
// that the bench never reads files outside the project at run time.
//
// The first nine are the shapes of the SonicMoE paper's per-layer figure; the
// rest are the MoE layers of public models (OLMoE, gpt-oss-20b,
// Kimi-Linear-48B, Qwen3-Next-80B, Qwen3-235B, DeepSeek-V3.2) with T = 32768
// assumed. All use SwiGLU, bf16 and no bias. paper_fwd / paper_bwd are the
// TFLOPS that SonicMoE reached on an H100 (read off the paper's figures);
// 0 where the paper published none.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace sonicmoe::bench {

struct ShapeConfig {
  std::string_view name;
  int64_t T, H, I, E, K;
  double paper_fwd, paper_bwd;
  bool has_paper() const { return paper_fwd > 0; }
};

inline constexpr std::array<ShapeConfig, 15> kConfigs{{
    {"1.4b-n256", 40960, 768, 256, 128, 8, 339, 366},
    {"1.4b-n1024", 40960, 768, 1024, 32, 2, 405, 435},
    {"7b-n256", 24576, 1536, 256, 128, 8, 364, 405},
    {"7b-n512", 24576, 1536, 512, 64, 4, 435, 439},
    {"7b-n1024", 24576, 1536, 1024, 32, 2, 467, 467},
    {"30b-n256", 32768, 4096, 256, 256, 16, 429, 461},
    {"30b-n1024", 32768, 4096, 1024, 64, 4, 553, 555},
    {"120b-n512", 32768, 4096, 512, 256, 16, 519, 527},
    {"120b-n2048", 32768, 4096, 2048, 64, 4, 596, 587},
    {"olmoe-7b", 32768, 2048, 1024, 64, 8, 0, 0},
    {"gptoss-20b", 32768, 2880, 2880, 32, 4, 0, 0},
    {"kimi-48b", 32768, 2304, 1024, 256, 8, 0, 0},
    {"qwen3next-80b", 32768, 2048, 512, 512, 10, 0, 0},
    {"qwen3-235b", 32768, 4096, 1536, 128, 8, 0, 0},
    {"dsv3-685b", 32768, 7168, 2048, 256, 8, 535, 480},
}};

// Single-kernel figures of the SonicMoE paper (H100, SwiGLU, no bias), quoted
// by --kernels next to the kernel of the same name.
struct KernelTarget {
  std::string_view config, kernel;
  double tflops;
  std::string_view what, remark;  // "<what> <tflops> TFLOPS <remark>"
};
inline constexpr KernelTarget kPaperKernelTargets[] = {
    {"7b-n256", "up_proj", 559, "up-projection (fused gather + SwiGLU)", ""},
    {"7b-n256", "dh", 328, "dH kernel", "(at 2.14 TB/s)"},
};

// Not part of `--config all`: the smoke-test shape, and what a machine
// without a GPU runs by default on the CPU reference backend.
inline constexpr ShapeConfig kTiny{"tiny", 256, 128, 64, 8, 2, 0, 0};

// What a GPU machine runs when given no arguments.
inline constexpr std::string_view kDefaultGpuConfig = "7b-n256";

inline const ShapeConfig* find_config(std::string_view name) {
  if (name == kTiny.name) return &kTiny;
  for (const auto& c : kConfigs)
    if (c.name == name) return &c;
  return nullptr;
}

}  // namespace sonicmoe::bench
