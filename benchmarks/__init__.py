"""Throughput and memory benchmarks of the input pipeline, the train step and evaluation.

``python benchmarks/run.py`` (or ``python -m benchmarks.run``) runs them and prints a Markdown
table; see ``benchmarks/README.md``. The package modules:

- :mod:`benchmarks.baseline_loader` - the reference loader written the way SURFsara read data;
- :mod:`benchmarks.workload` - synthetic large originals and their cache;
- :mod:`benchmarks.measure` - one function per measurement, peak-memory bookkeeping, worker entry;
- :mod:`benchmarks.report` - the table, the ratios and the issue's targets.
"""
