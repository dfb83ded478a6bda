# /// script
# requires-python = ">=3.10"
# [tool.runspec]
# name = "nano3/convert/megatron"
# image = "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
# launch = "direct"
# ///
"""Export a checkpoint_megatron artifact to an HF checkpoint with Megatron-Bridge's AutoBridge (backend megatron).

The artifact's hf_reference/ (config.json, tokenizer, modeling code) tells AutoBridge which HF
architecture and shape the Megatron tensors map to; the export is written as safetensors with the
config's `dtype` and the tokenizer beside it: the same checkpoint_hf the hf backend's convert
publishes, which eval and deployment load with transformers or vLLM. The export itself is
recipes.nano3.megatron_support.export_to_hf, which the RL stage uses too.
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
    dtype = str(ctx.config.get("dtype", "bfloat16"))
    print(f"convert: {model / mb.MEGATRON_DIR} -> HF ({dtype})", flush=True)
    export = mb.export_to_hf(model, ctx.work_dir / "export", dtype=dtype)
    for item in export.iterdir():
        shutil.move(str(item), ctx.output_dir / item.name)
    runtime.finish(ctx, "checkpoint_hf", metadata={"dtype": dtype, "exported_with": "AutoBridge"})


if __name__ == "__main__":
    main()
