// IEEE binary16 <-> binary32 conversion. Done in software so the library has no CPU-feature
// requirement; the kernels convert whole tiles at a time, so this is off the inner loops.
#include "kernels/attention_args.h"

#include <cstring>

namespace hysparse {

float HalfToFloat(Half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1Fu;
  uint32_t mant = h.bits & 0x3FFu;
  uint32_t out;
  if (exp == 0x1F) {  // inf / NaN
    out = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {  // normal
    out = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {  // +-0
    out = sign;
  } else {  // subnormal: renormalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    out = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &out, sizeof f);
  return f;
}

Half FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf / NaN (keep NaN quiet and non-zero)
    return {static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u))};
  }
  if (abs >= 0x477FF000u) {  // rounds to >= 65520: overflow to inf
    return {static_cast<uint16_t>(sign | 0x7C00u)};
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return {sign};  // < 2^-25 rounds to zero
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t half_mant = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1u))) ++half_mant;
    return {static_cast<uint16_t>(sign | half_mant)};
  }
  // Normal: rebias the exponent and round the mantissa to 10 bits, ties to even.
  uint32_t h = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return {static_cast<uint16_t>(sign | h)};
}

}  // namespace hysparse
