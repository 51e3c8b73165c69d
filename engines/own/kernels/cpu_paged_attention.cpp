// Paged decode attention for CPU, reading K/V in place from the paged cache (no per-layer gather).
// Cache layout per layer: [num_blocks, block_size, num_kv_heads, head_dim], float32 or bfloat16.
// Two kernels around a torch softmax: scores = q.K (fp32, -inf past each context), then out = P.V.
// One task per (sequence, KV head): the group's query heads share every K/V row they read.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

inline float widen(float x) { return x; }
inline float widen(at::BFloat16 x) { return __builtin_bit_cast(float, static_cast<uint32_t>(x.x) << 16); }

constexpr int64_t kMaxHeadDim = 256;

struct Shape {
  int64_t batch, heads, head_dim, block_size, kv_heads, group, max_blocks, max_len;
};

Shape check(const at::Tensor& q, const at::Tensor& cache, const at::Tensor& tables, const at::Tensor& lens) {
  TORCH_CHECK(q.dim() == 3 && cache.dim() == 4, "q [B, H, D] and cache [blocks, block_size, KVH, D]");
  TORCH_CHECK(cache.is_contiguous(), "the KV cache must be contiguous");
  TORCH_CHECK(tables.scalar_type() == at::kInt && lens.scalar_type() == at::kInt, "int32 block tables and lens");
  TORCH_CHECK(q.size(2) <= kMaxHeadDim, "head_dim above ", kMaxHeadDim);
  TORCH_CHECK(q.size(2) == cache.size(3) && q.size(1) % cache.size(2) == 0, "head shapes do not match the cache");
  const int64_t max_len = lens.numel() ? lens.max().item<int64_t>() : 0;
  TORCH_CHECK(max_len <= tables.size(1) * cache.size(1), "a context is longer than its block table");
  return {q.size(0), q.size(1), q.size(2), cache.size(1), cache.size(2), q.size(1) / cache.size(2),
          tables.size(1), max_len};
}

// Calls fn(row, t) for every cached token t < len of sequence b: row points at its KV head h's D values.
// Walks block by block, so no division per token.
template <typename scalar_t, typename Fn>
inline void for_each_row(const scalar_t* cache, const int32_t* table, int64_t len, int64_t h, int64_t D,
                         const Shape& s, Fn fn) {
  const int64_t row_stride = s.kv_heads * D;
  for (int64_t start = 0, j = 0; start < len; start += s.block_size, ++j) {
    const scalar_t* row = cache + (table[j] * s.block_size * s.kv_heads + h) * D;
    const int64_t n = std::min(s.block_size, len - start);
    for (int64_t o = 0; o < n; ++o, row += row_stride) fn(row, start + o);
  }
}

// q.k over D floats. With AVX-512 and D a multiple of 32, two vector accumulators and one tree reduction:
// the compiler's loop summed the 16 lanes one after another, a chain of 16 dependent adds per score that
// made the scores kernel 20-30% slower (measured in one process, alternating, bf16, batch 32 x 430 keys).
template <int kD>
inline float dot(const float* q, const float* k, int64_t D) {
#if defined(__AVX512F__)
  if constexpr (kD > 0 && kD % 32 == 0) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t d = 0; d < kD; d += 32) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16), _mm512_loadu_ps(k + d + 16), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }
#endif
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < D; ++d) sum += q[d] * k[d];
  return sum;
}

// D is a template constant for the usual head sizes (the compiler unrolls and vectorizes), 0 = any.
template <typename scalar_t, int kD>
void scores_impl(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& tables, const at::Tensor& lens,
                 double scale, const Shape& s, at::Tensor& scores) {
  const auto* qp = q.data_ptr<scalar_t>();
  const auto* kp = k_cache.data_ptr<scalar_t>();
  const auto* tp = tables.data_ptr<int32_t>();
  const auto* lp = lens.data_ptr<int32_t>();
  float* sp = scores.data_ptr<float>();
  const int64_t D = kD ? kD : s.head_dim, G = s.group;
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(G * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, h = task % s.kv_heads, len = lp[b];
      const scalar_t* qb = qp + (b * s.heads + h * G) * D;
      for (int64_t i = 0; i < G * D; ++i) query[i] = widen(qb[i]) * static_cast<float>(scale);
      float* row_scores = sp + (b * s.heads + h * G) * s.max_len;
      for_each_row(kp, tp + b * s.max_blocks, len, h, D, s, [&](const scalar_t* row, int64_t t) {
        float widened[kMaxHeadDim];  // a bf16 row widened once, read by every query head of the group
        const float* key = widened;
        if constexpr (std::is_same_v<scalar_t, float>) {
          key = row;
        } else {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) widened[d] = widen(row[d]);
        }
        for (int64_t g = 0; g < G; ++g) row_scores[g * s.max_len + t] = dot<kD>(query.data() + g * D, key, D);
      });
      for (int64_t g = 0; g < G; ++g)
        std::fill(row_scores + g * s.max_len + len, row_scores + (g + 1) * s.max_len,
                  -std::numeric_limits<float>::infinity());
    }
  });
}

template <typename scalar_t, int kD>
void values_impl(const at::Tensor& probs, const at::Tensor& v_cache, const at::Tensor& tables,
                 const at::Tensor& lens, const Shape& s, at::Tensor& out) {
  const float* pp = probs.data_ptr<float>();
  const auto* vp = v_cache.data_ptr<scalar_t>();
  const auto* tp = tables.data_ptr<int32_t>();
  const auto* lp = lens.data_ptr<int32_t>();
  auto* op = out.data_ptr<scalar_t>();
  const int64_t D = kD ? kD : s.head_dim, G = s.group;
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(G * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, h = task % s.kv_heads, len = lp[b];
      std::fill(acc.begin(), acc.end(), 0.f);
      const float* prob = pp + (b * s.heads + h * G) * s.max_len;
      for_each_row(vp, tp + b * s.max_blocks, len, h, D, s, [&](const scalar_t* value, int64_t t) {
        for (int64_t g = 0; g < G; ++g) {
          const float p = prob[g * s.max_len + t];
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += p * widen(value[d]);
        }
      });
      scalar_t* ob = op + (b * s.heads + h * G) * D;
      for (int64_t i = 0; i < G * D; ++i) ob[i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

// Runs impl<scalar_t, D> for the cache's dtype, with D fixed at compile time where it is 64 or 128.
template <template <typename, int> class Impl, typename... Args>
void dispatch(const at::Tensor& cache, int64_t head_dim, Args&&... args) {
  TORCH_CHECK(cache.scalar_type() == at::kFloat || cache.scalar_type() == at::kBFloat16,
              "the C++ attention kernel takes a float32 or bfloat16 KV cache");
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    if (head_dim == 64) return Impl<scalar_t, 64>::run(std::forward<Args>(args)...);
    if (head_dim == 128) return Impl<scalar_t, 128>::run(std::forward<Args>(args)...);
    return Impl<scalar_t, 0>::run(std::forward<Args>(args)...);
  };
  if (cache.scalar_type() == at::kFloat) run(float{});
  else run(at::BFloat16{});
}

template <typename scalar_t, int kD>
struct Scores {
  template <typename... Args>
  static void run(Args&&... args) { scores_impl<scalar_t, kD>(std::forward<Args>(args)...); }
};

template <typename scalar_t, int kD>
struct Values {
  template <typename... Args>
  static void run(Args&&... args) { values_impl<scalar_t, kD>(std::forward<Args>(args)...); }
};

// [B, H, max_len] float32 scaled scores; -inf past each sequence's context length.
at::Tensor decode_scores(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& tables,
                         const at::Tensor& lens, double scale) {
  const at::Tensor q = q_in.contiguous().to(k_cache.scalar_type());
  const Shape s = check(q, k_cache, tables, lens);
  at::Tensor scores = at::empty({s.batch, s.heads, s.max_len}, q.options().dtype(at::kFloat));
  const at::Tensor t = tables.contiguous(), l = lens.contiguous();
  dispatch<Scores>(k_cache, s.head_dim, q, k_cache, t, l, scale, s, scores);
  return scores;
}

// [B, H, D] in the cache's dtype: the probabilities' weighted sum of V rows.
at::Tensor decode_values(const at::Tensor& probs_in, const at::Tensor& v_cache, const at::Tensor& tables,
                         const at::Tensor& lens) {
  const at::Tensor probs = probs_in.contiguous();
  TORCH_CHECK(probs.scalar_type() == at::kFloat && probs.dim() == 3, "float32 probabilities [B, H, max_len]");
  const at::Tensor t = tables.contiguous(), l = lens.contiguous();
  const at::Tensor q_shape = at::empty({probs.size(0), probs.size(1), v_cache.size(3)}, v_cache.options());
  const Shape s = check(q_shape, v_cache, t, l);
  TORCH_CHECK(probs.size(2) == s.max_len, "probabilities must span the longest context");
  at::Tensor out = at::empty_like(q_shape);
  dispatch<Values>(v_cache, s.head_dim, probs, v_cache, t, l, s, out);
  return out;
}

}  // namespace

namespace infermatrix {

// One call per layer: scores, torch's softmax, then P.V; each half is named in profiles.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& tables, const at::Tensor& lens, double scale) {
  at::Tensor scores;
  {
    RECORD_FUNCTION("infermatrix::cpp_decode_scores", std::vector<c10::IValue>());
    scores = decode_scores(q, k_cache, tables, lens, scale);
  }
  const at::Tensor probs = scores.softmax(-1);
  RECORD_FUNCTION("infermatrix::cpp_decode_values", std::vector<c10::IValue>());
  return decode_values(probs, v_cache, tables, lens);
}

}  // namespace infermatrix
