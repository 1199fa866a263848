// Per-tile timestamps of the Hopper kernel's roles, to see where a tile's
// time goes (waiting for its first stage, the mainloop, the epilogue) on the
// device itself. A diagnostic build only: cmake -DSONICMOE_TILE_TRACE=ON,
// then run with SONICMOE_TILE_TRACE=<file> (engine_sm90.cu appends every
// launch's records there; tools/tile_trace.py reads them). In the default
// build every hook below is an empty inline function and kOn is false, so
// the kernels compile as if it were not there.
//
// Times are the low 32 bits of the SM's cycle counter (clock(); 32 bits
// keep the hooks within the roles' register budgets, and wrap only after
// seconds): differences within one record, or between records of one CTA,
// taken modulo 2^32, mean something; across SMs they do not (each SM has
// its own counter).
#pragma once

#include <cstdint>

#include "gemm/common/scheduler.cuh"

namespace sonicmoe::gemm::sm90::trace {

// One tile of one role. Consumer warpgroup w (role 1 + w, its thread 0):
// t[0] the tile's start (before its scheduler lookup), t[1] its first
// stage landed, t[2] its last MMA retired, t[3] its epilogue done.
// Producer (role 0, thread 0): t[0] the tile's start, t[1] its first stage
// free (issued from then on), t[2] = t[3] its last stage issued.
struct Record {
  uint32_t role, sm, cta, k;
  int32_t id, rows, expert, ktiles;
  uint32_t t[4];
};
static_assert(sizeof(Record) == 48);

#ifdef SONICMOE_TILE_TRACE
inline constexpr bool kOn = true;
// Records of role r of CTA b, tile k (the role's k-th tile in that CTA) go
// to slot (b * kRoles + r) * per + k, per = kCapacity / (gridDim.x *
// kRoles): a plain store, with no counter and nothing loaded but the
// buffer's pointer (the same every tile). (An atomicAdd for the slot, then
// a load of the capacity, put an L2 round trip into every recorded gap.)
// The host fills the buffer with 0xff bytes first: unwritten slots read
// role 0xffffffff.
inline constexpr unsigned kRoles = 3, kCapacity = 1u << 20;  // 48 MiB of records
__device__ Record* g_records;
__device__ unsigned g_dropped;  // records past their CTA's share

__device__ __forceinline__ uint32_t now() { return static_cast<uint32_t>(clock()); }

__device__ __forceinline__ uint32_t sm_id() {
  uint32_t id;
  asm volatile("mov.u32 %0, %%smid;\n" : "=r"(id));
  return id;
}

__device__ __forceinline__ void record(uint32_t role, int k, int id, const Tile& t, int ktiles,
                                       const uint32_t (&ts)[4]) {
  const unsigned per = kCapacity / (gridDim.x * kRoles);
  if (static_cast<unsigned>(k) >= per) {  // the host reports the overflow
    atomicAdd(&g_dropped, 1u);
    return;
  }
  Record r{role, sm_id(), blockIdx.x, static_cast<uint32_t>(k), id, t.rows, t.expert, ktiles,
           {ts[0], ts[1], ts[2], ts[3]}};
  g_records[(blockIdx.x * kRoles + role) * per + k] = r;
}
#else
inline constexpr bool kOn = false;
__device__ __forceinline__ uint32_t now() { return 0; }
__device__ __forceinline__ void record(uint32_t, int, int, const Tile&, int, const uint32_t (&)[4]) {}
#endif

// One role's stamps of one tile, taken where the role's code says (Record
// lists which): started when constructed at the tile's start.
struct Stamps {
  uint32_t t[4] = {now(), 0, 0, 0};
  // Stamp i, now (i = 1: only at the tile's first stage, kt == 0).
  __device__ __forceinline__ void at(int i, int kt = 0) {
    if constexpr (kOn)
      if (kt == 0) t[i] = now();
  }
  // The last stamps, then the record, by the role's recording thread.
  __device__ __forceinline__ void done(bool recorder, uint32_t role, int k, int id, const Tile& tile,
                                       int ktiles) {
    if constexpr (kOn)
      if (recorder) {
        t[3] = now();
        if (role == 0) t[2] = t[3];
        record(role, k, id, tile, ktiles, t);
      }
  }
};

}  // namespace sonicmoe::gemm::sm90::trace
