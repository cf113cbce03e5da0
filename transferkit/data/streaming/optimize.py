"""`python -m transferkit optimize`: a folder (local or in an object store) written in LitData's optimized format.

`<out>/<split>/` is one LitData dataset per split (`index.json` + chunks of `{"image": encoded bytes, "label",
"index"}`); `<out>/transferkit_stream.json` stores the classes and the split, so `fit data.root=<out>` trains on
exactly these splits. Images are kept as their encoded bytes: fit decodes them through the one decode path,
so the optimized data trains like the folder. The write resumes: a split whose `index.json` is in `out` is done
(it is written last), and the plan (`transferkit_stream.plan.json`) must match to go on.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from transferkit.data.decode import UnreadableImageError, open_image
from transferkit.data.folders import FolderScan
from transferkit.data.streaming.store import ObjectStore, is_remote

log = logging.getLogger(__name__)

MANIFEST = "transferkit_stream.json"
PLAN = "transferkit_stream.plan.json"
FORMAT = 1  # of the manifest: classes, splits (relative paths and labels), counts, skipped
CHUNK_BYTES = "64MB"


class Destination:
    """Where the optimized data goes: a local folder, or a folder in an object store (staged locally first)."""

    def __init__(self, out: str, storage_options: dict | None = None) -> None:
        self.out = out.rstrip("/")
        self.store = ObjectStore(self.out, dict(storage_options or {})) if is_remote(out) else None

    def join(self, *parts: str) -> str:
        return "/".join([self.out, *parts])

    def exists(self, *parts: str) -> bool:
        if self.store is None:
            return Path(self.join(*parts)).exists()
        return self.store.fs.exists(self.store.path + "/" + "/".join(parts))

    def read_text(self, *parts: str) -> str:
        if self.store is None:
            return Path(self.join(*parts)).read_text(encoding="utf-8")
        return self.store.fs.cat_file(self.store.path + "/" + "/".join(parts)).decode("utf-8")

    def write_text(self, text: str, *parts: str) -> None:
        if self.store is None:
            target = Path(self.join(*parts))
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(target.suffix + ".tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, target)
        else:
            self.store.fs.pipe_file(self.store.path + "/" + "/".join(parts), text.encode("utf-8"))

    def publish(self, staged: Path, split: str) -> None:
        """Move a written split into place, `index.json` last (its presence marks the split done)."""
        files = sorted(staged.iterdir(), key=lambda p: p.name == "index.json")
        if self.store is None:
            target = Path(self.join(split))
            target.mkdir(parents=True, exist_ok=True)
            for path in files:
                os.replace(path, target / path.name)
            return
        for path in files:
            self.store.fs.put_file(str(path), f"{self.store.path}/{split}/{path.name}")


def split_plan(scan: FolderScan) -> dict:
    """What is written: classes and each split's items (paths relative to the root) - checked on resume."""
    record = scan.to_json()
    return {"format": FORMAT, "root": record["root"], "classes": list(scan.class_names),
            "splits": record["splits"]}


def encoded_images(items: list, read: Callable[[object], bytes], skipped: list) -> object:
    """`(bytes, label, index)` of each item that decodes; the others are appended to `skipped`."""
    for index, (path, label) in enumerate(items):
        try:
            data = read(path)
            open_image(io.BytesIO(data))
        except (UnreadableImageError, FileNotFoundError) as err:
            skipped.append([str(path), getattr(err, "reason", "object not found")])
            continue
        yield data, int(label), index


def write_split(items: list, read: Callable[[object], bytes], staging: Path, skipped: list,
                chunk_bytes: str = CHUNK_BYTES) -> int:
    """One split as a LitData dataset in `staging` (a progress bar over its images); the count written."""
    from litdata.streaming.writer import BinaryWriter  # lazy: the stream extra is optional
    from tqdm.auto import tqdm  # lazy: only this command shows a bar

    writer = BinaryWriter(str(staging), chunk_bytes=chunk_bytes)
    count = 0
    for data, label, index in tqdm(encoded_images(items, read, skipped), total=len(items),
                                   desc=f"optimize {staging.name}", unit="img"):
        writer[count] = {"image": data, "label": label, "index": index}
        count += 1
    writer.done()
    writer.merge()
    return count


def write_optimized(scan: FolderScan, read: Callable[[object], bytes], out: str,
                    storage_options: dict | None = None, chunk_bytes: str = CHUNK_BYTES) -> dict:
    """Write `scan`'s splits into `out` (resuming a write that stopped); returns the manifest."""
    target = Destination(out, storage_options)
    plan = split_plan(scan)
    if target.exists(PLAN):
        if json.loads(target.read_text(PLAN)) != plan:
            raise FileExistsError(f"out={out!r} holds an optimize of other data (or another split); choose another "
                                  "out, or delete it to write this one.")
        log.info("Resuming the optimize into %s.", out)
    else:
        target.write_text(json.dumps(plan), PLAN)
    manifest = {**plan, "counts": {}, "skipped": []}
    for split, items in scan.splits.items():
        done = target.exists(split, "index.json")
        skipped: list = []
        if not done:
            with tempfile.TemporaryDirectory(prefix=f"transferkit-optimize-{split}-") as staging:
                write_split(items, read, Path(staging) / split, skipped, chunk_bytes)
                target.publish(Path(staging) / split, split)
            target.write_text(json.dumps(skipped), f"{split}.skipped.json")
        else:
            log.info("optimize: %s/ is already written; skipping it.", split)
        skipped = json.loads(target.read_text(f"{split}.skipped.json"))
        manifest["counts"][split] = len(items) - len(skipped)
        manifest["skipped"] += skipped
        gone = set(relative_to_root(skipped, plan["root"]))
        manifest["splits"][split] = [row for row in plan["splits"][split] if row[0] not in gone]
    target.write_text(json.dumps(manifest, ensure_ascii=False), MANIFEST)
    return manifest


def relative_to_root(skipped: list, root: str) -> list[str]:
    """The skipped files' paths as the plan's rows spell them (relative to the root; URIs without scheme)."""
    base = root.split("://", 1)[-1].rstrip("/") + "/"
    return [path.split("://", 1)[-1].removeprefix(base) for path, _ in skipped]
