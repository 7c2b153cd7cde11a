// Every glue file includes ONNX Runtime's C++ API through here so that ORT_API_MANUAL_INIT is set
// consistently: the API table is the one handed to RegisterCustomOps, never a global looked up at
// load time (which would bind us to whatever libonnxruntime the process happened to load first).
#pragma once
#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>
