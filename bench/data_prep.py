"""P1 data prep: tokens/s of JSONL → .bin/.idx, each path a whole process, start-up included.

    .venv/bin/python bench/data_prep.py                  # 3 rounds, 60 MB corpus, 32k BPE
    .venv/bin/python bench/data_prep.py --runs 5 --paths limit,ours,baseline

The corpus is real English text made offline: the docstrings of the installed standard library
and packages (then whole source files, should those run short), deduplicated, as the recipe's
`python_docstrings` source makes it. The tokenizer is the recipe's byte-level BPE (digits split)
trained on it with a 32,768-token vocabulary. Both are cached under --cache.

Paths, each run as a fresh process per round, rounds interleaved so that a change in the
machine's load hits every path alike:

- limit: the tokenizer's own `encode_batch` over the whole corpus in one call, on all cores,
  texts already in memory, no output: only that call is timed.
- limit_batched: the same, but one `encode_batch` call per batch of JSONL, the batches ours
  makes (binidx.BATCH_BYTES): only those calls are timed. One call over 120,000 documents holds
  every Encoding (ids, offsets, token strings) at once, gigabytes.
- ours: `python -m recipes.nano3.data_prep.binidx` (the recipe's encoding step), whole process:
  the fast BPE engine (recipes/nano3/data_prep/fast_bpe.py) once its self-check has passed.
- ours_hf: the same with `--bpe hf`: HF tokenizers' `encode_batch` on threads, as before the fast engine.
- baseline: the way Megatron-LM's tools/preprocess_data.py works (`baseline` below): a
  multiprocessing pool of --workers processes encoding one document at a time (imap, chunks of
  32), megatron-core's IndexedDatasetBuilder fed one add_document per document, whole process.
- ray: ours with `--engine ray --workers N` on a local Ray started by the process.

tokens/s is the same numerator for every path (the dataset's tokens, one end-of-document token
per document included) over that path's seconds. The ratios are taken per round, then reported
as min/median/max. The .bin and .idx of every run must be byte-identical to the reference: the
single-process HF encoder (`binidx --bpe hf --workers 1`), run once before the rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

PATHS = ("limit", "limit_batched", "ours", "ours_hf", "baseline", "ray")
LABELS = {
    "limit": "limit: encode_batch, whole corpus",
    "limit_batched": "limit: encode_batch, batches of ours",
    "ours": "ours",
    "ours_hf": "ours with --bpe hf",
    "baseline": "Megatron-style baseline, {workers} processes",
    "ray": "ours, Ray, {workers} workers",
}
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<user>", "<assistant>", "<end>"]
EOS = "<eos>"
MIN_CORPUS_BYTES = 50_000_000
#: Megatron-LM's preprocess_data.py: pool.imap(encoder.encode, fin, 32).
MEGATRON_CHUNKSIZE = 32


# --- the material -------------------------------------------------------------------------------


def source_files() -> itertools.chain:
    """Whole .py files of the same roots, after every docstring: only read if those run short."""
    from recipes.nano3.data_prep import corpus

    def texts(path: Path) -> list[str]:
        try:
            return [path.read_text(encoding="utf-8")]
        except (UnicodeDecodeError, OSError):
            return []

    return itertools.chain.from_iterable(texts(p) for root in corpus.source_roots() for p in corpus.python_files(root))


def build_corpus(path: Path, target_bytes: int, minimum: int) -> dict:
    from recipes.nano3.data_prep import corpus

    spare = path.with_suffix(".unused.jsonl")
    stats = corpus.write_split(
        itertools.chain(corpus.python_docstrings(), source_files()),
        path,
        spare,
        max_bytes=target_bytes,
        min_chars=corpus.MIN_CHARS,
        valid_fraction=0.0,
        seed=0,
    )
    spare.unlink()
    if stats.bytes_train < minimum:
        path.unlink()
        raise SystemExit(f"error: only {stats.bytes_train:,} bytes of text installed here; {minimum:,} needed")
    return {"documents": stats.documents_train, "text_bytes": stats.bytes_train, "sha256": sha256(path)}


def material(cache: Path, corpus_mb: float, vocab_size: int, minimum: int) -> tuple[Path, Path, dict]:
    """(corpus.jsonl, tokenizer.json, facts), built once per cache folder."""
    from recipes.nano3.data_prep import corpus, tokenizer

    cache.mkdir(parents=True, exist_ok=True)
    target = int(corpus_mb * 1_000_000)
    corpus_path = cache / f"corpus-{target}.jsonl"
    facts_path = corpus_path.with_suffix(".json")
    if not (corpus_path.is_file() and facts_path.is_file()):
        started = time.monotonic()
        print(f"building the corpus ({corpus_mb:g} MB of docstrings) → {corpus_path}", flush=True)
        facts = build_corpus(corpus_path, target, minimum)
        facts_path.write_text(json.dumps(facts, indent=2))
        print(f"  {facts['documents']:,} documents in {time.monotonic() - started:.0f} s", flush=True)
    facts = json.loads(facts_path.read_text())
    tok_path = cache / f"tokenizer-{vocab_size}-{facts['sha256'][:12]}.json"
    if not tok_path.is_file():
        started = time.monotonic()
        print(f"training the {vocab_size:,}-token byte-level BPE → {tok_path}", flush=True)
        trained = tokenizer.train(corpus.read_texts(corpus_path), vocab_size, SPECIAL_TOKENS)
        trained.save(str(tok_path) + ".tmp")
        os.replace(str(tok_path) + ".tmp", tok_path)
        print(f"  trained in {time.monotonic() - started:.0f} s", flush=True)
    return corpus_path, tok_path, {**facts, "jsonl_bytes": corpus_path.stat().st_size}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- the reference paths, each run as its own process --------------------------------------------


def limit(tokenizer_path: Path, corpus_path: Path, batched: bool) -> None:
    """Only encode_batch is timed: the texts are read and parsed before, nothing is written after."""
    from tokenizers import Tokenizer

    from recipes.nano3.data_prep import binidx

    tok = Tokenizer.from_file(str(tokenizer_path))
    batches = list(binidx.text_batches(corpus_path)) if batched else [[
        json.loads(line)["text"] for line in corpus_path.open(encoding="utf-8")
    ]]
    documents = tokens = 0
    seconds = 0.0
    for texts in batches:
        started = time.perf_counter()
        encodings = tok.encode_batch(texts, add_special_tokens=False)
        seconds += time.perf_counter() - started
        documents += len(texts)
        tokens += sum(len(e) for e in encodings) + len(texts)  # + one end-of-document token each, as stored
        del encodings
    print(json.dumps({"documents": documents, "tokens": tokens, "seconds": round(seconds, 3)}))


class MegatronStyleEncoder:
    """tools/preprocess_data.py's Encoder: a tokenizer per pool process, one JSON line at a time."""

    def __init__(self, tokenizer_path: str) -> None:
        self.tokenizer_path = tokenizer_path

    def initializer(self) -> None:
        from tokenizers import Tokenizer

        MegatronStyleEncoder.tokenizer = Tokenizer.from_file(self.tokenizer_path)
        MegatronStyleEncoder.eod = MegatronStyleEncoder.tokenizer.token_to_id(EOS)

    def encode(self, json_line: str) -> tuple[list[int], list[int], int]:
        data = json.loads(json_line)
        doc_ids = MegatronStyleEncoder.tokenizer.encode(data["text"], add_special_tokens=False).ids
        sentence_lens = [len(doc_ids)]
        if doc_ids:
            doc_ids.append(MegatronStyleEncoder.eod)  # --append-eod
            sentence_lens[-1] += 1
        return doc_ids, sentence_lens, len(json_line)


def baseline(tokenizer_path: Path, corpus_path: Path, output_prefix: str, workers: int) -> None:
    import multiprocessing

    from megatron.core.datasets import indexed_dataset  # as preprocess_data.py imports it
    from tokenizers import Tokenizer

    started = time.perf_counter()
    encoder = MegatronStyleEncoder(str(tokenizer_path))
    tokenizer = Tokenizer.from_file(str(tokenizer_path))  # build_tokenizer(args) in the main process
    with corpus_path.open(encoding="utf-8") as fin, multiprocessing.Pool(workers, initializer=encoder.initializer) as pool:
        encoded_docs = pool.imap(encoder.encode, fin, MEGATRON_CHUNKSIZE)
        builder = indexed_dataset.IndexedDatasetBuilder(
            output_prefix + ".bin", dtype=indexed_dataset.DType.optimal_dtype(tokenizer.get_vocab_size())
        )
        documents = tokens = 0
        for doc, sentence_lens, _ in encoded_docs:
            builder.add_document(doc, sentence_lens)
            documents += 1
            tokens += len(doc)
        builder.finalize(output_prefix + ".idx")
    print(json.dumps({"documents": documents, "tokens": tokens, "seconds": round(time.perf_counter() - started, 3)}))


# --- the benchmark ------------------------------------------------------------------------------


def command(path: str, tok: Path, corpus_path: Path, prefix: Path, workers: int) -> list[str]:
    me = [sys.executable, str(Path(__file__).resolve())]
    ours = [sys.executable, "-m", "recipes.nano3.data_prep.binidx", "--tokenizer", str(tok), "--input", str(corpus_path),
            "--output-prefix", str(prefix)]
    return {
        "limit": [*me, "limit", "--tokenizer", str(tok), "--input", str(corpus_path)],
        "limit_batched": [*me, "limit", "--batched", "--tokenizer", str(tok), "--input", str(corpus_path)],
        "ours": ours,
        "ours_hf": [*ours, "--bpe", "hf"],
        "reference": [*ours, "--bpe", "hf", "--workers", "1"],
        "baseline": [*me, "baseline", "--tokenizer", str(tok), "--input", str(corpus_path), "--output-prefix", str(prefix),
                     "--workers", str(workers)],
        "ray": [*ours, "--engine", "ray", "--workers", str(workers)],
    }[path]


def shown(argv: list[str], tok: Path, corpus_path: Path, scratch: Path) -> str:
    """The command as the docs show it: paths of this machine replaced by names."""
    text = " ".join(argv).replace(sys.executable, ".venv/bin/python").replace(str(PROJECT) + "/", "")
    return text.replace(str(tok), "TOKENIZER.json").replace(str(corpus_path), "CORPUS.jsonl").replace(str(scratch), "OUT")


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """(wall seconds, the last line's JSON, with the tokenizer engine's line as "engine" where one is printed)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    engine = [line for line in lines if line.startswith("tokenizer engine:")]
    return wall, {**json.loads(lines[-1]), **({"engine": engine[0]} if engine else {})}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def spread(values: list[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("limit", "baseline"):
        sub = argparse.ArgumentParser(prog=f"data_prep.py {sys.argv[1]}")
        sub.add_argument("--tokenizer", required=True, type=Path)
        sub.add_argument("--input", required=True, type=Path)
        sub.add_argument("--output-prefix")
        sub.add_argument("--workers", type=int, default=os.cpu_count())
        sub.add_argument("--batched", action="store_true", help="limit: one encode_batch per batch of ours")
        args = sub.parse_args(sys.argv[2:])
        if sys.argv[1] == "limit":
            return limit(args.tokenizer, args.input, args.batched)
        return baseline(args.tokenizer, args.input, args.output_prefix, args.workers)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured rounds (3 or more for reported figures)")
    parser.add_argument("--corpus-mb", type=float, default=60.0, help="text in the corpus, MB (50 or more to report)")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="baseline pool processes, Ray workers")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"a subset of {','.join(PATHS)} (limit and ours always run)")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/nano3/bench/data_prep").expanduser())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    paths = [p for p in PATHS if p in {"limit", "ours", *args.paths.split(",")}]
    minimum = MIN_CORPUS_BYTES if args.corpus_mb >= MIN_CORPUS_BYTES / 1e6 else 0
    corpus_path, tok, facts = material(args.cache, args.corpus_mb, args.vocab_size, minimum)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    scratch = Path(tempfile.mkdtemp(prefix="nano3-bench-data-prep-"))
    seconds: dict[str, list[float]] = {p: [] for p in paths}
    digests: dict[str, set[tuple[str, str]]] = {p: set() for p in paths if not p.startswith("limit")}
    tokens = None
    load_before = os.getloadavg()[0]
    try:
        # The reference, once (also warms the page cache and .pyc): HF tokenizers on one thread.
        run_once(command("reference", tok, corpus_path, scratch / "reference", args.workers), env)
        reference_digest = (sha256(scratch / "reference.bin"), sha256(scratch / "reference.idx"))
        engines = {}
        for _ in range(args.runs):
            for path in paths:
                prefix = scratch / path
                wall, reported = run_once(command(path, tok, corpus_path, prefix, args.workers), env)
                seconds[path].append(reported["seconds"] if path.startswith("limit") else wall)
                if tokens not in (None, reported["tokens"]):
                    raise SystemExit(f"error: {path} counted {reported['tokens']} tokens, an earlier path {tokens}")
                tokens = reported["tokens"]
                if "engine" in reported:
                    engines[path] = reported["engine"]
                if not path.startswith("limit"):
                    digests[path].add((sha256(Path(f"{prefix}.bin")), sha256(Path(f"{prefix}.idx"))))
                    for suffix in (".bin", ".idx"):
                        Path(f"{prefix}{suffix}").unlink()
        commands = {p: shown(command(p, tok, corpus_path, scratch / p, args.workers), tok, corpus_path, scratch)
                    for p in paths}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert tokens is not None

    identical = all(d == {reference_digest} for d in digests.values())
    rate = {p: [tokens / s for s in seconds[p]] for p in paths}
    # path ÷ reference: its tokens/s over the reference's, round by round.
    references = [r for r in ("limit", "limit_batched", "baseline") if r in paths]
    ratios = {r: {p: [seconds[r][i] / s for i, s in enumerate(seconds[p])] for p in paths} for r in references}

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
          f"tokenizers {version('tokenizers')}, ray {version('ray')}, megatron-core {version('megatron-core')}; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"corpus: {facts['documents']:,} documents, {facts['text_bytes'] / 1e6:.1f} MB of text "
          f"({facts['jsonl_bytes'] / 1e6:.1f} MB of JSONL, sha256 {facts['sha256'][:12]}), {tokens:,} tokens; "
          f"tokenizer: {args.vocab_size:,}-token byte-level BPE; {args.runs} rounds, min / median / max\n")
    print("| path | seconds | tokens/s (M) | " + " | ".join(f"÷ {r}" for r in references) + " |")
    print("|---|---|---|" + "---|" * len(references))
    for p in paths:
        cells = ["1" if p == r else spread(ratios[r][p]) for r in references]
        print(f"| {LABELS[p].format(workers=args.workers)} | {spread(seconds[p])} | {spread([r / 1e6 for r in rate[p]], 3)} | "
              + " | ".join(cells) + " |")
    print("\ncommands:")
    for p in paths:
        print(f"- {p}: `{commands[p]}`")
    verdict = "byte-identical" if identical else "DIFFERENT"
    print(f"\noutputs: {verdict} .bin/.idx across {', '.join(digests)} and every run, and to the single-process"
          f" HF encoder's (sha256 .bin {reference_digest[0][:12]}, .idx {reference_digest[1][:12]})")
    for p, line in engines.items():
        print(f"{p}: {line}")

    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version()},
            "corpus": facts, "tokens": tokens, "runs": args.runs, "workers": args.workers, "seconds": seconds,
            "ratios": ratios, "commands": commands,
            "digests": {p: sorted(d) for p, d in digests.items()}, "reference_digest": reference_digest,
            "identical": identical, "engines": engines,
        }, indent=2))
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
