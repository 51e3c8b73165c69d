// Per-layer elementwise work of a decoder layer for the CPU, one call each instead of 4-8 torch ops:
// residual add + RMSNorm, rotate-half RoPE over q|k, and SwiGLU's silu(gate) * up; and the LM head on all threads
// and the greedy choice over its rows. Rounding follows the torch reference in
// engines/own/model.py step by step (float32 math, rounded to the model dtype where torch rounds), and no
// multiply-add is fused into one rounding here (the pragma below; the attention kernels keep their FMAs).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_vector.h"  // Lanes: fp32 vectors, bf16 rounding and the vectorized exp ATen uses

#pragma GCC optimize("fp-contract=off")

namespace {

inline float widen(float x) { return x; }
inline float widen(at::BFloat16 x) { return __builtin_bit_cast(float, static_cast<uint32_t>(x.x) << 16); }
// float -> model dtype -> float: the value torch keeps after an op in that dtype
inline float round_to(float x, float) { return x; }
inline float round_to(float x, at::BFloat16) { return widen(static_cast<at::BFloat16>(x)); }

#if defined(INFERMATRIX_LANES)
using infermatrix::vec::Lanes;
#endif

constexpr int64_t kRowsPerTask = 16;

// out = norm(h) * w with h = x (+ residual); HF's Llama: float32 normalise, round, then scale in the dtype
template <typename scalar_t>
void add_rms_norm_impl(const scalar_t* x, const scalar_t* residual, const scalar_t* w, scalar_t* out,
                       scalar_t* sum_out, int64_t rows, int64_t n, float eps) {
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * n;
      scalar_t* hr = sum_out + r * n;
      float squares = 0.f;
      if (residual != nullptr) {
        const scalar_t* rr = residual + r * n;
        for (int64_t i = 0; i < n; ++i) hr[i] = static_cast<scalar_t>(widen(rr[i]) + widen(xr[i]));
      }
      const scalar_t* h = residual != nullptr ? hr : xr;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < n; ++i) squares += widen(h[i]) * widen(h[i]);
      const float inv = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
      scalar_t* o = out + r * n;
      for (int64_t i = 0; i < n; ++i) {
        const float normed = round_to(widen(h[i]) * inv, scalar_t{});
        o[i] = static_cast<scalar_t>(normed * widen(w[i]));
      }
    }
  });
}

// out[t, h, i] = x[t, h, i] * cos[t, i] + x[t, h, (i + D/2) % D] * sin_signed[t, i], each product and the
// sum rounded to the dtype (torch's `x * cos`, `roll(x) * sin`, `+=`)
template <typename scalar_t>
void rope_impl(const scalar_t* x, int64_t token_stride, const scalar_t* cos, const scalar_t* sin, scalar_t* out,
               int64_t tokens, int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  at::parallel_for(0, tokens, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const scalar_t* c = cos + t * D;
      const scalar_t* s = sin + t * D;
      for (int64_t h = 0; h < heads; ++h) {
        const scalar_t* xh = x + t * token_stride + h * D;
        scalar_t* oh = out + (t * heads + h) * D;
        for (int64_t i = 0; i < D; ++i) {
          const float direct = round_to(widen(xh[i]) * widen(c[i]), scalar_t{});
          const float rotated = round_to(widen(xh[i < half ? i + half : i - half]) * widen(s[i]), scalar_t{});
          oh[i] = static_cast<scalar_t>(direct + rotated);
        }
      }
    }
  });
}

template <typename scalar_t>
void silu_mul_impl(const scalar_t* in, scalar_t* o, int64_t rows, int64_t width) {
  int64_t vector_end = 0;  // ATen's vector loop takes pairs of its vectors (bf16 ones hold twice the lanes)
#if defined(INFERMATRIX_LANES)
  vector_end = width - width % ((std::is_same_v<scalar_t, float> ? 2 : 4) * Lanes::kWidth);
#endif
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* gate = in + r * 2 * width;
      const scalar_t* up = gate + width;
      scalar_t* dst = o + r * width;
      int64_t i = 0;
#if defined(INFERMATRIX_LANES)
      const Lanes::V one = Lanes::splat(1.f);
      for (; i < vector_end; i += Lanes::kWidth) {
        const Lanes::V g = Lanes::load(gate + i);
        Lanes::V silu = g / (one + Lanes::exp(-g));
        if constexpr (!std::is_same_v<scalar_t, float>) silu = Lanes::widen(Lanes::to_bf16(silu));  // torch rounds it
        Lanes::store(dst + i, silu * Lanes::load(up + i));
      }
#endif
      for (; i < width; ++i) {
        const float g = widen(gate[i]);
        dst[i] = static_cast<scalar_t>(round_to(g / (1.f + std::exp(-g)), scalar_t{}) * widen(up[i]));
      }
    }
  });
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, " must be float32 or bfloat16");
}

}  // namespace

namespace infermatrix {

// (normed, x + residual) for rows [..., n]; without a residual the second is x itself.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x_in, const c10::optional<at::Tensor>& residual_in,
                                                const at::Tensor& weight_in, double eps) {
  check_float(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.to(x.scalar_type()).contiguous();
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  TORCH_CHECK(weight.numel() == n, "the norm weight must have the rows' width");
  at::Tensor residual, sum = x;
  if (residual_in.has_value()) {
    residual = residual_in->contiguous();
    TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
                "the residual must match x in shape and dtype");
    sum = at::empty_like(x);
  }
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "add_rms_norm", [&] {
    add_rms_norm_impl<scalar_t>(x.data_ptr<scalar_t>(), residual.defined() ? residual.data_ptr<scalar_t>() : nullptr,
                                weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), sum.data_ptr<scalar_t>(),
                                rows, n, static_cast<float>(eps));
  });
  return {out, sum};
}

// x [T, heads, D] with each token's heads contiguous (a slice of the fused qkv rows is fine); cos and
// sin_signed [T, D] in x's dtype. Returns a new contiguous [T, heads, D].
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2), "x [T, heads, D], heads contiguous");
  TORCH_CHECK(x.size(2) % 2 == 0, "head_dim must be even");
  const at::Tensor cos = cos_in.to(x.scalar_type()).contiguous(), sin = sin_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == x.size(0) && cos.size(1) == x.size(2) && sin.sizes() == cos.sizes(),
              "cos and sin [T, D]");
  at::Tensor out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rope", [&] {
    rope_impl<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(),
                        out.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2));
  });
  return out;
}

// silu(gate) * up for gate_up [..., 2I] (the fused projection's two halves) in one pass, with torch's bits: its
// silu computes g / (1 + exp(-g)) in float32 (ATen's vector exp over whole pairs of vectors, 32 floats or 64 bf16
// per row; std::exp on the rest), rounds to the dtype, and the multiply rounds once more. Two torch ops (a silu
// and an in-place multiply) read and wrote the [M, I] intermediate twice.
at::Tensor silu_mul(const at::Tensor& gate_up_in) {
  check_float(gate_up_in, "gate_up");
  const at::Tensor gate_up = gate_up_in.contiguous();
  const int64_t width = gate_up.size(-1) / 2, rows = width ? gate_up.numel() / (2 * width) : 0;
  std::vector<int64_t> shape = gate_up.sizes().vec();
  shape.back() = width;
  at::Tensor out = at::empty(shape, gate_up.options());
  if (gate_up.scalar_type() == at::kFloat)
    silu_mul_impl(gate_up.data_ptr<float>(), out.data_ptr<float>(), rows, width);
  else
    silu_mul_impl(gate_up.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, width);
  return out;
}

// The LM head, x [M, K] @ W [N, K]^T, as torch's linear over row chunks of W, one chunk per thread. MKL ran
// SmolLM2's fp32 head (49152 x 576) on one thread whatever torch's count (9.6 ms at M = 1 with 1 thread or 2),
// and each chunk gives the same bits as the whole: a chunk's outputs are the same dot products.
at::Tensor lm_head(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "x [M, K] and weight [N, K]");
  const int64_t rows = weight.size(0), chunks = std::max<int64_t>(1, at::get_num_threads());
  const int64_t step = (rows + chunks - 1) / chunks;
  if (chunks == 1 || at::in_parallel_region()) return at::linear(x, weight);
  at::Tensor out = at::empty({x.size(0), rows}, x.options());
  const at::ThreadLocalState caller;  // inference mode and grad mode reach the worker threads' torch ops
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(caller);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * step, count = std::min(step, rows - first);
      if (count > 0) out.narrow(1, first, count).copy_(at::linear(x, weight.narrow(0, first, count)));
    }
  });
  return out;
}

// Each row's greedy token as torch.argmax gives it (the first of equal maxima; the first NaN if any), one row
// per task: the max in one pass, then the first index holding it. torch's took 1.1 ms for 32 x 49152 logits here.
static int64_t argmax_row(const float* x, int64_t n) {
  float best = -INFINITY;
  bool nan = false;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 m = _mm512_set1_ps(-INFINITY);
  __mmask16 unordered = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    m = _mm512_max_ps(m, v);
    unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  best = _mm512_reduce_max_ps(m);
  nan = unordered != 0;
#endif
  for (; i < n; ++i) {
    best = std::max(best, x[i]);
    nan = nan || std::isnan(x[i]);
  }
  i = 0;
#if defined(__AVX512F__)
  const __m512 target = _mm512_set1_ps(best);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 hit = nan ? _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) : _mm512_cmp_ps_mask(v, target, _CMP_EQ_OQ);
    if (hit) return i + __builtin_ctz(hit);
  }
#endif
  for (; i < n; ++i)
    if (nan ? std::isnan(x[i]) : x[i] == best) return i;
  return 0;
}

at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.stride(1) == 1 && logits.size(1) > 0,
              "argmax_rows takes float32 rows [N, V], V >= 1");
  const int64_t n = logits.size(1), stride = logits.stride(0);
  const float* p = logits.data_ptr<float>();
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  int64_t* chosen = out.data_ptr<int64_t>();
  at::parallel_for(0, logits.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) chosen[r] = argmax_row(p + r * stride, n);
  });
  return out;
}

}  // namespace infermatrix
