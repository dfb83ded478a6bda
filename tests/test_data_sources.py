"""Data sources as inputs: a folder of shards whose fingerprint is in the data prep's key.

An added or changed shard changes the key of the stage that reads the source and of no other
stage; a job reads exactly the shards snapshotted, and one changed under it is an error, not
silently other data. A source that is missing or empty (without fill_from) stops the command
before anything runs, naming the config file and key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recipes.nano3.data_prep import sources
from recipes.nano3.data_prep.sources import SourceError
from tasks.artifacts import ArtifactStore
from tests.conftest import run_cli


def jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


def test_the_fingerprint_follows_the_shards_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    jsonl(folder / "a.jsonl", ["first document of the corpus", "second one"])
    first = sources.snapshot(str(folder))
    # Files that are not shards, or not finished (a writer's `_` or `.` name), are no data.
    (folder / "README.md").write_text("about this corpus")
    jsonl(folder / "_b.jsonl", ["being uploaded"])
    jsonl(folder / ".c.jsonl", ["hidden"])
    assert sources.snapshot(str(folder)).digest == first.digest
    (folder / "a.jsonl").touch()
    assert sources.snapshot(str(folder)).digest == first.digest, "a new mtime is not new data"

    jsonl(folder / "nested" / "b.jsonl", ["a new shard"])
    added = sources.snapshot(str(folder))
    assert [f.path for f in added.files] == ["a.jsonl", "nested/b.jsonl"] and added.digest != first.digest
    jsonl(folder / "a.jsonl", ["first document of the corpus", "second one, edited"])
    assert sources.snapshot(str(folder)).digest not in (first.digest, added.digest)


def test_jsonl_parquet_and_text_shards_are_read_in_path_order(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    jsonl(folder / "1.jsonl", ["from jsonl"], field="body")
    pq.write_table(pa.table({"body": ["from parquet", "second row"]}), folder / "2.parquet")
    (folder / "3.txt").write_text("a whole text file\nis one document")
    taken = sources.snapshot(str(folder))
    assert list(sources.documents(taken, "body")) == [
        "from jsonl", "from parquet", "second row", "a whole text file\nis one document"]
    with pytest.raises(SourceError, match=r"shard 1.jsonl line 1: a record has no field 'text'"):
        list(sources.documents(taken, "text"))


def test_a_shard_changed_after_the_snapshot_stops_the_job(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    jsonl(folder / "a.jsonl", ["the snapshotted text"])
    taken = sources.snapshot(str(folder))
    jsonl(folder / "a.jsonl", ["the snapshotted text, changed"])
    with pytest.raises(SourceError, match="shard a.jsonl of .* changed after the run began; run again"):
        list(sources.documents(taken))
    (folder / "a.jsonl").unlink()
    with pytest.raises(SourceError, match="was removed after the run began"):
        list(sources.documents(taken))


def test_a_new_shard_changes_the_key_of_the_data_prep_it_feeds_only(isolated: Path) -> None:
    from flows.run_options import RunOptions, resolve_run
    from tasks.stage_task import prepare_stage
    from tasks.stages import STAGES

    store = ArtifactStore(str(isolated / "store"))
    jsonl(isolated / "store" / "sources" / "pretrain-corpus" / "part-0.jsonl", ["an existing document " * 5])
    jobs = resolve_run(RunOptions(config="tiny"), [s for s in STAGES if s.id.startswith("data_prep/")]).jobs
    said: list[str] = []

    def keys() -> dict[str, str]:
        return {job.stage.id: prepare_stage(job, store, {}, say=said.append).cache_key for job in jobs}

    before = keys()
    assert any("data source corpus: " in line and "1 shards" in line for line in said), said
    assert keys() == before
    jsonl(isolated / "store" / "sources" / "pretrain-corpus" / "part-1.jsonl", ["a new document " * 5])
    after = keys()
    assert after["data_prep/pretrain"] != before["data_prep/pretrain"]
    assert {k: v for k, v in after.items() if k != "data_prep/pretrain"} == {
        k: v for k, v in before.items() if k != "data_prep/pretrain"}
    # The job gets the snapshot it was keyed by.
    prepared = prepare_stage(jobs[0], store, {})
    assert "sources:\n    corpus:\n      url: " in prepared.resolved_yaml and "part-1.jsonl" in prepared.resolved_yaml


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["data_prep/pretrain:corpus.fill_from=null", "data_prep/pretrain:corpus.path=/nonexistent/corpus"],
         "corpus.path: the data source /nonexistent/corpus does not exist (or is not a folder)"),
        (["data_prep/pretrain:corpus.fill_from=null", "data_prep/pretrain:corpus.path=empty"],
         "corpus.path: the data source {store}/empty does not exist"),
        (["data_prep/pretrain:corpus.fill_from=wikipedia"],
         "corpus.fill_from: unknown corpus 'wikipedia' to fill an empty source from (one of: python_docstrings)"),
    ],
    ids=["missing", "missing under the store", "unknown filler"],
)
def test_a_bad_source_is_one_error_naming_the_config_and_key(isolated: Path, overrides: list[str], error: str) -> None:
    store = isolated / "store"
    result = run_cli(["--stages", "data_prep/pretrain", *overrides], isolated, env={"NANO3_ARTIFACTS_ROOT": str(store)})
    config = "recipes/nano3/data_prep/pretrain/config/tiny.yaml"
    assert result.code != 0
    assert config in result.stderr and error.format(store=store) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (store / "_registry").exists() and not (store / "_work").exists(), "nothing ran, nothing written"
