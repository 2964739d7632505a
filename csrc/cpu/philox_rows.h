// Philox-4x32-10 draws for a whole row of the dropout mask (draw of column k = word k % 4 of Philox(counters
// k / 4, row)), bit-exact with lowpeft_common.h's dropout_draw: AVX-512 (16 counters, 64 draws) or AVX2 (8
// counters, 32 draws) per step when the CPU has them, the scalar function otherwise, picked once at first use.
//
// Trade-off: hand-written intrinsics instead of relying on the compiler: GCC does vectorize the scalar loop,
// but its 32x32->64-bit products come out about 6x slower than the even/odd vpmuludq + blend form below
// (measured on the 2-core AMD EPYC CI box). The four words of each evaluation are interleaved back into column
// order with unpack / permute shuffles (AVX2) or a small scalar scatter (AVX-512), cheap next to the 10 rounds.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../lowpeft_common.h"

namespace lowpeft::cpu {

using PhiloxRowFn = void (*)(uint32_t key0, uint32_t key1, uint32_t row, int64_t count, uint32_t* draws);

inline void philox_row_tail(uint32_t key0, uint32_t key1, uint32_t row, int64_t start, int64_t count,
                            uint32_t* draws) {
  for (int64_t i = start; i < count; ++i) draws[i] = dropout_draw(static_cast<uint32_t>(i), row, key0, key1);
}

inline void philox_row_scalar(uint32_t key0, uint32_t key1, uint32_t row, int64_t count, uint32_t* draws) {
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const PhiloxWords words = philox_words(static_cast<uint32_t>(i >> 2), row, key0, key1);
    draws[i] = words.w0;
    draws[i + 1] = words.w1;
    draws[i + 2] = words.w2;
    draws[i + 3] = words.w3;
  }
  philox_row_tail(key0, key1, row, i, count, draws);
}

#if defined(__x86_64__)
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized on its own _mm512_undefined_* helpers once inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) inline void mulhilo_avx512(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

__attribute__((target("avx512f"))) inline void philox_row_avx512(uint32_t key0, uint32_t key1, uint32_t row,
                                                                   int64_t count, uint32_t* draws) {
  const __m512i multiplier_a = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i multiplier_b = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  alignas(64) uint32_t words[4][16];
  int64_t i = 0;
  for (; i + 64 <= count; i += 64) {
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i >> 2)), lanes);
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(row));
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      __m512i hi_b, lo_b, hi_a, lo_a;
      mulhilo_avx512(c2, multiplier_b, hi_b, lo_b);
      mulhilo_avx512(c0, multiplier_a, hi_a, lo_a);
      c0 = _mm512_ternarylogic_epi32(hi_b, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
      c2 = _mm512_ternarylogic_epi32(hi_a, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      c1 = lo_b;
      c3 = lo_a;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm512_store_si512(words[0], c0);
    _mm512_store_si512(words[1], c1);
    _mm512_store_si512(words[2], c2);
    _mm512_store_si512(words[3], c3);
    for (int lane = 0; lane < 16; ++lane) {
      for (int word = 0; word < 4; ++word) draws[i + 4 * lane + word] = words[word][lane];
    }
  }
  philox_row_tail(key0, key1, row, i, count, draws);
}
#pragma GCC diagnostic pop

__attribute__((target("avx2"))) inline void mulhilo_avx2(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

__attribute__((target("avx2"))) inline void philox_row_avx2(uint32_t key0, uint32_t key1, uint32_t row,
                                                              int64_t count, uint32_t* draws) {
  const __m256i multiplier_a = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i multiplier_b = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(i >> 2)), lanes);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(row));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      __m256i hi_b, lo_b, hi_a, lo_a;
      mulhilo_avx2(c2, multiplier_b, hi_b, lo_b);
      mulhilo_avx2(c0, multiplier_a, hi_a, lo_a);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo_b;
      c3 = lo_a;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    // 4 x 8 transpose: lane l's words (c0, c1, c2, c3)[l] go to draws[i + 4 l ...].
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1);  // lanes 0,1 | 4,5 of words 0,1
    const __m256i t1 = _mm256_unpacklo_epi32(c2, c3);  // lanes 0,1 | 4,5 of words 2,3
    const __m256i t2 = _mm256_unpackhi_epi32(c0, c1);  // lanes 2,3 | 6,7 of words 0,1
    const __m256i t3 = _mm256_unpackhi_epi32(c2, c3);  // lanes 2,3 | 6,7 of words 2,3
    const __m256i q04 = _mm256_unpacklo_epi64(t0, t1);  // lane 0 | lane 4, all four words
    const __m256i q15 = _mm256_unpackhi_epi64(t0, t1);
    const __m256i q26 = _mm256_unpacklo_epi64(t2, t3);
    const __m256i q37 = _mm256_unpackhi_epi64(t2, t3);
    auto* out = reinterpret_cast<__m256i*>(draws + i);
    _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(q04, q15, 0x20));  // lanes 0, 1
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(q26, q37, 0x20));  // lanes 2, 3
    _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(q04, q15, 0x31));  // lanes 4, 5
    _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(q26, q37, 0x31));  // lanes 6, 7
  }
  philox_row_tail(key0, key1, row, i, count, draws);
}
#endif

// The widest instruction set the CPU has; $LOWPEFT_CPU_ISA = "avx2" or "scalar" caps it (so the tests can check
// every variant against the reference on one machine).
inline PhiloxRowFn select_philox_row() {
  const char* cap = std::getenv("LOWPEFT_CPU_ISA");
  const std::string_view limit = cap == nullptr ? "" : cap;
  if (limit == "scalar") return philox_row_scalar;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (limit != "avx2" && __builtin_cpu_supports("avx512f")) return philox_row_avx512;
  if (__builtin_cpu_supports("avx2")) return philox_row_avx2;
#endif
  return philox_row_scalar;
}

// draws[i] = dropout_draw(i, row) for i < count.
inline void philox_row(uint32_t key0, uint32_t key1, uint32_t row, int64_t count, uint32_t* draws) {
  static const PhiloxRowFn implementation = select_philox_row();
  implementation(key0, key1, row, count, draws);
}

}  // namespace lowpeft::cpu
