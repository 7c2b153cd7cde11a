#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/attention_args.h"

namespace hysparse {
namespace {

// Independent decoder: value = (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
double DecodeHalf(uint16_t bits) {
  const int s = bits >> 15, e = (bits >> 10) & 31, m = bits & 1023;
  double v;
  if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0) v = std::ldexp(m / 1024.0, -14);
  else v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

TEST(Half, DecodesEveryBitPattern) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const double want = DecodeHalf(static_cast<uint16_t>(bits));
    const float got = HalfToFloat(Half{static_cast<uint16_t>(bits)});
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << bits;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << bits;
    }
  }
}

TEST(Half, EncodeRoundTripsEveryHalf) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float f = HalfToFloat(Half{static_cast<uint16_t>(bits)});
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f).bits, bits) << bits;
  }
}

TEST(Half, EncodeRoundsToNearestEven) {
  // Compare against the nearest of all finite halves, ties to the even mantissa.
  uint32_t seed = 12345;
  for (int i = 0; i < 200000; ++i) {
    seed = seed * 1664525u + 1013904223u;
    const float f = std::ldexp(static_cast<float>(seed >> 8) / 16777216.0f, static_cast<int>(seed % 40) - 26) *
                    ((seed & 1) ? -1.f : 1.f);
    const uint16_t got = FloatToHalf(f).bits;
    const double err = std::fabs(DecodeHalf(got) - f);
    // Neighbours of the result must not be strictly closer.
    for (int d : {-1, 1}) {
      const uint16_t nb = static_cast<uint16_t>(got + d);
      if (((nb >> 10) & 31) == 31 || ((nb ^ got) & 0x8000)) continue;
      const double nerr = std::fabs(DecodeHalf(nb) - f);
      ASSERT_TRUE(err < nerr || (err == nerr && (got & 1) == 0)) << f << " -> " << got;
    }
  }
  EXPECT_EQ(FloatToHalf(70000.f).bits, 0x7C00);
  EXPECT_EQ(FloatToHalf(-70000.f).bits, 0xFC00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
}

}  // namespace
}  // namespace hysparse
