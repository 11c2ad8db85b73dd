// Prompted attention pooling, device-independent part. Semantics: cora/ops/attn_pool.py.
//
// open_clip's AttentionPool2d attends from all L = S*S + 1 tokens but keeps token 0's output only.
// For that one query the per-head key projection folds into the query,
//   logit_hj = (q_h . (W_k,h t_j + b_k,h)) / sqrt(d) = ((W_k,h^T q_h) / sqrt(d)) . t_j + const_h,
// where const_h (the key bias term) cancels in the softmax, and since the weights sum to one,
//   o_h = W_v,h (sum_j a_hj t_j) + b_v,h.
// That needs about 21M MACs per RN50 region instead of open_clip's 744M. The prompt P [S, S, C] is
// added to the region features before pooling, which equals pooling with the positional embedding
// pe + [mean(P); P].
#include "attn_pool.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace cora {
namespace {

void check_floating(const char* name, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "prompted_attn_pool: ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

void check_matrix(const char* name, const at::Tensor& t, int64_t rows, int64_t cols, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "prompted_attn_pool: ", name,
              " must be Tensor[", rows, ", ", cols, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), "prompted_attn_pool: ", name,
              " must have the dtype and device of x (", x.scalar_type(), ", ", x.device(), "), got ",
              t.scalar_type(), ", ", t.device());
}

void check_vector(const char* name, const at::Tensor& t, int64_t size, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, "prompted_attn_pool: ", name, " must be Tensor[", size,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), "prompted_attn_pool: ", name,
              " must have the dtype and device of x (", x.scalar_type(), ", ", x.device(), "), got ",
              t.scalar_type(), ", ", t.device());
}

void check_inputs(const at::Tensor& x, const at::Tensor& pe, const std::optional<at::Tensor>& prompt,
                  const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& wv,
                  const at::Tensor& bv, const at::Tensor& wc, int64_t num_heads) {
  TORCH_CHECK(x.dim() == 4, "prompted_attn_pool: x must be Tensor[N, C, S, S], got ", x.sizes());
  check_floating("x", x);
  const int64_t channels = x.size(1), tokens = x.size(2) * x.size(3) + 1;
  TORCH_CHECK(pe.dim() == 2 && pe.size(0) == tokens && pe.size(1) == channels,
              "prompted_attn_pool: positional_embedding must be Tensor[S*S+1, C] = [", tokens, ", ",
              channels, "] for x of shape ", x.sizes(), ", got ", pe.sizes());
  TORCH_CHECK(num_heads > 0 && channels % num_heads == 0, "prompted_attn_pool: C = ", channels,
              " must be divisible by num_heads, got num_heads = ", num_heads);
  if (prompt.has_value()) {
    TORCH_CHECK(prompt->dim() == 3 && prompt->size(0) == x.size(2) && prompt->size(1) == x.size(3) &&
                    prompt->size(2) == channels,
                "prompted_attn_pool: prompt must be Tensor[S, S, C] = [", x.size(2), ", ", x.size(3),
                ", ", channels, "], got ", prompt->sizes());
  }
  check_matrix("q_proj_weight", wq, channels, channels, x);
  check_vector("q_proj_bias", bq, channels, x);
  check_matrix("k_proj_weight", wk, channels, channels, x);
  check_matrix("v_proj_weight", wv, channels, channels, x);
  check_vector("v_proj_bias", bv, channels, x);
  TORCH_CHECK(wc.dim() == 2 && wc.size(1) == channels, "prompted_attn_pool: c_proj_weight must be Tensor[out_dim, ",
              channels, "], got ", wc.sizes());
}

at::ScalarType acc_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// pe + [mean(P); P], P flattened to [S*S, C]: pooling x + P equals pooling x with this embedding.
at::Tensor effective_positional_embedding(const at::Tensor& pe, const std::optional<at::Tensor>& prompt) {
  if (!prompt.has_value()) return pe;
  const at::Tensor p = prompt->reshape({-1, pe.size(1)}).to(pe.scalar_type());
  return pe + at::cat({p.mean(0, /*keepdim=*/true), p}, 0);
}

// Regions per chunk: bounds the [n, H, C] intermediates (keys, z) to ~2^25 elements each.
int64_t chunk_size(int64_t num_heads, int64_t channels) {
  return std::max<int64_t>(1, (int64_t(1) << 25) / (num_heads * channels));
}

// x [N, C, Sh, Sw] -> tokens [N, Sh*Sw, C]: a view for channels-last x, one copy for NCHW.
at::Tensor as_tokens(const at::Tensor& x) {
  return x.permute({0, 2, 3, 1}).reshape({x.size(0), x.size(2) * x.size(3), x.size(1)});
}

// keys[h, i, :] = W_k,h^T q[i, h] / sqrt(d): [H, n, C].
at::Tensor folded_keys(const at::Tensor& q, const at::Tensor& wk, int64_t num_heads) {
  const int64_t n = q.size(0), channels = q.size(1), head_dim = channels / num_heads;
  const at::Tensor q_heads = q.mul(1.0 / std::sqrt(static_cast<double>(head_dim)))
                                 .view({n, num_heads, head_dim})
                                 .transpose(0, 1);                           // [H, n, d]
  return at::bmm(q_heads, wk.view({num_heads, head_dim, channels}));     // [H, n, C]
}

}  // namespace

at::Tensor prompted_attn_pool_forward(
    const at::Tensor& x, const at::Tensor& positional_embedding, const std::optional<at::Tensor>& prompt,
    const at::Tensor& q_proj_weight, const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight,
    const at::Tensor& v_proj_weight, const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight,
    const at::Tensor& c_proj_bias, int64_t num_heads, AttendFn attend) {
  check_inputs(x, positional_embedding, prompt, q_proj_weight, q_proj_bias, k_proj_weight, v_proj_weight,
               v_proj_bias, c_proj_weight, num_heads);
  const int64_t num = x.size(0), channels = x.size(1), head_dim = channels / num_heads;
  at::Tensor out = at::empty({num, c_proj_weight.size(0)}, x.options());
  if (num == 0) return out;

  const auto acc = acc_type(x.scalar_type());
  const at::Tensor pos = effective_positional_embedding(positional_embedding, prompt).contiguous();
  const at::Tensor tokens = as_tokens(x);
  const at::Tensor wv_heads_t = v_proj_weight.view({num_heads, head_dim, channels}).transpose(1, 2);  // [H, C, d]
  const int64_t step = chunk_size(num_heads, channels);
  for (int64_t i0 = 0; i0 < num; i0 += step) {
    const int64_t n = std::min(step, num - i0);
    const at::Tensor xc = tokens.narrow(0, i0, n);  // [n, S*S, C], strided for NCHW x
    const at::Tensor mean = xc.mean(1);                           // [n, C], token 0 before pos
    const at::Tensor q = at::linear(mean + pos[0], q_proj_weight, q_proj_bias);
    // Keys in the accumulation type: half-precision logits would quantise the softmax.
    const at::Tensor keys = folded_keys(q, k_proj_weight, num_heads).to(acc).contiguous();  // [H, n, C]
    at::Tensor z = at::empty({num_heads, n, channels}, x.options());
    attend(keys, xc, mean, pos, z);
    const at::Tensor o = at::bmm(z, wv_heads_t);  // [H, n, d]
    const at::Tensor o_cat = o.transpose(0, 1).reshape({n, channels}) + v_proj_bias;
    out.narrow(0, i0, n).copy_(at::linear(o_cat, c_proj_weight, c_proj_bias));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> prompted_attn_pool_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& positional_embedding,
    const std::optional<at::Tensor>& prompt, const at::Tensor& q_proj_weight,
    const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight, const at::Tensor& v_proj_weight,
    const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight, int64_t num_heads) {
  check_inputs(x, positional_embedding, prompt, q_proj_weight, q_proj_bias, k_proj_weight, v_proj_weight,
               v_proj_bias, c_proj_weight, num_heads);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == c_proj_weight.size(0),
              "prompted_attn_pool: grad must be Tensor[", x.size(0), ", ", c_proj_weight.size(0), "], got ",
              grad.sizes());
  const int64_t num = x.size(0), channels = x.size(1), spatial = x.size(2) * x.size(3);
  const int64_t head_dim = channels / num_heads;
  // Everything in the accumulation type; the forward is recomputed chunk by chunk.
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor pos = effective_positional_embedding(positional_embedding, prompt).to(acc);
  const at::Tensor wq = q_proj_weight.to(acc), bq = q_proj_bias.to(acc), wk = k_proj_weight.to(acc);
  const at::Tensor wv_heads = v_proj_weight.to(acc).view({num_heads, head_dim, channels});  // [H, d, C]
  const at::Tensor wc = c_proj_weight.to(acc);
  const at::Tensor wk_heads_t = wk.view({num_heads, head_dim, channels}).transpose(1, 2);  // [H, C, d]
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));  // keys = scale * W_k^T q

  const at::Tensor tokens = as_tokens(x);
  at::Tensor grad_tokens = at::empty({num, spatial, channels}, x.options().dtype(acc));
  at::Tensor grad_pos = at::zeros_like(pos);
  const int64_t step = chunk_size(num_heads, channels);
  for (int64_t i0 = 0; i0 < num; i0 += step) {
    const int64_t n = std::min(step, num - i0);
    const at::Tensor xc = tokens.narrow(0, i0, n).to(acc);
    const at::Tensor mean = xc.mean(1);
    const at::Tensor t = at::cat({mean.unsqueeze(1), xc}, 1) + pos;           // [n, L, C] tokens
    const at::Tensor keys = folded_keys(at::linear(t.select(1, 0), wq, bq), wk, num_heads).transpose(0, 1);  // [n, H, C]
    const at::Tensor attn = at::softmax(at::bmm(keys, t.transpose(1, 2)), -1);           // [n, H, L]

    const at::Tensor g_o = at::matmul(grad.narrow(0, i0, n).to(acc), wc);                 // [n, C]
    const at::Tensor g_z = at::bmm(g_o.view({n, num_heads, head_dim}).transpose(0, 1), wv_heads)
                               .transpose(0, 1);                                           // [n, H, C]
    const at::Tensor g_attn = at::bmm(g_z, t.transpose(1, 2));                            // [n, H, L]
    const at::Tensor g_logits = attn * (g_attn - (attn * g_attn).sum(-1, /*keepdim=*/true));
    at::Tensor g_t = at::bmm(attn.transpose(1, 2), g_z) + at::bmm(g_logits.transpose(1, 2), keys);  // [n, L, C]
    const at::Tensor g_keys = at::bmm(g_logits, t);                                        // [n, H, C]
    const at::Tensor g_q = at::bmm(g_keys.transpose(0, 1), wk_heads_t).transpose(0, 1).reshape({n, channels}) * scale;
    g_t.select(1, 0).add_(at::matmul(g_q, wq));  // token 0 is also the query
    grad_pos.add_(g_t.sum(0));
    // x_j feeds token j and, through the mean, token 0.
    grad_tokens.narrow(0, i0, n).copy_(g_t.narrow(1, 1, spatial) + g_t.narrow(1, 0, 1) / spatial);
  }
  const at::Tensor grad_x =
      grad_tokens.view({num, x.size(2), x.size(3), channels}).permute({0, 3, 1, 2}).to(x.scalar_type());
  at::Tensor grad_prompt = at::empty({0}, positional_embedding.options());
  if (prompt.has_value()) {
    grad_prompt = (grad_pos.narrow(0, 1, spatial) + grad_pos.narrow(0, 0, 1) / spatial)
                      .view(prompt->sizes())
                      .to(prompt->scalar_type());
  }
  return {grad_x, grad_pos.to(positional_embedding.scalar_type()), grad_prompt};
}

TORCH_LIBRARY_IMPL(cora, CPU, m) {
  m.impl("_prompted_attn_pool_backward", &prompted_attn_pool_backward);
}
TORCH_LIBRARY_IMPL(cora, CUDA, m) {
  m.impl("_prompted_attn_pool_backward", &prompted_attn_pool_backward);
}

}  // namespace cora
