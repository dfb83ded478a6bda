"""A megatron-core GPT pretraining step loop on one device, over a nano3-pretrain-data artifact.

    python bench/megatron_gpt_loop.py --data DIR --shape 0p5b --steps 40 --out result.json

Megatron-core's own GPTModel with the local layer spec (`get_gpt_layer_local_spec`: no Transformer
Engine), tensor/pipeline parallel size 1 in a one-rank process group (nccl on CUDA, gloo on CPU).
Training windows are drawn from the artifact's .bin/.idx exactly as the hf pretrain recipe draws
them (recipes/nano3/pretrain/train.py). Weights stay fp32 and the step runs under bf16 autocast on
CUDA (fp32 on CPU), as the hf backend does, with torch's fused AdamW.

`--core-attention sdpa` (the default) swaps megatron's unfused DotProductAttention for
`torch.nn.functional.scaled_dot_product_attention` (flash attention on CUDA), through the layer
spec; `local` keeps megatron's. Prints one JSON line with tokens/s (steady state: the first
`--warmup` steps are not timed), the first and last losses and the model's parameter count, and
writes it to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

import torch  # noqa: E402

#: Shapes: megatron TransformerConfig fields (bench/flops.py's `gpt` counts them).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "ffn_hidden_size": 256},
    # ≈ 0.47B parameters with a 4,096-token vocabulary (the data prep's).
    "0p5b": {"num_layers": 16, "hidden_size": 1536, "num_attention_heads": 12, "ffn_hidden_size": 6144},
}


class SDPAttention(torch.nn.Module):
    """Megatron's core-attention interface over torch's fused scaled-dot-product attention.

    In: query [sq, b, heads, dim], key/value [sk, b, groups, dim]; out: [sq, b, heads·dim].
    Causal only (the GPT spec's mask type); the attention mask megatron passes is ignored.
    """

    def __init__(self, config: Any, layer_number: int, attn_mask_type: Any, attention_type: str = "self",
                 **_: Any) -> None:
        super().__init__()
        self.config = config

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                attn_mask_type: Any = None, attention_bias: Any = None, packed_seq_params: Any = None) -> torch.Tensor:
        assert packed_seq_params is None and attention_bias is None
        sq, b, heads, dim = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, dim]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=k.shape[1] != heads
        )
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_rank(device: torch.device) -> None:
    from megatron.core import parallel_state

    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        torch.distributed.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", world_size=1, rank=0,
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)


def build_model(shape: dict[str, Any], vocab_size: int, seq_length: int, core_attention: str,
                device: torch.device) -> torch.nn.Module:
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(
        **shape,
        normalization="RMSNorm",
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        pipeline_dtype=torch.float32,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
    )
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if core_attention == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    if device.type == "cuda":
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=seq_length,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=False,
        # Megatron's RoPE keeps its frequencies on the current CUDA device: CPU runs use learned positions.
        position_embedding_type="rope" if device.type == "cuda" else "learned_absolute",
    )
    return model.to(device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a nano3-pretrain-data artifact folder")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0p5b")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--core-attention", choices=["sdpa", "local"], default="sdpa")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="on CUDA; CPU runs fp32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import numpy as np

    from recipes.nano3.text_windows import TokenStream, WindowSampler, read_blend

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" and args.precision == "bf16" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(1234)
    init_single_rank(device)
    vocab_size = len(json.loads((args.data / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    vocab_size = max(vocab_size, _added_tokens_max(args.data) + 1)
    vocab_size = math.ceil(vocab_size / 128) * 128  # Megatron pads the vocabulary so the lm head tiles well
    shape = SHAPES[args.shape]
    model = build_model(shape, vocab_size, args.seq_length, args.core_attention, device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01,
                                  fused=device.type == "cuda")
    sampler = WindowSampler([(w, TokenStream(p)) for w, p in read_blend(args.data, "train")], args.seq_length + 1)
    rng = np.random.default_rng(1234)
    positions = torch.arange(args.seq_length, device=device).unsqueeze(0).expand(args.micro_batch_size, -1)
    print(f"megatron-core GPT {args.shape}: {params:,} parameters on {device} ({dtype}), "
          f"core attention {args.core_attention}", flush=True)

    losses: list[float] = []
    timed_tokens, timed_seconds = 0, 0.0
    model.train()
    for step in range(args.steps):
        window = torch.from_numpy(sampler.batch(rng, args.micro_batch_size)).to(device, non_blocking=True)
        tokens, labels = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            per_token = model(tokens, positions, None, labels=labels)  # [b, s] cross-entropy
        loss = per_token.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())  # synchronizes
        if step >= args.warmup:
            timed_seconds += time.perf_counter() - started
            timed_tokens += tokens.numel()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {losses[-1]:.4f}", flush=True)

    head, tail = losses[: min(5, len(losses))], losses[-min(5, len(losses)):]
    result = {
        "path": "megatron-core GPT (local spec)",
        "shape": args.shape,
        "model": {**shape, "normalization": "RMSNorm", "add_bias_linear": False, "core_attention": args.core_attention,
                  "position_embedding": "rope" if device.type == "cuda" else "learned_absolute"},
        "vocab_size": vocab_size,
        "seq_length": args.seq_length,
        "micro_batch_size": args.micro_batch_size,
        "steps": args.steps,
        "parameters": params,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "precision": str(dtype).removeprefix("torch."),
        "tokens_per_s": timed_tokens / timed_seconds if timed_seconds else None,
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    return result


def _added_tokens_max(data: Path) -> int:
    added = json.loads((data / "tokenizer" / "tokenizer.json").read_text()).get("added_tokens") or []
    return max((int(t["id"]) for t in added), default=0)


if __name__ == "__main__":
    main()
