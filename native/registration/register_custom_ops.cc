// The library's only exported symbol. ONNX Runtime calls it from
// SessionOptions.RegisterCustomOpLibrary; it adds the com.hysparse domain with every kernel that was
// built (CPU always; CUDA when the library was compiled with HYSPARSE_WITH_CUDA).
#include <mutex>
#include <string>
#include <tuple>

#include "ops/full_attn_op.h"
#include "ops/sparse_attn_op.h"
#ifdef HYSPARSE_WITH_CUDA
#include "ops/cuda_attn_ops.h"
#endif

namespace {

constexpr const char* kDomain = "com.hysparse";

// The registration table: every kernel the library was built with, one AttentionOp per op, storage
// type and execution provider. ORT assigns a node to a CUDA entry when the session uses the CUDA
// execution provider; the CPU entries stay the fallback for nodes it places on the CPU.
using RegisteredOps = std::tuple<
    hysparse::ops::FullAttnOp<float>, hysparse::ops::FullAttnOp<hysparse::Half>,
    hysparse::ops::SparseAttnOp<float>, hysparse::ops::SparseAttnOp<hysparse::Half>
#ifdef HYSPARSE_WITH_CUDA
    ,
    hysparse::ops::CudaFullAttnOp<float>, hysparse::ops::CudaFullAttnOp<hysparse::Half>,
    hysparse::ops::CudaFullAttnOp<hysparse::BFloat16>, hysparse::ops::CudaSparseAttnOp<float>,
    hysparse::ops::CudaSparseAttnOp<hysparse::Half>, hysparse::ops::CudaSparseAttnOp<hysparse::BFloat16>
#endif
    >;

// The op objects and the domain must outlive every session that uses them, so they live for the
// process. The domain is created once and added to each SessionOptions that asks for it.
struct Registry {
  RegisteredOps ops;
  Ort::CustomOpDomain domain{kDomain};

  Registry() {
    std::apply([this](auto&... op) { (domain.Add(&op), ...); }, ops);
  }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // No OrtApi of our version: the running ONNX Runtime is older than the headers we were built with.
    // Report it through the oldest API table every runtime has.
    const OrtApi* fallback = api_base->GetApi(1);
    const std::string message = std::string("HySparse ops were built against ONNX Runtime API version ") +
                                std::to_string(ORT_API_VERSION) + ", but the running ONNX Runtime is " +
                                api_base->GetVersionString() + ", which does not provide it. Use ONNX Runtime " +
                                "1." + std::to_string(ORT_API_VERSION) + " or newer.";
    return fallback ? fallback->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
  }
  static std::once_flag init;
  std::call_once(init, [api] { Ort::InitApi(api); });
  try {
    static Registry registry;
    Ort::UnownedSessionOptions(options).Add(registry.domain);
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
