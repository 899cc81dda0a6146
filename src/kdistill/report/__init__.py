"""The report layer: reads a run's files (``summary.json``, ``*/metrics.jsonl``, ``*/predictions.pt``) and writes
``summary.md``, ``report.html`` and the figures. It imports the library only, never the experiment layer: what a
role wants said about itself is already in ``summary.json``."""
