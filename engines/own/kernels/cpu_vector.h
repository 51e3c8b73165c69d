// What the CPU attention kernels share: exact bf16 -> fp32 widening, the max and exp of a softmax, and a
// work queue over torch's threads.
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

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {  // bf16 -> fp32 is exact: the bits move up 16 places
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
#endif

inline float max_of(const float* x, int64_t n) {
  float max = kNegInf;
  int64_t t = 0;
#if defined(__AVX512F__)
  __m512 m = _mm512_set1_ps(kNegInf);
  for (; t + 16 <= n; t += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + t));
  max = _mm512_reduce_max_ps(m);
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
