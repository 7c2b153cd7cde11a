#!/usr/bin/env python3
"""Turns one CUDA kernel source (native/kernels/cuda/*.cu) into host C++ for the CPU emulation.

Three rewrites, nothing else: `NAME<<<grid, block, smem, stream>>>(args);` becomes
`::emu::Launch(NAME, grid, block, smem, stream, args);`, a dynamic `extern __shared__ float x[];`
becomes a pointer into the emulated block's shared memory, and the kernel handed to
cudaFuncSetAttribute is passed as the `const void*` the C API takes. emu_device.h, included first,
maps the remaining CUDA keywords and intrinsics.

    translate.py KERNEL.cu OUTPUT.cc
"""
import re
import sys

source, output = sys.argv[1], sys.argv[2]
text = open(source, encoding="utf-8").read()
text = re.sub(r"extern __shared__ float (\w+)\[\];",
              r"float* \1 = static_cast<float*>(::emu::DynamicSharedMemory());", text)
text, launches = re.subn(r"(\b[\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);",
                         lambda m: f"::emu::Launch({m.group(1)}, {m.group(2)}, {m.group(3)});", text, flags=re.S)
if "<<<" in text:
    sys.exit(f"translate.py: a launch in {source} was not rewritten")
text = text.replace("cudaFuncSetAttribute(kernel,", "cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),")
with open(output, "w", encoding="utf-8") as f:
    f.write(f'// Generated from {source} by translate.py for the CPU emulation; do not edit.\n')
    f.write('#include "emu_device.h"\n')
    f.write(f'#line 1 "{source}"\n')
    f.write(text)
