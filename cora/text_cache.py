"""The on-disk cache of class-name text embeddings: one row per (namespace, name) in one SQLite file, bounded
in size, least recently used rows evicted first. Used by `cora.modeling.text.TextEmbedder`; free of torch so
that a runtime without PyTorch can share it.

    cache = TextCache.default()   # None when disabled (CORA_TEXT_CACHE_MB=0)
    ns = namespace(model="RN50/openai", weights=fingerprint, templates=[...], context_length=77)
    found = cache.get(ns, names)  # {name: ndarray[D] float32} for the names already cached
    cache.put(ns, {name: embedding, ...})

Location: `$CORA_CACHE_DIR`, else `$XDG_CACHE_HOME/cora`, else `~/.cache/cora`; file `text_embeddings.sqlite3`.
Bound: `$CORA_TEXT_CACHE_MB` megabytes of embeddings (default 256, about 65,000 RN50 names; 0 turns the
cache off). The cache only ever saves work: a locked, read-only or unreadable cache logs one warning and the
embeddings are computed as if it were empty; a file that is not an SQLite database is renamed to
`<file>.corrupt` and the cache starts anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from cora.errors import UserError

logger = logging.getLogger(__name__)

FILE_NAME = "text_embeddings.sqlite3"
DEFAULT_MAX_MB = 256
_VERSION = 1  # part of every namespace: bump when the embedding recipe changes
_CHUNK = 500  # names per query (SQLite's limit on bound parameters is 999 in old builds)


def default_cache_dir() -> str:
    """`$CORA_CACHE_DIR`, else `$XDG_CACHE_HOME/cora`, else `~/.cache/cora`."""
    if os.environ.get("CORA_CACHE_DIR"):
        return os.path.expanduser(os.environ["CORA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cora")


def namespace(**parts) -> str:
    """A key for everything an embedding depends on besides the name (weights, templates, context length...):
    sha256 of the JSON of `parts`, with the cache version."""
    payload = json.dumps({"version": _VERSION, **parts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class TextCache:
    """Embeddings (float32 vectors) by (namespace, name) in the SQLite file `path`, at most `max_bytes` of them.

    Every `get` marks its rows as used; a `put` that takes the total above `max_bytes` evicts the least
    recently used rows down to 90% of it. Safe across processes (SQLite's locking; one transaction each)."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_MB << 20):
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._warned = False

    @classmethod
    def default(cls) -> "TextCache | None":
        """The user's cache (module docstring), or None when `CORA_TEXT_CACHE_MB` is 0."""
        raw = os.environ.get("CORA_TEXT_CACHE_MB", str(DEFAULT_MAX_MB))
        try:
            mb = float(raw)
        except ValueError:
            mb = -1.0
        if not (mb >= 0 and np.isfinite(mb)):
            raise UserError(f"CORA_TEXT_CACHE_MB must be a number of megabytes >= 0 (0: no cache), got {raw!r}")
        if mb == 0:
            return None
        return cls(os.path.join(default_cache_dir(), FILE_NAME), max(1, int(mb * (1 << 20))))

    def get(self, ns: str, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached embeddings of those `names` that are in namespace `ns`: {name: ndarray[D] float32}."""
        found: dict[str, np.ndarray] = {}
        if not names or not os.path.exists(self.path):
            return found
        try:
            with self._transaction() as con:
                for i in range(0, len(names), _CHUNK):
                    chunk = list(names[i:i + _CHUNK])
                    marks = ",".join("?" * len(chunk))
                    rows = con.execute(
                        f"SELECT name, value FROM embeddings WHERE namespace = ? AND name IN ({marks})", [ns, *chunk]
                    ).fetchall()
                    found.update((name, np.frombuffer(value, dtype="<f4").copy()) for name, value in rows)
                    con.execute(f"UPDATE embeddings SET last_used = ? WHERE namespace = ? AND name IN ({marks})",
                                [time.time(), ns, *chunk])
        except (sqlite3.Error, OSError) as e:
            self._warn(e)
            return {}
        return found

    def lookup(self, ns: str, names: Sequence[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """ndarray[K, D] float32 of `names` (repeats allowed) in namespace `ns`: read from the cache where
        present, the missing names (each once) through `encode(names) -> [N, D]`, then stored."""
        unique = list(dict.fromkeys(names))
        found = self.get(ns, unique)
        missing = [n for n in unique if n not in found]
        if missing:
            new = dict(zip(missing, np.asarray(encode(missing), dtype=np.float32)))
            self.put(ns, new)
            found.update(new)
        return np.stack([found[n] for n in names]).astype(np.float32, copy=False)

    def put(self, ns: str, embeddings: Mapping[str, np.ndarray]) -> None:
        """Stores {name: ndarray[D]} in namespace `ns` (as float32), then evicts down to the bound if needed."""
        if not embeddings:
            return
        now = time.time()
        blobs = {name: np.ascontiguousarray(v, dtype="<f4").tobytes() for name, v in embeddings.items()}
        rows = [(ns, name, blob, len(blob), now) for name, blob in blobs.items()]
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            try:
                self._insert(rows)
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError):  # locked, read-only, disk full: not the file's fault
                    raise
                # Not an SQLite file (truncated, overwritten): set it aside, so that the cache works again.
                logger.warning("text embedding cache %s is damaged (%s); renamed to %s.corrupt, starting anew",
                               self.path, e, self.path)
                os.replace(self.path, self.path + ".corrupt")
                self._insert(rows)
        except (sqlite3.Error, OSError) as e:
            self._warn(e)

    def _insert(self, rows: list[tuple]) -> None:
        with self._transaction() as con:
            con.executemany("INSERT OR REPLACE INTO embeddings (namespace, name, value, nbytes, last_used) "
                            "VALUES (?, ?, ?, ?, ?)", rows)
            self._evict(con)

    def total_bytes(self) -> int:
        """Bytes of embeddings held (0 when the file does not exist)."""
        if not os.path.exists(self.path):
            return 0
        with self._transaction() as con:
            return con.execute("SELECT COALESCE(SUM(nbytes), 0) FROM embeddings").fetchone()[0]

    def _evict(self, con: sqlite3.Connection) -> None:
        total = con.execute("SELECT COALESCE(SUM(nbytes), 0) FROM embeddings").fetchone()[0]
        if total <= self.max_bytes:
            return
        excess, stale = total - int(self.max_bytes * 0.9), []
        for rowid, nbytes in con.execute("SELECT rowid, nbytes FROM embeddings ORDER BY last_used, rowid"):
            if excess <= 0:
                break
            stale.append((rowid,))
            excess -= nbytes
        con.executemany("DELETE FROM embeddings WHERE rowid = ?", stale)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # timeout: another process's transaction holds the lock for milliseconds; wait rather than fail.
        con = sqlite3.connect(self.path, timeout=30)
        try:
            with con:  # one transaction: committed on success, rolled back on an error
                con.execute("CREATE TABLE IF NOT EXISTS embeddings (namespace TEXT NOT NULL, name TEXT NOT NULL, "
                            "value BLOB NOT NULL, nbytes INTEGER NOT NULL, last_used REAL NOT NULL, "
                            "PRIMARY KEY (namespace, name))")
                yield con
        finally:
            con.close()

    def _warn(self, error: Exception) -> None:
        if not self._warned:  # once per cache object: the cause does not change between calls
            logger.warning("text embedding cache %s not used (%s); computing the embeddings", self.path, error)
            self._warned = True
