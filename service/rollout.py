"""Which version unpinned traffic gets, per modality: the promoted `current`, a canary share of
clients on a `candidate`, or the candidate in shadow. Kept in the repository (`rollout.json`,
written atomically) so that restarts and every replica on the repository agree; changed by one
admin call each (service/routes/models.py) and by `pulse-fm publish --hold`.

    {"ppg": {"current": 2, "candidate": 3, "mode": "canary", "fraction": 0.1,
             "history": [{"at": ..., "action": "canary", "from": 2, "to": 3, "by": "a1b2c3d4"}]}}

Without an entry a modality's unpinned traffic goes to its newest served version (the default).
Canary assignment is sticky: a client (X-Client-ID, else its API key, else its address) is in the
canary when sha256(modality, client) falls below the fraction, so one client never sees
embeddings of two versions mixed while the fraction stays put (raising it only adds clients).

Several workers and replicas share one repository: a change is a read-modify-write of the file
under an exclusive lock (`changing`), and every gateway re-reads the file when its `stamp` (a digest) changes
(service/state.py `watch`), so an admin call answered by one worker reaches all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROLLOUT_FILE = "rollout.json"
LOCK_FILE = ".rollout.lock"
MODES = ("canary", "shadow")
HISTORY = 50  # entries kept per modality

log = logging.getLogger("pulsefm.gateway")


@dataclass
class Rollout:
    current: int | None = None  # None: the newest served version
    candidate: int | None = None
    mode: str | None = None  # "canary" | "shadow" | None
    fraction: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, action: str, by: str, **facts: Any) -> dict[str, Any]:
        entry = {"at": time.time(), "action": action, "by": by, **facts}
        self.history = [*self.history, entry][-HISTORY:]
        return entry


def current_version(rollouts: dict[str, Rollout], modality: str, served: Iterable[int]) -> int:
    """The version unpinned traffic gets outside a canary: the promoted one if still served, else
    the newest served (`served` must not be empty)."""
    versions = set(served)
    promoted = rollouts.get(str(modality), Rollout()).current
    return promoted if promoted in versions else max(versions)


def bucket(modality: str, client: str) -> float:
    """A client's fixed place in [0, 1) for `modality`."""
    digest = hashlib.sha256(f"{modality}\0{client}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load(repo: Path) -> dict[str, Rollout]:
    path = Path(repo) / ROLLOUT_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {str(m): Rollout(**r) for m, r in doc.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable rollout state ({exc})") from None


def save(repo: Path, rollouts: dict[str, Rollout]) -> None:
    path = Path(repo) / ROLLOUT_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rollout-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({m: asdict(r) for m, r in rollouts.items()}, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    Path(tmp).replace(path)


def file_stamp(path: Path) -> str | None:
    """A digest of a small file's content (None: absent). Not its stat: two rewrites within one
    clock tick can leave the same size and mtime, and a freed inode is soon used again."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def stamp(repo: Path) -> str | None:
    return file_stamp(Path(repo) / ROLLOUT_FILE)


@contextlib.contextmanager
def changing(repo: Path) -> Iterator[dict[str, Rollout]]:
    """The rollout state as on disk now, saved when the block ends without an error; the whole
    read-modify-write holds an exclusive lock, so changes made through different workers or
    replicas of the repository are never lost. A damaged file is logged and started afresh."""
    with (Path(repo) / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                rollouts = load(repo)
            except ValueError:
                log.exception("rollout state unreadable; this change starts it afresh")
                rollouts = {}
            yield rollouts
            save(repo, rollouts)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
