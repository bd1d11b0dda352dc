"""Fail when the claims ledger of a build is unsound.

    python tools/check_ledger.py [CLAIMS_DIR]      # default: _build/claims

Checks every record written by ``lib.claims.check``: the keys the ledger needs are present, no
record failed, every paper claim carries a negative control that fails its bound, and every
chapter in ``chapters/`` wrote records. Prints the counts per chapter in the ledger's words.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.claims import _count, load_ledger, validate_records


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else ROOT / "_build" / "claims"
    records = load_ledger(directory)
    problems = validate_records(records)
    chapters = sorted(int(p.name[2]) for p in (ROOT / "chapters").glob("ch[0-9]_*.md"))
    seen = {r["chapter"] for r in records}
    problems += [f"chapter {c} wrote no record" for c in chapters if c not in seen]
    for c in sorted(seen):
        print(f"chapter {c}: {_count([r for r in records if r['chapter'] == c])['text']}")
    print(f"book: {_count(records)['text']}")
    if problems:
        print(f"{len(problems)} problem(s) in the claims ledger:")
        for p in problems:
            print(f"  - {p}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
