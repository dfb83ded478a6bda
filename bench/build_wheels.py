"""Build the wheel bundle bench/gpu_recipes.py installs on a GPU machine that cannot reach a registry.

    python3 bench/build_wheels.py              # → bench/wheels/*.whl, and its size against 64 MiB

The GPU image has Python 3.12 with torch, transformers' dependencies (tokenizers, safetensors,
huggingface-hub), accelerate, numpy, pandas, pyarrow, scikit-learn, sacrebleu, jinja2 and pyyaml.
It lacks what is listed below: our project, megatron-core, trl, lm-eval and their own needs. Each is
pinned to requirements.lock's version (megatron-core: see PACKAGES) and fetched with
`pip download --no-deps` for CPython 3.12 manylinux x86_64; the few published only as source are
built into wheels here (pure Python). transformers is carried too, so the GPU runs the version the
CPU tests ran. bench/wheels/ is git-ignored.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20
#: name==version, as requirements.lock pins them. megatron-core: the version the CPU tests run
#: (the lock's Python 3.11 line; its 3.12 line, 0.19.2, has no Python 3.11 build to test here).
PACKAGES = [
    "megatron-core==0.16.1",
    "trl==1.16.0",
    "transformers==5.24.0",
    "lm-eval==0.4.13",
    "datasets==5.2.0",
    "evaluate==0.4.6",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "omegaconf==2.4.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "pytablewriter==1.2.1",
    "tabledata==1.3.5",
    "dataproperty==1.1.1",
    "mbstrdecoder==1.1.5",
    "typepy==1.3.5",
    "tcolorpy==0.1.7",
    "pathvalidate==3.3.1",
    "chardet==6.0.0.post1",
    "more-itertools==11.2.1",
    "nltk==3.10.4",
    "rouge-score==0.1.2",
    "sqlitedict==2.1.0",
    "word2number==1.1",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64"]


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch(spec: str, dest: Path) -> str:
    """A binary wheel for the GPU's interpreter; else the source built into a wheel here."""
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    result = pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                 "--implementation", "cp", *platform_args, "-d", str(dest), spec)
    if result.returncode == 0:
        return "wheel"
    built = pip("wheel", "-q", "--no-deps", "--no-binary", spec.split("==")[0], "-w", str(dest), spec)
    if built.returncode != 0:
        raise SystemExit(f"error: {spec}: no wheel for cp312 manylinux x86_64 and building one failed:\n"
                         f"{result.stderr[-1500:]}\n{built.stderr[-1500:]}")
    return "built"


def build_project(dest: Path) -> None:
    """Our own wheel (recipes, flows, tasks, blocks, deployments), no dependencies."""
    with tempfile.TemporaryDirectory() as tmp:
        result = pip("wheel", "-q", "--no-deps", "-w", tmp, str(PROJECT))
        if result.returncode != 0:
            raise SystemExit(f"error: building the project wheel failed:\n{result.stderr[-2000:]}")
        for wheel in Path(tmp).glob("*.whl"):
            wheel.replace(dest / wheel.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=PROJECT / "bench" / "wheels")
    parser.add_argument("--without", nargs="*", default=[], help="names to leave out (e.g. transformers)")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for spec in PACKAGES:
        if spec.split("==")[0] in args.without:
            continue
        print(f"{spec}: {fetch(spec, args.dest)}", flush=True)
    build_project(args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB of the 64 MiB the working tree may carry "
          f"({'fits' if total < LIMIT else 'TOO LARGE'}; the tree's own files count too)")
    return 0 if total < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
