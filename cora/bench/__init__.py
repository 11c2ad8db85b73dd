"""The benchmark runners, importable from an installed package; benchmarks/*.py are their script faces.

- `vocab_scaling` (the main job: latency vs vocabulary size K, CORA against OV-DETR-style conditional decoding)
  with its parts `vocab_backends` (runners per method and backend), `vocab_cells` (the measurement of one cell),
  `vocab_report` (tables, summary, plot) and `conditional_baseline` (the OV-DETR-style baseline);
- `train_step` (one class-dropout training step: `CORA.forward_train` against two `CORA.forward` calls);
- `common` (`measure`, machine description, tables, the default results folder) and `timing` (stage timer,
  peak memory, budget, time limit).

Each runner's `main(argv=None, out_dir=None) -> int` is its command line. Results go to --out-dir: the scripts
in benchmarks/ pass the checkout's benchmarks/results/; otherwise the default is ./benchmarks/results when it
exists, else the current directory (`common.default_out_dir`).
"""
