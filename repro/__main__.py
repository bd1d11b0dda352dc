"""The book's reproduction machinery from the command line.

    python -m repro check [DIR]        judge the records of a build again and check the ledger is sound
    python -m repro diff A B           records whose outcome or statistic differs between two folders
    python -m repro paper [--chapter N]  run chapters at the papers' scale and record them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .ledger import book_chapters, diff, environments, summary_lines, validate
from .records import ROOT, load_ledger


def _check(args: argparse.Namespace) -> int:
    records = load_ledger(args.dir)
    for line in summary_lines(records):
        print(line)
    problems = validate(records, chapters=None if args.no_chapters else book_chapters())
    if problems:
        print(f"{len(problems)} problem(s) in the claims ledger:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("the claims ledger is sound")
    return 0


def _fmt(side) -> str:
    if side is None:
        return "absent"
    if isinstance(side, str):
        return side
    outcome, value = side
    return f"{outcome} ({value:.6g})" if isinstance(value, float) else str(outcome)


def _diff(args: argparse.Namespace) -> int:
    for name, d in (("A", args.a), ("B", args.b)):
        envs = {str(sorted(e.items())) for e in environments(d).values()}
        if len(envs) == 1:
            e = next(iter(environments(d).values()))
            print(f"{name} = {d}: {e.get('cpu')}, capability {e.get('cpu_capability')}, "
                  f"MKL_CBWR={e.get('MKL_CBWR') or '(default)'}, ATEN_CPU_CAPABILITY={e.get('ATEN_CPU_CAPABILITY') or '(default)'}, "
                  f"torch {e.get('torch')}")
    rows = diff(args.a, args.b)
    kinds = {k: [r for r in rows if r["kind"] == k] for k in ("outcome", "borderline", "statistic", "missing")}
    for k, title in (("outcome", "OUTCOME CHANGED"), ("borderline", "differs within a noise band"),
                     ("missing", "in one folder only"), ("statistic", "same outcome, another statistic")):
        if not kinds[k]:
            continue
        print(f"{title} ({len(kinds[k])}):")
        for r in kinds[k]:
            rel = f", relative change {r['rel']:.2e}" if r.get("rel") is not None else ""
            band = f", band {r['band']:.3g}" if r.get("band") else ""
            print(f"  {r['id']}: A {_fmt(r['a'])} | B {_fmt(r['b'])}{rel}{band}")
    print(f"{len(kinds['outcome'])} outcome change(s) outside a noise band, {len(kinds['borderline'])} within one, "
          f"{len(kinds['statistic'])} statistic change(s) with the same outcome, {len(kinds['missing'])} missing")
    return 1 if kinds["outcome"] or (kinds["missing"] and args.strict) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="judge a build's records again; fail on an unsound ledger")
    c.add_argument("dir", nargs="?", type=Path, default=ROOT / "_build" / "claims")
    c.add_argument("--no-chapters", action="store_true", help="do not require a record from every chapter")
    d = sub.add_parser("diff", help="records whose outcome or statistic differs between two claims folders")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    d.add_argument("--strict", action="store_true", help="also fail on records present in one folder only")
    p = sub.add_parser("paper", help="run chapters at the papers' scale (see repro.paper)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["paper"]:
        # argparse's REMAINDER does not take a leading option such as --chapter: hand the rest over as is
        from .paper import main as paper_main

        return paper_main(argv[1:])
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return _check(args)
    if args.cmd == "diff":
        return _diff(args)
    from .paper import main as paper_main

    return paper_main(args.rest)


if __name__ == "__main__":
    sys.exit(main())
