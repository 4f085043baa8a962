"""unisweep benchmarks: each module ``bench_*.py`` exposes ``run(quick=False) -> list[dict]``."""
