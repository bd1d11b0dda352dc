"""Claim records on disk: where they live, their schema, the environment they were measured in.

One JSON file per chapter, ``<claims dir>/chapter-<N>.json``: ``{"schema": 2, "chapter", "scale",
"started", "environment", "claims": {id: record}}``. Each record follows
``repro/record.schema.json``, which the writer (:func:`write_record`), the ledger page and
``python -m repro check`` all validate against.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_PATH",
    "claims_dir",
    "environment",
    "load_chapter_files",
    "load_ledger",
    "schema_errors",
    "validate_schema",
    "write_record",
]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = Path(__file__).resolve().with_name("record.schema.json")


def claims_dir() -> Path:
    """Folder the claim records are written to: ``$BOOK_CLAIMS_DIR`` or ``<repo>/_build/claims``."""
    env = os.environ.get("BOOK_CLAIMS_DIR")
    return Path(env) if env else ROOT / "_build" / "claims"


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(rec: dict) -> list[str]:
    """Every way ``rec`` breaks the record schema (empty when it follows it)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}"
            for e in _validator().iter_errors(rec)]


def validate_schema(rec: dict) -> None:
    """Raise ``ValueError`` when ``rec`` breaks the record schema."""
    errs = schema_errors(rec)
    if errs:
        raise ValueError(f"record {rec.get('id', '?')} breaks the record schema: " + "; ".join(errs))


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """The machine and numerical libraries a record was measured with (cross-machine diffs)."""
    import numpy
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = "?"
    return {
        "cpu": cpu,
        "cpu_capability": capability,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "MKL_CBWR": os.environ.get("MKL_CBWR", ""),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_record(rec: dict) -> None:
    """Add ``rec`` to its chapter's file (atomically)."""
    p = claims_dir() / f"chapter-{rec['chapter']}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {"schema": 2, "chapter": rec["chapter"], "scale": rec["scale"], "started": rec["time"],
                "environment": environment(), "claims": {}}
    data["claims"][rec["id"]] = rec
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(p)


_CHAPTER_FILE = re.compile(r"^chapter-(\d+)\.json$")


def load_chapter_files(directory: str | os.PathLike | None = None) -> dict[int, dict]:
    """Every chapter file in ``directory`` (default: :func:`claims_dir`), by chapter number."""
    d = Path(directory) if directory is not None else claims_dir()
    out: dict[int, dict] = {}
    for p in sorted(d.glob("chapter-*.json")):
        m = _CHAPTER_FILE.match(p.name)
        if not m:
            continue
        try:
            out[int(m.group(1))] = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
    return out


def load_ledger(directory: str | os.PathLike | None = None) -> list[dict]:
    """All records on disk (every chapter), as dicts sorted by claim id."""
    from .claims import sort_key

    recs: Sequence[dict] = [r for data in load_chapter_files(directory).values()
                            for r in data.get("claims", {}).values()]
    return sorted(recs, key=lambda r: sort_key(r.get("id", "")))
