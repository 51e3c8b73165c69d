// Float linear layer for AVX-512 and AVX2 CPUs: y = x @ W^T (+ b) over k in order, fp32 sums rounded once to the dtype.
// W is packed for 16 output rows at a time, [N/16][K/s][16][s] with s = k per step (bf16: 2, one vdpbf16ps over a
// pair, AVX512-BF16; fp32: 1, one FMA), so one 64-byte load feeds 16 outputs and x is one broadcast per step: no
// horizontal sums. A task is two 16-row tiles; rows of x go eight at a time (16 accumulators in registers), in
// fp32 above 8 rows six at a time over two tasks (24). fp32 adds a partial sum per 64 k into y: max relative
// error over SmolLM2's shapes 1.6-2.3e-7 against float64, where oneDNN's packed matmul gave 6.8-9.6e-7 and
// F.linear (MKL) 2.7-4.0e-7 (one sum over all k: 7.6e-7-1.2e-6). bf16 packing is AMX's B-tile layout as it
// stands: where the CPU has AMX-BF16 (and K is a multiple of 32) the sums run on tiles, 32 rows x 2 tiles at once.
// A thread sweeps its tasks in blocks of 8, each over x in chunks of 256 rows (`sweep`), so both stay in L2.
// Measured, SmolLM2's four layer shapes, 2 threads, weights warm (GFLOP/s, ours / oneDNN's packed matmul):
// AVX-512 only (an AMD EPYC, earlier): bf16 374-422 / 361-416 at 2048 rows, fp32 193-206 / 209-219; decode
// step's 121 linears at 32 rows bf16 26.1-30.9 ms / 29.9-33.0, fp32 50.5-58.4 / 56.2-65.4. With AMX (a Xeon,
// 2026-12-01): bf16 at 2048 rows 1949-2130 / 2441-2613 (AVX512-BF16 was 219), 256: 2274-2511 / 2040, 32:
// 1789-1854 / 1062-1150 (was 220), 8: 814-851 / 354-370, one row 104-111 / 42-47 (was 74); fp32 (blocked,
// 6 x 4 tiles) 2048 rows 328 / 355 (was 265), 256: 335 / 353, 32: 302 / 245, one row 36 / 19.
// fp32 on AMX (`packed_linear_split`): x and W each as three bf16 terms, the six products with error above 2^-26
// summed on tiles. Same Xeon, 1 thread, GFLOP/s split / fp32 FMA kernel: K 576 at 1024 rows 299-310 / 159-195, 256:
// 323-332 / 190-201, 64: 252-263 / 177-197, 33: 165-205 / 143-198, one row 9-14 / 14-40 (1.5x the weight bytes);
// K 1536 236-241 / 176-189; max error over |y| max 3-7e-7 / 3-5e-7. (bf16 K 3456 in 1 MiB chunks of x: 990 -> 1190.)
// AVX2 + FMA (AMD Zen 3, 2026-12-01, 2 threads, GFLOP/s ours / oneDNN packed / F.linear): fp32 at 32 rows 77-110 /
// 46-115 / 66-92, 256: 112-127 / 129-133 / 116-128; the LM head (49152 x 576) at 32 rows 92 / 92 / 43, one row 6.8
// / 6.2 / 3.6. bf16 (oneDNN packs no bf16 there, F.linear has no vector path): 66-135 at 32 rows, 105-144 at 256,
// where F.linear runs 14-18.
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

#include "cpu_vector.h"

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define INFERMATRIX_LINEAR_AVX2  // our AVX2 + FMA kernel: a build without AVX-512
#endif
#if defined(__AVX512F__) || defined(INFERMATRIX_LINEAR_AVX2)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

constexpr int64_t kTile = 16;  // output rows per packed tile
constexpr int kTiles = 2;      // tiles per task
constexpr int kRows = 8;       // rows of x per pass over a task's tiles
// a thread sweeps its tasks in blocks, each block over x in chunks of rows: both stay in L2 meanwhile
constexpr int64_t kBlockTasks = 8, kBlockRows = 256;

// fn(first, last, m0, m1) for the tasks [begin, end) in blocks [first, last) of kBlockTasks, each block over
// the rows of x in chunks [m0, m1) of `rows` (a multiple of 32).
template <typename Fn>
void sweep(int64_t begin, int64_t end, int64_t M, Fn fn, int64_t rows = kBlockRows) {
  for (int64_t first = begin; first < end; first += kBlockTasks)
    for (int64_t m0 = 0; m0 < M; m0 += rows) fn(first, std::min(end, first + kBlockTasks), m0, std::min(M, m0 + rows));
}

template <typename scalar_t>
constexpr bool supported() {
#if defined(__AVX512BF16__)
  return true;
#elif defined(__AVX512F__)
  return std::is_same_v<scalar_t, float>;
#elif defined(INFERMATRIX_LINEAR_AVX2)
  return true;
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
// y[m][16 t + j] for kM rows of x over kT tiles; `steps` per tile; bias (fp32, padded) or null; writes the first
// `cols` outputs (the last task may end past N). Prefetches the `ahead` tiles that follow into L2 meanwhile.
template <typename scalar_t, int kM, int kT>
void tiles(const scalar_t* x, int64_t x_stride, int64_t K, const scalar_t* w, int64_t steps, const float* bias,
           scalar_t* y, int64_t y_stride, int64_t cols, int64_t ahead) {
  if constexpr (supported<scalar_t>()) {
    using S = Step<scalar_t>;
    __m512 acc[kM][kT];
    auto step = [&](int64_t s, auto x_of_row) {
      typename S::Operand wv[kT];
      for (int t = 0; t < kT; ++t) wv[t] = S::weights(w + (t * steps + s) * S::kPer * kTile);
      for (int64_t t = kT; t < kT + ahead; ++t)
        _mm_prefetch(reinterpret_cast<const char*>(w + (t * steps + s) * S::kPer * kTile), _MM_HINT_T1);
      for (int m = 0; m < kM; ++m) {
        const auto xv = x_of_row(x + m * x_stride);
        for (int t = 0; t < kT; ++t) acc[m][t] = S::add(acc[m][t], xv, wv[t]);
      }
    };
    const int64_t full = K / S::kPer;
    for (int64_t s0 = 0; s0 < steps; s0 += S::kBlock) {
      for (int t = 0; t < kT; ++t) {
        const __m512 start = bias && s0 == 0 ? _mm512_loadu_ps(bias + kTile * t) : _mm512_setzero_ps();
        for (int m = 0; m < kM; ++m) acc[m][t] = start;
      }
      const int64_t s1 = std::min(s0 + S::kBlock, full);
      for (int64_t s = s0; s < s1; ++s) step(s, [&](const scalar_t* row) { return S::x(row, s); });
      if (s1 == full && full < steps) step(full, [&](const scalar_t* row) { return S::x_tail(row, K); });
      for (int t = 0; t < kT; ++t) {
        const int64_t n = std::min<int64_t>(kTile, cols - kTile * t);
        if (n <= 0) break;
        const __mmask16 mask = n == kTile ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
        for (int m = 0; m < kM; ++m) S::store(y + m * y_stride + kTile * t, mask, acc[m][t], s0 > 0);
      }
    }
  }
}

template <typename scalar_t, int kT, int... kM>
void tiles_for_rows(int rows, std::integer_sequence<int, kM...>, const scalar_t* x, int64_t x_stride, int64_t K,
                    const scalar_t* w, int64_t steps, const float* bias, scalar_t* y, int64_t y_stride,
                    int64_t cols, int64_t ahead) {
  ((rows == kM + 1 ? (tiles<scalar_t, kM + 1, kT>(x, x_stride, K, w, steps, bias, y, y_stride, cols, ahead), 0)
                   : 0),
   ...);
}

// Rows [m0, m1) of x against kT tiles from column n0, kStep rows at a time; the first rows of x (weights still in
// memory) prefetch the `ahead` tiles that follow.
template <typename scalar_t, int kT, int kStep>
void row_blocks(int64_t m0, int64_t m1, const scalar_t* x, int64_t x_stride, int64_t K, const scalar_t* w,
                int64_t steps, const float* bias, scalar_t* y, int64_t N, int64_t n0, int64_t ahead) {
  for (; m0 < m1; m0 += kStep)
    tiles_for_rows<scalar_t, kT>(static_cast<int>(std::min<int64_t>(kStep, m1 - m0)),
                                 std::make_integer_sequence<int, kStep>{}, x + m0 * x_stride, x_stride, K, w, steps,
                                 bias ? bias + n0 : nullptr, y + m0 * N + n0, N, N - n0, m0 == 0 ? ahead : 0);
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// bf16 through AMX: the bf16 packing is already AMX's B-tile layout (16 steps of k pairs x 16 columns, 64-byte
// rows), so tiles load straight from it. Linux gives a process AMX's tile state only once it asks.
bool amx_permitted() {
  static const bool permitted = [] {
    constexpr int kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return permitted;
}

constexpr int64_t kAmxK = 32;  // k per tile step: 16 pairs

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: sums (rows of x block 0 or 1) x (column tile 0 or 1); 4, 5: x blocks; 6, 7: weight tiles.
TileConfig tile_config(int rows0, int rows1) {
  TileConfig config;
  auto set = [&](int tile, int rows) { config.rows[tile] = static_cast<uint8_t>(rows), config.colsb[tile] = 64; };
  for (int tile : {0, 1, 4}) set(tile, rows0);
  for (int tile : {6, 7}) set(tile, 16);
  if (rows1)
    for (int tile : {2, 3, 5}) set(tile, rows1);
  return config;
}

// Sums of one or two blocks of up to 16 rows of x against the task's two column tiles, into sums [4][16][16]
// (block-major, as the tiles are numbered). kLimbs 1: x . w in bf16. kLimbs 3 (fp32 split into three bf16
// terms, x = x0 + x1 + x2, w likewise, `x_limb` and `w_limb` elements apart): the six products x_i . w_j with
// i + j <= 2, smallest first each k step; the three left out are below 2^-26 of x . w, under fp32's own rounding.
// `next`: the next task's weights to prefetch into L2 meanwhile, or null.
template <bool kTwoBlocks, int kLimbs>
void amx_sums(const at::BFloat16* x, int64_t x_stride, int64_t x_limb, int64_t K, const at::BFloat16* w,
              int64_t steps, int64_t w_limb, const at::BFloat16* next, float* sums) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (kTwoBlocks) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t x_bytes = x_stride * 2, w1 = steps * 2 * kTile;
  for (int64_t k = 0; k < K; k += kAmxK) {
    if (next)
      for (int j = 0; j < kLimbs; ++j)
        for (int64_t line = 0; line < 16 * 32; line += 32) {  // 16 rows of 64 bytes per weight tile
          _mm_prefetch(reinterpret_cast<const char*>(next + j * w_limb + k * kTile + line), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(next + j * w_limb + w1 + k * kTile + line), _MM_HINT_T1);
        }
    for (int j = 0; j < kLimbs; ++j) {
      _tile_loadd(6, w + j * w_limb + k * kTile, 64);
      _tile_loadd(7, w + j * w_limb + w1 + k * kTile, 64);
      for (int i = kLimbs - 1 - j; i >= 0; --i) {
        const at::BFloat16* xi = x + i * x_limb + k;
        _tile_loadd(4, xi, x_bytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if constexpr (kTwoBlocks) {
          _tile_loadd(5, xi + kTile * x_stride, x_bytes);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
    }
  }
  _tile_stored(0, sums, 64);
  _tile_stored(1, sums + 256, 64);
  if constexpr (kTwoBlocks) {
    _tile_stored(2, sums + 512, 64);
    _tile_stored(3, sums + 768, 64);
  }
}

// y (out_t: bf16, or fp32 for kLimbs 3) from x [kLimbs][M][K] (rows may be strided) and packed
// [kLimbs][Np/16][K/2][16][2]; K a multiple of 32. A chunk of x holds at most 1 MiB: three terms of K 1536 in
// chunks of 256 rows ran at 155-212 GFLOP/s, of 96 rows 229-235, where K 576 keeps 256 (300-340).
// Each row's sums run in the same order wherever the row sits.
template <typename out_t, int kLimbs>
void linear_amx(const at::Tensor& x, const at::Tensor& packed, const float* bias, at::Tensor& y) {
  const int64_t M = x.size(-2), K = x.size(-1), N = y.size(1), steps = packed.size(-3);
  const int64_t tiles = packed.size(-4), task_cols = kTiles * kTile, task_weights = kTiles * steps * 2 * kTile;
  const int64_t x_stride = x.stride(-2), x_limb = kLimbs > 1 ? x.stride(0) : 0, w_limb = tiles * steps * 2 * kTile;
  const auto* xp = x.data_ptr<at::BFloat16>();
  const auto* wp = packed.data_ptr<at::BFloat16>();
  auto* yp = y.data_ptr<out_t>();
  const int64_t chunk_rows = std::clamp<int64_t>((int64_t{1} << 20) / (K * 2 * kLimbs) / 32 * 32, 32, kBlockRows);
  at::parallel_for(0, tiles / kTiles, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float sums[4 * kTile * kTile];
    int loaded = -1;  // rows0 * 32 + rows1 of the loaded config
    sweep(begin, end, M, [&](int64_t first, int64_t last, int64_t chunk, int64_t chunk_end) {
      for (int64_t task = first; task < last; ++task) {
        const int64_t n0 = task * task_cols, cols = std::min(task_cols, N - n0);
        const at::BFloat16* w = wp + task * task_weights;
        for (int64_t m0 = chunk; m0 < chunk_end; m0 += 2 * kTile) {
          const int rows0 = static_cast<int>(std::min<int64_t>(kTile, M - m0));
          const int rows1 = static_cast<int>(std::clamp<int64_t>(M - m0 - kTile, 0, kTile));
          if (rows0 * 32 + rows1 != loaded) {
            const TileConfig config = tile_config(rows0, rows1);
            _tile_loadconfig(&config);
            loaded = rows0 * 32 + rows1;
          }
          const at::BFloat16* next = m0 == 0 && task + 1 < end ? w + task_weights : nullptr;
          const at::BFloat16* rows = xp + m0 * x_stride;
          if (rows1) amx_sums<true, kLimbs>(rows, x_stride, x_limb, K, w, steps, w_limb, next, sums);
          else amx_sums<false, kLimbs>(rows, x_stride, x_limb, K, w, steps, w_limb, next, sums);
          for (int m = 0; m < rows0 + rows1; ++m)
            for (int t = 0; t < kTiles; ++t) {
              const int64_t n = std::min<int64_t>(kTile, cols - kTile * t);
              if (n <= 0) break;
              __m512 v = _mm512_loadu_ps(sums + ((m / kTile) * kTiles + t) * kTile * kTile + (m % kTile) * kTile);
              if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + n0 + kTile * t));
              const __mmask16 mask = n == kTile ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
              Step<out_t>::store(yp + (m0 + m) * N + n0 + kTile * t, mask, v, false);
            }
        }
      }
    }, chunk_rows);
    if (loaded >= 0) _tile_release();
  });
}

// x = x0 + x1 + x2 in bf16, each term the round-to-nearest of what the ones before left: [3][M][K].
at::Tensor split_in_three(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), x_stride = x.stride(0);
  at::Tensor limbs = at::empty({3, M, K}, x.options().dtype(at::kBFloat16));
  const float* xp = x.data_ptr<float>();
  auto* lp = reinterpret_cast<uint16_t*>(limbs.data_ptr<at::BFloat16>());
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      for (int64_t k = 0; k < K; k += 16) {  // K is a multiple of 32 here
        __m512 rest = _mm512_loadu_ps(xp + m * x_stride + k);
        for (int i = 0; i < 3; ++i) {
          const __m256i term = (__m256i)_mm512_cvtneps_pbh(rest);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(lp + (i * M + m) * K + k), term);
          rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(term), 16)));
        }
      }
  });
  return limbs;
}
#endif

template <typename scalar_t>
void linear(const at::Tensor& x, const at::Tensor& packed, const float* bias, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1), steps = packed.size(1);
  const int64_t task_cols = kTiles * kTile, task_weights = kTiles * steps * packed.size(3) * kTile;
  const auto* xp = x.data_ptr<scalar_t>();
  const auto* wp = packed.data_ptr<scalar_t>();
  auto* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, packed.size(0) / kTiles, 1, [&](int64_t begin, int64_t end) {
    sweep(begin, end, M, [&](int64_t first, int64_t last, int64_t m0, int64_t m1) {
      for (int64_t task = first; task < last;) {
        const scalar_t* w = wp + task * task_weights;
        const int64_t n0 = task * task_cols;
        // fp32, more than 8 rows: two tasks at once, 6 rows x 4 tiles in registers, 10 loads feed 24 FMAs
        const bool pair = std::is_same_v<scalar_t, float> && task + 1 < last && m1 - m0 > kRows;
        const int64_t after = task + (pair ? 2 : 1), ahead = std::min(after - task, end - after) * kTiles;
        if (pair) row_blocks<scalar_t, 2 * kTiles, 6>(m0, m1, xp, x.stride(0), K, w, steps, bias, yp, N, n0, ahead);
        else row_blocks<scalar_t, kTiles, kRows>(m0, m1, xp, x.stride(0), K, w, steps, bias, yp, N, n0, ahead);
        task = after;
      }
    });
  });
}

#endif


#if defined(INFERMATRIX_LINEAR_AVX2)
// AVX2 + FMA (AMD Zen 2/3, Intel before AVX-512): the same packing, a 16-column tile as two 8-lane vectors, 6 rows
// of x at a time in fp32 (12 sums + 2 weight vectors + x in the 16 registers; bf16 5: its k odd and k even vectors
// made 6 spill a sum). x is read as fp32 (bf16 rows widened once
// per call), broadcast straight from memory. No bf16 dot product here: a packed pair (k even in the low half)
// widens exactly by a mask (k odd) and a shift (k even), and each sum takes k odd then k even, as vdpbf16ps does;
// a product of two bf16 is exact in fp32, so the bits are the same (denormals aside). fp32 adds a partial sum per
// 64 k into y, as the AVX-512 kernel does, in the same order.
// y[:n] (at most 8) = sum, or += sum (fp32 partial sums after the first)
template <typename scalar_t>
inline void store_avx2(scalar_t* y, __m256 sum, int64_t n, bool add_to_y) {
  if (n <= 0) return;
  alignas(32) scalar_t part[8] = {};  // a tile's last columns past N go through here
  scalar_t* to = n >= 8 ? y : part;
  if (n < 8) std::memcpy(part, y, n * sizeof(scalar_t));
  if (add_to_y) sum = _mm256_add_ps(infermatrix::vec::Lanes::load(to), sum);
  infermatrix::vec::Lanes::store(to, sum);
  if (n < 8) std::memcpy(y, part, n * sizeof(scalar_t));
}

inline __m256i load_bits(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

template <typename scalar_t, int kM>
void tile_avx2(const float* x, int64_t x_stride, int64_t K, const scalar_t* w, int64_t steps, const float* bias, scalar_t* y,
               int64_t y_stride, int64_t cols) {
  constexpr bool kBf16 = std::is_same_v<scalar_t, at::BFloat16>;
  constexpr int64_t kBlock = kBf16 ? INT64_MAX : 64;
  __m256 acc[kM][2];
  // sums += x[:, k] * (16 weights at k), two vectors as floats or as bf16 shifted to the top half of 32 bits
  auto add = [&](int64_t k, __m256i w0, __m256i w1) {
    const __m256 v0 = _mm256_castsi256_ps(w0), v1 = _mm256_castsi256_ps(w1);
#pragma GCC unroll 8
    for (int m = 0; m < kM; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x + m * x_stride + k);
      acc[m][0] = _mm256_fmadd_ps(xv, v0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xv, v1, acc[m][1]);
    }
  };
  for (int64_t s0 = 0; s0 < steps; s0 += kBlock) {
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      const __m256 start = bias && s0 == 0 ? _mm256_loadu_ps(bias + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int m = 0; m < kM; ++m) acc[m][v] = start;
    }
    const int64_t s1 = std::min(s0 + kBlock, steps);
    for (int64_t s = s0; s < s1; ++s) {
      if constexpr (kBf16) {
        const __m256i p0 = load_bits(w + s * 2 * kTile), p1 = load_bits(w + s * 2 * kTile + kTile);
        const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
        // odd K: the last step's k odd is the zero column the packing added (x has no such k)
        if (2 * s + 1 < K) add(2 * s + 1, _mm256_and_si256(p0, high), _mm256_and_si256(p1, high));
        add(2 * s, _mm256_slli_epi32(p0, 16), _mm256_slli_epi32(p1, 16));
      } else {
        add(s, load_bits(w + s * kTile), load_bits(w + s * kTile + 8));
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < kM; ++m) {
      store_avx2(y + m * y_stride, acc[m][0], cols, s0 > 0);
      store_avx2(y + m * y_stride + 8, acc[m][1], cols - 8, s0 > 0);
    }
  }
}

template <typename scalar_t, int... kM>
void tile_avx2_rows(int rows, std::integer_sequence<int, kM...>, const float* x, int64_t x_stride, int64_t K,
                    const scalar_t* w, int64_t steps, const float* bias, scalar_t* y, int64_t y_stride, int64_t cols) {
  ((rows == kM + 1 ? (tile_avx2<scalar_t, kM + 1>(x, x_stride, K, w, steps, bias, y, y_stride, cols), 0) : 0), ...);
}

template <typename scalar_t>
void linear(const at::Tensor& x, const at::Tensor& packed, const float* bias, at::Tensor& y) {
  constexpr int kStep = std::is_same_v<scalar_t, float> ? 6 : 5;
  const at::Tensor xf = x.to(at::kFloat);
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1), steps = packed.size(1), x_stride = xf.stride(0);
  const int64_t tile_weights = steps * packed.size(3) * kTile;
  const float* xp = xf.data_ptr<float>();
  const auto* wp = packed.data_ptr<scalar_t>();
  auto* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, packed.size(0) / kTiles, 1, [&](int64_t begin, int64_t end) {
    sweep(begin, end, M, [&](int64_t first, int64_t last, int64_t m0, int64_t m1) {
      for (int64_t tile = first * kTiles; tile < last * kTiles && tile * kTile < N; ++tile)
        for (int64_t m = m0; m < m1; m += kStep)
          tile_avx2_rows<scalar_t>(static_cast<int>(std::min<int64_t>(kStep, m1 - m)),
                                   std::make_integer_sequence<int, kStep>{}, xp + m * x_stride, x_stride, K,
                                   wp + tile * tile_weights, steps, bias ? bias + tile * kTile : nullptr,
                                   yp + m * N + tile * kTile, N, N - tile * kTile);
    });
  });
}
#endif
}  // namespace

namespace infermatrix {

// Whether bf16 packed_linear runs on AMX tiles here (for K a multiple of 32): built for it and allowed by the OS.
bool packed_linear_amx() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  return amx_permitted();
#else
  return false;
#endif
}

// Whether packed_linear runs on AVX2 + FMA here (a build without AVX-512).
bool packed_linear_avx2() {
#if defined(INFERMATRIX_LINEAR_AVX2)
  return true;
#else
  return false;
#endif
}

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
  if (bf16) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    if (x.size(1) % kAmxK == 0 && amx_permitted()) {
      linear_amx<at::BFloat16, 1>(x, packed, bp, y);
      return y;
    }
#endif
    linear<at::BFloat16>(x, packed, bp, y);
  } else {
    linear<float>(x, packed, bp, y);
  }
#elif defined(INFERMATRIX_LINEAR_AVX2)
  if (bf16) linear<at::BFloat16>(x, packed, bp, y);
  else linear<float>(x, packed, bp, y);
#endif
  return y;
}

// fp32 x [M, K] (rows may be strided), K a multiple of 32, through AMX: x and W each split into three bf16 terms,
// packed [3, Np/16, K/2, 16, 2] (`packed_linear`'s bf16 layout per term); bias: fp32 [Np] or none.
// Returns fp32 [M, N].
at::Tensor packed_linear_split(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                               int64_t N) {
  RECORD_FUNCTION("infermatrix::packed_linear_split", std::vector<c10::IValue>());
  TORCH_CHECK(packed_linear_amx(), "this CPU build has no AMX-BF16 tiles for the split fp32 linear");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1 && x.size(1) % 32 == 0,
              "x: float32 rows [M, K], K a multiple of 32");
  TORCH_CHECK(packed.dim() == 5 && packed.size(0) == 3 && packed.scalar_type() == at::kBFloat16 &&
                  packed.is_contiguous() && packed.size(3) == kTile && packed.size(4) == 2 &&
                  packed.size(1) % kTiles == 0 && packed.size(2) * 2 == x.size(1) && N <= packed.size(1) * kTile,
              "packed weight: three bf16 terms [3, N/16, K/2, 16, 2], N padded to a multiple of 32, K as x's");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                        bias->numel() == packed.size(1) * kTile), "bias: fp32 [padded N]");
  at::Tensor y = at::empty({x.size(0), N}, x.options());
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  linear_amx<float, 3>(split_in_three(x), packed, bias ? bias->data_ptr<float>() : nullptr, y);
#endif
  return y;
}

// fp32 rows [M, K] (K a multiple of 32) as the three bf16 terms `packed_linear_split` multiplies: [3, M, K].
// The weights are split by this same function before packing.
at::Tensor split_fp32_in_three(const at::Tensor& x) {
  TORCH_CHECK(packed_linear_amx(), "this CPU build has no AMX-BF16 tiles for the split fp32 linear");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1 && x.size(1) % 32 == 0,
              "x: float32 rows [M, K], K a multiple of 32");
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  return split_in_three(x);
#else
  return {};
#endif
}

}  // namespace infermatrix
