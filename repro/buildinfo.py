"""What a build was made from: the book's version and the git state of its tree.

Standard library only: ``release/dist.py`` runs with the system Python (``make dist``), and the
Sphinx extension ``book/_ext/book_html.py`` stamps each page's footer with the same facts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def pyproject_version(root: Path) -> str:
    """``version`` of ``[project]`` in ``root/pyproject.toml`` (no tomllib: Python 3.10 lacks it).

    Raises ``ValueError`` when the file has no ``version = "..."`` line.
    """
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no version in {root / 'pyproject.toml'}")
    return match.group(1)


def git(root: Path, *args: str) -> str | None:
    """``git -C root <args>``'s stripped output, or ``None`` outside a checkout or without git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()
