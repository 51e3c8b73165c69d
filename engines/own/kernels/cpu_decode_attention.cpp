// Paged decode attention for CPU, reading K/V in place from the paged cache (no per-layer gather).
// Cache layout per layer: [num_blocks, block_size, num_kv_heads, head_dim], float32 or bfloat16.
// One task per sequence, two passes over its cache (q.K into a task-local buffer, an exact softmax per head,
// then P.V), each block after block and, inside a block, KV head after KV head, so the cache is read in
// address order. Each K/V row is widened once per head group (AVX-512; AVX2's 16 registers hold one head's sums,
// so once per head there) and P.V keeps the accumulators in registers for the block. Zen 3 (AVX2), 1 thread, batch
// 32 x 200-240 keys, 30 calls: 117 ms fp32 and 46 ms bf16 in the plain loops the compiler vectorized, 68 and 31 ms
// in vector lanes (the Xeon numbers below are AVX-512). Memory sets the pace: batch 32 x 284-316 keys, 30 layers, bf16,
// 2 threads, a loop that only loads the cache took 8 ms in address order and 14 ms head by head (every third
// 128-byte piece of each row, as the older task per (sequence, KV head) read it); that kernel took 17-21 ms,
// this one 15-17 ms, and a batch-32 engine decode step went from 57-60 ms to 54 ms (same bits out).
// With the cache in DRAM the kernel took about its compute time plus its read time (bf16: 7 ms with the caches in
// L3, 15-24 ms from DRAM, where a plain sum reads them in 8.5): the next block of the pass is prefetched into L2
// while one computes (bf16 12-14 ms; into L1, or two or four blocks ahead: no better, often worse), and q.K
// reduces four rows at once (in L3: 6 ms). fp32 stays at 25-28 ms (465 MB a step) with or without either.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_vector.h"

namespace {

using namespace infermatrix::vec;

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

// Rows to write into the caches before attending (a decode step's new K/V), or none.
template <typename scalar_t>
struct NewRows {
  const scalar_t *k = nullptr, *v = nullptr;  // [B, KVH, D], any token strides
  int64_t k_stride = 0, v_stride = 0;
  const int64_t* slots = nullptr;  // [B] cache slot of each new row, -1 = not stored
};

// What one task reads and writes: one sequence, all its heads.
struct Task {
  const int32_t* table;
  int64_t len;
  float* query;  // [H, D] scaled, fp32
  float* probs;  // [H, len]: scores, then probabilities
  float* out;    // [H, D] fp32
};

// softmax over x[0, n) in place: exp(x - max) / sum, n >= 1.
inline void softmax(float* x, int64_t n) {
  const float inv = 1.f / exp_shifted(x, n, max_of(x, n));
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// One block's n rows of one KV head (row stride `stride`), for query heads [g0, g0 + count) of its group:
// scores into probs[g][t0 + o] (probs rows of length len), or P.V added to out[g] (fp32 [count, D]).
// Any head size: plain loops the compiler vectorizes as it can.
template <typename scalar_t>
void block_scores_generic(const scalar_t* rows, int64_t n, int64_t stride, const float* query, int64_t count,
                          int64_t D, float* probs, int64_t len) {
  float key[kMaxHeadDim];
  for (int64_t o = 0; o < n; ++o, rows += stride) {
    for (int64_t d = 0; d < D; ++d) key[d] = widen(rows[d]);
    for (int64_t g = 0; g < count; ++g) {
      const float* q = query + g * D;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < D; ++d) sum += q[d] * key[d];
      probs[g * len + o] = sum;
    }
  }
}

template <typename scalar_t>
void block_values_generic(const scalar_t* rows, int64_t n, int64_t stride, const float* probs, int64_t count,
                          int64_t D, float* out, int64_t len) {
  for (int64_t o = 0; o < n; ++o, rows += stride)
    for (int64_t g = 0; g < count; ++g) {
      const float p = probs[g * len + o];
      float* a = out + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += p * widen(rows[d]);
    }
}

#if defined(INFERMATRIX_LANES)
// The sums of a's, b's, c's and d's lanes, in that order, reduced together: with AVX-512 13 instructions, where
// four _mm512_reduce_add_ps compile to 32 (eight each, one long dependency chain).
inline __m128 sum4(Lanes::V a, Lanes::V b, Lanes::V c, Lanes::V d) {
#if defined(__AVX512F__)
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // a b a b per 128 bits
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
  const __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));  // a b c d per 128 bits
  const __m512 half = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, 0x4E));  // 128-bit lanes 0+2, 1+3
  return _mm512_castps512_ps128(_mm512_add_ps(half, _mm512_shuffle_f32x4(half, half, 0xB1)));
#else
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));  // a b c d per 128 bits
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
#endif
}

// The same for kG query heads of head size kD: four rows at a time, each key row widened once for the group,
// their sums reduced together.
template <typename scalar_t, int kD, int kG>
void block_scores(const scalar_t* rows, int64_t n, int64_t stride, const float* query, float* probs, int64_t len) {
  constexpr int W = Lanes::kWidth, R = kD / W;
  for (int64_t o0 = 0; o0 < n; o0 += 4) {
    const int m = static_cast<int>(std::min<int64_t>(4, n - o0));
    Lanes::V dot[kG][4];
    for (int i = 0; i < 4; ++i) {
      if (i >= m) {
        for (int g = 0; g < kG; ++g) dot[g][i] = Lanes::zero();
        continue;
      }
      const scalar_t* row = rows + (o0 + i) * stride;
      Lanes::V key[R];
      for (int r = 0; r < R; ++r) key[r] = Lanes::load(row + W * r);
      for (int g = 0; g < kG; ++g) {
        Lanes::V a = Lanes::load(query + g * kD) * key[0];
        for (int r = 1; r < R; ++r) a = Lanes::fmadd(Lanes::load(query + g * kD + W * r), key[r], a);
        dot[g][i] = a;
      }
    }
    for (int g = 0; g < kG; ++g) {
      const __m128 sums = sum4(dot[g][0], dot[g][1], dot[g][2], dot[g][3]);
      if (m == 4) {
        _mm_storeu_ps(probs + g * len + o0, sums);
      } else {
        alignas(16) float first[4];
        _mm_store_ps(first, sums);
        std::copy(first, first + m, probs + g * len + o0);
      }
    }
  }
}

template <typename scalar_t, int kD, int kG>
void block_values(const scalar_t* rows, int64_t n, int64_t stride, const float* probs, float* out, int64_t len) {
  constexpr int W = Lanes::kWidth, R = kD / W;
  Lanes::V acc[kG][R];
  for (int g = 0; g < kG; ++g)
    for (int r = 0; r < R; ++r) acc[g][r] = Lanes::load(out + g * kD + W * r);
  for (int64_t o = 0; o < n; ++o, rows += stride) {
    Lanes::V value[R];
    for (int r = 0; r < R; ++r) value[r] = Lanes::load(rows + W * r);
    for (int g = 0; g < kG; ++g) {
      const Lanes::V p = Lanes::splat(probs[g * len + o]);
      for (int r = 0; r < R; ++r) acc[g][r] = Lanes::fmadd(p, value[r], acc[g][r]);
    }
  }
  for (int g = 0; g < kG; ++g)
    for (int r = 0; r < R; ++r) Lanes::store(out + g * kD + W * r, acc[g][r]);
}
#endif

// One pass over a sequence's cache in address order: q.K into probs (`scores`), else P.V into out.
template <typename scalar_t, int kD>
void pass(const scalar_t* cache, const Task& task, const Shape& s, bool scores) {
  const int64_t D = kD ? kD : s.head_dim, stride = s.kv_heads * D, len = task.len;
  // query heads per pass, whose accumulators fit the registers: AVX-512 (32) 4 at head size 64, 2 at 128; AVX2 (16) 1
#if defined(INFERMATRIX_LANES)
  constexpr int64_t kChunk = Lanes::kRegisters == 32 ? (kD == 128 ? 2 : 4) : 1;
#else
  constexpr int64_t kChunk = 4;
#endif
  for (int64_t start = 0, j = 0; start < len; start += s.block_size, ++j) {
    const scalar_t* block = cache + task.table[j] * s.block_size * stride;
    const int64_t n = std::min(s.block_size, len - start);
    if (start + s.block_size < len) {  // the next block into L2 while this one computes
      const char* next = reinterpret_cast<const char*>(cache + task.table[j + 1] * s.block_size * stride);
      const int64_t bytes = std::min(s.block_size, len - start - s.block_size) * stride * sizeof(scalar_t);
      for (int64_t byte = 0; byte < bytes; byte += 64) __builtin_prefetch(next + byte, 0, 2);
    }
    for (int64_t h = 0; h < s.kv_heads; ++h)
      for (int64_t g0 = 0; g0 < s.group; g0 += kChunk) {
        const int64_t head = h * s.group + g0, count = std::min(kChunk, s.group - g0);
        const scalar_t* rows = block + h * D;
        float* probs = task.probs + head * len + start;
        float* out = task.out + head * D;
        const float* query = task.query + head * D;
#if defined(INFERMATRIX_LANES)
        if constexpr (kD > 0) {
          auto run = [&](auto g) {
            constexpr int kG = decltype(g)::value;
            if (scores) block_scores<scalar_t, kD, kG>(rows, n, stride, query, probs, len);
            else block_values<scalar_t, kD, kG>(rows, n, stride, probs, out, len);
          };
          if (count == 1) run(std::integral_constant<int, 1>{});
          else if (count == 2) run(std::integral_constant<int, 2>{});
          else if constexpr (kChunk == 4) {
            if (count == 3) run(std::integral_constant<int, 3>{});
            else run(std::integral_constant<int, 4>{});
          }
          continue;
        }
#endif
        if (scores) block_scores_generic(rows, n, stride, query, count, D, probs, len);
        else block_values_generic(rows, n, stride, probs, count, D, out, len);
      }
  }
}

template <typename scalar_t, int kD>
void attend(const scalar_t* k_cache, const scalar_t* v_cache, const Task& task, const Shape& s) {
  pass<scalar_t, kD>(k_cache, task, s, true);
  for (int64_t head = 0; head < s.heads; ++head) softmax(task.probs + head * task.len, task.len);
  std::fill(task.out, task.out + s.heads * s.head_dim, 0.f);
  pass<scalar_t, kD>(v_cache, task, s, false);
}

template <typename scalar_t>
void attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
               const at::Tensor& lens, double scale, const Shape& s, const NewRows<scalar_t>& rows, at::Tensor& out) {
  const auto* qp = q.data_ptr<scalar_t>();
  auto* kp = k_cache.data_ptr<scalar_t>();
  auto* vp = v_cache.data_ptr<scalar_t>();
  const int64_t q_stride = q.stride(0);
  const auto* tp = tables.data_ptr<int32_t>();
  const auto* lp = lens.data_ptr<int32_t>();
  auto* op = out.data_ptr<scalar_t>();
  const int64_t HD = s.heads * s.head_dim, KD = s.kv_heads * s.head_dim;
  struct Buffers {
    std::vector<float> query, acc, probs;
  };
  for_each_task(
      s.batch,  // one sequence at a time: their lengths differ
      [&] { return Buffers{std::vector<float>(HD), std::vector<float>(HD),
                           std::vector<float>(s.heads * std::max<int64_t>(s.max_len, 1))}; },
      [&](int64_t b, Buffers& w) {
        std::vector<float>& query = w.query;
        std::vector<float>& acc = w.acc;
        const Task task{tp + b * s.max_blocks, lp[b], query.data(), w.probs.data(), acc.data()};
        if (rows.slots && rows.slots[b] >= 0) {  // only this task reads sequence b: no race
          std::copy_n(rows.k + b * rows.k_stride, KD, kp + rows.slots[b] * KD);
          std::copy_n(rows.v + b * rows.v_stride, KD, vp + rows.slots[b] * KD);
        }
        const scalar_t* qb = qp + b * q_stride;
        for (int64_t j = 0; j < HD; ++j) query[j] = widen(qb[j]) * static_cast<float>(scale);
        if (task.len <= 0) std::fill(acc.begin(), acc.end(), 0.f);  // an empty context (a padding row)
        else if (s.head_dim == 64) attend<scalar_t, 64>(kp, vp, task, s);
        else if (s.head_dim == 128) attend<scalar_t, 128>(kp, vp, task, s);
        else attend<scalar_t, 0>(kp, vp, task, s);
        scalar_t* ob = op + b * HD;
        for (int64_t j = 0; j < HD; ++j) ob[j] = static_cast<scalar_t>(acc[j]);
      });
}

}  // namespace

namespace infermatrix {

// Rows of [tokens, heads, D] with any token stride (a view into the fused q|k|v projection) read in place.
at::Tensor rows_in_place(const at::Tensor& x, const at::Tensor& cache) {
  const at::Tensor typed = x.to(cache.scalar_type());
  return typed.dim() == 3 && typed.stride(2) == 1 && typed.stride(1) == typed.size(2) ? typed : typed.contiguous();
}

// q [B, H, D]; caches [blocks, block_size, KVH, D]; int32 tables [B, max_blocks] and lens [B]; optionally
// the step's new rows k, v [B, KVH, D] with their int64 cache slots [B], stored before attending.
// Returns [B, H, D] in the cache's dtype.
at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& tables_in, const at::Tensor& lens_in, double scale,
                            const c10::optional<at::Tensor>& new_k, const c10::optional<at::Tensor>& new_v,
                            const c10::optional<at::Tensor>& slots_in) {
  RECORD_FUNCTION("infermatrix::cpp_decode_attention", std::vector<c10::IValue>());
  TORCH_CHECK(k_cache.scalar_type() == at::kFloat || k_cache.scalar_type() == at::kBFloat16,
              "the C++ attention kernel takes a float32 or bfloat16 KV cache");
  TORCH_CHECK(v_cache.scalar_type() == k_cache.scalar_type() && v_cache.sizes() == k_cache.sizes() &&
                  v_cache.is_contiguous(), "K and V caches must match");
  const at::Tensor q = rows_in_place(q_in, k_cache);
  const at::Tensor tables = tables_in.contiguous(), lens = lens_in.contiguous();
  const Shape s = check(q, k_cache, tables, lens);
  at::Tensor k, v, slots;
  TORCH_CHECK(new_k.has_value() == new_v.has_value() && new_k.has_value() == slots_in.has_value(),
              "new k, v and their slots come together");
  if (new_k) {
    k = rows_in_place(*new_k, k_cache), v = rows_in_place(*new_v, k_cache);
    slots = slots_in->contiguous();
    TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == s.batch && k.size(1) == s.kv_heads && k.size(2) == s.head_dim,
                "new k and v must be [B, KVH, D]");
    TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == s.batch, "int64 slots, one per row");
    TORCH_CHECK(s.batch == 0 || slots.max().item<int64_t>() < k_cache.size(0) * s.block_size,
                "a slot beyond the cache");
  }
  at::Tensor out = at::empty({s.batch, s.heads, s.head_dim}, q.options());
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    NewRows<scalar_t> rows;
    if (new_k) rows = {k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), k.stride(0), v.stride(0),
                       slots.data_ptr<int64_t>()};
    attention<scalar_t>(q, k_cache, v_cache, tables, lens, scale, s, rows, out);
  };
  if (k_cache.scalar_type() == at::kFloat) run(float{});
  else run(at::BFloat16{});
  return out;
}

}  // namespace infermatrix
