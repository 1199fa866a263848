#include "device_buffer.hpp"

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include <sonicmoe/bfloat16.hpp>

namespace sonicmoe::testing {

void cuda_check(int e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("cuda: ") + what + ": " +
                             cudaGetErrorString(static_cast<cudaError_t>(e)));
}

Buffer::Buffer(Device dev, size_t bytes) : dev_(dev), bytes_(bytes) {
  if (bytes == 0) return;
  if (dev.type == DeviceType::CPU) {
    ptr_ = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!ptr_) throw std::bad_alloc();
  } else {
    cuda_check(cudaSetDevice(dev.index), "cudaSetDevice");
    cuda_check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
}

Buffer::~Buffer() {
  if (!ptr_) return;
  if (dev_.type == DeviceType::CPU) std::free(ptr_);
  else cudaFree(ptr_);
}

void Buffer::upload(const void* src) {
  if (!bytes_) return;
  if (dev_.type == DeviceType::CPU) std::memcpy(ptr_, src, bytes_);
  else cuda_check(cudaMemcpy(ptr_, src, bytes_, cudaMemcpyHostToDevice), "upload");
}

void Buffer::download(void* dst) const {
  if (!bytes_) return;
  if (dev_.type == DeviceType::CPU) std::memcpy(dst, ptr_, bytes_);
  else cuda_check(cudaMemcpy(dst, ptr_, bytes_, cudaMemcpyDeviceToHost), "download");
}

void Buffer::poison() {
  if (!bytes_) return;
  if (dev_.type == DeviceType::CPU) std::memset(ptr_, 0xff, bytes_);
  else cuda_check(cudaMemset(ptr_, 0xff, bytes_), "poison");
}

size_t dtype_size(DType t) { return t == DType::BF16 ? 2 : 4; }

DevTensor make(Device dev, DType dtype, std::initializer_list<int64_t> shape) {
  DevTensor d;
  int64_t n = 1;
  for (auto s : shape) n *= s;
  d.buf = std::make_unique<Buffer>(dev, static_cast<size_t>(n) * dtype_size(dtype));
  d.t = Tensor::contiguous(d.buf->get(), dtype, shape, dev);
  d.buf->poison();
  return d;
}

DevTensor from_doubles(Device dev, DType dtype, const std::vector<double>& v,
                       std::initializer_list<int64_t> shape) {
  DevTensor d = make(dev, dtype, shape);
  if (dtype == DType::BF16) {
    std::vector<bf16> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = bf16(static_cast<float>(v[i]));
    d.buf->upload(h.data());
  } else {
    std::vector<float> h(v.begin(), v.end());
    d.buf->upload(h.data());
  }
  return d;
}

DevTensor from_ints(Device dev, const std::vector<int32_t>& v) {
  DevTensor d = make(dev, DType::I32, {static_cast<int64_t>(v.size())});
  d.buf->upload(v.data());
  return d;
}

std::vector<double> to_doubles(const DevTensor& d) {
  const size_t n = static_cast<size_t>(d.t.numel());
  std::vector<double> out(n);
  if (d.t.dtype == DType::BF16) {
    std::vector<bf16> h(n);
    d.buf->download(h.data());
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(h[i]);
  } else {
    std::vector<float> h(n);
    d.buf->download(h.data());
    for (size_t i = 0; i < n; ++i) out[i] = h[i];
  }
  return out;
}

std::vector<int32_t> to_ints(const DevTensor& d) {
  std::vector<int32_t> out(static_cast<size_t>(d.t.numel()));
  d.buf->download(out.data());
  return out;
}

}  // namespace sonicmoe::testing
