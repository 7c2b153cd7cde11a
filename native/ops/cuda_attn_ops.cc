#include "ops/cuda_attn_ops.h"

#include <cuda_runtime_api.h>

#include "ops/shared_buffer.h"

#include <string>
#include <vector>

namespace hysparse {
namespace ops {

namespace {

void ThrowIfFailed(const OpContext& op, const cuda::Status& status) {
  if (!status.ok()) throw std::runtime_error(op.op_name() + ": CUDA: " + status.message);
}

void ThrowIfFailed(const OpContext& op, cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(op.op_name() + ": CUDA " + what + ": " + cudaGetErrorString(err));
}

// Scratch from the EP's device allocator for one Compute call. Freed when Compute returns: the work
// that uses it is already enqueued on ORT's compute stream, and ORT's CUDA allocator hands memory out
// again only to work ordered after it on that stream (the same rule ORT's own CUDA kernels rely on).
class OrtScratch final : public cuda::ScratchAllocator {
 public:
  explicit OrtScratch(OrtAllocator* allocator) : allocator_(allocator) {}
  ~OrtScratch() override {
    for (void* p : blocks_) allocator_->Free(allocator_, p);
  }
  void* Allocate(size_t bytes) override {
    void* p = allocator_->Alloc(allocator_, bytes);
    if (p) blocks_.push_back(p);
    return p;
  }

 private:
  OrtAllocator* allocator_;
  std::vector<void*> blocks_;
};

OrtAllocator* DeviceAllocator(const OrtKernelInfo* info) {
  OrtAllocator* allocator = nullptr;
  Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAllocator(info, OrtMemTypeDefault, &allocator));
  return allocator;
}

bool CheckValuesEnabled(const OrtKernelInfo* info) {
  try {
    Ort::KeyValuePairs config = Ort::ConstKernelInfo(info).GetConfigEntries();
    const char* value = config.GetValue(kCudaCheckValuesConfig);
    return value == nullptr || std::string(value) != "0";
  } catch (const Ort::Exception&) {
    return true;
  }
}

cudaStream_t ComputeStream(const Ort::KernelContext& ctx, const OpContext& op) {
  auto* stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  if (stream == nullptr) {
    // Never fall back to the legacy default stream: it would race ORT's work on its own stream.
    op.Fail("ONNX Runtime gave the CUDA kernel no compute stream");
  }
  return stream;
}

// Runs one device-side value check (`launch` enqueues it, writing into device memory) and copies its
// verdict back: the one host synchronisation of a checked call.
template <typename Launch>
cuda::ValueProblem RunValueCheck(const OpContext& op, OrtAllocator* allocator, PinnedProblem& problem,
                                 cudaStream_t stream, Launch&& launch) {
  OrtScratch scratch(allocator);
  auto* device_problem = static_cast<cuda::ValueProblem*>(scratch.Allocate(sizeof(cuda::ValueProblem)));
  if (device_problem == nullptr) op.Fail("out of device memory for the value check");
  ThrowIfFailed(op, launch(device_problem));
  ThrowIfFailed(op, cudaMemcpyAsync(problem.get(), device_problem, sizeof(cuda::ValueProblem), cudaMemcpyDeviceToHost,
                                    stream), "copy of the value check");
  ThrowIfFailed(op, cudaStreamSynchronize(stream), "synchronise for the value check");
  return *problem.get();
}

// Raises the CPU glue's error for a block_indices problem found on the device.
[[noreturn]] void FailIndexProblem(const OpContext& op, const cuda::ValueProblem& p, const IndexLayout& layout) {
  using Kind = cuda::ValueProblemKind;
  switch (p.kind) {
    case Kind::kIndexBelowMinusOne: FailBlockIndexRow(op, p.where, BlockIndexProblem::kBelowMinusOne, p.value, p.previous, layout);
    case Kind::kIndexPastLastBlock: FailBlockIndexRow(op, p.where, BlockIndexProblem::kOutOfRange, p.value, p.previous, layout);
    case Kind::kIndexAfterPadding: FailBlockIndexRow(op, p.where, BlockIndexProblem::kAfterPadding, p.value, p.previous, layout);
    case Kind::kIndexNotAscending: FailBlockIndexRow(op, p.where, BlockIndexProblem::kNotAscending, p.value, p.previous, layout);
    default: op.Fail("the device value check reported a problem that is not a block index problem");
  }
}

// Runs the device-side value checks and, when they find something, raises the CPU glue's error.
void CheckValuesOnDevice(const OpContext& op, OrtAllocator* allocator, PinnedProblem& problem, cudaStream_t stream,
                         const TensorInput& mask, const int32_t* indices, const IndexLayout* layout) {
  if (!mask.present && indices == nullptr) return;
  const int64_t rows = layout ? layout->batch * layout->kv_heads * layout->new_len : 0;
  const cuda::ValueProblem p = RunValueCheck(op, allocator, problem, stream, [&](cuda::ValueProblem* device_problem) {
    return cuda::LaunchCheckSparseValues(indices, rows, layout ? static_cast<int>(layout->top_k) : 1,
                                         layout ? layout->num_blocks : 0, mask.present ? mask.Data<int64_t>() : nullptr,
                                         mask.present ? mask.Elements() : 0, device_problem, stream);
  });
  if (p.kind == cuda::ValueProblemKind::kNone) return;
  if (p.kind == cuda::ValueProblemKind::kMaskValue) FailMaskValue(op, p.where, p.value, mask.Dim(1));
  FailIndexProblem(op, p, *layout);
}

// Shared-buffer mode: seqlens_k (device) against the buffer's capacity and total_sequence_length (host),
// then, for the sparse op, every block_indices row against its batch row's block count. The same errors,
// in the same order, as the CPU glue (ReadSharedBufferRows, CheckBlockIndices).
void CheckSharedBufferOnDevice(const OpContext& op, OrtAllocator* allocator, PinnedProblem& problem,
                               cudaStream_t stream, const TensorInput& seqlens_k,
                               const TensorInput& total_sequence_length, const TensorInput& buffer,
                               const int32_t* indices, const IndexLayout* layout) {
  const int batch = static_cast<int>(seqlens_k.Dim(0));
  const int64_t declared = total_sequence_length.Data<int32_t>()[0];  // CPU-resident input
  const cuda::ValueProblem p = RunValueCheck(op, allocator, problem, stream, [&](cuda::ValueProblem* device_problem) {
    return cuda::LaunchCheckSharedBufferValues(
        seqlens_k.Data<int32_t>(), batch, buffer.Dim(2), declared, indices,
        layout ? layout->kv_heads * layout->new_len : 0, layout ? static_cast<int>(layout->top_k) : 1,
        layout ? layout->block_size : 1, device_problem, stream);
  });
  switch (p.kind) {
    case cuda::ValueProblemKind::kNone: return;
    case cuda::ValueProblemKind::kSeqlensNegative:
    case cuda::ValueProblemKind::kSeqlensPastCapacity: FailSeqlensRow(op, p.where, p.value, buffer);
    case cuda::ValueProblemKind::kTotalLengthMismatch: FailTotalSequenceLength(op, p.value, p.previous);
    default: break;
  }
  if (layout == nullptr) op.Fail("the device value check reported a block index problem without block_indices");
  // The message names the row's own length (IndexLayout::row_total_len): only row where/(H_kv*S) is read.
  std::vector<int64_t> totals(static_cast<size_t>(batch), 0);
  totals[static_cast<size_t>(p.where / (layout->kv_heads * layout->new_len))] = p.row_total;
  IndexLayout with_rows = *layout;
  with_rows.row_total_len = totals.data();
  FailIndexProblem(op, p, with_rows);
}

// Shared-buffer mode: makes `present` hold `past` (nothing to do when they are one buffer: ORT reused
// past for present, or the caller bound one buffer to both), then writes each row's real new tokens at
// [p_b, total_b). Both steps have sizes fixed by the shapes; the rows' lengths are read on the device.
template <typename T>
void UpdateSharedBufferOnDevice(const OpContext& op, const T* past, T* present, const T* fresh,
                                const HeadView& new_view, int batch, int heads, int64_t new_len, int head_dim,
                                int64_t capacity, const int32_t* seqlens_k, cudaStream_t stream) {
  if (present != past) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(batch) * heads * capacity * head_dim;
    ThrowIfFailed(op, cudaMemcpyAsync(present, past, bytes, cudaMemcpyDeviceToDevice, stream), "copy of past into present");
  }
  ThrowIfFailed(op, cuda::LaunchWriteNewTokens(fresh, new_view, batch, heads, new_len, head_dim, present, capacity,
                                               seqlens_k, stream));
}

// past ++ new into a present cache, on the stream. `past` is BNSH [B, H, past_len, D].
template <typename T>
void BuildCache(const OpContext& op, const T* past, int64_t past_len, const T* fresh, const HeadView& new_view,
                int64_t new_len, int batch, int heads, int head_dim, T* dst, int64_t capacity, cudaStream_t stream) {
  if (past_len > 0) {
    ThrowIfFailed(op, cuda::LaunchCopyToCache(past, HeadView::Bnsh(past_len, heads, head_dim), batch, heads, past_len,
                                              head_dim, dst, capacity, 0, stream));
  }
  ThrowIfFailed(op, cuda::LaunchCopyToCache(fresh, new_view, batch, heads, new_len, head_dim, dst, capacity, past_len,
                                            stream));
}

}  // namespace

PinnedProblem::PinnedProblem() {
  const cudaError_t err = cudaMallocHost(reinterpret_cast<void**>(&host_), sizeof(cuda::ValueProblem));
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaMallocHost: ") + cudaGetErrorString(err));
}

PinnedProblem::~PinnedProblem() {
  if (host_) cudaFreeHost(host_);
}

CudaPlacement::Resources::Resources(const OrtKernelInfo* info)
    : check_values(CheckValuesEnabled(info)),
      allocator(DeviceAllocator(info)),
      problem(std::make_unique<PinnedProblem>()) {}

// ---- HySparseFullAttn ------------------------------------------------------------------------------

template <typename T>
void ComputeFullAttnCuda(const FullAttnCudaNode& node, Ort::KernelContext& ctx) {
  const OpContext& op = node.op;
  const HeadAttributes& heads = node.attrs.heads;
  const int top_k = node.attrs.top_k;
  const CudaPlacement::Resources& device = node.resources;
  const FullAttnInputs in(ctx);
  const FullAttnShape shape = CheckFullAttnInputs(op, heads, in, ElementType<T>::kOnnx);
  CheckTopKOutputSizes(op, heads, top_k, shape, ctx.GetOutputCount());
  std::string why;
  if (!cuda::SupportsShape(shape.qkv.head_dim, heads.num_heads, heads.kv_num_heads, &why)) op.Fail(why);
  const cudaStream_t stream = ComputeStream(ctx, op);
  const QkvShape& qkv = shape.qkv;
  if (shape.shared_buffer) {
    // past_len = total_len = the capacity C: outputs and scratch are sized by C, whatever the step.
    const int32_t* seqlens_k = in.seqlens_k.Data<int32_t>();
    if (device.check_values) {
      CheckSharedBufferOnDevice(op, device.allocator, *device.problem, stream, in.seqlens_k, in.total_sequence_length,
                                in.past_key, nullptr, nullptr);
    }
    const FullAttnBinding<T> bound = BindFullAttn<T>(ctx, heads, top_k, in, shape);
    UpdateSharedBufferOnDevice(op, in.past_key.Data<T>(), bound.present_key, in.key.Data<T>(), qkv.kv_view, qkv.batch,
                               heads.kv_num_heads, qkv.new_len, qkv.head_dim, shape.total_len, seqlens_k, stream);
    UpdateSharedBufferOnDevice(op, in.past_value.Data<T>(), bound.present_value, in.value.Data<T>(), qkv.kv_view,
                               qkv.batch, heads.kv_num_heads, qkv.new_len, qkv.head_dim, shape.total_len, seqlens_k,
                               stream);
    OrtScratch scratch(device.allocator);
    ThrowIfFailed(op, cuda::LaunchFullAttn(bound.args, stream, scratch, seqlens_k));
    return;
  }
  if (device.check_values) CheckValuesOnDevice(op, device.allocator, *device.problem, stream, in.mask, nullptr, nullptr);

  const FullAttnBinding<T> bound = BindFullAttn<T>(ctx, heads, top_k, in, shape);
  BuildCache(op, in.past_key.present ? in.past_key.Data<T>() : nullptr, shape.past_len, in.key.Data<T>(), qkv.kv_view,
             qkv.new_len, qkv.batch, heads.kv_num_heads, qkv.head_dim, bound.present_key, shape.total_len, stream);
  BuildCache(op, in.past_value.present ? in.past_value.Data<T>() : nullptr, shape.past_len, in.value.Data<T>(),
             qkv.kv_view, qkv.new_len, qkv.batch, heads.kv_num_heads, qkv.head_dim, bound.present_value,
             shape.total_len, stream);
  OrtScratch scratch(device.allocator);
  ThrowIfFailed(op, cuda::LaunchFullAttn(bound.args, stream, scratch));
}

// ---- HySparseSparseAttn ----------------------------------------------------------------------------

template <typename T>
void ComputeSparseAttnCuda(const SparseAttnCudaNode& node, Ort::KernelContext& ctx) {
  const OpContext& op = node.op;
  const SparseAttnAttributes& attrs = node.attrs;
  const CudaPlacement::Resources& device = node.resources;
  const SparseAttnInputs in(ctx);
  const SparseAttnShape shape = CheckSparseAttnInputs(op, attrs, in, ElementType<T>::kOnnx);
  const QkvShape& qkv = shape.qkv;
  const int B = qkv.batch, Hkv = attrs.heads.kv_num_heads, D = qkv.head_dim;
  std::string why;
  if (!cuda::SupportsShape(D, attrs.heads.num_heads, Hkv, &why)) op.Fail(why);
  const cudaStream_t stream = ComputeStream(ctx, op);
  const IndexLayout layout = shape.Indices(Hkv, attrs.heads.block_size);
  if (shape.shared_buffer) {
    // The own cache is the layer's buffer (capacity C = total_len = own_len, window_cache 0); the SA
    // source is that buffer, the full layer's (shared_*), or the gathered rows, as given.
    const int32_t* seqlens_k = in.seqlens_k.Data<int32_t>();
    if (device.check_values) {
      CheckSharedBufferOnDevice(op, device.allocator, *device.problem, stream, in.seqlens_k, in.total_sequence_length,
                                in.past_key, in.block_indices.Data<int32_t>(), &layout);
    }
    const std::vector<int64_t> buffer_shape{B, Hkv, shape.own_len, D};
    T* present_key = ctx.GetOutput(kSparsePresentKey, buffer_shape).GetTensorMutableData<T>();
    T* present_value = ctx.GetOutput(kSparsePresentValue, buffer_shape).GetTensorMutableData<T>();
    UpdateSharedBufferOnDevice(op, in.past_key.Data<T>(), present_key, in.key.Data<T>(), qkv.kv_view, B, Hkv,
                               qkv.new_len, D, shape.own_len, seqlens_k, stream);
    UpdateSharedBufferOnDevice(op, in.past_value.Data<T>(), present_value, in.value.Data<T>(), qkv.kv_view, B, Hkv,
                               qkv.new_len, D, shape.own_len, seqlens_k, stream);
    T* output = ctx.GetOutput(kSparseOutput, in.query.shape).GetTensorMutableData<T>();
    OrtScratch scratch(device.allocator);
    ThrowIfFailed(op, cuda::LaunchSparseAttn(MakeSparseAttnArgs<T>(attrs, in, shape, present_key, present_value,
                                                                    output),
                                              stream, scratch, seqlens_k));
    return;
  }
  if (device.check_values) {
    CheckValuesOnDevice(op, device.allocator, *device.problem, stream, in.mask, in.block_indices.Data<int32_t>(), &layout);
  }

  // Own cache = past ++ new: the present output itself, or (window cache) scratch whose tail present keeps.
  const std::vector<int64_t> present_shape{B, Hkv, shape.present_len, D};
  T* present_key = ctx.GetOutput(kSparsePresentKey, present_shape).GetTensorMutableData<T>();
  T* present_value = ctx.GetOutput(kSparsePresentValue, present_shape).GetTensorMutableData<T>();
  OrtScratch scratch(device.allocator);
  T* own_k = present_key;
  T* own_v = present_value;
  if (attrs.window_cache) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(B) * Hkv * shape.own_len * D;
    own_k = static_cast<T*>(scratch.Allocate(bytes));
    own_v = static_cast<T*>(scratch.Allocate(bytes));
    if (own_k == nullptr || own_v == nullptr) op.Fail("out of device memory for the window cache");
  }
  BuildCache(op, in.past_key.present ? in.past_key.Data<T>() : nullptr, shape.own_past, in.key.Data<T>(), qkv.kv_view,
             qkv.new_len, B, Hkv, D, own_k, shape.own_len, stream);
  BuildCache(op, in.past_value.present ? in.past_value.Data<T>() : nullptr, shape.own_past, in.value.Data<T>(),
             qkv.kv_view, qkv.new_len, B, Hkv, D, own_v, shape.own_len, stream);

  T* output = ctx.GetOutput(kSparseOutput, in.query.shape).GetTensorMutableData<T>();
  ThrowIfFailed(op, cuda::LaunchSparseAttn(MakeSparseAttnArgs<T>(attrs, in, shape, own_k, own_v, output), stream,
                                            scratch));
  if (attrs.window_cache) {
    // The last present_len rows of each head: a BNSH source view starting present_len rows before the end.
    const int64_t skip = shape.own_len - shape.present_len;
    HeadView tail = HeadView::Bnsh(shape.own_len, Hkv, D);
    ThrowIfFailed(op, cuda::LaunchCopyToCache(own_k + skip * D, tail, B, Hkv, shape.present_len, D, present_key,
                                               shape.present_len, 0, stream));
    ThrowIfFailed(op, cuda::LaunchCopyToCache(own_v + skip * D, tail, B, Hkv, shape.present_len, D, present_value,
                                               shape.present_len, 0, stream));
  }
}

template void ComputeFullAttnCuda<float>(const FullAttnCudaNode&, Ort::KernelContext&);
template void ComputeFullAttnCuda<Half>(const FullAttnCudaNode&, Ort::KernelContext&);
template void ComputeFullAttnCuda<BFloat16>(const FullAttnCudaNode&, Ort::KernelContext&);
template void ComputeSparseAttnCuda<float>(const SparseAttnCudaNode&, Ort::KernelContext&);
template void ComputeSparseAttnCuda<Half>(const SparseAttnCudaNode&, Ort::KernelContext&);
template void ComputeSparseAttnCuda<BFloat16>(const SparseAttnCudaNode&, Ort::KernelContext&);

}  // namespace ops
}  // namespace hysparse
