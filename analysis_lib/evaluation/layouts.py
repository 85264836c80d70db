"""Writing tables the way a Hugging Face dataset copy holds them, so the loaders read what was written as they
read a download: images as the ``datasets`` library stores them (a struct of encoded bytes and a path), and
a hub-cache repository folder (``refs/main`` naming a snapshot of parquet files). The tests and the
rehearsal's fixture benchmarks (``analysis_lib.rehearsal``) write their copies with these."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

#: the ``datasets`` library's Image feature in Arrow
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: the snapshot folder name hub_snapshot writes (a revision hash in a real cache)
REVISION = "abc"


def encode(array: np.ndarray, image_format: str = "PNG") -> bytes:
    """The bytes of an image file holding ``array`` (H×W×3 RGB, or H×W greyscale)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def image_column(arrays: list[np.ndarray], image_format: str = "PNG") -> pa.Array:
    """Image structs as the ``datasets`` library stores them; 2-D arrays become greyscale ("L") images."""
    return pa.array([{"bytes": encode(a, image_format), "path": None} for a in arrays], type=IMAGE_TYPE)


def hub_snapshot(cache: str | Path, repo: str, files: dict[str, pa.Table]) -> tuple[Path, Path]:
    """A hub-cache repo folder (``datasets--owner--name``) in ``cache``: refs/main naming one snapshot with
    ``{relative path: table}`` written as parquet files. Returns (repo folder, snapshot folder)."""
    root = Path(cache) / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / REVISION
    for relative, table in files.items():
        (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, snapshot / relative)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    return root, snapshot
