"""The nano3 pipeline's stages, declared as data over one generic submit task.

Adding a stage is one row here plus its recipe folder. Artifact types are checked against one
list so a typo in a declaration fails at import, not halfway through a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPES_ROOT = PROJECT_ROOT / "recipes" / "nano3"

#: The artifact types stages exchange (the seeds' list, plus what our stages add).
ARTIFACT_TYPES = (
    "raw_jsonl",
    "training_jsonl",
    "binidx",
    "packed_parquet",
    "tokenizer",
    "checkpoint_hf",
    "checkpoint_megatron",
    "eval_results",
    # What the env/env_toml step writes: an env.toml of execution profiles.
    "env_toml",
)

Launcher = Literal["direct", "torchrun", "ray"]


@dataclass(frozen=True)
class Stage:
    id: str
    #: Folder under recipes/nano3/ holding the script and config/{tiny,default}.yaml.
    folder: str
    script: str
    #: input name (a key of the config's `run:` block naming an artifact) → artifact type.
    consumes: tuple[tuple[str, str], ...]
    produces: str
    #: The artifact name it publishes (the config's run.* inputs refer to these).
    artifact: str
    launcher: Launcher = "direct"
    description: str = ""
    #: Where `folder` lives; tests declare stages of their own elsewhere in the project.
    root: Path = RECIPES_ROOT

    def __post_init__(self) -> None:
        for kind in (*(t for _, t in self.consumes), self.produces):
            if kind not in ARTIFACT_TYPES:
                raise ValueError(f"stage {self.id}: unknown artifact type {kind!r}")

    @property
    def recipe_dir(self) -> Path:
        return self.root / self.folder

    @property
    def config_dir(self) -> Path:
        return self.recipe_dir / "config"

    @property
    def script_path(self) -> Path:
        return self.recipe_dir / self.script

    @property
    def script_relpath(self) -> str:
        """The script relative to the project root: where it sits inside a packaged job too."""
        return self.script_path.relative_to(PROJECT_ROOT).as_posix()

    @property
    def slug(self) -> str:
        return self.id.replace("/", "-")


STAGES: tuple[Stage, ...] = (
    Stage(
        id="data_prep/pretrain",
        folder="data_prep/pretrain",
        script="prep.py",
        consumes=(),
        produces="binidx",
        artifact="nano3-pretrain-data",
        description="Tokenizer training and pretraining corpus → megatron .bin/.idx with a blend file.",
    ),
    Stage(
        id="data_prep/sft",
        folder="data_prep/sft",
        script="prep.py",
        consumes=(),
        produces="training_jsonl",
        artifact="nano3-sft-data",
        description="Chat-format SFT data with held-out problems.",
    ),
    Stage(
        id="data_prep/rl",
        folder="data_prep/rl",
        script="prep.py",
        consumes=(),
        produces="training_jsonl",
        artifact="nano3-rl-data",
        description="Prompts with verifiable answers for RL.",
    ),
    Stage(
        id="pretrain",
        folder="pretrain",
        script="train.py",
        consumes=(("data", "binidx"),),
        produces="checkpoint_hf",
        artifact="nano3-pretrain-model",
        launcher="torchrun",
        description="Pretraining a NemotronH model on the .bin/.idx corpus.",
    ),
    Stage(
        id="sft",
        folder="sft",
        script="train.py",
        consumes=(("data", "training_jsonl"), ("model", "checkpoint_hf")),
        produces="checkpoint_hf",
        artifact="nano3-sft-model",
        launcher="torchrun",
        description="Supervised fine-tuning from the pretrained checkpoint.",
    ),
    Stage(
        id="rl",
        folder="rl",
        script="train.py",
        consumes=(("data", "training_jsonl"), ("model", "checkpoint_hf")),
        produces="checkpoint_hf",
        artifact="nano3-rl-model",
        description="GRPO with verifiable rewards from the SFT checkpoint.",
    ),
    Stage(
        id="convert",
        folder="convert",
        script="convert.py",
        consumes=(("model", "checkpoint_hf"),),
        produces="checkpoint_hf",
        artifact="nano3-model-hf",
        description="The deployable export (bf16 safetensors), logits checked against the source.",
    ),
    Stage(
        id="eval",
        folder="eval",
        script="evaluate.py",
        consumes=(
            ("model", "checkpoint_hf"),
            ("baseline", "checkpoint_hf"),
            ("data", "training_jsonl"),
            ("corpus", "binidx"),
        ),
        produces="eval_results",
        artifact="nano3-eval",
        description="Held-out evaluation of the exported model against the pretrained baseline.",
    ),
)

STAGES_BY_ID = {stage.id: stage for stage in STAGES}
