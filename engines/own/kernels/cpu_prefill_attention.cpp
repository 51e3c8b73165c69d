// Paged prefill attention for CPU: causal, over contexts that may begin with cached tokens (a prefix-cache hit
// or an earlier chunk), reading K/V in place from the paged cache. Cache layout as the decode kernel's.
// Flash style: a task is (sequence, KV head, tile of query positions); the group's query heads walk the keys
// in chunks of 64 with an online softmax, in fp32 (bf16 widens exactly). Each chunk's keys are transposed
// once, so q.K gives 16 scores per vector FMA with no horizontal sums, and four query rows share each load.
// 8 prompts of 300-440 new tokens, one layer, 2 threads, alternating in one process: gather + SDPA (enable_gqa)
// 21-28 ms, this kernel 13-14 ms, in bf16 and fp32; bf16 error against an fp32 reference 0.004 vs SDPA's 0.016.
// P.V runs four query rows at once (one row alone waits on its own FMA latency) and a task holds 64 positions
// (was 32: keys gathered half as often): fp32, SmolLM2's heads, one layer, prompts of 600-2000 tokens and 100-120
// after a cached 600, 1 thread 71-82 -> 91-102 GFLOP/s (causal flops), 2 threads 129-144 -> 159-194 (same bits).
// Those are AVX-512 (Xeon). On AVX2 (Zen 3) the same loops in 8-lane vectors, 2 query rows x 32 keys per q.K pass:
// prompts of 600, 450, 300, 1 thread fp32 15 -> 28, bf16 15 -> 36 GFLOP/s against the plain loops before.
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

constexpr int64_t kKeys = 64;      // keys per chunk
constexpr int64_t kPositions = 64;  // query positions per task
constexpr int64_t kMaxHeadDim = 256;

struct Shape {
  int64_t heads, kv_heads, group, head_dim, block_size, max_blocks;
};

struct Tile {
  int64_t seq, first, count, kv_head;  // query positions [first, first + count) of sequence seq's new tokens
};

// Per-thread buffers: queries, transposed keys and values of one chunk, scores, and the online softmax state.
struct Scratch {
  std::vector<float> query, keys_t, values, scores, acc, max, sum;
  Scratch(int64_t rows, int64_t D)
      : query(rows * D), keys_t(D * kKeys), values(kKeys * D), scores(rows * kKeys), acc(rows * D), max(rows),
        sum(rows) {}
};

#if defined(INFERMATRIX_LANES)
// Key vectors per pass of q.K (AVX-512: the chunk's 64 keys; AVX2: 32), and the query rows sharing each key
// load: kRows x kKeyVectors sums stay in registers.
constexpr int kKeyVectors = 4;
constexpr int kScoreRows = Lanes::kRegisters == 32 ? 4 : 2;

// scores[r][0, kKeyVectors * width) = q_r . K for rows r in [0, kRows): query rows kD apart, scores kKeys apart.
template <int kD, int kRows>
inline void row_scores(const float* query, const float* keys_t, float* scores) {
  Lanes::V a[kRows][kKeyVectors];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kKeyVectors; ++j) a[r][j] = Lanes::zero();
  for (int d = 0; d < kD; ++d) {
    Lanes::V k[kKeyVectors];
    for (int j = 0; j < kKeyVectors; ++j) k[j] = Lanes::load(keys_t + d * kKeys + Lanes::kWidth * j);
    for (int r = 0; r < kRows; ++r) {
      const Lanes::V qd = Lanes::splat(query[r * kD + d]);
      for (int j = 0; j < kKeyVectors; ++j) a[r][j] = Lanes::fmadd(qd, k[j], a[r][j]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kKeyVectors; ++j) Lanes::store(scores + r * kKeys + Lanes::kWidth * j, a[r][j]);
}
#endif

// scores[i][0, kKeys) = q_i . K for rows i in [0, n): keys_t is [D][kKeys].
template <int kD>
void chunk_scores(const float* query, const float* keys_t, int64_t n, int64_t D, float* scores) {
#if defined(INFERMATRIX_LANES)
  if constexpr (kD > 0) {
    for (int64_t k0 = 0; k0 < kKeys; k0 += kKeyVectors * Lanes::kWidth) {
      int64_t i = 0;
      for (; i + kScoreRows <= n; i += kScoreRows)
        row_scores<kD, kScoreRows>(query + i * kD, keys_t + k0, scores + i * kKeys + k0);
      for (; i < n; ++i) row_scores<kD, 1>(query + i * kD, keys_t + k0, scores + i * kKeys + k0);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    float* s = scores + i * kKeys;
    std::fill(s, s + kKeys, 0.f);
    for (int64_t d = 0; d < D; ++d) {
      const float qd = query[i * D + d];
#pragma omp simd
      for (int64_t t = 0; t < kKeys; ++t) s[t] += qd * keys_t[d * kKeys + t];
    }
  }
}

#if defined(INFERMATRIX_LANES)
// Vectors of a head row per P.V pass: all of it with AVX-512, 32 dims with AVX2.
template <int kD>
constexpr int kSlice = std::min(kD / Lanes::kWidth, Lanes::kRegisters / 4);
#endif

// Query rows per P.V pass, sharing each value load: rows x slice sums fill half the registers.
template <int kD>
constexpr int value_rows() {
#if defined(INFERMATRIX_LANES)
  if constexpr (kD > 0) return Lanes::kRegisters / (2 * kSlice<kD>);
#endif
  return 1;
}

// Rows [0, kR) at once: acc_i = acc_i * correction[i] + p_i . V over the first n keys of the chunk (values
// [kKeys][D]; acc rows D apart, p rows kKeys apart, zeros past a row's visible keys), a slice of each row at a
// time, so every value load feeds kR rows and kR x slice independent sums hide the FMA latency. Each row's
// sums run in key order.
template <int kD, int kR>
inline void rescale_accumulate(float* acc, const float* correction, const float* p, const float* values, int64_t n,
                               int64_t D) {
#if defined(INFERMATRIX_LANES)
  if constexpr (kD > 0) {
    constexpr int W = Lanes::kWidth, S = kSlice<kD>;
    for (int s0 = 0; s0 < kD / W; s0 += S) {
      Lanes::V a[kR][S];
      for (int i = 0; i < kR; ++i) {
        const Lanes::V c = Lanes::splat(correction[i]);
        for (int r = 0; r < S; ++r) a[i][r] = Lanes::load(acc + i * kD + W * (s0 + r)) * c;
      }
      for (int64_t t = 0; t < n; ++t) {
        Lanes::V v[S];
        for (int r = 0; r < S; ++r) v[r] = Lanes::load(values + t * kD + W * (s0 + r));
        for (int i = 0; i < kR; ++i) {
          const Lanes::V pt = Lanes::splat(p[i * kKeys + t]);
          for (int r = 0; r < S; ++r) a[i][r] = Lanes::fmadd(pt, v[r], a[i][r]);
        }
      }
      for (int i = 0; i < kR; ++i)
        for (int r = 0; r < S; ++r) Lanes::store(acc + i * kD + W * (s0 + r), a[i][r]);
    }
    return;
  }
#endif
  for (int i = 0; i < kR; ++i) {
    float* a = acc + i * D;
    for (int64_t d = 0; d < D; ++d) a[d] *= correction[i];
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += p[i * kKeys + t] * values[t * D + d];
    }
  }
}

// One cached row, widened to fp32.
template <int kD, typename scalar_t>
inline void widen_row(const scalar_t* row, int64_t D, float* dst) {
#if defined(INFERMATRIX_LANES)
  if constexpr (kD > 0) {
    for (int r = 0; r < kD / Lanes::kWidth; ++r) Lanes::store(dst + Lanes::kWidth * r, Lanes::load(row + Lanes::kWidth * r));
    return;
  }
#endif
  for (int64_t d = 0; d < D; ++d) dst[d] = widen(row[d]);
}

template <typename scalar_t, int kD>
void attend_tile(const Tile& tile, const scalar_t* q, int64_t q_stride, const scalar_t* k_cache,
                 const scalar_t* v_cache, const int32_t* table, int64_t q_len, int64_t context, float scale,
                 const Shape& s, Scratch& w, scalar_t* out) {
  const int64_t D = kD ? kD : s.head_dim, G = s.group, n = tile.count, rows = G * n;
  const int64_t first_position = context - q_len + tile.first;  // of the tile's first query
  // row i = g * n + r: query head h * G + g at position first_position + r
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* src = q + (tile.first + r) * q_stride + (tile.kv_head * G + g) * D;
      for (int64_t d = 0; d < D; ++d) w.query[(g * n + r) * D + d] = widen(src[d]) * scale;
    }
  std::fill(w.acc.begin(), w.acc.begin() + rows * D, 0.f);
  std::fill(w.max.begin(), w.max.begin() + rows, kNegInf);
  std::fill(w.sum.begin(), w.sum.begin() + rows, 0.f);
  const int64_t keys = first_position + n;  // the last query sees every key before it and itself
  const int64_t row_stride = s.kv_heads * D;
  for (int64_t start = 0; start < keys; start += kKeys) {
    const int64_t m = std::min(kKeys, keys - start);
    for (int64_t t = 0; t < kKeys; ++t) {  // gather, widen and transpose the chunk; past its end, zeros
      if (t < m) {
        const int64_t position = start + t;
        const int64_t offset = (table[position / s.block_size] * s.block_size + position % s.block_size) *
                                   row_stride + tile.kv_head * D;
        float key[kMaxHeadDim];
        widen_row<kD>(k_cache + offset, D, key);
        for (int64_t d = 0; d < D; ++d) w.keys_t[d * kKeys + t] = key[d];
        widen_row<kD>(v_cache + offset, D, w.values.data() + t * D);
      } else {
        for (int64_t d = 0; d < D; ++d) w.keys_t[d * kKeys + t] = 0.f;
      }
    }
    chunk_scores<kD>(w.query.data(), w.keys_t.data(), rows, D, w.scores.data());
    constexpr int kGroup = value_rows<kD>();
    for (int64_t i0 = 0; i0 < rows; i0 += kGroup) {
      const int count = static_cast<int>(std::min<int64_t>(kGroup, rows - i0));
      float correction[kGroup];
      int64_t keys_used = 0;
      for (int j = 0; j < count; ++j) {
        const int64_t i = i0 + j;
        const int64_t visible = std::max<int64_t>(0, std::min(m, first_position + i % n - start + 1));  // causal
        float* p = w.scores.data() + i * kKeys;
        correction[j] = 1.f;
        if (visible > 0) {
          const float new_max = std::max(w.max[i], max_of(p, visible));
          correction[j] = w.max[i] == kNegInf ? 0.f : std::exp(w.max[i] - new_max);
          w.sum[i] = w.sum[i] * correction[j] + exp_shifted(p, visible, new_max);
          w.max[i] = new_max;
        }
        std::fill(p + visible, p + kKeys, 0.f);  // keys this row may not see add nothing
        keys_used = std::max(keys_used, visible);
      }
      if (keys_used == 0) continue;
      float* acc = w.acc.data() + i0 * D;
      const float* p = w.scores.data() + i0 * kKeys;
      if (count == kGroup) rescale_accumulate<kD, kGroup>(acc, correction, p, w.values.data(), keys_used, D);
      else
        for (int j = 0; j < count; ++j)
          rescale_accumulate<kD, 1>(acc + j * D, correction + j, p + j * kKeys, w.values.data(), keys_used, D);
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0; r < n; ++r) {
      const float* a = w.acc.data() + (g * n + r) * D;
      const float inv = 1.f / w.sum[g * n + r];
      scalar_t* dst = out + (tile.first + r) * s.heads * D + (tile.kv_head * G + g) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(a[d] * inv);
    }
}

template <typename scalar_t, int kD>
void prefill(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
             const at::Tensor& cu_seqlens, const at::Tensor& lens, double scale, const Shape& s, at::Tensor& out) {
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  std::vector<Tile> tiles;
  for (int64_t b = 0; b + 1 < cu_seqlens.numel(); ++b)
    for (int64_t first = 0; first < cu[b + 1] - cu[b]; first += kPositions)
      for (int64_t h = 0; h < s.kv_heads; ++h)
        tiles.push_back({b, first, std::min(kPositions, cu[b + 1] - cu[b] - first), h});
  // Largest first (a tile's cost grows with its last position), handed out one at a time: a static split
  // of a causal prompt gives one thread the cheap early tiles and the other the costly late ones.
  std::stable_sort(tiles.begin(), tiles.end(), [&](const Tile& a, const Tile& b) {
    return lp[a.seq] - (cu[a.seq + 1] - cu[a.seq]) + a.first > lp[b.seq] - (cu[b.seq + 1] - cu[b.seq]) + b.first;
  });
  const auto* qp = q.data_ptr<scalar_t>();
  const auto* kp = k_cache.data_ptr<scalar_t>();
  const auto* vp = v_cache.data_ptr<scalar_t>();
  const auto* tp = tables.data_ptr<int32_t>();
  auto* op = out.data_ptr<scalar_t>();
  const int64_t q_stride = q.stride(0);
  for_each_task(
      tiles.size(), [&] { return Scratch(s.group * kPositions, s.head_dim); },
      [&](int64_t i, Scratch& w) {
        const Tile& tile = tiles[i];
        const int64_t start = cu[tile.seq];
        attend_tile<scalar_t, kD>(tile, qp + start * q_stride, q_stride, kp, vp, tp + tile.seq * s.max_blocks,
                                  cu[tile.seq + 1] - start, lp[tile.seq], static_cast<float>(scale), s, w,
                                  op + start * s.heads * s.head_dim);
      });
}

}  // namespace

namespace infermatrix {

// q [T, H, D] (any token stride): the new tokens of Bp sequences, packed; their K/V already in the caches.
// int32 tables [Bp, max_blocks], cu_seqlens [Bp + 1] (offsets into q), lens [Bp] (context incl. new tokens).
// Returns [T, H, D] in the cache's dtype.
at::Tensor prefill_attention(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                             const at::Tensor& tables_in, const at::Tensor& cu_in, const at::Tensor& lens_in,
                             double scale) {
  RECORD_FUNCTION("infermatrix::cpp_prefill_attention", std::vector<c10::IValue>());
  TORCH_CHECK(k_cache.scalar_type() == at::kFloat || k_cache.scalar_type() == at::kBFloat16,
              "the C++ attention kernel takes a float32 or bfloat16 KV cache");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == k_cache.scalar_type(),
              "contiguous K and V caches [blocks, block_size, KVH, D] of one shape and dtype");
  at::Tensor q = q_in.to(k_cache.scalar_type());
  if (q.dim() != 3 || q.stride(2) != 1 || q.stride(1) != q.size(2)) q = q.contiguous();
  const at::Tensor tables = tables_in.contiguous(), cu = cu_in.contiguous(), lens = lens_in.contiguous();
  TORCH_CHECK(tables.scalar_type() == at::kInt && cu.scalar_type() == at::kInt && lens.scalar_type() == at::kInt,
              "int32 block tables, offsets and lens");
  const int64_t D = q.size(2), kv_heads = k_cache.size(2);
  TORCH_CHECK(D == k_cache.size(3) && D <= kMaxHeadDim && q.size(1) % kv_heads == 0,
              "head shapes do not match the cache");
  const int64_t batch = lens.numel();
  TORCH_CHECK(cu.numel() == batch + 1 && tables.size(0) == batch, "one table, offset pair and length per sequence");
  const auto* c = cu.data_ptr<int32_t>();
  const auto* l = lens.data_ptr<int32_t>();
  TORCH_CHECK(batch == 0 || (c[0] == 0 && c[batch] == q.size(0)), "offsets must span the query rows");
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(c[b + 1] >= c[b] && l[b] >= c[b + 1] - c[b] && l[b] <= tables.size(1) * k_cache.size(1),
                "sequence ", b, ": its new tokens must fit its context, and the context its block table");
  const Shape s{q.size(1), kv_heads, q.size(1) / kv_heads, D, k_cache.size(1), tables.size(1)};
  at::Tensor out = at::empty({q.size(0), q.size(1), D}, q.options());
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    if (D == 64) prefill<scalar_t, 64>(q, k_cache, v_cache, tables, cu, lens, scale, s, out);
    else if (D == 128) prefill<scalar_t, 128>(q, k_cache, v_cache, tables, cu, lens, scale, s, out);
    else prefill<scalar_t, 0>(q, k_cache, v_cache, tables, cu, lens, scale, s, out);
  };
  if (k_cache.scalar_type() == at::kFloat) run(float{});
  else run(at::BFloat16{});
  return out;
}

}  // namespace infermatrix
