// The host side of the tile trace (trace.cuh), for the translation unit that
// defines its device variables (engine_sm90.cu). In the diagnostic build
// (SONICMOE_TILE_TRACE defined) and with SONICMOE_TILE_TRACE=<file> in the
// environment, every Hopper launch's records are appended to <file> as
// text: a "# launch" line naming the product, then one line per record.
// The build synchronises the stream after each launch to read them back,
// which only a diagnostic build may do; one device per process. In the
// default build both hooks are empty.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <sonicmoe/types.hpp>

#include "gemm/sm90/trace.cuh"

namespace sonicmoe::gemm::sm90::trace {

#ifdef SONICMOE_TILE_TRACE
struct HostTrace {
  Record* records = nullptr;  // kCapacity of them
  int launches = 0;
};

inline HostTrace& host_trace() {
  static HostTrace t;
  return t;
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(Status::CudaError, std::string("sonicmoe: tile trace: ") + what + ": " +
                                       cudaGetErrorString(e));
}

inline void before_launch(cudaStream_t st) {
  if (std::getenv("SONICMOE_TILE_TRACE") == nullptr) return;
  HostTrace& h = host_trace();
  if (h.records == nullptr) {
    check(cudaMalloc(&h.records, kCapacity * sizeof(Record)), "allocating records");
    check(cudaMemcpyToSymbol(g_records, &h.records, sizeof(h.records)), "setting g_records");
  }
  const unsigned zero = 0;
  check(cudaMemsetAsync(h.records, 0xff, kCapacity * sizeof(Record), st), "clearing records");
  check(cudaMemcpyToSymbolAsync(g_dropped, &zero, sizeof(zero), 0, cudaMemcpyHostToDevice, st),
        "zeroing g_dropped");
}

inline void after_launch(const char* what, unsigned grid, cudaStream_t st) {
  const char* path = std::getenv("SONICMOE_TILE_TRACE");
  if (path == nullptr) return;
  HostTrace& h = host_trace();
  check(cudaStreamSynchronize(st), "synchronising");
  unsigned dropped = 0;
  check(cudaMemcpyFromSymbol(&dropped, g_dropped, sizeof(dropped)), "reading g_dropped");
  const size_t used = static_cast<size_t>(kCapacity / (grid * kRoles)) * grid * kRoles;
  std::vector<Record> host(used);
  check(cudaMemcpy(host.data(), h.records, used * sizeof(Record), cudaMemcpyDeviceToHost),
        "reading records");
  std::vector<Record> kept;
  for (const Record& r : host)
    if (r.role != 0xffffffffu) kept.push_back(r);
  std::FILE* f = std::fopen(path, "a");
  if (f == nullptr)
    throw Error(Status::InvalidArgument,
                std::string("sonicmoe: SONICMOE_TILE_TRACE: cannot append to ") + path);
  std::fprintf(f, "# launch %d %s grid %u records %zu%s\n", h.launches++, what, grid, kept.size(),
               dropped > 0 ? " (overflow: some dropped)" : "");
  for (const Record& r : kept) {
    std::fprintf(f, "%u %u %u %u %d %d %d %d %u %u %u %u\n", r.role, r.sm, r.cta, r.k, r.id,
                 r.rows, r.expert, r.ktiles, r.t[0], r.t[1], r.t[2], r.t[3]);
  }
  std::fclose(f);
}
#else
inline void before_launch(cudaStream_t) {}
inline void after_launch(const char*, unsigned, cudaStream_t) {}
#endif

}  // namespace sonicmoe::gemm::sm90::trace
