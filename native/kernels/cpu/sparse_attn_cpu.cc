// Filled in by the kernel work; see kernels/attention_args.h.
#include "kernels/attention_args.h"
