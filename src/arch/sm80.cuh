// sm_80 instruction wrappers: cp.async, ldmatrix, mma.sync, vector stores,
// 64-bit shared loads and stores (the Hopper engine uses them too).
// The only place the portable engine writes PTX. Each wrapper is one
// instruction.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

namespace sonicmoe::arch {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// p, as a value the compiler cannot see through: a tile's base pointer
// stays one register, and each access adds a 32-bit offset to it (one wide
// multiply-add), instead of being folded back into 64-bit arithmetic from
// the buffer's start at every access. Emits no instruction.
template <class T>
__device__ __forceinline__ T* opaque(T* p) {
  asm("" : "+l"(p));
  return p;
}

// 16-byte global -> shared copy; src_bytes < 16 zero-fills the rest (0 for
// rows or columns past the edge of the operand: nothing is read).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
// 8-byte global -> shared copy (through L1, as below: only 16 bytes may
// take .cg).
__device__ __forceinline__ void cp_async_8(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
// 4-byte global -> shared copy (cp.async of 4 bytes must go through L1: .ca).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// 64-bit shared-memory load and store by shared address (published row
// addresses): a pointer kept in a struct loses its state space and becomes a
// generic (slower) access. Volatile keeps them in order with the barriers
// that publish them.
__device__ __forceinline__ uint64_t lds_u64(uint32_t addr) {
  uint64_t v;
  asm volatile("ld.shared.u64 %0, [%1];\n" : "=l"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts_u64(uint32_t addr, uint64_t v) {
  asm volatile("st.shared.u64 [%0], %1;\n" ::"r"(addr), "l"(v) : "memory");
}

// 16-byte shared-memory load by shared address. Volatile: it stays after the
// cp.async wait that makes its data valid.
__device__ __forceinline__ uint4 lds_128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr));
  return v;
}

// At p, all of v if `wide`, else its first 8 bytes if `narrow`: one
// address and two predicated stores, no branch (gated H's 16-byte pieces
// and the 8-byte ones of a row's short last block).
__device__ __forceinline__ void stg_128_or_64(void* p, uint4 v, bool wide, bool narrow) {
  asm volatile(
      "{\n .reg .pred w, n;\n setp.ne.b32 w, %5, 0;\n setp.ne.b32 n, %6, 0;\n"
      " @w st.global.v4.b32 [%0], {%1, %2, %3, %4};\n"
      " @n st.global.v2.b32 [%0], {%1, %2};\n}\n" ::"l"(p),
      "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(static_cast<int>(wide)),
      "r"(static_cast<int>(!wide && narrow))
      : "memory");
}

// 16- and 8-byte global stores. Written as C++ (a uint4 assignment), a store
// may reach PTX as four st.global.u32: the front end copies the struct
// member by member and the vectorizer does not always merge them again (a
// quarter of the Hopper epilogues' 16-byte stores were split; fixing them
// took down_proj 7b-n256 from 0.71 to 0.77-0.83 of dense: docs/NOTES.md).
__device__ __forceinline__ void stg_128(void* p, uint4 v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void stg_64(void* p, uint2 v) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A(16x16, row) * B(16x8, col) + D, bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// A bf16 is the top half of its fp32: one shift and one mask (the
// intrinsic's byte permute + shift takes three instructions per pair).
__device__ __forceinline__ float2 unpack_bf16x2(uint32_t v) {
  return float2{__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u)};
}

}  // namespace sonicmoe::arch
