// What the CPU kernels share: exact bf16 -> fp32 widening, fp32 vector lanes at the build's width (`Lanes`), the max
// and exp of a softmax, and a work queue over torch's threads.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX512F__)
#include <immintrin.h>
// libtorch_cpu's vectorized exp (1 ulp), the one ATen's AVX-512 `Vectorized<float>::exp` calls.
extern "C" __m512 Sleef_expf16_u10(__m512);
#elif defined(__AVX2__)
#include <immintrin.h>
extern "C" __m256 Sleef_expf8_u10(__m256);  // the one ATen's AVX2 `Vectorized<float>::exp` calls
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

namespace infermatrix::vec {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float widen(float x) { return x; }
inline float widen(at::BFloat16 x) { return __builtin_bit_cast(float, static_cast<uint32_t>(x.x) << 16); }

// fp32 lanes at the build's widest width (AVX-512: 16 in 32 registers, AVX2: 8 in 16), so a loop is written once
// for both: bf16 widens exactly and rounds to nearest even in integer ops as ATen's vector conversion does
// (denormals kept, where vcvtneps2bf16 would flush them; a NaN becomes 0xffff); exp is the one ATen's vectors call.
#if defined(__AVX512F__)
#define INFERMATRIX_LANES
struct Lanes {
  using V = __m512;
  using Bf16 = __m256i;
  static constexpr int kWidth = 16, kRegisters = 32;
  static V zero() { return _mm512_setzero_ps(); }
  static V splat(float x) { return _mm512_set1_ps(x); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float sum(V x) { return _mm512_reduce_add_ps(x); }
  static float max(V x) { return _mm512_reduce_max_ps(x); }
  static V exp(V x) { return Sleef_expf16_u10(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V widen(Bf16 h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static V load(const at::BFloat16* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const Bf16*>(p))); }
  static void store(at::BFloat16* p, V x) { _mm256_storeu_si256(reinterpret_cast<Bf16*>(p), to_bf16(x)); }
  static Bf16 to_bf16(V x) {
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), _mm512_set1_epi32(0xffff),
                                                         rounded));
  }
};
#elif defined(__AVX2__)
#define INFERMATRIX_LANES
struct Lanes {
  using V = __m256;
  using Bf16 = __m128i;
  static constexpr int kWidth = 8, kRegisters = 16;
  static V zero() { return _mm256_setzero_ps(); }
  static V splat(float x) { return _mm256_set1_ps(x); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float sum(V x) {
    const __m128 four = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
  }
  static float max(V x) {
    const __m128 four = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 two = _mm_max_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_max_ss(two, _mm_movehdup_ps(two)));
  }
  static V exp(V x) { return Sleef_expf8_u10(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V widen(Bf16 h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  static V load(const at::BFloat16* p) { return widen(_mm_loadu_si128(reinterpret_cast<const Bf16*>(p))); }
  static void store(at::BFloat16* p, V x) { _mm_storeu_si128(reinterpret_cast<Bf16*>(p), to_bf16(x)); }
  static Bf16 to_bf16(V x) {
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i kept = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0xffff),
                                            _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
    return _mm_packus_epi32(_mm256_castsi256_si128(kept), _mm256_extracti128_si256(kept, 1));  // lanes <= 0xffff
  }
};
#endif

inline float max_of(const float* x, int64_t n) {
  float max = kNegInf;
  int64_t t = 0;
#if defined(INFERMATRIX_LANES)
  Lanes::V m = Lanes::splat(kNegInf);
  for (; t + Lanes::kWidth <= n; t += Lanes::kWidth) m = Lanes::max(m, Lanes::load(x + t));
  max = Lanes::max(m);
#endif
  for (; t < n; ++t) max = std::max(max, x[t]);
  return max;
}

// exp(x[t] - shift) in place for t < n; returns their sum.
inline float exp_shifted(float* x, int64_t n, float shift) {
  float sum = 0.f;
  int64_t t = 0;
#if defined(__AVX512F__)
  __m512 sums = _mm512_setzero_ps();
  for (; t < n; t += 16) {
    const __mmask16 m = n - t >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - t)) - 1);
    const __m512 e = Sleef_expf16_u10(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + t), _mm512_set1_ps(shift)));
    _mm512_mask_storeu_ps(x + t, m, e);
    sums = _mm512_add_ps(sums, _mm512_maskz_mov_ps(m, e));
  }
  sum = _mm512_reduce_add_ps(sums);
#elif defined(__AVX2__)
  Lanes::V sums = Lanes::zero();
  for (; t + Lanes::kWidth <= n; t += Lanes::kWidth) {
    const Lanes::V e = Lanes::exp(Lanes::load(x + t) - Lanes::splat(shift));
    Lanes::store(x + t, e);
    sums += e;
  }
  sum = Lanes::sum(sums);
#endif
  for (; t < n; ++t) sum += (x[t] = std::exp(x[t] - shift));
  return sum;
}

// fn(i, scratch) for every task i in [0, n), tasks handed out one at a time over torch's threads (their costs
// differ: a static split can leave one thread all the costly ones); each worker makes its scratch once.
template <typename Make, typename Fn>
void for_each_task(int64_t n, Make make_scratch, Fn fn) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), n), 1, [&](int64_t, int64_t) {
    auto scratch = make_scratch();
    for (int64_t i = next++; i < n; i = next++) fn(i, scratch);
  });
}

}  // namespace infermatrix::vec
