"""The book's reproduction machinery: claims, their judging rules, records, ledger and provenance.

:mod:`lib` holds the attention theory the chapters teach; this package holds what turns a
chapter's numbers into verdicts a reader can trust:

- :mod:`repro.claims` -- ``check`` / ``control`` / ``not_tested``, the chapter-facing API;
- :mod:`repro.rules` -- the judging rules (statistics, noise bands, settings, power), written once;
- :mod:`repro.records` -- the record files and their schema (``record.schema.json``);
- :mod:`repro.ledger` -- judge a folder of records again, check it, compare two folders;
- :mod:`repro.provenance` -- paper-scale records, fingerprints and staleness;
- :mod:`repro.paper` -- the paper-scale runner;
- :mod:`repro.sphinx_ext` -- the ``claims-ledger`` / ``claims-summary`` directives;
- :mod:`repro.scale`, :mod:`repro.progress`, :mod:`repro.plotting`, :mod:`repro.timing` -- the
  scale switch, progress bars, figure style and benchmark timing.

Command line: ``python -m repro check | diff | paper``.
"""

__all__ = ["__version__"]
__version__ = "0.2.0"
