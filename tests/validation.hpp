// What the validation tests (test_validation_*.cpp) share.
//
// Each fixture builds one valid argument set (proved valid by a test that
// runs it); every other test changes exactly one field and asserts the
// status of the sonicmoe::Error and that its message names the call, the
// argument, the expected and the given value. Outputs start poisoned (0xff
// bytes) and must still be poisoned after the failed call: nothing is
// written before validation passes.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"
#include "routing_tensors.hpp"

// A named namespace, not an anonymous one: a fixture is then one type in
// every file that includes this (GoogleTest checks a suite's fixture type).
namespace sonicmoe::validation_test {

using testing::Buffer;
using testing::DevTensor;
using testing::from_doubles;
using testing::from_ints;
using testing::make;

inline const Device kCpu{};
inline const Device kCuda0{DeviceType::CUDA, 0};
inline const Device kCuda1{DeviceType::CUDA, 1};

// The Unsupported tests label host memory as CUDA memory: on a machine with a
// GPU (and a GPU backend) those pointers would reach kernels, so they run only
// where no CUDA device is visible. Both "no GPU backend in this build" and "no
// CUDA device" messages end in "CUDA tensors cannot run".
#define SKIP_IF_CUDA_DEVICE_PRESENT()                                        \
  do {                                                                       \
    if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present"; \
  } while (0)

// Calls f and checks the sonicmoe::Error it must throw. InvalidArgument
// messages must start with "sonicmoe::<call>: "; every part must appear.
inline void expect_error(const std::function<void()>& f, Status status, const std::string& call,
                  const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(static_cast<int>(e.status()), static_cast<int>(status)) << msg;
    if (status == Status::InvalidArgument)
      EXPECT_EQ(msg.rfind("sonicmoe::" + call + ": ", 0), 0u)
          << "the message does not start with the call's name: " << msg;
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message:  " << msg << "\nlacks:    " << p;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw something other than sonicmoe::Error: " << e.what();
    return;
  }
  ADD_FAILURE() << "no error was thrown";
}

inline bool poisoned(const DevTensor& d) {
  if (!d.buf) return true;
  std::vector<unsigned char> b(d.buf->bytes());
  d.buf->download(b.data());
  for (unsigned char c : b)
    if (c != 0xff) return false;
  return true;
}

inline Tensor misaligned(Tensor t, int bytes) {
  t.data = static_cast<char*>(t.data) + bytes;
  return t;
}
inline Tensor null_data(Tensor t) {
  t.data = nullptr;
  return t;
}
inline Tensor on(Tensor t, Device d) {
  t.device = d;
  return t;
}
// The column-major view of the last two dimensions: same memory, not
// row-major.
inline Tensor transposed(Tensor t) {
  const int a = t.ndim - 2;
  t.strides[a] = 1;
  t.strides[a + 1] = t.shape[a];
  return t;
}
inline Tensor with_ndim(Tensor t, int ndim) {
  t.ndim = ndim;
  return t;
}

inline std::vector<double> ramp(int64_t count, double scale) {
  std::vector<double> v(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) v[i] = scale * std::sin(0.37 * static_cast<double>(i) + 0.2);
  return v;
}

class Validation : public ::testing::Test {
 protected:
  // A poisoned CPU allocation kept alive by the fixture, described on `dev`.
  Tensor fresh(DType dt, std::initializer_list<int64_t> shape, Device dev = kCpu) {
    keep_.push_back(make(kCpu, dt, shape));
    return on(keep_.back().t, dev);
  }
  // A 1-D view with stride 2.
  Tensor strided1d(DType dt, int64_t n) {
    Tensor t = fresh(dt, {2 * n});
    t.shape[0] = n;
    t.strides[0] = 2;
    return t;
  }
  // An allocation of `bytes` plus 256, for misaligned workspaces.
  Workspace workspace_at(size_t bytes, size_t offset) {
    bufs_.push_back(std::make_unique<Buffer>(kCpu, bytes + 256));
    return Workspace{static_cast<char*>(bufs_.back()->get()) + offset, bytes};
  }
  std::vector<DevTensor> keep_;
  std::vector<std::unique_ptr<Buffer>> bufs_;
};

using testing::RoutingTensors;

// Every routing output still poisoned.
inline bool all_poisoned(const RoutingTensors& r) {
  for (const DevTensor* t : r.all())
    if (!poisoned(*t)) return false;
  return true;
}

}  // namespace sonicmoe::validation_test
