"""`python -m tests.reliability.publish_many STORE NAME TAG COUNT START_AT`: publish COUNT distinct
outputs under one artifact name, starting at wall-clock time START_AT (so that several of these
processes publish at the same moment); print the versions received, one JSON list."""

from __future__ import annotations

import hashlib
import json
import sys
import time

from recipes.nano3.manifest import MANIFEST_NAME, FileEntry, Manifest
from tasks.artifacts import ArtifactStore


def main() -> None:
    root, name, tag, count, start_at = sys.argv[1:]
    store = ArtifactStore(root)
    outputs = []
    for number in range(int(count)):
        key = f"{tag}-{number:04d}"
        folder = store.output_url("concurrent", key)
        data = f"{tag} output {number}\n".encode()
        store.fs.makedirs(folder, exist_ok=True)
        store.fs.pipe_file(f"{folder}/data.txt", data)
        manifest = Manifest(type="raw_jsonl", stage="concurrent",
                            files=[FileEntry(path="data.txt", sha256=hashlib.sha256(data).hexdigest(), size=len(data))])
        store.fs.pipe_file(f"{folder}/{MANIFEST_NAME}", manifest.model_dump_json().encode())
        outputs.append((key, folder, manifest))
    while time.time() < float(start_at):
        time.sleep(0.001)
    received = [store.publish(name, folder, manifest, cache_key=key).version for key, folder, manifest in outputs]
    print(json.dumps(received))


if __name__ == "__main__":
    main()
