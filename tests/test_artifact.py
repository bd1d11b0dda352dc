"""The book as a research artifact: pinned environment, citation metadata, release bundle.

- ``requirements.lock`` pins every package with its exact version and sha256 hashes, covers
  every requirement of ``pyproject.toml`` and ``requirements.in``, and ``make install`` installs
  exactly it (pip ``--no-deps --require-hashes``) and nothing unpinned;
- ``environment.yml`` agrees with it (conda gives Python and make; the Makefile the packages);
- ``CITATION.cff`` is valid against the CFF 1.2.0 JSON schema (shipped inside the cffconvert
  wheel, which the lock installs; nothing is downloaded), names the version of
  ``pyproject.toml`` and cites the five papers as ``book/references.bib`` does;
- ``release/dist.py`` (``make dist``, ``make dist-verify``) on a small fake built tree: the
  archive holds every part with a manifest that verifies, and a changed, missing or extra file
  fails the verification;
- the book's HTML extension stamps version and commit into every page's footer and writes the
  execution-status table in words.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import PackageNotFoundError, distribution, distributions
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dist = _load("book_release_dist", ROOT / "release" / "dist.py")


def _lock_entries() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in the lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            current = _norm(match[1])
            assert current not in entries, f"{current} pinned twice"
            entries[current] = (match[2], [])
        elif current and line.strip().startswith("--hash=sha256:"):
            entries[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif line.strip() and not line.lstrip().startswith("#"):
            pytest.fail(f"unexpected line in {LOCK.name}: {line!r}")
    return entries


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)[0]))
    return names


def _pyproject_requirements() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)[1]
    extras = re.search(
        r"^\[project\.optional-dependencies\](.*?)^\[", text, re.MULTILINE | re.DOTALL
    )[1]
    quoted = re.findall(r'^\s*"([^"]+)"', deps + extras, re.MULTILINE)
    return _requirement_names(quoted)


# make run from a test: not a sub-make of the `make test` that started pytest
MAKE_ENV = {
    k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
}


def _makefile_nodeps() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return re.search(r"^NODEPS := (.*)$", text, re.MULTILINE)[1].split()


# --- the pinned environment ---------------------------------------------------------------


def test_lock_pins_every_package_exactly_with_hashes():
    entries = _lock_entries()
    assert len(entries) > 100
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (name, version)
        assert hashes, f"{name}=={version} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    # every direct requirement is locked, the installers too
    wanted = _pyproject_requirements() | _requirement_names(
        (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines()
    )
    assert wanted - set(entries) == set()
    assert {"pip", "setuptools", "jupyterlab", "jupytext"} <= set(entries)
    # torch is the CPU build of the Makefile's TORCH; the packages installed without
    # dependencies are locked too
    assert entries["torch"][0] == "2.13.0+cpu"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    torch_pin = re.search(r"^TORCH_LOCKED := (\S+)$", makefile, re.MULTILINE)[1]
    assert (
        torch_pin in (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines()
    )
    assert entries["torch"][0].split("+")[0] == torch_pin.split("==")[1]
    for pin in _makefile_nodeps():
        name, version = pin.split("==")
        assert entries[_norm(name)][0] == version, pin


def test_lock_header_names_the_refresh_command():
    head = LOCK.read_text(encoding="utf-8")[:400]
    assert "autogenerated by pip-compile with Python 3.11" in head
    assert "#    make lock\n" in head


def test_make_install_installs_exactly_the_lock(tmp_path):
    """The install recipe (dry run): every pip call is --no-deps, hash-checked from the lock."""
    venv = tmp_path / "venv"
    out = subprocess.run(
        ["make", "-n", "-B", "install", f"VENV={venv}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        env=MAKE_ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pip_calls = [
        line for line in out.splitlines() if re.search(r"-m pip install", line)
    ]
    assert pip_calls, out
    for line in pip_calls:
        assert "--no-deps" in line, line
        assert "--require-hashes" in line or ("-e ." in line), line
    assert "--require-hashes -r build/lock/rest.txt" in out
    assert "--require-hashes -r build/lock/torch.txt" in out
    assert "LOCK_CHECK" in out or "as locked" in out
    # another TORCH (a CUDA build) replaces the locked torch, with the rest still locked
    gpu = subprocess.run(
        [
            "make",
            "-n",
            "-B",
            "install",
            f"VENV={venv}",
            "TORCH=torch==2.13.0 --index-url X",
        ],
        cwd=ROOT,
        env=MAKE_ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-m pip install --quiet torch==2.13.0 --index-url X" in gpu
    assert not [x for x in gpu.splitlines() if "pip install" in x and "torch.txt" in x]
    assert "--require-hashes -r build/lock/rest.txt" in gpu


def test_environment_matches_the_lock():
    """This environment, if `make install` made it from this lock, holds exactly the lock."""
    stamp = Path(sys.prefix) / ".installed"
    if not stamp.is_file() or stamp.stat().st_mtime < LOCK.stat().st_mtime:
        pytest.skip(f"{sys.prefix} was not installed by `make install` from this lock")
    entries = _lock_entries()
    have = {_norm(d.metadata["Name"]): d.version for d in distributions()}
    wrong = {n: (v, have.get(n)) for n, (v, _) in entries.items() if have.get(n) != v}
    assert not wrong, f"locked (version, installed): {wrong}"


def test_environment_yml_agrees_with_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    deps = env["dependencies"]
    python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]  # the lock's Python
    # conda provides only the interpreter and the tools; every package comes from the lock
    assert {d for d in deps if isinstance(d, str)} == {"python=3.11", "pip", "make"}
    assert not [d for d in deps if isinstance(d, dict)], (
        "no pip section: the lock is it"
    )


# --- citation metadata ----------------------------------------------------------------------


def _cff_schema() -> dict:
    try:
        dist_ = distribution("cffconvert")
    except PackageNotFoundError:
        if IN_CI:
            pytest.fail("cffconvert (locked) is not installed: `make install`")
        pytest.skip("cffconvert is not installed (`make install` installs the lock)")
    path = Path(dist_.locate_file("cffconvert/schemas/1.2.0/schema.json"))
    return json.loads(path.read_text(encoding="utf-8"))


def _cff_errors(data: dict) -> list[str]:
    import jsonschema

    schema = _cff_schema()
    validator = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(data)
    ]


def _citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_citation_cff_is_valid_cff_1_2():
    cff = _citation()
    assert cff["cff-version"] == "1.2.0"
    assert _cff_errors(cff) == []


def test_cff_validation_rejects_broken_metadata():
    broken = _citation()
    del broken["authors"]
    broken["references"][0]["doi"] = "not a doi"
    errors = _cff_errors(broken)
    assert any("authors" in e for e in errors), errors
    assert any("references/0/doi" in e for e in errors), errors


def test_citation_version_is_the_package_version():
    assert str(_citation()["version"]) == dist.pyproject_version(ROOT)


def test_citation_references_are_the_five_papers():
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    refs = _citation()["references"]
    arxiv = {
        "2205.01080": ("Shim", 2022),
        "2304.07235": ("Rende", 2024),
        "2501.18322": ("Castin", 2025),
        "2106.01506": ("Wright", 2021),
        "2407.01602": ("Alcalde", 2025),
    }
    assert len(refs) == 5
    for ref in refs:
        ids = {i["value"] for i in ref["identifiers"]}
        (number,) = [v.removeprefix("arXiv:") for v in ids if v.startswith("arXiv:")]
        first, year = arxiv.pop(number)
        assert ref["authors"][0]["family-names"] == first
        assert ref["year"] == year
        assert ref["doi"] == f"10.48550/arXiv.{number}"
        # the same paper in the bibliography: title and author count agree
        entry = next(e for e in bib.split("\n@") if number in e)
        bib_title = (
            re.search(r"title\s*=\s*\{(.*)\},", entry)[1]
            .replace("{", "")
            .replace("}", "")
        )
        assert ref["title"].lower() == bib_title.lower()
        bib_authors = re.search(r"author\s*=\s*\{(.*)\},", entry)[1].split(" and ")
        assert len(ref["authors"]) == len(bib_authors)
    assert not arxiv


# --- the release bundle ---------------------------------------------------------------------


def _notebook(outputs: bool) -> str:
    cell = {
        "cell_type": "code",
        "execution_count": 1 if outputs else None,
        "metadata": {},
        "outputs": [{"output_type": "stream", "name": "stdout", "text": "2\n"}]
        if outputs
        else [],
        "source": "print(1 + 1)",
    }
    return json.dumps(
        {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    )


@pytest.fixture
def built_tree(tmp_path):
    """A small fake tree after `make book`: the parts of the bundle, a few files each."""
    root = tmp_path / "tree"
    files = {
        "_build/html/index.html": "<html>index</html>",
        "_build/html/chapters/ch1.html": "<html>chapter 1</html>",
        "_build/html/_static/book.css": "body {}",
        "_build/html/_sources/chapters/ch1.ipynb": _notebook(outputs=True),
        "_build/jupyter_execute/chapters/ch1.ipynb": _notebook(outputs=False),
        "_build/jupyter_execute/chapters/ch2.ipynb": _notebook(outputs=False),
        "build/notebooks/ch2.ipynb": _notebook(outputs=True),
        "_build/claims/chapter-1.json": '{"claims": []}',
        "results/paper/chapter-1.json": '{"records": []}',
        "requirements.lock": "six==1.17.0 \\\n    --hash=sha256:" + "0" * 64 + "\n",
        "CITATION.cff": "cff-version: 1.2.0\n",
        "README.md": "# a book\n",
        "pyproject.toml": '[project]\nname = "x"\nversion = "9.8.7"\n',
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_dist_bundles_every_part_with_a_manifest(built_tree, tmp_path):
    archive = dist.build(built_tree, tmp_path / "dist")
    assert archive.name == "attention-reproduced-9.8.7-nocommit.tar.gz"
    assert dist.verify(archive) == 13
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        manifest = (
            tar.extractfile("attention-reproduced-9.8.7-nocommit/MANIFEST.sha256")
            .read()
            .decode()
        )
        info = json.loads(
            tar.extractfile(
                "attention-reproduced-9.8.7-nocommit/BUILD-INFO.json"
            ).read()
        )
    assert names == {
        "html/index.html",
        "html/chapters/ch1.html",
        "html/_static/book.css",
        "html/_sources/chapters/ch1.ipynb",
        # executed notebooks: the first with outputs of each chapter
        "notebooks/chapters/ch1.ipynb",
        "notebooks/chapters/ch2.ipynb",
        "claims/chapter-1.json",
        "results/paper/chapter-1.json",
        "requirements.lock",
        "CITATION.cff",
        "README.md",
        "pyproject.toml",
        "BUILD-INFO.json",
        "MANIFEST.sha256",
    }
    assert info["version"] == "9.8.7"
    line = re.compile(r"^[0-9a-f]{64}  \S+$")
    assert all(line.match(x) for x in manifest.splitlines())
    # reproducible: the same tree gives the same bytes
    again = dist.build(built_tree, tmp_path / "dist2")
    assert again.read_bytes() == archive.read_bytes()


def test_dist_verify_catches_changed_missing_and_extra_files(built_tree, tmp_path):
    archive = dist.build(built_tree, tmp_path / "dist")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    unpacked = next((tmp_path / "x").iterdir())
    assert dist.verify(unpacked) == 13
    if shutil.which("sha256sum"):  # the manifest is sha256sum's format
        subprocess.run(
            ["sha256sum", "--check", "--quiet", "MANIFEST.sha256"],
            cwd=unpacked,
            check=True,
        )
    (unpacked / "claims" / "chapter-1.json").write_text("{}", encoding="utf-8")
    with pytest.raises(
        dist.BundleError, match="checksum differs: claims/chapter-1.json"
    ):
        dist.verify(unpacked)
    (unpacked / "claims" / "chapter-1.json").unlink()
    with pytest.raises(dist.BundleError, match="missing: claims/chapter-1.json"):
        dist.verify(unpacked)
    (unpacked / "stray.txt").write_text("x", encoding="utf-8")
    with pytest.raises(dist.BundleError, match="not in the manifest: stray.txt"):
        dist.verify(unpacked)


def test_dist_refuses_an_unbuilt_tree(built_tree, tmp_path):
    shutil.rmtree(built_tree / "_build" / "claims")
    with pytest.raises(dist.BundleError, match="no claim records"):
        dist.build(built_tree, tmp_path / "dist")


def test_make_dist_and_dist_verify(built_tree, tmp_path):
    """The command line as `make dist` / `make dist-verify` call it."""
    out = tmp_path / "dist"
    script = ROOT / "release" / "dist.py"
    run = [sys.executable, str(script)]
    made = subprocess.run(
        [*run, "build", "--root", str(built_tree), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert "manifest verified" in made.stdout
    (archive,) = out.glob("*.tar.gz")
    checked = subprocess.run(
        ["make", "-s", "dist-verify", f"ARCHIVE={archive}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        env=MAKE_ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "all 13 files match MANIFEST.sha256" in checked.stdout
    archive.write_bytes(archive.read_bytes()[:-200])  # a truncated download
    bad = subprocess.run(
        [*run, "verify", str(archive)], capture_output=True, text=True, check=False
    )
    assert bad.returncode != 0


# --- version on every page; execution status in words --------------------------------------


@pytest.fixture(scope="module")
def book_html():
    return _load("book_html_ext", ROOT / "book" / "_ext" / "book_html.py")


def test_build_stamp_reads_the_tree_it_is_given(book_html, tmp_path):
    """The footer's facts and the bundle's come from one helper, for the folder asked about:
    outside a git checkout the commit is unknown rather than the book's own."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nversion = "9.9.9"\n', encoding="utf-8"
    )
    stamp = book_html.build_stamp(tmp_path)
    assert stamp == {"version": "9.9.9", "commit": None, "dirty": False}
    info = dist.build_info(tmp_path)
    assert info["version"] == "9.9.9" and info["commit"] is None and info["epoch"] == 0
    (tmp_path / "pyproject.toml").write_text("[project]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no version"):
        dist.pyproject_version(tmp_path)


def test_footer_names_version_and_commit(book_html):
    stamp = book_html.build_stamp()
    assert stamp["version"] == dist.pyproject_version(ROOT)
    footer = book_html.footer_html(
        {"version": "1.2.3", "commit": "a" * 40, "dirty": False}
    )
    assert "version 1.2.3" in footer and "aaaaaaaaaaaa" in footer
    assert "uncommitted" in book_html.footer_html(
        {"version": "1.2.3", "commit": "a" * 40, "dirty": True}
    )
    assert "commit unknown" in book_html.footer_html(
        {"version": "1.2.3", "commit": None}
    )

    config = SimpleNamespace(
        html_theme_options={"extra_footer": "<p>before</p>"},
        html_context={"default_mode": "light"},
    )
    book_html._stamp_footer(None, config)
    assert config.html_theme_options["extra_footer"].startswith("<p>before</p>")
    assert f"version {stamp['version']}" in config.html_theme_options["extra_footer"]
    assert config.html_context["default_mode"] == "light"


def test_execution_table_status_in_words(book_html):
    from myst_nb.ext.execution_tables import make_stat_table

    metadata = {
        "chapters/a": {
            "exec_data": {
                "mtime": 0,
                "method": "cache",
                "runtime": 1.0,
                "succeeded": True,
                "error": None,
            }
        },
        "chapters/b": {
            "exec_data": {
                "mtime": 0,
                "method": "cache",
                "runtime": 2.0,
                "succeeded": False,
                "error": "boom",
            }
        },
    }
    table = make_stat_table("book/status", metadata)
    assert "\u2705" in table.astext()  # what MyST-NB writes

    book_html.ExecStatusWords.run(SimpleNamespace(document=table))
    text = table.astext()
    assert "passed" in text and "failed" in text
    assert not re.search(r"[^\x00-\x7f]", text), text
