/* The sonicmoe plain C ABI: the C++ API (sonicmoe.hpp) behind functions that
 * never throw. Each returns a status code; on failure smoe_last_error()
 * gives the message of the calling thread's last failed call. Structs are
 * plain data with fixed-width fields so that FFI layers (Python ctypes,
 * Rust, Julia) can build them without a compiler. */
#ifndef SONICMOE_H_
#define SONICMOE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SMOE_API __declspec(dllexport)
#else
#define SMOE_API __attribute__((visibility("default")))
#endif

#define SMOE_ABI_VERSION 1

typedef enum {
  SMOE_STATUS_OK = 0,
  SMOE_STATUS_INVALID_ARGUMENT = 1,
  SMOE_STATUS_UNSUPPORTED = 2,
  SMOE_STATUS_CUDA_ERROR = 3,
  SMOE_STATUS_INTERNAL = 4
} smoe_status_t;

enum { SMOE_DTYPE_BF16 = 0, SMOE_DTYPE_F32 = 1, SMOE_DTYPE_I32 = 2 };
enum { SMOE_DEVICE_CPU = 0, SMOE_DEVICE_CUDA = 1 };
enum { SMOE_ROUTER_TOPK_THEN_SOFTMAX = 0, SMOE_ROUTER_SOFTMAX_THEN_TOPK = 1 };
enum {
  SMOE_ACT_SWIGLU = 0,
  SMOE_ACT_GEGLU = 1,
  SMOE_ACT_REGLU = 2,
  SMOE_ACT_GELU = 3,
  SMOE_ACT_RELU = 4,
  SMOE_ACT_RELU2 = 5,
  SMOE_ACT_SILU = 6
};
enum { SMOE_MODE_TRAINING = 0, SMOE_MODE_INFERENCE = 1 };
enum { SMOE_ROUNDING_NEAREST = 0, SMOE_ROUNDING_UP = 1, SMOE_ROUNDING_DOWN = 2 };
/* The expert id of a padding pair (sonicmoe::kNoExpert). */
enum { SMOE_NO_EXPERT = -1 };

/* Same meaning as sonicmoe::Tensor. An absent optional tensor is all zeros. */
typedef struct {
  void* data;
  int32_t dtype;
  int32_t device_type;
  int32_t device_index;
  int32_t ndim;
  int64_t shape[4];
  int64_t strides[4]; /* in elements */
} smoe_tensor_t;

typedef struct {
  void* data;
  size_t bytes;
} smoe_workspace_t;

typedef struct {
  smoe_tensor_t expert_counts, expert_offsets, token_offsets;
  smoe_tensor_t sorted_token, sorted_pair, pair_position;
} smoe_routing_t;

typedef struct {
  int64_t num_tokens, hidden, intermediate, num_experts, num_pairs;
  int32_t activation;
  int32_t reserved;
} smoe_problem_t;

typedef struct {
  smoe_tensor_t x, w1, b1, w2, b2, scores;
  smoe_routing_t routing;
  int32_t activation;
  int32_t mode;
  smoe_tensor_t out, h;
  smoe_workspace_t workspace;
} smoe_forward_args_t;

typedef struct {
  smoe_tensor_t x, w1, b1, w2, b2, scores;
  smoe_routing_t routing;
  int32_t activation;
  int32_t reserved;
  smoe_tensor_t h, dout;
  /* Each gradient is optional (sonicmoe::MoeBackwardArgs): an absent one
     (all zeros) is not computed. */
  smoe_tensor_t dx, dw1, db1, dw2, db2, dscores;
  smoe_workspace_t workspace;
} smoe_backward_args_t;

/* Token rounding (sonicmoe::RoundRoutingArgs): outputs of capacity C from
 * smoe_round_routing_capacity, the pair count in num_pairs (on the device). */
typedef struct {
  smoe_tensor_t logits, topk_ids, topk_scores;
  int64_t tile;
  int32_t mode;
  int32_t reserved;
  smoe_tensor_t token_ids, expert_ids, scores, num_pairs;
  smoe_workspace_t workspace;
} smoe_round_routing_args_t;

/* stream: a cudaStream_t (NULL for the default stream); ignored on the CPU. */
SMOE_API smoe_status_t smoe_router_forward(const smoe_tensor_t* logits, int64_t k, int32_t order,
                                           int32_t renormalize, const smoe_tensor_t* scores,
                                           const smoe_tensor_t* expert_ids, void* stream);
SMOE_API smoe_status_t smoe_router_backward(const smoe_tensor_t* logits,
                                            const smoe_tensor_t* expert_ids,
                                            const smoe_tensor_t* dscores, int32_t order,
                                            int32_t renormalize, const smoe_tensor_t* dlogits,
                                            void* stream);

SMOE_API smoe_status_t smoe_routing_workspace_size(int32_t device_type, int32_t device_index,
                                                   int64_t num_tokens, int64_t num_experts,
                                                   int64_t num_pairs, size_t* bytes);
SMOE_API smoe_status_t smoe_routing_from_topk(const smoe_tensor_t* expert_ids,
                                              int64_t num_experts, const smoe_routing_t* out,
                                              smoe_workspace_t workspace, void* stream);
SMOE_API smoe_status_t smoe_routing_from_pairs(const smoe_tensor_t* token_ids,
                                               const smoe_tensor_t* expert_ids,
                                               int64_t num_tokens, int64_t num_experts,
                                               const smoe_routing_t* out,
                                               smoe_workspace_t workspace, void* stream);

SMOE_API smoe_status_t smoe_round_routing_capacity(int64_t num_tokens, int64_t num_experts,
                                                   int64_t k, int64_t tile, int32_t mode,
                                                   int64_t* capacity);
SMOE_API smoe_status_t smoe_round_routing_workspace_size(int32_t device_type,
                                                         int32_t device_index,
                                                         int64_t num_tokens,
                                                         int64_t num_experts, size_t* bytes);
SMOE_API smoe_status_t smoe_round_routing(const smoe_round_routing_args_t* args, void* stream);

SMOE_API smoe_status_t smoe_moe_forward_workspace_size(int32_t device_type, int32_t device_index,
                                                       const smoe_problem_t* problem,
                                                       int32_t mode, size_t* bytes);
SMOE_API smoe_status_t smoe_moe_forward(const smoe_forward_args_t* args, void* stream);
SMOE_API smoe_status_t smoe_moe_backward_workspace_size(int32_t device_type,
                                                        int32_t device_index,
                                                        const smoe_problem_t* problem,
                                                        size_t* bytes);
SMOE_API smoe_status_t smoe_moe_backward(const smoe_backward_args_t* args, void* stream);

SMOE_API smoe_status_t smoe_interleave_gate_up(const smoe_tensor_t* src, const smoe_tensor_t* dst,
                                               void* stream);
SMOE_API smoe_status_t smoe_deinterleave_gate_up(const smoe_tensor_t* src,
                                                 const smoe_tensor_t* dst, void* stream);

/* Where column `column` of a saved h row of `width` (R) values is stored
   (sonicmoe::h_stored_column): h is written in the library's layout, and a
   caller that reads it (not only hands it back to smoe_moe_backward) finds
   column j of pair p at h[p][*stored]. */
SMOE_API smoe_status_t smoe_h_stored_column(int64_t column, int64_t width, int32_t activation,
                                            int64_t* stored);

SMOE_API int32_t smoe_cuda_device_count(void);
SMOE_API const char* smoe_version(void);
SMOE_API int32_t smoe_abi_version(void);
/* The message of this thread's last failed call ("" if none). */
SMOE_API const char* smoe_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* SONICMOE_H_ */
