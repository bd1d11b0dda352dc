"""The book's release bundle: one archive of a built book, with a manifest of checksums.

``python release/dist.py build [--root .] [--out dist]`` (``make dist``, after ``make book``)
writes ``_build/dist/attention-reproduced-<version>-<commit>.tar.gz`` holding, under one top folder:

- ``html/``: the HTML book (``_build/html``);
- ``notebooks/``: the executed notebooks (``.ipynb``): for each page, the first one with outputs
  among the book's downloadable notebooks (``_build/html/_sources``), MyST-NB's executed ones
  (``_build/jupyter_execute``) and those of ``make test`` (``build/notebooks``);
- ``claims/``: the claim records of the build (``_build/claims``);
- ``results/paper/``: the recorded paper-scale runs;
- ``requirements.lock``, ``CITATION.cff``, ``README.md``, ``pyproject.toml``;
- ``BUILD-INFO.json``: version, commit, whether the tree had uncommitted changes, date;
- ``MANIFEST.sha256``: the sha256 of every other file, in ``sha256sum`` format (so
  ``sha256sum -c MANIFEST.sha256`` verifies an unpacked bundle too).

``python release/dist.py verify <archive or unpacked folder>`` (``make dist-verify``) checks that
every file listed is there with its checksum and that no file is unlisted. Only the standard
library is used. The archive is reproducible: sorted members, fixed owners and modes, times set
to the commit's date, gzip without a timestamp.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

# the checkout's repro package (its buildinfo module uses the standard library only)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repro.buildinfo import git, pyproject_version

MANIFEST = "MANIFEST.sha256"
INFO = "BUILD-INFO.json"
FILES = ("requirements.lock", "CITATION.cff", "README.md", "pyproject.toml")
NOTEBOOK_SOURCES = ("_build/html/_sources", "_build/jupyter_execute", "build/notebooks")


class BundleError(Exception):
    """The tree lacks a part of the bundle, or a bundle does not match its manifest."""


def build_info(root: Path) -> dict:
    """Version (pyproject.toml), commit and its date, and whether the tree was clean."""
    version = pyproject_version(root)
    commit = git(root, "rev-parse", "HEAD")
    status = git(root, "status", "--porcelain", "--untracked-files=no")
    date = git(root, "log", "-1", "--format=%cI") if commit else None
    epoch = git(root, "log", "-1", "--format=%ct") if commit else None
    return {
        "name": "attention-reproduced",
        "version": version,
        "commit": commit,
        "clean": status == "" if status is not None else None,
        "commit_date": date,
        "epoch": int(epoch) if epoch else 0,
    }


def _has_outputs(path: Path) -> bool:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(
        c.get("outputs") for c in nb.get("cells", []) if c.get("cell_type") == "code"
    )


def notebooks(root: Path) -> dict[str, Path]:
    """Executed notebooks by name (``chapters/ch1_x.ipynb``): the first one with outputs."""
    found: dict[str, Path] = {}
    for source in NOTEBOOK_SOURCES:
        base = root / source
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.ipynb")):
            rel = path.relative_to(base)
            if ".ipynb_checkpoints" in rel.parts:
                continue
            # build/notebooks holds the chapters flat
            name = rel.as_posix() if len(rel.parts) > 1 else f"chapters/{rel.name}"
            if name not in found and _has_outputs(path):
                found[name] = path
    return found


def contents(root: Path) -> dict[str, Path]:
    """Every file of the bundle by its name in the archive (the manifest and info excluded)."""
    root = root.resolve()
    parts: dict[str, Path] = {}
    html = root / "_build" / "html"
    if not (html / "index.html").is_file():
        raise BundleError(f"no built book at {html} (run `make book` first)")
    claims = root / "_build" / "claims"
    if not claims.is_dir() or not any(claims.iterdir()):
        raise BundleError(f"no claim records at {claims} (run `make book` first)")
    paper = root / "results" / "paper"
    if not paper.is_dir():
        raise BundleError(f"no {paper}")
    for prefix, base in (("html", html), ("claims", claims), ("results/paper", paper)):
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.is_symlink():
                parts[f"{prefix}/{path.relative_to(base).as_posix()}"] = path
    nbs = notebooks(root)
    if not nbs:
        raise BundleError(
            "no executed notebooks (.ipynb with outputs) in "
            + ", ".join(NOTEBOOK_SOURCES)
        )
    for name, path in nbs.items():
        parts[f"notebooks/{name}"] = path
    for name in FILES:
        if not (root / name).is_file():
            raise BundleError(f"no {name} in {root}")
        parts[name] = root / name
    return parts


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mtime = mtime
    member.mode = 0o644
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    tar.addfile(member, io.BytesIO(data))


def build(root: Path, out: Path) -> Path:
    """Write the archive into ``out``; returns its path."""
    root = root.resolve()
    info = build_info(root)
    parts = contents(root)
    short = (info["commit"] or "nocommit")[:8]
    top = f"{info['name']}-{info['version']}-{short}"
    files = {name: path.read_bytes() for name, path in parts.items()}
    files[INFO] = (json.dumps(info, indent=2) + "\n").encode()
    manifest = "".join(f"{sha256(files[n])}  {n}\n" for n in sorted(files))
    files[MANIFEST] = manifest.encode()
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{top}.tar.gz"
    tmp = archive.with_name(archive.name + ".tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(files):
            _add(tar, f"{top}/{name}", files[name], info["epoch"])
    tmp.replace(archive)
    return archive


def _read_bundle(path: Path) -> dict[str, bytes]:
    """The files of an archive (top folder stripped) or of an unpacked bundle folder."""
    files: dict[str, bytes] = {}
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                files[p.relative_to(path).as_posix()] = p.read_bytes()
        return files
    with tarfile.open(path, "r:*") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = member.name.split("/", 1)[1] if "/" in member.name else member.name
            files[name] = tar.extractfile(member).read()
    return files


def verify(path: Path) -> int:
    """Check a bundle against its manifest; returns the number of files verified."""
    if not path.exists():
        raise BundleError(f"no bundle at {path} (run `make dist` first)")
    files = _read_bundle(path)
    if MANIFEST not in files:
        raise BundleError(f"{path}: no {MANIFEST}")
    listed: dict[str, str] = {}
    for line in files[MANIFEST].decode().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise BundleError(f"{path}: malformed manifest line {line!r}")
        listed[name] = digest
    problems = []
    for name, digest in sorted(listed.items()):
        if name not in files:
            problems.append(f"missing: {name}")
        elif sha256(files[name]) != digest:
            problems.append(f"checksum differs: {name}")
    unlisted = sorted(set(files) - set(listed) - {MANIFEST})
    problems += [f"not in the manifest: {name}" for name in unlisted]
    if problems:
        raise BundleError(f"{path}: " + "; ".join(problems[:20]))
    return len(listed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the archive of a built book")
    b.add_argument("--root", type=Path, default=Path("."))
    b.add_argument("--out", type=Path, default=Path("_build/dist"))
    v = sub.add_parser(
        "verify", help="check an archive (or unpacked bundle) against its manifest"
    )
    v.add_argument("bundle", type=Path, nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            archive = build(args.root, args.out)
            n = verify(archive)
            print(f"{archive}: {n} files, manifest verified")
        else:
            if args.bundle is None:
                raise BundleError(
                    "no bundle given (and none in _build/dist/): run `make dist` first"
                )
            n = verify(args.bundle)
            print(f"{args.bundle}: all {n} files match {MANIFEST}")
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
