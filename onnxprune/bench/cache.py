"""On-disk cache of layer timings, one JSON file per (execution provider, device), keyed by the op's
signature (op type, attributes, input shapes and dtypes, threads, ONNX Runtime version)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from onnxprune.model.io import atomic_write_text

FORMAT = "onnxprune-timings/1"


def cache_dir() -> Path:
    """$ONNXPRUNE_CACHE, else $XDG_CACHE_HOME/onnxprune, else ~/.cache/onnxprune."""
    if os.environ.get("ONNXPRUNE_CACHE"):
        return Path(os.environ["ONNXPRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxprune"


def signature_key(signature: dict) -> str:
    """A stable short key for a JSON-able op signature."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class TimingCache:
    """Median milliseconds of single-op models on one execution provider and device. Entries are
    read once and written back atomically (merged with what other processes wrote meanwhile)."""

    def __init__(self, ep: str, device: str, directory: str | os.PathLike | None = None):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_")[:80] or "device"
        self.path = Path(directory or cache_dir()) / f"timings-{ep}-{slug}.json"
        self.ep, self.device = ep, device
        self.entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
            return {}
        return doc["entries"]

    def get(self, signature: dict) -> float | None:
        """The cached milliseconds of an op signature, or None."""
        entry = self.entries.get(signature_key(signature))
        return float(entry["ms"]) if isinstance(entry, dict) and "ms" in entry else None

    def put(self, signature: dict, ms: float) -> None:
        """Remember one timing (call `save` to write)."""
        self.entries[signature_key(signature)] = {
            "ms": float(ms),
            "op": signature.get("op"),
            "inputs": signature.get("inputs"),
        }

    def save(self) -> Path | None:
        """Write the cache (merged with the file's current entries); None when it cannot be written."""
        merged = {**self._read(), **self.entries}
        doc = {"format": FORMAT, "ep": self.ep, "device": self.device, "entries": merged}
        try:
            return atomic_write_text(self.path, json.dumps(doc, indent=0))
        except OSError:
            return None
