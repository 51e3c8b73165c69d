// bfloat16 linear layer for CPUs with AVX512-BF16: y = x @ W^T (+ b), each output an fp32 sum of bf16 products
// (vdpbf16ps, two k at a time) rounded once to bf16. W is packed by pairs of k for 16 output rows at a time,
// [N/16][K/2][16][2], so one 64-byte load feeds 16 outputs and an x pair is one broadcast: no horizontal sums.
// A task is two such 16-row tiles; rows of x go eight at a time (16 accumulators in registers).
// Why not oneDNN's packed matmul: SmolLM2's 121 linears of a decode step (weights streamed from memory, bf16,
// 2 threads, 4 alternating rounds) took 14.8-16.5 ms there at one row of x and 10.0-10.5 ms here; 15.3-16.0 vs
// 12.0-13.6 at 8 rows, 29.9-33.0 vs 26.1-30.9 at 32; one layer at 2048 rows ran at 361-416 GFLOP/s there and
// 374-422 here.
// Each row's sum runs in the same order whatever the number of rows: a token's logits do not depend on its batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kTile = 16;  // output rows per packed tile
constexpr int kTiles = 2;      // tiles per task
constexpr int kRows = 8;       // rows of x per pass over a task's tiles

#if defined(__AVX512BF16__)
// y[m][16 t + j] for kM rows of x over kTiles tiles; `pairs` k pairs; bias (fp32, padded) or null; writes the
// first `cols` outputs of the tiles (the last task may end past N).
template <int kM>
void tiles(const at::BFloat16* x, int64_t x_stride, int64_t K, const at::BFloat16* w, int64_t pairs,
           const float* bias, at::BFloat16* y, int64_t y_stride, int64_t cols) {
  __m512 acc[kM][kTiles];
  for (int t = 0; t < kTiles; ++t) {
    const __m512 start = bias ? _mm512_loadu_ps(bias + kTile * t) : _mm512_setzero_ps();
    for (int m = 0; m < kM; ++m) acc[m][t] = start;
  }
  auto step = [&](int64_t k2, auto pair_of_row) {
    __m512bh wv[kTiles];
    for (int t = 0; t < kTiles; ++t)
      wv[t] = (__m512bh)_mm512_loadu_si512(w + (t * pairs + k2) * 2 * kTile);
    for (int m = 0; m < kM; ++m) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair_of_row(m));
      for (int t = 0; t < kTiles; ++t) acc[m][t] = _mm512_dpbf16_ps(acc[m][t], xv, wv[t]);
    }
  };
  const int64_t full = K / 2;
  for (int64_t k2 = 0; k2 < full; ++k2)
    step(k2, [&](int m) { return *reinterpret_cast<const int32_t*>(x + m * x_stride + 2 * k2); });
  if (K % 2)  // odd K: the last x alone, against the zero column the packing added
    step(full, [&](int m) { return static_cast<int32_t>(x[m * x_stride + K - 1].x); });
  for (int t = 0; t < kTiles; ++t) {
    const int64_t n = std::min<int64_t>(kTile, cols - kTile * t);
    if (n <= 0) break;
    const __mmask16 mask = n == kTile ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    for (int m = 0; m < kM; ++m)
      _mm256_mask_storeu_epi16(y + m * y_stride + kTile * t, mask, (__m256i)_mm512_cvtneps_pbh(acc[m][t]));
  }
}

template <int... kM>
void tiles_for_rows(int rows, std::integer_sequence<int, kM...>, const at::BFloat16* x, int64_t x_stride, int64_t K,
                    const at::BFloat16* w, int64_t pairs, const float* bias, at::BFloat16* y, int64_t y_stride,
                    int64_t cols) {
  ((rows == kM + 1 ? (tiles<kM + 1>(x, x_stride, K, w, pairs, bias, y, y_stride, cols), 0) : 0), ...);
}
#endif

}  // namespace

namespace infermatrix {

bool has_bf16_linear() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// x [M, K] bf16 (rows may be strided); packed [Np/16, Kp/2, 16, 2] bf16 with Np a multiple of 32 and Kp = K
// rounded up to even (zeros in the padding); bias: fp32 [Np] or none. Returns [M, N] bf16.
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                       int64_t N) {
  RECORD_FUNCTION("infermatrix::bf16_linear", std::vector<c10::IValue>());
  TORCH_CHECK(has_bf16_linear(), "bf16_linear needs a CPU (and a build) with AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.stride(1) == 1, "x: bf16 rows [M, K]");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() &&
                  packed.size(2) == kTile && packed.size(3) == 2 && packed.size(0) % kTiles == 0,
              "packed weight [N/16, K/2, 16, 2], N padded to a multiple of 32");
  const int64_t M = x.size(0), K = x.size(1), pairs = packed.size(1), tasks = packed.size(0) / kTiles;
  TORCH_CHECK(pairs == (K + 1) / 2 && N <= packed.size(0) * kTile, "x and the packed weight do not match");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                        bias->numel() == packed.size(0) * kTile), "bias: fp32 [padded N]");
  at::Tensor y = at::empty({M, N}, x.options());
#if defined(__AVX512BF16__)
  const auto* xp = x.data_ptr<at::BFloat16>();
  const auto* wp = packed.data_ptr<at::BFloat16>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  auto* yp = y.data_ptr<at::BFloat16>();
  const int64_t task_cols = kTiles * kTile, task_weights = kTiles * pairs * 2 * kTile;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task * task_cols;
      for (int64_t m0 = 0; m0 < M; m0 += kRows)
        tiles_for_rows(static_cast<int>(std::min<int64_t>(kRows, M - m0)), std::make_integer_sequence<int, kRows>{},
                       xp + m0 * x.stride(0), x.stride(0), K, wp + task * task_weights, pairs,
                       bp ? bp + n0 : nullptr, yp + m0 * N + n0, N, N - n0);
    }
  });
#endif
  return y;
}

}  // namespace infermatrix
