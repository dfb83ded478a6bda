"""Model FLOPs per trained token, counted from a model's config, and MFU.

Convention (PaLM's "model FLOPs", as Megatron reports it): every matrix product the model's
definition needs, 2 FLOPs per multiply-add, times 3 for training (forward, then backward for the
activations and for the weights). Nothing is counted for recomputation, norms, activations,
softmax, the embedding lookup or the optimizer.

    flops/token = 6 · N_matmul  +  3 · (attention + SSD forward FLOPs per token)

- N_matmul: the weights used by matrix products for one token: every linear layer, the output
  layer (lm head), and for a mixture of experts only the experts a token is routed to (its
  `num_experts_per_tok` routed experts, the shared experts and the router).
- attention, per full-attention layer: 4 · s · heads · head_dim (Q·Kᵀ and softmax·V over the whole
  sequence of length s; the causal half is not subtracted, as in PaLM's and Megatron's count).
- Mamba-2 SSD, per Mamba layer (the chunked scan, chunk length Q, H heads of P channels, state N):
  2 · H · (Q·N + Q·P + 2·N·P): C·Bᵀ and its product with X inside a chunk, the chunk's state and
  the output read from the states. The depthwise convolution (conv_dim · kernel) is added too.

MFU = tokens/s · flops/token / peak FLOP/s, the peak being the bf16 matrix-product rate measured
on the same card (bench/gpu_recipes.py measures it), not the datasheet's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Count:
    #: Weights of the matrix products one token goes through (routed experts: only the active ones).
    matmul_params: int
    #: Forward FLOPs per token that are not weight products: attention scores/context, SSD scan, conv.
    sequence_flops: float
    #: Every parameter of the model (embedding, norms and idle experts included).
    total_params: int

    @property
    def flops_per_token(self) -> float:
        return 6.0 * self.matmul_params + 3.0 * self.sequence_flops


# --- NemotronH (transformers' NemotronHConfig fields, as in a recipe's `model:` block) -------------

NEMOTRON_H_DEFAULTS: dict[str, Any] = {
    "num_key_value_heads": None,  # None: as many as num_attention_heads
    "head_dim": None,  # None: hidden_size // num_attention_heads
    "n_groups": 8,
    "conv_kernel": 4,
    "use_conv_bias": True,
    "mamba_proj_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "tie_word_embeddings": False,
}


def nemotron_h(model: Mapping[str, Any], vocab_size: int, seq_length: int, chunk_size: int = 128) -> Count:
    """The count for a NemotronH built from `model` (the recipe's `model:` block) and a vocabulary."""
    c = {**NEMOTRON_H_DEFAULTS, **dict(model)}
    d = int(c["hidden_size"])
    heads = int(c["num_attention_heads"])
    kv_heads = int(c["num_key_value_heads"] or heads)
    head_dim = int(c["head_dim"] or d // heads)
    matmul, sequence, other = 0, 0.0, 0
    for kind in c["layers_block_type"]:
        other += d  # the block's norm
        if kind in ("mamba", "linear_attention"):
            h, p, n, g = int(c["mamba_num_heads"]), int(c["mamba_head_dim"]), int(c["ssm_state_size"]), int(c["n_groups"])
            inner = h * p
            conv_dim = inner + 2 * g * n
            in_proj = d * (2 * inner + 2 * g * n + h)
            out_proj = inner * d
            matmul += in_proj + out_proj
            bias = (2 * inner + 2 * g * n + h + d) if c["mamba_proj_bias"] else 0
            conv = conv_dim * int(c["conv_kernel"]) + (conv_dim if c["use_conv_bias"] else 0)
            other += bias + conv + 3 * h + inner  # conv, dt_bias, A_log, D, the gated norm
            sequence += 2 * h * (chunk_size * n + chunk_size * p + 2 * n * p) + 2 * conv_dim * int(c["conv_kernel"])
        elif kind in ("attention", "full_attention"):
            q, kv = heads * head_dim, kv_heads * head_dim
            matmul += d * q + 2 * d * kv + q * d
            other += (q + 2 * kv + d) if c["attention_bias"] else 0
            sequence += 4 * seq_length * heads * head_dim
        elif kind == "mlp":
            ff = int(c["intermediate_size"])
            matmul += 2 * d * ff
            other += (ff + d) if c["mlp_bias"] else 0
        elif kind == "moe":
            experts, active = int(c["n_routed_experts"]), int(c["num_experts_per_tok"])
            ff, shared_ff = int(c["moe_intermediate_size"]), int(c["moe_shared_expert_intermediate_size"])
            shared = int(c["n_shared_experts"]) * 2 * d * shared_ff if c["n_shared_experts"] else 0
            router = experts * d
            matmul += active * 2 * d * ff + shared + router
            other += (experts - active) * 2 * d * ff + _moe_router_extras(c, experts)
        else:
            raise ValueError(f"unknown NemotronH block type {kind!r}")
    lm_head = vocab_size * d
    embedding = 0 if c["tie_word_embeddings"] else vocab_size * d
    matmul += lm_head
    total = matmul + other + embedding + d  # + the final norm
    return Count(matmul_params=matmul, sequence_flops=sequence, total_params=total)


def _moe_router_extras(c: Mapping[str, Any], experts: int) -> int:
    """Parameters of the router besides its weight (transformers' NemotronH router has none)."""
    return 0


# --- Megatron-core GPT (bench/megatron_gpt_loop.py's shape) -----------------------------------------


def gpt(shape: Mapping[str, Any], vocab_size: int, seq_length: int) -> Count:
    """A pre-norm GPT without biases: QKV/out projections, an MLP (gated or not), untied lm head.

    `shape` keys: num_layers, hidden_size, num_attention_heads, num_query_groups (default: heads),
    kv_channels (head dim; default hidden/heads), ffn_hidden_size, gated_linear_unit (default False).
    """
    layers, d = int(shape["num_layers"]), int(shape["hidden_size"])
    heads = int(shape["num_attention_heads"])
    groups = int(shape.get("num_query_groups") or heads)
    head_dim = int(shape.get("kv_channels") or d // heads)
    ff = int(shape["ffn_hidden_size"])
    q, kv = heads * head_dim, groups * head_dim
    attention = d * (q + 2 * kv) + q * d
    mlp = (3 if shape.get("gated_linear_unit") else 2) * d * ff
    matmul = layers * (attention + mlp) + vocab_size * d
    norms = layers * 2 * d + d
    total = matmul + norms + vocab_size * d  # + the input embedding
    return Count(matmul_params=matmul, sequence_flops=layers * 4.0 * seq_length * q, total_params=total)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the fraction of the peak rate the counted FLOPs ran at."""
    return tokens_per_s * flops_per_token / peak_flops
