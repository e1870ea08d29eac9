// AGLU on bfloat16 CPU tensors by table lookup: forward y = T[x] and backward dx = g·D[x],
// dκ = Σ g·K[x], dl = Σ g·L[x], where T, D, K, L hold AGLU and its three local derivatives at all 2^16
// bfloat16 values (computed in float32 by longtail/models/activations.py). Why a hand-written kernel: the
// exact derivative costs two exponentials and a logarithm per element, and torch.compile turns the table
// version into a scalar loop with one serial accumulator per sum; here the backward reads the tables with
// AVX-512 gathers, 16 elements at a time, into vector accumulators.
//
// Layout: x (and g, y, dx) are dense, in one layout, and walked in memory order as (outer, channels,
// inner); element (o, c, i) uses table c when there is one table per channel, else table 0 (then any dense
// layout will do). Table index = bit pattern + 2^15.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kTableSize = 1 << 16;
constexpr int32_t kZero = 1 << 15;        // table index of the bit pattern 0
constexpr int64_t kChunk = 1 << 14;       // elements per task when one table serves the whole tensor

inline float bf16_to_float(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

// Round to nearest even, NaN to the canonical quiet NaN: the same bits as c10::BFloat16(float).
inline uint16_t float_to_bf16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((word + 0x7fffu + ((word >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__)
inline __m512i load_index(const int16_t* bits) {
  const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits));
  return _mm512_add_epi32(_mm512_cvtepi16_epi32(packed), _mm512_set1_epi32(kZero));
}

inline __m512 load_bf16(const uint16_t* bits) {
  const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(packed), 16));
}

// The integer form of float_to_bf16 (the AVX512-BF16 instruction would flush subnormals).
inline void store_bf16(uint16_t* bits, __m512 values) {
  const __m512i word = _mm512_castps_si512(values);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(word, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(word, bias), 16);
  const __m512i magnitude = _mm512_and_si512(word, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
  const __m512i result = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits), _mm512_cvtepi32_epi16(result));
}
#endif

// A plain loop of 16-bit loads: faster here than 16-lane gathers, which cost one load per lane and more.
void forward_run(const int16_t* x, int16_t* y, const int16_t* table, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = table[x[j] + kZero];
}

// float64: the plain loop (CPUs without AVX-512) adds a run's up to 2^14 terms one by one, and in float32
// that serial sum drifted 3.5e-4 (relative) from the elementwise autograd sum where the terms cancel.
struct Sums {
  double kappa = 0.0;
  double lambda = 0.0;
};

// tables: D (2^16 floats), then (K, L) pairs (2^16 × 2 floats): one 64-bit gather reads both, and a
// gather costs one load per lane on current x86 cores, so the pairs save a third of the loads.
Sums backward_run(const int16_t* x, const uint16_t* g, uint16_t* dx, const float* tables, int64_t n) {
  const float* d = tables;
  const float* kl = tables + kTableSize;
  Sums sums;
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512i low_pairs = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512i high_pairs = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
  const auto* pairs = reinterpret_cast<const double*>(kl);
  __m512 sum_low = _mm512_setzero_ps();   // lanes alternate Σ g·K, Σ g·L
  __m512 sum_high = _mm512_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    const __m512i index = load_index(x + j);
    const __m512 grad = load_bf16(g + j);
    store_bf16(dx + j, _mm512_mul_ps(grad, _mm512_i32gather_ps(index, d, 4)));
    const __m512 kl_low = _mm512_castpd_ps(_mm512_i32gather_pd(_mm512_castsi512_si256(index), pairs, 8));
    const __m512 kl_high = _mm512_castpd_ps(_mm512_i32gather_pd(_mm512_extracti64x4_epi64(index, 1), pairs, 8));
    sum_low = _mm512_fmadd_ps(_mm512_permutexvar_ps(low_pairs, grad), kl_low, sum_low);
    sum_high = _mm512_fmadd_ps(_mm512_permutexvar_ps(high_pairs, grad), kl_high, sum_high);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(sum_low, sum_high));
  for (int lane = 0; lane < 16; lane += 2) {
    sums.kappa += lanes[lane];
    sums.lambda += lanes[lane + 1];
  }
#endif
  for (; j < n; ++j) {
    const int32_t index = x[j] + kZero;
    const float grad = bf16_to_float(g[j]);
    dx[j] = float_to_bf16(grad * d[index]);
    sums.kappa += static_cast<double>(grad * kl[2 * index]);
    sums.lambda += static_cast<double>(grad * kl[2 * index + 1]);
  }
  return sums;
}

// The tensor as runs of one table: a run is one (o, c) row of `inner` elements per channel, or a chunk
// of the whole tensor when a single table serves every element.
struct Runs {
  int64_t numel, length, count, channels, tables;
  Runs(int64_t numel, int64_t channels, int64_t inner, int64_t tables)
      : numel(numel), length(tables == 1 ? kChunk : inner), channels(channels), tables(tables) {
    count = length == 0 ? 0 : (numel + length - 1) / length;
  }
  int64_t table(int64_t run) const { return tables == 1 ? 0 : run % channels; }
  int64_t size(int64_t run) const { return std::min(length, numel - run * length); }
  int64_t grain() const { return std::max<int64_t>(1, kChunk / std::max<int64_t>(length, 1)); }
};

// x (and g, y, dx): dense bfloat16 tensors in one layout, walked over memory.
void check(const torch::Tensor& x, const torch::Tensor& tables, c10::ScalarType table_type, int64_t per_table,
           int64_t channels, int64_t inner) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && x.is_non_overlapping_and_dense(),
              "AGLU lookup: the input must be a dense bfloat16 tensor on the CPU");
  TORCH_CHECK(tables.device().is_cpu() && tables.scalar_type() == table_type && tables.is_contiguous() &&
                  tables.dim() == 2 && tables.size(1) == per_table * kTableSize,
              "AGLU lookup: tables must be contiguous ", table_type, " of shape (tables, ", per_table, " * 65536)");
  TORCH_CHECK(tables.size(0) == 1 || tables.size(0) == channels, "AGLU lookup: one table or one per channel");
  TORCH_CHECK(channels > 0 && inner > 0 && x.numel() % (channels * inner) == 0,
              "AGLU lookup: the input is not (outer, channels, inner)");
}

template <typename T>
T* bits_of(const torch::Tensor& tensor) {
  return reinterpret_cast<T*>(tensor.data_ptr());
}

}  // namespace

// tables: AGLU's bfloat16 values, one row of 2^16 per table. The output has x's layout.
torch::Tensor aglu_lookup_forward(torch::Tensor x, torch::Tensor tables, int64_t channels, int64_t inner) {
  check(x, tables, torch::kBFloat16, 1, channels, inner);
  auto out = torch::empty_like(x);
  const Runs runs(x.numel(), channels, inner, tables.size(0));
  const auto* in = bits_of<const int16_t>(x);
  auto* y = bits_of<int16_t>(out);
  const auto* t = bits_of<const int16_t>(tables);
  at::parallel_for(0, runs.count, runs.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      const int64_t start = run * runs.length;
      forward_run(in + start, y + start, t + runs.table(run) * kTableSize, runs.size(run));
    }
  });
  return out;
}

// tables: float32 rows of D then the (K, L) pairs (see backward_run). Returns (dx in x's layout, sums) with
// sums[t] = (Σ g·K, Σ g·L) over the elements of table t, in float64.
std::vector<torch::Tensor> aglu_lookup_backward(torch::Tensor x, torch::Tensor grad, torch::Tensor tables,
                                                int64_t channels, int64_t inner) {
  check(x, tables, torch::kFloat32, 3, channels, inner);
  TORCH_CHECK(grad.scalar_type() == torch::kBFloat16 && grad.sizes() == x.sizes() && grad.strides() == x.strides(),
              "AGLU lookup: the gradient must be bfloat16 with the input's shape and layout");
  auto grad_x = torch::empty_like(x);
  const Runs runs(x.numel(), channels, inner, tables.size(0));
  const int64_t threads = at::get_num_threads();
  std::vector<double> partial(threads * runs.tables * 2, 0.0);
  const auto* in = bits_of<const int16_t>(x);
  const auto* g = bits_of<const uint16_t>(grad);
  auto* dx = bits_of<uint16_t>(grad_x);
  const float* t = tables.data_ptr<float>();
  at::parallel_for(0, runs.count, runs.grain(), [&](int64_t begin, int64_t end) {
    double* mine = partial.data() + at::get_thread_num() * runs.tables * 2;
    for (int64_t run = begin; run < end; ++run) {
      const int64_t start = run * runs.length;
      const int64_t table = runs.table(run);
      const Sums sums = backward_run(in + start, g + start, dx + start, t + table * 3 * kTableSize, runs.size(run));
      mine[2 * table] += sums.kappa;
      mine[2 * table + 1] += sums.lambda;
    }
  });
  auto totals = torch::zeros({runs.tables, 2}, torch::kFloat64);
  auto* total = totals.data_ptr<double>();
  for (int64_t thread = 0; thread < threads; ++thread)
    for (int64_t i = 0; i < runs.tables * 2; ++i) total[i] += partial[thread * runs.tables * 2 + i];
  return {grad_x, totals};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &aglu_lookup_forward, "AGLU forward by table lookup (bfloat16, CPU)");
  module.def("backward", &aglu_lookup_backward, "AGLU backward by table lookup (bfloat16, CPU)");
}
