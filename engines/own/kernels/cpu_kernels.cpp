// The CPU extension's Python bindings (engines/own/kernels/cpu_kernels.py).
#include <torch/extension.h>

#include <string>
#include <tuple>

namespace infermatrix {
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& tables, const at::Tensor& lens, double scale,
                            const c10::optional<at::Tensor>& new_k, const c10::optional<at::Tensor>& new_v,
                            const c10::optional<at::Tensor>& slots);
at::Tensor prefill_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                             const at::Tensor& tables, const at::Tensor& cu_seqlens, const at::Tensor& lens,
                             double scale);
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                                const at::Tensor& weight, double eps);
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin_signed);
at::Tensor silu_mul(const at::Tensor& gate_up);
at::Tensor lm_head(const at::Tensor& x, const at::Tensor& weight);
at::Tensor argmax_rows(const at::Tensor& logits);
bool packed_linear_supports(const std::string& dtype);
bool packed_linear_amx();
bool packed_linear_avx2();
at::Tensor packed_linear_split(const at::Tensor& x, const at::Tensor& packed,
                               const c10::optional<at::Tensor>& bias, int64_t N);
at::Tensor split_fp32_in_three(const at::Tensor& x);
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t N);
}  // namespace infermatrix

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &infermatrix::decode_attention, "paged decode attention (storing the new K/V rows first when given): q.K, softmax, P.V");
  m.def("prefill_attention", &infermatrix::prefill_attention, "paged causal prefill attention, flash style");
  m.def("add_rms_norm", &infermatrix::add_rms_norm, "(rms_norm(x + residual) * w, x + residual)");
  m.def("rope", &infermatrix::rope, "rotate-half RoPE over q|k heads");
  m.def("silu_mul", &infermatrix::silu_mul, "silu(gate) * up over the fused gate|up rows");
  m.def("lm_head", &infermatrix::lm_head, "torch's linear over row chunks of the weight, one per thread");
  m.def("argmax_rows", &infermatrix::argmax_rows, "each float32 row's first maximum (a NaN first), as torch.argmax");
  m.def("packed_linear_supports", &infermatrix::packed_linear_supports, "whether packed_linear runs in a dtype here");
  m.def("packed_linear_amx", &infermatrix::packed_linear_amx, "whether bf16 packed_linear runs on AMX tiles here");
  m.def("packed_linear_avx2", &infermatrix::packed_linear_avx2, "whether packed_linear runs on AVX2 + FMA here");
  m.def("packed_linear", &infermatrix::packed_linear, "x @ W^T (+ b) over weights packed in 16-row tiles");
  m.def("packed_linear_split", &infermatrix::packed_linear_split,
        "fp32 x @ W^T (+ b) on AMX tiles, x and W each split into three bf16 terms");
  m.def("split_fp32_in_three", &infermatrix::split_fp32_in_three, "fp32 rows as three bf16 terms [3, M, K]");
}
