"""The nano3 pipeline's stages, declared as data over one generic submit task.

This table is the one declaration of a stage: its recipe folder, scripts, launchers, the artifact
types it consumes and produces, the artifact it publishes, its description and its headline
metrics. The steps catalog (tasks/step_catalog.py) and the run summary (flows/summary.py) read
them from here; docs/architecture.md shows where a stage fits. Adding a stage is one row here plus
its recipe folder. Artifact types are checked against one list so a typo in a declaration fails
at import, not halfway through a run.

A stage runs on one of two runtime backends: `hf` (transformers, TRL, lm-eval) anywhere, CPU
included; `megatron` (Megatron-Bridge, NeMo-RL, NeMo-Evaluator) on GPU clusters in the NeMo
containers. Each backend is a Runtime: its script in the stage folder, its launcher, the
artifact types it consumes and produces (a Megatron-Bridge pretrain produces a
checkpoint_megatron, its HF twin a checkpoint_hf) and the metrics its manifest reports that a
run summary shows. The config's `run.backend` picks the runtime (tasks.job_config); the row's
own script/launcher/types/metrics are its first backend's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPES_ROOT = PROJECT_ROOT / "recipes" / "nano3"
#: What every node of a `ray` stage runs before the stage's script where NeMo-Run's Ray job cannot
#: (it starts Ray there): part of what such a job may run, so of its cache key too.
RAY_CLUSTER_SCRIPT = "recipes/nano3/ray_cluster.py"

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
#: The runtime backends a config's `run.backend` can name.
BACKENDS = ("hf", "megatron")


def _check_types(stage_id: str, consumes: tuple[tuple[str, str], ...], produces: str) -> None:
    for kind in (*(t for _, t in consumes), produces):
        if kind not in ARTIFACT_TYPES:
            raise ValueError(f"stage {stage_id}: unknown artifact type {kind!r}")


@dataclass(frozen=True)
class Runtime:
    """How one backend runs a stage: the script (in the stage folder), its launcher, its types.

    `ray`: the job is a Ray cluster over its nodes with the script as the Ray driver on the head
    node: NeMo-Run's Ray job for the executor, else recipes/nano3/ray_cluster.py on every node
    (tasks.ray_jobs).
    """

    script: str
    consumes: tuple[tuple[str, str], ...]
    produces: str
    launcher: Launcher = "direct"
    #: The headline metrics of the script's manifest, in the order a run summary shows them.
    key_metrics: tuple[str, ...] = ()


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
    #: The backend that script/consumes/produces/launcher above belong to.
    backend: str = "hf"
    #: The other backends' runtimes: (backend, Runtime) pairs.
    alternatives: tuple[tuple[str, Runtime], ...] = ()
    #: The headline metrics `script` reports in its manifest, in the order a run summary shows them.
    key_metrics: tuple[str, ...] = ()
    #: Config sections that may name a data source (`source: files`, tasks.data_sources): its
    #: snapshot enters the key as an input.
    sources: tuple[str, ...] = ()
    #: Inputs the config may leave unset, or whose alias may name nothing yet (the model in service).
    optional: tuple[str, ...] = ()
    #: Optional inputs that, once the config names them, must exist: a run that went on without
    #: them would be another run than the one asked for (SFT's replayed pretraining text).
    required_if_set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_types(self.id, self.consumes, self.produces)
        for backend, runtime in ((self.backend, None), *self.alternatives):
            if backend not in BACKENDS:
                raise ValueError(f"stage {self.id}: unknown backend {backend!r} (backends: {', '.join(BACKENDS)})")
            if runtime is not None:
                _check_types(self.id, runtime.consumes, runtime.produces)

    def may_be_absent(self, name: str) -> bool:
        """Whether input `name`, named by the config, may name nothing yet (the stage runs without it)."""
        return name in self.optional and name not in self.required_if_set

    @property
    def runtimes(self) -> dict[str, Runtime]:
        """Every backend this stage runs on → how."""
        own = Runtime(
            script=self.script,
            consumes=self.consumes,
            produces=self.produces,
            launcher=self.launcher,
            key_metrics=self.key_metrics,
        )
        return {self.backend: own, **dict(self.alternatives)}

    def headline_metrics(self, produced: str | None = None) -> tuple[str, ...]:
        """The key metrics of the runtimes that produce `produced` (every runtime's when None), in
        order, once each: a run summary knows the stage and its artifact's type, not the backend."""
        names: dict[str, None] = {}
        for runtime in self.runtimes.values():
            if produced is None or runtime.produces == produced:
                names.update(dict.fromkeys(runtime.key_metrics))
        return tuple(names)

    def for_backend(self, backend: str) -> Stage:
        """This stage as `backend` runs it; KeyError where it has no such runtime."""
        if backend == self.backend:
            return self
        runtimes = self.runtimes
        runtime = runtimes.pop(backend)
        return replace(
            self,
            backend=backend,
            script=runtime.script,
            consumes=runtime.consumes,
            produces=runtime.produces,
            launcher=runtime.launcher,
            key_metrics=runtime.key_metrics,
            alternatives=tuple(runtimes.items()),
        )

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


def _data_prep(
    kind: str,
    produces: str,
    description: str,
    key_metrics: tuple[str, ...],
    at_scale: Launcher = "direct",
    sources: tuple[str, ...] = (),
    consumes: tuple[tuple[str, str], ...] = (),
    optional: tuple[str, ...] = (),
) -> Stage:
    """A data prep stage: one script for both backends. `at_scale` is backend megatron's launcher:
    `ray` starts a Ray cluster over the job's nodes and the recipe fans its encoding out on it."""
    return Stage(
        id=f"data_prep/{kind}",
        folder=f"data_prep/{kind}",
        script="prep.py",
        consumes=consumes,
        produces=produces,
        artifact=f"nano3-{kind}-data",
        description=description,
        key_metrics=key_metrics,
        alternatives=(
            ("megatron", Runtime("prep.py", consumes, produces, launcher=at_scale, key_metrics=key_metrics)),
        ),
        sources=sources,
        optional=optional,
    )


#: What SFT and RL read on backend megatron: chat data and the previous stage's Megatron checkpoint.
MEGATRON_POST_TRAINING_INPUTS = (("data", "training_jsonl"), ("model", "checkpoint_megatron"))
#: What the hf SFT and RL scripts report: held-out exact match before and after training.
EXACT_MATCH_GAIN = ("exact_match_start", "exact_match")

STAGES: tuple[Stage, ...] = (
    _data_prep(
        "pretrain",
        "binidx",
        "Tokenizer training and pretraining corpus → megatron .bin/.idx with a blend file.",
        ("num_tokens_train", "vocab_size"),
        at_scale="ray",
        sources=("corpus",),
        # A warm start keeps the vocabulary of the model it continues from (run.tokenizer_from).
        consumes=(("tokenizer_from", "checkpoint_hf"),),
        optional=("tokenizer_from",),
    ),
    _data_prep("sft", "training_jsonl", "Chat-format SFT data with held-out problems.", ("train_examples", "valid_examples")),
    _data_prep("rl", "training_jsonl", "Prompts with verifiable answers for RL.", ("train_prompts", "valid_prompts")),
    Stage(
        id="pretrain",
        folder="pretrain",
        script="train.py",
        # init_from: a warm start from that model (the one in service) instead of from scratch.
        consumes=(("data", "binidx"), ("init_from", "checkpoint_hf")),
        optional=("init_from",),
        produces="checkpoint_hf",
        artifact="nano3-pretrain-model",
        launcher="torchrun",
        description="Pretraining a NemotronH model on the .bin/.idx corpus.",
        key_metrics=("valid_loss", "valid_perplexity"),
        alternatives=(
            (
                "megatron",
                Runtime("train_megatron.py", (("data", "binidx"),), "checkpoint_megatron", "torchrun", ("iterations",)),
            ),
        ),
    ),
    Stage(
        id="sft",
        folder="sft",
        script="train.py",
        # corpus: the pretraining data, replayed beside the chats so the model keeps its language.
        consumes=(("data", "training_jsonl"), ("model", "checkpoint_hf"), ("corpus", "binidx")),
        optional=("corpus",),
        required_if_set=("corpus",),
        produces="checkpoint_hf",
        artifact="nano3-sft-model",
        launcher="torchrun",
        description="Supervised fine-tuning from the pretrained checkpoint.",
        # Right sums (whatever their format), the replies as the verifier wants them, the text kept.
        key_metrics=("exact_match_number", "exact_match", "text_loss"),
        alternatives=(
            (
                "megatron",
                Runtime(
                    "train_megatron.py", MEGATRON_POST_TRAINING_INPUTS, "checkpoint_megatron", "torchrun", ("iterations",)
                ),
            ),
        ),
    ),
    Stage(
        id="rl",
        folder="rl",
        script="train.py",
        consumes=(("data", "training_jsonl"), ("model", "checkpoint_hf")),
        produces="checkpoint_hf",
        artifact="nano3-rl-model",
        description="GRPO with verifiable rewards from the SFT checkpoint.",
        key_metrics=EXACT_MATCH_GAIN,
        alternatives=(
            (
                "megatron",
                Runtime(
                    "train_megatron.py",
                    MEGATRON_POST_TRAINING_INPUTS,
                    "checkpoint_megatron",
                    "ray",
                    ("steps", "iteration"),
                ),
            ),
        ),
    ),
    Stage(
        id="convert",
        folder="convert",
        script="convert.py",
        consumes=(("model", "checkpoint_hf"),),
        produces="checkpoint_hf",
        artifact="nano3-model-hf",
        description="The deployable export (bf16 safetensors), logits checked against the source.",
        key_metrics=("max_abs_logit_diff",),
        # The AutoBridge export reports no metrics (its logits are not compared).
        alternatives=(("megatron", Runtime("convert_megatron.py", (("model", "checkpoint_megatron"),), "checkpoint_hf")),),
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
            # The run's other checkpoints, for the ladder pretrained → SFT → RL → export.
            ("sft", "checkpoint_hf"),
            ("rl", "checkpoint_hf"),
            # The model in service, evaluated on the same data for the promotion gate (tasks.gate).
            ("production", "checkpoint_hf"),
        ),
        optional=("sft", "rl", "production"),
        produces="eval_results",
        artifact="nano3-eval",
        description="Every checkpoint of the run (pretrained, SFT, RL, export) on the same held-out tasks.",
        key_metrics=("exact_match", "baseline_exact_match", "bits_per_byte", "baseline_bits_per_byte"),
        alternatives=(
            (
                "megatron",
                # No baseline: the megatron pretrain's output is a Megatron checkpoint, not an HF model.
                Runtime(
                    "evaluate_megatron.py",
                    (("model", "checkpoint_hf"), ("data", "training_jsonl"), ("corpus", "binidx")),
                    "eval_results",
                    key_metrics=("exact_match", "bits_per_byte"),
                ),
            ),
        ),
    ),
)

STAGES_BY_ID = {stage.id: stage for stage in STAGES}
