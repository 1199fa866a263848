// Carving typed buffers out of a caller-provided workspace.
//
// A backend describes its temporaries once, as a sequence of take<T>(count)
// calls; the same sequence run over a null base gives the size to report,
// so the size query and the carving can never disagree.
#pragma once

#include <cstddef>
#include <cstdint>

#include <sonicmoe/types.hpp>

namespace sonicmoe::detail {

inline constexpr size_t kWorkspaceAlign = 256;

class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<char*>(base)) {}

  template <class T>
  T* take(int64_t count) {
    offset_ = (offset_ + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<size_t>(count) * sizeof(T);
    return p;
  }
  size_t bytes() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

}  // namespace sonicmoe::detail
