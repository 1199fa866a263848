// Host or GPU memory for tests and benchmarks, and tensors over it.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::testing {

// 256-byte aligned memory on the host or a GPU, freed on scope exit.
class Buffer {
 public:
  Buffer(Device dev, size_t bytes);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Workspace workspace() const { return Workspace{ptr_, bytes_}; }

  void upload(const void* src);
  void download(void* dst) const;
  // Fill with 0xff bytes (NaN in bf16/f32, -1 in i32) so that an element the
  // library forgets to write shows up.
  void poison();

 private:
  Device dev_;
  size_t bytes_;
  void* ptr_ = nullptr;
};

// A tensor with the memory behind it. Default-constructed: absent.
struct DevTensor {
  std::unique_ptr<Buffer> buf;
  Tensor t;
};

size_t dtype_size(DType t);
// Contiguous and poisoned.
DevTensor make(Device dev, DType dtype, std::initializer_list<int64_t> shape);
// bf16 or f32 from doubles (rounded to nearest even).
DevTensor from_doubles(Device dev, DType dtype, const std::vector<double>& v,
                       std::initializer_list<int64_t> shape);
DevTensor from_ints(Device dev, const std::vector<int32_t>& v);
std::vector<double> to_doubles(const DevTensor& d);
std::vector<int32_t> to_ints(const DevTensor& d);

// Throws std::runtime_error with `what` when e is not cudaSuccess (an int so
// that this header needs no CUDA include).
void cuda_check(int e, const char* what);

}  // namespace sonicmoe::testing
