# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/convert/megatron"
# image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
# launch = "direct"
# ///
"""Export a checkpoint_megatron artifact to an HF checkpoint with Megatron-Bridge's AutoBridge (backend megatron).

The artifact's hf_reference/ (config.json and tokenizer) tells AutoBridge which HF architecture
and shape the Megatron tensors map to; the export is written as safetensors in the config's
`dtype`, with the tokenizer beside it: the same checkpoint_hf the hf backend's convert publishes,
which eval and deployment load with transformers or vLLM.
"""

from __future__ import annotations

import shutil

from recipes.nano3 import megatron_support as mb
from recipes.nano3 import runtime


def main() -> None:
    mb.require("megatron.bridge", needs="Megatron-Bridge (AutoBridge)", container=mb.NEMO_CONTAINER)
    ctx = runtime.start()
    model = ctx.input_path("model")
    mb.check_megatron_input(model)

    import torch
    from megatron.bridge import AutoBridge
    from transformers import AutoConfig

    reference = model / mb.HF_REFERENCE_DIR
    hf_config = AutoConfig.from_pretrained(str(reference), trust_remote_code=True)
    hf_config.torch_dtype = getattr(torch, str(ctx.config.get("dtype", "bfloat16")))
    bridge = AutoBridge.from_hf_config(hf_config)
    staging = ctx.work_dir / "export"
    shutil.rmtree(staging, ignore_errors=True)
    print(f"convert: {model / mb.MEGATRON_DIR} -> HF ({hf_config.model_type}, {hf_config.torch_dtype})", flush=True)
    bridge.export_ckpt(str(model / mb.MEGATRON_DIR), str(staging))
    for item in reference.iterdir():  # the tokenizer travels with the weights
        if not (staging / item.name).exists():
            shutil.copy2(item, staging / item.name)
    for item in staging.iterdir():
        shutil.move(str(item), ctx.output_dir / item.name)
    runtime.finish(ctx, "checkpoint_hf", metadata={"dtype": str(ctx.config.get("dtype", "bfloat16")), "exported_with": "AutoBridge"})


if __name__ == "__main__":
    main()
