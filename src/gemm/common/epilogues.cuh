// Epilogue policies of the six products, shared by every engine: one
// include for the kernels. The interface is in epilogue.cuh.
#pragma once

#include "gemm/common/epilogue.cuh"
#include "gemm/common/epilogue_dh.cuh"
#include "gemm/common/epilogue_store.cuh"
#include "gemm/common/epilogue_up_proj.cuh"
