// The one custom-op class behind every HySparse registration (CPU and CUDA, each storage type). What
// differs between registrations is data, not code: an op's schema (a Schema struct: name, inputs,
// outputs, attributes), where the kernel runs (a Placement), the storage type, and the compute
// function. A new op writes a Schema and a compute function per placement; a new execution provider
// writes a Placement.
#pragma once

#include <iterator>

#include "ops/attention_inputs.h"
#include "ops/element_types.h"
#include "ops/shared_buffer.h"

namespace hysparse {
namespace ops {

// One input or output in an op's schema table. kStorageType stands for the registration's storage
// type (float, float16, bfloat16).
constexpr ONNXTensorElementDataType kStorageType = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
struct Port {
  const char* name;  // as docs/ops.md and the error messages spell it
  ONNXTensorElementDataType type;
  bool required;
  // A length the host reads: kept in host memory by placements whose tensors live on a device.
  bool host_memory;
};
constexpr Port Required(const char* name, ONNXTensorElementDataType type = kStorageType) {
  return {name, type, true, false};
}
constexpr Port Optional(const char* name, ONNXTensorElementDataType type = kStorageType) {
  return {name, type, false, false};
}
constexpr Port HostLength(const char* name) { return {name, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, false, true}; }

// Reads input i of the node into *fields[i] (an op's Inputs members, in table order), named as the
// table names it.
template <size_t N, typename... Fields>
void ReadInputs(const Ort::KernelContext& ctx, const Port (&inputs)[N], Fields*... fields) {
  static_assert(sizeof...(Fields) == N, "one field per input of the schema");
  size_t index = 0;
  ((*fields = ReadInput(ctx, index, inputs[index].name), ++index), ...);
}

// Where a registration's kernel runs. The CPU provider is ORT's default: no provider name, every
// input where the provider keeps it, nothing held per node besides the attributes.
struct CpuPlacement {
  struct Resources {
    explicit Resources(const OrtKernelInfo*) {}
  };
  static constexpr const char* kExecutionProvider = nullptr;
  static constexpr bool kHostLengths = false;  // Port::host_memory means nothing here
};

// What a kernel object holds for one node, read once when ORT creates it: the node, for messages, the
// op's attributes, and what the placement keeps per node (CUDA: allocator, pinned memory).
template <typename Schema, typename Placement>
struct AttentionNode {
  explicit AttentionNode(const OrtKernelInfo* info)
      : op(Schema::kName, NodeName(Ort::ConstKernelInfo(info))),
        attrs(Schema::ReadAttributes(Ort::ConstKernelInfo(info), op)),
        resources(info) {}

  OpContext op;
  typename Schema::Attributes attrs;
  typename Placement::Resources resources;
};

// What ORT holds for a node: ComputeV2 runs the op's compute function and turns its exceptions into an
// OrtStatus, so compute functions only throw.
template <typename Node, void (*Compute)(const Node&, Ort::KernelContext&)>
struct AttentionKernel {
  explicit AttentionKernel(const OrtKernelInfo* info) : node(info) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const {
    return GuardStatus([&] {
      Ort::KernelContext ctx(context);
      Compute(node, ctx);
    });
  }

  Node node;
};

// The custom op of one (op, placement, storage type): the schema comes from Schema (kName,
// kInputs and kOutputs as Port tables, Attributes and ReadAttributes), the kernel is
// `Compute` over an AttentionNode. Declares past -> present as may-inplace, so ORT can hand a
// shared-buffer call the same memory for both (CustomOpBase's constructor clears that entry, so it
// is set afterwards).
template <typename Schema, typename Placement, typename T,
          void (*Compute)(const AttentionNode<Schema, Placement>&, Ort::KernelContext&)>
struct AttentionOp : Ort::CustomOpBase<AttentionOp<Schema, Placement, T, Compute>,
                                       AttentionKernel<AttentionNode<Schema, Placement>, Compute>,
                                       /*WithStatus=*/true> {
  using Kernel = AttentionKernel<AttentionNode<Schema, Placement>, Compute>;

  AttentionOp() {
    OrtCustomOp::GetMayInplace = &PastPresentMayInplace;
    OrtCustomOp::ReleaseMayInplace = &ReleasePastPresentInplace;
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return GuardStatus([&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return Schema::kName; }
  const char* GetExecutionProviderType() const { return Placement::kExecutionProvider; }

  size_t GetInputTypeCount() const { return std::size(Schema::kInputs); }
  ONNXTensorElementDataType GetInputType(size_t i) const { return TypeOf(Schema::kInputs[i]); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return CharacteristicOf(Schema::kInputs[i]);
  }
  OrtMemType GetInputMemoryType(size_t i) const {
    return Placement::kHostLengths && Schema::kInputs[i].host_memory ? OrtMemTypeCPUInput : OrtMemTypeDefault;
  }

  size_t GetOutputTypeCount() const { return std::size(Schema::kOutputs); }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return TypeOf(Schema::kOutputs[i]); }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return CharacteristicOf(Schema::kOutputs[i]);
  }

 private:
  static ONNXTensorElementDataType TypeOf(const Port& port) {
    return port.type == kStorageType ? ElementType<T>::kOnnx : port.type;
  }
  static OrtCustomOpInputOutputCharacteristic CharacteristicOf(const Port& port) {
    return port.required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace ops
}  // namespace hysparse
