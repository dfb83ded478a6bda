"""The GPU bench (bench/gpu_recipes.py): its FLOPs counting, and its whole path at tiny sizes on CPU.

The GPU run itself needs a CUDA machine; `--cpu-smoke` runs the same steps (data prep, the
megatron-core loop, the pretrain recipe with the 0.5B config, resume, CPU reload, SFT, eval), so a
broken step shows up here first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench import flops  # noqa: E402
from bench.gpu_recipes import steady_tokens_per_s  # noqa: E402

TINY = PROJECT / "recipes/nano3/pretrain/config/tiny.yaml"
GPU_0P5B = PROJECT / "recipes/nano3/pretrain/config/gpu_0p5b.yaml"


def nemotron_h(model_cfg: dict, vocab: int):
    from transformers import NemotronHConfig, NemotronHForCausalLM

    with torch.device("meta"):
        return NemotronHForCausalLM(NemotronHConfig(**model_cfg, vocab_size=vocab))


@pytest.mark.parametrize("config", [TINY, GPU_0P5B], ids=["tiny", "gpu_0p5b"])
def test_nemotron_h_parameters_counted_from_the_config_match_the_model(config: Path) -> None:
    model_cfg = yaml.safe_load(config.read_text())["model"]
    model = nemotron_h(model_cfg, 4096)
    count = flops.nemotron_h(model_cfg, 4096, seq_length=2048)
    assert count.total_params == sum(p.numel() for p in model.parameters())


def test_nemotron_h_matmul_parameters_are_the_active_weights() -> None:
    """Dense layers: every 2-D weight but the embedding. MoE: only the routed experts a token uses."""
    model_cfg = yaml.safe_load(TINY.read_text())["model"]
    model = nemotron_h(model_cfg, 1000)
    weights = {n: p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in n}
    dense = sum(v for n, v in weights.items() if "embeddings" not in n and ".experts." not in n)
    experts = sum(v for n, v in weights.items() if ".experts." in n)
    active = experts * model_cfg["num_experts_per_tok"] // model_cfg["n_routed_experts"]
    assert flops.nemotron_h(model_cfg, 1000, 256).matmul_params == dense + active


def test_flops_per_token_is_6n_plus_the_sequence_terms() -> None:
    shape = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "ffn_hidden_size": 256}
    count = flops.gpt(shape, vocab_size=1000, seq_length=128)
    # per layer: QKV + out 4·64², MLP 2·64·256; lm head 1000·64
    assert count.matmul_params == 2 * (4 * 64 * 64 + 2 * 64 * 256) + 1000 * 64
    # attention: 4·s·heads·head_dim per layer, forward
    assert count.sequence_flops == 2 * 4 * 128 * 64
    assert count.flops_per_token == 6 * count.matmul_params + 3 * count.sequence_flops
    # the attention term grows with the sequence, the weights do not
    longer = flops.gpt(shape, vocab_size=1000, seq_length=256)
    assert longer.matmul_params == count.matmul_params and longer.sequence_flops == 2 * count.sequence_flops
    gated = flops.gpt({**shape, "gated_linear_unit": True}, vocab_size=1000, seq_length=128)
    assert gated.matmul_params - count.matmul_params == 2 * 64 * 256


def test_mfu() -> None:
    assert flops.mfu(tokens_per_s=1000.0, flops_per_token=4e11, peak_flops=1e15) == pytest.approx(0.4)


def test_the_0p5b_shapes_are_half_a_billion_parameters() -> None:
    from bench.megatron_gpt_loop import SHAPES

    model_cfg = yaml.safe_load(GPU_0P5B.read_text())["model"]
    assert 0.45e9 < flops.nemotron_h(model_cfg, 4096, 2048).total_params < 0.55e9
    assert 0.45e9 < flops.gpt(SHAPES["0p5b"], 4096, 2048).total_params < 0.55e9


def test_steady_tokens_per_s_leaves_the_first_interval_out() -> None:
    lines = [{"step": 5, "time": 100.0}, {"step": 10, "time": 101.0}, {"step": 15, "time": 102.0}]
    assert steady_tokens_per_s(lines, tokens_per_step=1000) == pytest.approx(10 * 1000 / 2.0)
    assert steady_tokens_per_s(lines[:1], 1000) is None


def test_sdpa_core_attention_matches_megatrons_causal_attention() -> None:
    """The SDPA core attention the megatron loop uses on GPU computes what megatron's own does."""
    from bench.megatron_gpt_loop import SDPAttention

    torch.manual_seed(0)
    s, b, heads, groups, dim = 16, 2, 4, 2, 8
    q = torch.randn(s, b, heads, dim, dtype=torch.float64)
    k, v = (torch.randn(s, b, groups, dim, dtype=torch.float64) for _ in range(2))
    out = SDPAttention(None, 1, None)(q, k, v, None)
    # reference: causal softmax attention, each group shared by heads // groups query heads
    kr, vr = (t.repeat_interleave(heads // groups, dim=2) for t in (k, v))
    scores = torch.einsum("sbhd,tbhd->bhst", q, kr) / dim**0.5
    scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
    ref = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), vr).reshape(s, b, heads * dim)
    assert out.shape == (s, b, heads * dim)
    assert float((out - ref).norm() / ref.norm()) < 1e-10


def test_a_bf16_checkpoint_reloads_on_cpu_in_fp32(tmp_path: Path) -> None:
    """Train a step under bf16 autocast (the GPU placement's precision, here on CPU), checkpoint,
    and resume into a fresh fp32 CPU model: weights stay fp32, and come back bit for bit."""
    import numpy as np
    from transformers import NemotronHConfig, NemotronHForCausalLM

    from recipes.nano3 import hf_model

    model_cfg = {**yaml.safe_load(TINY.read_text())["model"], "hidden_size": 64, "intermediate_size": 64,
                 "moe_intermediate_size": 64, "moe_shared_expert_intermediate_size": 64}
    train = {"lr": 1e-3, "train_iters": 4}

    def state() -> hf_model.TrainingState:
        torch.manual_seed(0)
        model = NemotronHForCausalLM(NemotronHConfig(**model_cfg, vocab_size=100))
        hf_model.set_mamba_chunk_size(model, 16)
        return hf_model.TrainingState(model, *hf_model.make_optimizer(model, train), np.random.default_rng(0))

    trained = state()
    ids = torch.randint(0, 100, (2, 32))
    bf16 = hf_model.Placement(torch.device("cpu"), torch.bfloat16)
    loss = hf_model.train_step(trained, {"input_ids": ids, "labels": ids}, bf16, clip_grad=1.0)["loss"]
    assert np.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trained.model.parameters())
    trained.step, trained.extra = 1, {"note": 1}
    hf_model.save_checkpoint(tmp_path, trained)

    resumed = state()
    assert hf_model.resume(tmp_path, resumed) and resumed.step == 1
    for a, b in zip(trained.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    moments = [v for s in resumed.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert moments and all(v.device.type == "cpu" for v in moments)


@pytest.mark.timeout(420)
def test_cpu_smoke_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(PROJECT / "bench/gpu_recipes.py"), "--cpu-smoke", "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=PROJECT, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert results["failed"] == []
    assert set(steps) == {"peak", "data_prep_pretrain", "data_prep_sft", "megatron", "pretrain_0p5b",
                          "pretrain_tiny_resume", "cpu_reload", "sft", "eval"}
    for path in ("megatron", "pretrain_0p5b"):
        assert steps[path]["tokens_per_s"] > 0 and steps[path]["mfu"] > 0  # a CPU "peak" is noisy: no upper bound
        assert steps[path]["parameters_counted"] == steps[path]["parameters"]
        assert steps[path]["loss_last"] < steps[path]["loss_first"]
    assert steps["pretrain_tiny_resume"]["resumed"]
    assert steps["cpu_reload"]["max_abs_diff_checkpoint_vs_model"] == 0.0
    # what comes back from the GPU machine: at most 8 files
    assert sorted(p.name for p in out.iterdir()) == ["jobs.log", "megatron.json", "results.json", "table.md"]
    assert "### pretrain_0p5b" in (out / "jobs.log").read_text()
    table = (out / "table.md").read_text()
    assert "megatron-core GPT" in table and "hf NemotronH" in table
