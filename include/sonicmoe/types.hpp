// Value types of the sonicmoe C++ API: tensors as plain descriptors, the
// enums that select routers and activations, and the error type.
//
// A Tensor never owns memory. The caller allocates everything (with its own
// allocator: PyTorch's, cudaMalloc, std::vector) and describes it here; the
// library reads and writes through the descriptor and allocates nothing but
// what the caller hands it as a workspace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace sonicmoe {

// Values are part of the C ABI (SMOE_DTYPE_*): never renumber.
enum class DType : int32_t { BF16 = 0, F32 = 1, I32 = 2 };

enum class DeviceType : int32_t { CPU = 0, CUDA = 1 };

struct Device {
  DeviceType type = DeviceType::CPU;
  int32_t index = 0;
  friend bool operator==(const Device&, const Device&) = default;
};

inline constexpr int kMaxDims = 4;

// A strided view of caller-owned memory. Strides count elements, not bytes.
// An absent optional tensor is the default-constructed one (ndim == 0 and
// data == nullptr); a present tensor with zero elements may have a null data
// pointer.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device{};
  int32_t ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};

  bool present() const { return ndim != 0 || data != nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }

  // A contiguous (row-major) tensor over `data`.
  static Tensor contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                           Device device = {}) {
    Tensor t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.ndim = static_cast<int32_t>(shape.size());
    int i = 0;
    for (int64_t s : shape) t.shape[i++] = s;
    int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.strides[d] = stride;
      stride *= t.shape[d];
    }
    return t;
  }
};

// Caller-provided scratch memory on the call's device. Sizes come from the
// *_workspace_size functions; the pointer must be 256-byte aligned.
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

// Two orders of the token-choice router (../shared/SONICMOE.md, Routing 2).
enum class RouterOrder : int32_t {
  TopKThenSoftmax = 0,  // Mixtral / OLMoE: softmax over the K largest logits
  SoftmaxThenTopK = 1,  // Qwen3 / DeepSeek: softmax over all E, then top-K
};

// Gated activations read interleaved up-projection columns: column 2j is the
// gate g_j and 2j+1 the up value u_j. Values are part of the C ABI.
enum class Activation : int32_t {
  SwiGLU = 0,  // silu(g) * u
  GeGLU = 1,   // gelu(g) * u   (erf form)
  ReGLU = 2,   // relu(g) * u
  GeLU = 3,    // erf form
  ReLU = 4,
  ReLU2 = 5,   // relu(x)^2
  SiLU = 6,
};

constexpr bool is_gated(Activation a) {
  return a == Activation::SwiGLU || a == Activation::GeGLU || a == Activation::ReGLU;
}

// The layout of the saved pre-activation h [N, R] that moe_forward writes
// and moe_backward reads; a caller that only hands it back never needs it.
// Non-gated activations store column j at j. Gated ones store each row in
// the order the up-projection's accumulator holds it, so that its epilogue
// writes registers as they are, with no shuffles: a row is cut into blocks
// of 32 columns (the last one 16 wide when R % 32 == 16), and in a block of
// G groups of 8 columns (G = 4, or 2 in that short block) the column
// 8 a + 2 b + e of the block (group a, pair b; e = 0 gate, 1 up) is stored
// at 2 (G b + a) + e. A (gate, up) pair stays adjacent. Returns where
// column j (0 <= j < R) of a row is stored; R is a multiple of 16 when
// gated (2n, n a multiple of 8).
constexpr int64_t h_stored_column(int64_t j, int64_t R, Activation a) {
  if (!is_gated(a)) return j;
  const int64_t block = j & ~int64_t{31};
  const int64_t groups = R - block >= 32 ? 4 : (R - block) / 8;
  const int64_t o = j - block;
  return block + 2 * (groups * ((o >> 1) & 3) + (o >> 3)) + (o & 1);
}

const char* to_string(Activation a);
const char* to_string(DType t);
const char* to_string(RouterOrder o);

// Status codes shared with the C ABI (SMOE_STATUS_*).
enum class Status : int32_t {
  Ok = 0,
  InvalidArgument = 1,  // a shape, dtype, stride, alignment, device or value is wrong
  Unsupported = 2,      // valid input that this build or device cannot run
  CudaError = 3,        // the CUDA runtime or a library reported an error
  Internal = 4,         // a bug in sonicmoe
};

// Thrown by every C++ entry point. The message names the call, the argument,
// the expected and the given value.
class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  Status status() const { return status_; }

 private:
  Status status_;
};

// cudaStream_t without pulling in CUDA headers; ignored by the CPU backend.
using Stream = void*;

}  // namespace sonicmoe
