"""Where a segment store lives: a local folder or an fsspec URL (`s3://bucket/stores/syn`,
`gs://...`, `file:///...`), behind the few operations the store needs.

A file is written whole or not at all: locally through a temporary file and a rename, on object
storage by a single PUT (an object appears complete or not at all), so the store's commit protocol
(a chunk's manifest part is written last and marks it done) holds on both. S3 credentials and the
endpoint come from the usual places (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ~/.aws); s3fs must be
installed for `s3://` (the `cloud` extra).
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` into a fresh temporary file beside `path`, then rename it onto `path`: a reader
    sees the old file or the whole new one, two writers never share a temporary file, and a failed
    write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name rather than mkstemp, so that the file gets the usual (umask) permissions: a
    # model repository is read by Triton, often as another user
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Location:
    """A store root. `local` is the folder when the store is on this machine's file system."""

    def __init__(self, root: str | Path) -> None:
        self.url = str(root)
        protocol = fsspec.core.split_protocol(self.url)[0]
        # remote: no listing cache (other processes write the store too) and a fresh instance, so
        # that the endpoint and credentials are read from the environment as it is now
        remote = (
            {}
            if protocol in (None, "file", "local")
            else {"use_listings_cache": False, "skip_instance_cache": True}
        )
        self.fs, path = fsspec.core.url_to_fs(self.url, **remote)
        self.root = str(path).rstrip("/")
        self.local: Path | None = Path(self.root) if isinstance(self.fs, LocalFileSystem) else None

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str = "") -> bool:
        return bool(self.fs.exists(self.path(rel) if rel else self.root))

    def is_empty(self) -> bool:
        """True if nothing is stored at the root (a folder or key prefix)."""
        if not self.fs.exists(self.root):
            return True
        return not self.fs.ls(self.root, detail=False)

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Names of the files directly under `rel`, sorted (none if it does not exist)."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return []
        names = (str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))
        return sorted(n for n in names if n.endswith(suffix))

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically."""
        if self.local is not None:
            atomic_write(self.local / rel, lambda tmp: tmp.write_bytes(data))
        else:
            self.fs.pipe_file(self.path(rel), data)

    def read_parquet(self, rel: str) -> pd.DataFrame:
        if self.local is not None:
            return pd.read_parquet(self.local / rel)
        return pd.read_parquet(io.BytesIO(self.read_bytes(rel)))

    def write_parquet(self, rel: str, df: pd.DataFrame) -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self.write_bytes(rel, buf.getvalue())

    def remove(self) -> None:
        """Delete the whole store."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
