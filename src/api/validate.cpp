#include "api/validate.hpp"

#include <algorithm>
#include <cstdint>
#include <sstream>

namespace sonicmoe::detail {

namespace {

// bf16 rows are read 16 bytes at a time by the GPU loaders (cp.async, TMA);
// 4-byte types are read element-wise or as float4 from aligned bases.
size_t required_alignment(DType t) { return t == DType::BF16 ? 16 : 4; }

}  // namespace

std::string shape_string(const int64_t* shape, int ndim) {
  std::ostringstream s;
  s << '[';
  for (int i = 0; i < ndim; ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

std::string shape_string(std::initializer_list<int64_t> shape) {
  return shape_string(shape.begin(), static_cast<int>(shape.size()));
}

std::string device_string(Device d) {
  return (d.type == DeviceType::CPU ? std::string("cpu:") : std::string("cuda:")) +
         std::to_string(d.index);
}

namespace {

std::string dtype_string(DType t) {
  const int v = static_cast<int>(t);
  return v >= 0 && v <= 2 ? std::string(to_string(t)) : std::to_string(v);
}

}  // namespace

void Checker::fail(Status status, const std::string& what) const {
  throw Error(status, std::string("sonicmoe::") + call_ + ": " + what);
}

void Checker::require(bool ok, const char* name, const std::string& expected,
                      const std::string& got) {
  if (!ok)
    fail(Status::InvalidArgument,
         std::string("argument '") + name + "': expected " + expected + ", got " + got);
}

void Checker::same_device(const Tensor& t, const char* name) {
  if (t.device.type != DeviceType::CPU && t.device.type != DeviceType::CUDA)
    require(false, name, "device type cpu (0) or cuda (1)",
            std::to_string(static_cast<int>(t.device.type)));
  if (!has_device_) {
    device_ = t.device;
    has_device_ = true;
    return;
  }
  require(t.device == device_, name, "a tensor on " + device_string(device_) + " like the others",
          "one on " + device_string(t.device));
}

void Checker::present(const Tensor& t, const char* name) {
  if (!t.present()) fail(Status::InvalidArgument, std::string("argument '") + name + "' is required");
  same_device(t, name);
}

void Checker::rank(const Tensor& t, const char* name, int ndim) {
  present(t, name);
  require(t.ndim == ndim, name, std::to_string(ndim) + " dimensions",
          std::to_string(t.ndim) + " dimensions");
}

void Checker::tensor(const Tensor& t, const char* name, DType dtype,
                     std::initializer_list<int64_t> shape) {
  present(t, name);
  for (int64_t s : shape)
    require(s >= 0, name, "non-negative sizes",
            t.ndim >= 0 && t.ndim <= kMaxDims ? shape_string(t.shape, t.ndim) : "a negative size");
  const int ndim = static_cast<int>(shape.size());
  require(t.ndim == ndim && std::equal(shape.begin(), shape.end(), t.shape), name,
          "shape " + shape_string(shape),
          t.ndim < 0 || t.ndim > kMaxDims ? "ndim " + std::to_string(t.ndim)
                                           : shape_string(t.shape, t.ndim));
  require(t.dtype == dtype, name, std::string("dtype ") + to_string(dtype),
          "dtype " + dtype_string(t.dtype));
  int64_t stride = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (t.shape[d] != 1)
      require(t.strides[d] == stride, name, "a contiguous (row-major) tensor",
              "strides " + shape_string(t.strides, ndim));
    stride *= t.shape[d];
  }
  if (stride > 0) {
    require(t.data != nullptr, name, "a data pointer", "nullptr");
    const auto addr = reinterpret_cast<uintptr_t>(t.data);
    const size_t align = required_alignment(dtype);
    require(addr % align == 0, name, std::to_string(align) + "-byte aligned data",
            "address " + std::to_string(addr) + " (offset " + std::to_string(addr % align) + ")");
  }
}

void Checker::optional(const Tensor& t, const char* name, DType dtype,
                       std::initializer_list<int64_t> shape) {
  if (t.present()) tensor(t, name, dtype, shape);
}

void Checker::absent(const Tensor& t, const char* name, const char* why) {
  if (t.present())
    fail(Status::InvalidArgument, std::string("argument '") + name + "' must be absent " + why);
}

void Checker::routing(const Routing& r, int64_t num_tokens, int64_t num_experts,
                      int64_t num_pairs) {
  tensor(r.expert_counts, "routing.expert_counts", DType::I32, {num_experts});
  tensor(r.expert_offsets, "routing.expert_offsets", DType::I32, {num_experts + 1});
  tensor(r.token_offsets, "routing.token_offsets", DType::I32, {num_tokens + 1});
  tensor(r.sorted_token, "routing.sorted_token", DType::I32, {num_pairs});
  tensor(r.sorted_pair, "routing.sorted_pair", DType::I32, {num_pairs});
  tensor(r.pair_position, "routing.pair_position", DType::I32, {num_pairs});
}

void Checker::workspace(Workspace ws, size_t required) {
  if (required == 0) return;
  require(ws.bytes >= required, "workspace", "at least " + std::to_string(required) + " bytes",
          std::to_string(ws.bytes) + " bytes");
  require(ws.data != nullptr, "workspace", "a data pointer", "nullptr");
  const auto addr = reinterpret_cast<uintptr_t>(ws.data);
  require(addr % 256 == 0, "workspace", "256-byte aligned data",
          "address " + std::to_string(addr));
}

}  // namespace sonicmoe::detail
