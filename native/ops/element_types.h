// The storage types the CPU ops are registered for, and their ONNX element-type tags.
#pragma once

#include "kernels/attention_args.h"
#include "ops/ort_api.h"

namespace hysparse {
namespace ops {

template <typename T>
struct ElementType;
template <>
struct ElementType<float> {
  static constexpr ONNXTensorElementDataType kOnnx = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
};
template <>
struct ElementType<Half> {
  static constexpr ONNXTensorElementDataType kOnnx = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
};

}  // namespace ops
}  // namespace hysparse
