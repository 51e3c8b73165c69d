// Float linear layer for AVX-512 CPUs: y = x @ W^T (+ b) over k in order, fp32 sums rounded once to the dtype.
// W is packed for 16 output rows at a time, [N/16][K/s][16][s] with s = k per step (bf16: 2, one vdpbf16ps over a
// pair, AVX512-BF16; fp32: 1, one FMA), so one 64-byte load feeds 16 outputs and x is one broadcast per step: no
// horizontal sums. A task is two 16-row tiles; rows of x go eight at a time (16 accumulators in registers). fp32
// adds a partial sum per 64 k into y: max relative error over SmolLM2's shapes 1.6-2.3e-7 against float64, where
// oneDNN's packed matmul gave 6.8-9.6e-7 and F.linear (MKL) 2.7-4.0e-7 (one sum over all k: 7.6e-7-1.2e-6).
// Why not oneDNN: SmolLM2's 121 linears of a decode step (weights streamed from memory, 2 threads, 4 alternating
// rounds), bf16: 14.8-16.5 ms there at one row of x and 10.0-10.5 ms here, 15.3-16.0 vs 12.0-13.6 at 8 rows,
// 29.9-33.0 vs 26.1-30.9 at 32; fp32: 30.1-36.1 vs 18.0-20.6 at one row, 56.2-65.4 vs 50.5-58.4 at 32. One layer
// at 2048 rows (a prefill chunk): bf16 361-416 GFLOP/s there, 374-422 here; fp32 209-219 there, 193-206 here.
// Each row's sum runs in the same order whatever the number of rows: a token's logits do not depend on its batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kTile = 16;  // output rows per packed tile
constexpr int kTiles = 2;      // tiles per task
constexpr int kRows = 8;       // rows of x per pass over a task's tiles

template <typename scalar_t>
constexpr bool supported() {
#if defined(__AVX512BF16__)
  return true;
#elif defined(__AVX512F__)
  return std::is_same_v<scalar_t, float>;
#else
  return false;
#endif
}

template <typename scalar_t>
struct Step;  // one step of k for one 16-row tile, in each dtype

#if defined(__AVX512F__)
template <>
struct Step<float> {
  static constexpr int64_t kPer = 1;
  using Operand = __m512;
  static __m512 weights(const float* w) { return _mm512_loadu_ps(w); }
  static __m512 x(const float* row, int64_t step) { return _mm512_set1_ps(row[step]); }
  static __m512 x_tail(const float*, int64_t) { return _mm512_setzero_ps(); }  // never: K % 1 == 0
  static constexpr int64_t kBlock = 64;  // k per partial sum added into y: error grows with 64 + K/64, not K
  static __m512 add(__m512 acc, __m512 x, __m512 w) { return _mm512_fmadd_ps(x, w, acc); }
  static void store(float* y, __mmask16 mask, __m512 v, bool add_to_y) {
    _mm512_mask_storeu_ps(y, mask, add_to_y ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y), v) : v);
  }
};
#endif

#if defined(__AVX512BF16__)
template <>
struct Step<at::BFloat16> {
  static constexpr int64_t kPer = 2;
  using Operand = __m512bh;
  static __m512bh weights(const at::BFloat16* w) { return (__m512bh)_mm512_loadu_si512(w); }
  static __m512bh x(const at::BFloat16* row, int64_t step) {
    int32_t pair;  // two adjacent bf16 as one 32-bit lane, low half first
    std::memcpy(&pair, row + 2 * step, sizeof(pair));
    return (__m512bh)_mm512_set1_epi32(pair);
  }
  // odd K: the last x alone, against the zero column the packing added
  static __m512bh x_tail(const at::BFloat16* row, int64_t K) {
    return (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(row[K - 1].x));
  }
  static constexpr int64_t kBlock = INT64_MAX;  // one fp32 sum, rounded once to bf16
  static __m512 add(__m512 acc, __m512bh x, __m512bh w) { return _mm512_dpbf16_ps(acc, x, w); }
  static void store(at::BFloat16* y, __mmask16 mask, __m512 v, bool) {
    _mm256_mask_storeu_epi16(y, mask, (__m256i)_mm512_cvtneps_pbh(v));
  }
};
#endif

#if defined(__AVX512F__)
// y[m][16 t + j] for kM rows of x over the task's tiles; `steps` per tile; bias (fp32, padded) or null; writes
// the first `cols` outputs (the last task may end past N).
template <typename scalar_t, int kM>
void tiles(const scalar_t* x, int64_t x_stride, int64_t K, const scalar_t* w, int64_t steps, const float* bias,
           scalar_t* y, int64_t y_stride, int64_t cols) {
  if constexpr (supported<scalar_t>()) {
    using S = Step<scalar_t>;
    __m512 acc[kM][kTiles];
    auto step = [&](int64_t s, auto x_of_row) {
      typename S::Operand wv[kTiles];
      for (int t = 0; t < kTiles; ++t) wv[t] = S::weights(w + (t * steps + s) * S::kPer * kTile);
      for (int m = 0; m < kM; ++m) {
        const auto xv = x_of_row(x + m * x_stride);
        for (int t = 0; t < kTiles; ++t) acc[m][t] = S::add(acc[m][t], xv, wv[t]);
      }
    };
    const int64_t full = K / S::kPer;
    for (int64_t s0 = 0; s0 < steps; s0 += S::kBlock) {
      for (int t = 0; t < kTiles; ++t) {
        const __m512 start = bias && s0 == 0 ? _mm512_loadu_ps(bias + kTile * t) : _mm512_setzero_ps();
        for (int m = 0; m < kM; ++m) acc[m][t] = start;
      }
      const int64_t s1 = std::min(s0 + S::kBlock, full);
      for (int64_t s = s0; s < s1; ++s) step(s, [&](const scalar_t* row) { return S::x(row, s); });
      if (s1 == full && full < steps) step(full, [&](const scalar_t* row) { return S::x_tail(row, K); });
      for (int t = 0; t < kTiles; ++t) {
        const int64_t n = std::min<int64_t>(kTile, cols - kTile * t);
        if (n <= 0) break;
        const __mmask16 mask = n == kTile ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
        for (int m = 0; m < kM; ++m) S::store(y + m * y_stride + kTile * t, mask, acc[m][t], s0 > 0);
      }
    }
  }
}

template <typename scalar_t, int... kM>
void tiles_for_rows(int rows, std::integer_sequence<int, kM...>, const scalar_t* x, int64_t x_stride, int64_t K,
                    const scalar_t* w, int64_t steps, const float* bias, scalar_t* y, int64_t y_stride,
                    int64_t cols) {
  ((rows == kM + 1 ? (tiles<scalar_t, kM + 1>(x, x_stride, K, w, steps, bias, y, y_stride, cols), 0) : 0), ...);
}

template <typename scalar_t>
void linear(const at::Tensor& x, const at::Tensor& packed, const float* bias, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1), steps = packed.size(1);
  const int64_t task_cols = kTiles * kTile, task_weights = kTiles * steps * packed.size(3) * kTile;
  const auto* xp = x.data_ptr<scalar_t>();
  const auto* wp = packed.data_ptr<scalar_t>();
  auto* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, packed.size(0) / kTiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task * task_cols;
      for (int64_t m0 = 0; m0 < M; m0 += kRows)
        tiles_for_rows<scalar_t>(static_cast<int>(std::min<int64_t>(kRows, M - m0)),
                                 std::make_integer_sequence<int, kRows>{}, xp + m0 * x.stride(0), x.stride(0), K,
                                 wp + task * task_weights, steps, bias ? bias + n0 : nullptr, yp + m0 * N + n0, N,
                                 N - n0);
    }
  });
}

#endif

}  // namespace

namespace infermatrix {

// Whether this build runs packed_linear in the dtype ("float32" or "bfloat16").
bool packed_linear_supports(const std::string& dtype) {
  return dtype == "float32" ? supported<float>() : dtype == "bfloat16" && supported<at::BFloat16>();
}

// x [M, K] (rows may be strided); packed [Np/16, Kp/s, 16, s] in x's dtype (s = 2 for bf16, 1 for fp32), Np a
// multiple of 32, Kp = K rounded up to a multiple of s, zeros in the padding; bias: fp32 [Np] or none.
// Returns [M, N] in x's dtype.
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t N) {
  RECORD_FUNCTION("infermatrix::packed_linear", std::vector<c10::IValue>());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.dim() == 2 && (bf16 || x.scalar_type() == at::kFloat) && x.stride(1) == 1,
              "x: float32 or bfloat16 rows [M, K]");
  TORCH_CHECK(packed_linear_supports(bf16 ? "bfloat16" : "float32"), "this CPU build has no packed linear for ",
              x.scalar_type());
  const int64_t per = bf16 ? 2 : 1;
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == x.scalar_type() && packed.is_contiguous() &&
                  packed.size(2) == kTile && packed.size(3) == per && packed.size(0) % kTiles == 0,
              "packed weight [N/16, K/", per, ", 16, ", per, "] in x's dtype, N padded to a multiple of 32");
  TORCH_CHECK(packed.size(1) == (x.size(1) + per - 1) / per && N <= packed.size(0) * kTile,
              "x and the packed weight do not match");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                        bias->numel() == packed.size(0) * kTile), "bias: fp32 [padded N]");
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
#if defined(__AVX512F__)
  if (bf16) linear<at::BFloat16>(x, packed, bp, y);
  else linear<float>(x, packed, bp, y);
#endif
  return y;
}

}  // namespace infermatrix
