// Paged decode attention for CPU, reading K/V in place from the paged cache (no per-layer gather).
// Cache layout per layer: [num_blocks, block_size, num_kv_heads, head_dim], float32 or bfloat16.
// One task per (sequence, KV head), in one pass: q.K for the group's query heads into a task-local buffer,
// an exact softmax per head, then P.V. Each K/V row is widened once and read by every query head of its
// group; with AVX-512 the heads' queries and accumulators stay in registers. The step is bound by memory
// latency, not bandwidth (it scales with threads, and a cache-resident run is 2.5x faster), so each block's
// rows are prefetched while the one before is read. Batch 32 x 400-432 keys, 30 layers, bf16, 2 threads,
// interleaved in one process: 35-41 ms as two kernels around torch's softmax, 25-28 ms now.
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

// Calls fn(row, t) for every cached token t < len of sequence b: row points at its KV head h's D values.
// Walks block by block, so no division per token.
template <typename scalar_t, typename Fn>
inline void for_each_row(const scalar_t* cache, const int32_t* table, int64_t len, int64_t h, int64_t D,
                         const Shape& s, Fn fn) {
  const int64_t row_stride = s.kv_heads * D, row_bytes = D * sizeof(scalar_t);
  for (int64_t start = 0, j = 0; start < len; start += s.block_size, ++j) {
    const scalar_t* row = cache + (table[j] * s.block_size * s.kv_heads + h) * D;
    const int64_t n = std::min(s.block_size, len - start);
    if (start + s.block_size < len) {  // the next block's rows: blocks lie anywhere, no prefetcher guesses them
      const char* next = reinterpret_cast<const char*>(cache + (table[j + 1] * s.block_size * s.kv_heads + h) * D);
      const int64_t next_rows = std::min(s.block_size, len - start - s.block_size);
      for (int64_t o = 0; o < next_rows; ++o, next += row_stride * sizeof(scalar_t))
        for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(next + byte);
    }
    for (int64_t o = 0; o < n; ++o, row += row_stride) fn(row, start + o);
  }
}

// Rows to write into the caches before attending (a decode step's new K/V), or none.
template <typename scalar_t>
struct NewRows {
  const scalar_t *k = nullptr, *v = nullptr;  // [B, KVH, D], any token strides
  int64_t k_stride = 0, v_stride = 0;
  const int64_t* slots = nullptr;  // [B] cache slot of each new row, -1 = not stored
};

// What one task reads and writes: sequence b's KV head h, its group's G query heads.
struct Task {
  const int32_t* table;
  int64_t len, h;
  float* query;   // [G, D] scaled, fp32
  float* probs;   // [G, len]: scores, then probabilities
  float* out;     // [G, D] fp32
};

// softmax over x[0, n) in place: exp(x - max) / sum, n >= 1.
inline void softmax(float* x, int64_t n) {
  const float inv = 1.f / exp_shifted(x, n, max_of(x, n));
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// Any head size, any group: plain loops the compiler vectorizes as it can.
template <typename scalar_t>
void attend_generic(const scalar_t* k_cache, const scalar_t* v_cache, const Task& task, const Shape& s) {
  const int64_t D = s.head_dim, G = s.group, len = task.len;
  for_each_row(k_cache, task.table, len, task.h, D, s, [&](const scalar_t* row, int64_t t) {
    float key[kMaxHeadDim];
    for (int64_t d = 0; d < D; ++d) key[d] = widen(row[d]);
    for (int64_t g = 0; g < G; ++g) {
      const float* q = task.query + g * D;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < D; ++d) sum += q[d] * key[d];
      task.probs[g * len + t] = sum;
    }
  });
  for (int64_t g = 0; g < G; ++g) softmax(task.probs + g * len, len);
  std::fill(task.out, task.out + G * D, 0.f);
  for_each_row(v_cache, task.table, len, task.h, D, s, [&](const scalar_t* row, int64_t t) {
    for (int64_t g = 0; g < G; ++g) {
      const float p = task.probs[g * len + t];
      float* a = task.out + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += p * widen(row[d]);
    }
  });
}

#if defined(__AVX512F__)
// kG query heads (from g0) of a task, head size kD: queries, then accumulators, held in registers.
template <typename scalar_t, int kD, int kG>
void attend_heads(const scalar_t* k_cache, const scalar_t* v_cache, const Task& task, int64_t g0, const Shape& s) {
  constexpr int R = kD / 16;
  const int64_t len = task.len;
  float* probs = task.probs + g0 * len;
  __m512 q[kG][R];
  for (int g = 0; g < kG; ++g)
    for (int r = 0; r < R; ++r) q[g][r] = _mm512_loadu_ps(task.query + (g0 + g) * kD + 16 * r);
  for_each_row(k_cache, task.table, len, task.h, kD, s, [&](const scalar_t* row, int64_t t) {
    __m512 key[R];
    for (int r = 0; r < R; ++r) key[r] = load16(row + 16 * r);
    for (int g = 0; g < kG; ++g) {  // two accumulators, one tree reduction (a 16-add chain was 20-30% slower)
      __m512 a0 = _mm512_mul_ps(q[g][0], key[0]), a1 = _mm512_mul_ps(q[g][1], key[1]);
      for (int r = 2; r < R; r += 2) {
        a0 = _mm512_fmadd_ps(q[g][r], key[r], a0);
        a1 = _mm512_fmadd_ps(q[g][r + 1], key[r + 1], a1);
      }
      probs[g * len + t] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
  });
  for (int g = 0; g < kG; ++g) softmax(probs + g * len, len);
  __m512 acc[kG][R];
  for (int g = 0; g < kG; ++g)
    for (int r = 0; r < R; ++r) acc[g][r] = _mm512_setzero_ps();
  for_each_row(v_cache, task.table, len, task.h, kD, s, [&](const scalar_t* row, int64_t t) {
    __m512 value[R];
    for (int r = 0; r < R; ++r) value[r] = load16(row + 16 * r);
    for (int g = 0; g < kG; ++g) {
      const __m512 p = _mm512_set1_ps(probs[g * len + t]);
      for (int r = 0; r < R; ++r) acc[g][r] = _mm512_fmadd_ps(p, value[r], acc[g][r]);
    }
  });
  for (int g = 0; g < kG; ++g)
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(task.out + (g0 + g) * kD + 16 * r, acc[g][r]);
}

// The group's heads in chunks that fit the 32 vector registers: 4 at head size 64, 2 at 128.
template <typename scalar_t, int kD>
void attend_vector(const scalar_t* k_cache, const scalar_t* v_cache, const Task& task, const Shape& s) {
  constexpr int kChunk = kD == 64 ? 4 : 2;
  for (int64_t g0 = 0; g0 < s.group; g0 += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, s.group - g0);
    if (n == 1) attend_heads<scalar_t, kD, 1>(k_cache, v_cache, task, g0, s);
    else if (n == 2) attend_heads<scalar_t, kD, 2>(k_cache, v_cache, task, g0, s);
    else if constexpr (kChunk == 4) {
      if (n == 3) attend_heads<scalar_t, kD, 3>(k_cache, v_cache, task, g0, s);
      else attend_heads<scalar_t, kD, 4>(k_cache, v_cache, task, g0, s);
    }
  }
}
#endif

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
  const int64_t D = s.head_dim, G = s.group;
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(G * D), acc(G * D), probs(G * std::max<int64_t>(s.max_len, 1));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / s.kv_heads, h = i % s.kv_heads;
      const Task task{tp + b * s.max_blocks, lp[b], h, query.data(), probs.data(), acc.data()};
      if (rows.slots && rows.slots[b] >= 0) {  // only this task reads head h of sequence b: no race
        const int64_t to = (rows.slots[b] * s.kv_heads + h) * D;
        std::copy_n(rows.k + b * rows.k_stride + h * D, D, kp + to);
        std::copy_n(rows.v + b * rows.v_stride + h * D, D, vp + to);
      }
      const scalar_t* qb = qp + b * q_stride + h * G * D;
      for (int64_t j = 0; j < G * D; ++j) query[j] = widen(qb[j]) * static_cast<float>(scale);
      if (task.len <= 0) {
        std::fill(acc.begin(), acc.end(), 0.f);  // an empty context (a padding row) attends to nothing
      }
#if defined(__AVX512F__)
      else if (D == 64) attend_vector<scalar_t, 64>(kp, vp, task, s);
      else if (D == 128) attend_vector<scalar_t, 128>(kp, vp, task, s);
#endif
      else attend_generic(kp, vp, task, s);
      scalar_t* ob = op + (b * s.heads + h * G) * D;
      for (int64_t j = 0; j < G * D; ++j) ob[j] = static_cast<scalar_t>(acc[j]);
    }
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
