"""Keep the browser test out of the default ``pytest`` run.

The browser test needs the built book (``make book``) and Chromium, so the default test run
(``make test``: lib tests and chapters) does not collect it. It runs with ``make browser-test``
(which sets ``BOOK_BROWSER_TEST=1``), or when this folder or file is named on the command line:
``.venv/bin/pytest tests/browser``.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _named_on_command_line(config) -> bool:
    root = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (root / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if os.environ.get("BOOK_BROWSER_TEST") == "1" or _named_on_command_line(config):
        return None
    return True
