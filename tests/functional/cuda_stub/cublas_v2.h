// Compile-check only: the few cuBLAS declarations ggml-cuda's common.cuh names, so that our own
// .cu files compile with a CUDA toolkit that lacks cuBLAS (CI). Never linked, never run.
#pragma once
typedef struct cublasContext * cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
cublasStatus_t cublasCreate(cublasHandle_t * handle);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
const char * cublasGetStatusString(cublasStatus_t status);
