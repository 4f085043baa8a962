"""What a sweep means: reads MLflow, never the training loop.

- ``inputs/``: the sweep's models discovered from MLflow, the eval set, the input sets (clean,
  adversarial, train split, inverted) and feature extraction with its cache;
- ``measures/``: the registry of similarity and agreement measures;
- ``engine/``: measure specs, pair planning, the serial and Ray-actor engines, the result store;
- ``reproduction/``: the paper's experiments and the verdicts on SPEC §8's eight targets;
- ``pipeline``: ``run_analysis`` / ``run_report``; ``report``: figures and the HTML page;
  ``__main__``: ``python -m analysis run|report|reproduce SWEEP``.

This file imports nothing, so ``import analysis.measures`` stays as light as the measures.
"""
