"""The fast paths stay fast: what each command imports (nemo_run alone costs 1.5-3 s on 2 cores)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.nemo_run_for_planning import RENDERED_BY, STANDABLE
from tests.conftest import PROJECT, write_env

HEAVY = ("nemo_run", "prefect", "torch", "chardet", "omegaconf", "fsspec", "leptonai", "networkx.algorithms")
PROBE = f"""
import sys
from flows.cli import app
try:
    app(sys.argv[1:], prog_name="nemotron")
except SystemExit as exit:
    code = exit.code
print("LOADED=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
executors = [n for n, m in sys.modules.items() if n.startswith("nemo_run.core.execution.") and getattr(m, "__file__", None)]
print("EXECUTORS=" + ",".join(sorted(n.rpartition(".")[2] for n in executors)), file=sys.stderr)
sys.exit(code)
"""


def probe(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, set[str]]:
    """The command in a fresh process: which of HEAVY it imported (LOADED) and which of NeMo-Run's
    executor modules it really imported, not as a stand-in (EXECUTORS)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(PROJECT), **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    found = {}
    for key in ("LOADED", "EXECUTORS"):
        line = next(line for line in proc.stderr.splitlines() if line.startswith(f"{key}="))
        found[key] = set(filter(None, line.removeprefix(f"{key}=").split(",")))
    return found


def loaded(args: list[str], cwd: Path) -> set[str]:
    return probe(args, cwd)["LOADED"]


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--help"], set()),
        (["nano3", "pretrain", "--help"], set()),
        (["steps", "list"], set()),
        (["steps", "list", "--produces", "training_jsonl"], set()),
        (["steps", "show", "pretrain/transformers"], {"omegaconf"}),
    ],
    ids=["help", "stage-help", "steps-list", "steps-list-filter", "steps-show"],
)
def test_catalog_and_help_load_nothing_heavy(isolated: Path, args: list[str], allowed: set[str]) -> None:
    assert loaded(args, isolated) <= allowed


def test_a_dry_run_loads_nemo_run_but_not_what_planning_never_uses(isolated: Path) -> None:
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\n')
    modules = loaded(["nano3", "pretrain", "-c", "tiny", "-r", "cluster", "-d"], isolated)
    assert "nemo_run" in modules
    # networkx is deferred (in sys.modules, never executed: its algorithms package stays out).
    assert not modules & {"torch", "chardet", "networkx.algorithms"}


def test_a_deferred_module_is_there_when_a_plan_uses_it(isolated: Path) -> None:
    """A multi-job experiment orders its jobs with networkx: the deferred module runs on first use."""
    code = (
        "import sys\n"
        "from tasks.nemo_run_for_planning import import_nemo_run_for_planning\n"
        "import_nemo_run_for_planning(['local'])\n"
        "assert 'networkx.algorithms' not in sys.modules\n"
        "import networkx\n"
        "graph = networkx.DiGraph([('data', 'train'), ('train', 'eval')])\n"
        "print(list(networkx.topological_sort(graph)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=isolated, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(isolated), "PYTHONPATH": str(PROJECT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['data', 'train', 'eval']"


def test_a_dry_run_of_a_profile_in_env_toml_does_not_import_prefect(isolated: Path) -> None:
    """The profile models carry no Prefect type and the block lookup runs only for a profile
    env.toml does not have: Prefect is seconds of a dry-run's start-up."""
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\nenv_vars = {HF_TOKEN = "t0ken"}\n')
    for args in (["nano3", "pretrain", "-c", "tiny", "-r", "cluster", "-d"], ["nano3", "pipe", "-b", "cluster", "-d"]):
        assert "prefect" not in loaded(args, isolated), args


def plans_after(preludes: tuple[str, ...], args: list[str], isolated: Path, extra_env: dict[str, str] | None = None) -> list[str]:
    """The command line's output in one fresh process per prelude (code run before it), run ids masked."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(isolated), "PYTHONPATH": str(PROJECT), **(extra_env or {})}
    plans = []
    for prelude in preludes:
        code = f"{prelude}import sys; from flows.cli import app; app(sys.argv[1:], prog_name='nemotron')"
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=isolated, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        plans.append(re.sub(r"--rdzv-id \d+", "--rdzv-id <id>", proc.stdout))
    return plans


def test_keeping_them_out_changes_nothing_in_the_plan(isolated: Path) -> None:
    """The same dry-run in a process that imported torch first (so nothing is kept out)."""
    write_env(isolated, '[cluster]\nexecutor = "slurm"\naccount = "a"\npartition = "p"\ngpus_per_node = 8\n')
    args = ["nano3", "pipe", "-r", "cluster", "-d", "--stages", "pretrain,sft,eval"]
    plans = plans_after(("", "import torch, chardet; "), args, isolated)
    assert plans[0].count("=== ") == 3 and "torchrun" in plans[0]
    assert plans[0] == plans[1]


#: env.toml profile → executor kind: every kind that plans on this machine (skypilot and kuberay
#: need packages the project does not install).
PLANNED_PROFILES = {"cluster": "slurm", "dgx": "dgxcloud", "lepton": "lepton", "docker": "docker", "local": "local"}
#: The local profile of that env.toml reads its W&B key from the environment.
PROCESS_ENV = {"WANDB_API_KEY": "t0ken-from-env"}


@pytest.mark.parametrize("profile", list(PLANNED_PROFILES))
def test_a_dry_run_imports_only_the_executor_it_renders(isolated: Path, profile: str) -> None:
    """NeMo-Run's experiment module imports every executor (Lepton's client alone is 0.5-1.6 s):
    a dry-run stands in for the ones its plans do not render."""
    from tests.test_secrets_and_cli import ENV

    write_env(isolated, ENV)
    found = probe(["nano3", "pipe", "-r", profile, "-d", "--stages", "pretrain"], isolated, PROCESS_ENV)
    assert found["EXECUTORS"] & set(STANDABLE) == set(RENDERED_BY[PLANNED_PROFILES[profile]])
    assert "nemo_run" in found["LOADED"] and "prefect" not in found["LOADED"]
    assert ("leptonai" in found["LOADED"]) == (profile == "lepton")


@pytest.mark.parametrize("profile", list(PLANNED_PROFILES))
def test_the_plan_is_the_one_nemo_runs_full_import_gives(isolated: Path, profile: str) -> None:
    """Byte for byte: the same dry-run in a process that imported the whole of NeMo-Run first (as
    every dry-run did before), so that nothing stands in."""
    from tests.test_secrets_and_cli import ENV

    write_env(isolated, ENV)
    args = ["nano3", "pipe", "-r", profile, "-d", "--stages", "pretrain,sft,eval"]
    plans = plans_after(("", "from tasks.nemo_run_import import import_nemo_run; import_nemo_run(); "), args, isolated,
                        PROCESS_ENV)
    assert plans[0].count("=== ") == 3 and "--- submission" in plans[0]
    assert plans[0] == plans[1]


def test_every_executor_kind_names_the_modules_its_plan_needs() -> None:
    from blocks.executors import BUILDERS

    assert set(RENDERED_BY) == set(BUILDERS)
    assert {module for modules in RENDERED_BY.values() for module in modules} <= set(STANDABLE)


def test_a_process_that_imported_nemo_run_to_plan_refuses_the_rest(isolated: Path) -> None:
    """A stand-in says what it is when used, and such a process cannot submit."""
    code = """
import sys
from tasks.nemo_run_for_planning import NotImportedForPlanning, import_nemo_run_for_planning, nemo_run_for_plan
run = import_nemo_run_for_planning(["slurm"])
assert run.SlurmExecutor.__module__ == "nemo_run.core.execution.slurm"
for use in (lambda: run.LeptonExecutor(), lambda: nemo_run_for_plan("docker")):
    try:
        use()
    except NotImportedForPlanning as error:
        print("REFUSED:", error)
from tasks.nemo_run_import import import_nemo_run
try:
    import_nemo_run()
except RuntimeError as error:
    print("REFUSED:", error)
assert "leptonai" not in sys.modules
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(isolated), "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=isolated, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    refusals = [line for line in proc.stdout.splitlines() if line.startswith("REFUSED:")]
    assert len(refusals) == 3, proc.stdout
    assert "nemo_run.core.execution.lepton.LeptonExecutor is not imported" in refusals[0]
    assert "the docker executor is not imported" in refusals[1] and "plan slurm jobs only" in refusals[1]
    assert "submitting or following a job needs all of it" in refusals[2]
