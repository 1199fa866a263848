// Argument checks shared by every entry point. A Checker is created per call
// with the call's name; each check throws Error(InvalidArgument) with a
// message of the form
//   sonicmoe::moe_forward: argument 'w1': expected shape [8, 128, 64], got [8, 128, 72]
// The first tensor checked fixes the call's device; every later one must
// match it.
#pragma once

#include <initializer_list>
#include <string>

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::detail {

std::string shape_string(const int64_t* shape, int ndim);
std::string shape_string(std::initializer_list<int64_t> shape);
std::string device_string(Device d);

class Checker {
 public:
  explicit Checker(const char* call) : call_(call) {}

  // A present, contiguous tensor of this dtype and shape on the call's device.
  void tensor(const Tensor& t, const char* name, DType dtype, std::initializer_list<int64_t> shape);
  // Absent, or as tensor().
  void optional(const Tensor& t, const char* name, DType dtype,
                std::initializer_list<int64_t> shape);
  // Must be absent; `why` completes "must be absent when ...".
  void absent(const Tensor& t, const char* name, const char* why);
  // Present (for names whose shape is checked by the caller).
  void present(const Tensor& t, const char* name);
  // Present with this many dimensions: for tensors that define the sizes.
  void rank(const Tensor& t, const char* name, int ndim);
  void routing(const Routing& r, int64_t num_tokens, int64_t num_experts, int64_t num_pairs);
  void workspace(Workspace ws, size_t required);

  // A scalar argument with an explicit condition.
  void require(bool ok, const char* name, const std::string& expected, const std::string& got);

  [[noreturn]] void fail(Status status, const std::string& what) const;

  Device device() const { return device_; }
  bool has_device() const { return has_device_; }
  const char* call() const { return call_; }

 private:
  void same_device(const Tensor& t, const char* name);
  const char* call_;
  Device device_{};
  bool has_device_ = false;
};

// h_stored_column (types.hpp) with its arguments checked, for the C ABI:
// 0 <= column < width, a valid activation, width a multiple of 16 when
// gated (2n, n a multiple of 8) and of 8 otherwise.
int64_t checked_h_stored_column(int64_t column, int64_t width, Activation activation);

}  // namespace sonicmoe::detail
