"""``python -m analysis run SWEEP`` / ``report SWEEP`` / ``reproduce SWEEP``.

User errors (unknown sweep, unknown measure, bad actors count, ...) print one line and exit 2,
without a traceback (``trainables.errors.user_errors``). Progress goes to stderr; the final lines
say where the report is. The commands' modules are imported when a command runs, so ``--help``
and argument errors answer without importing numpy, mlflow or (for ``reproduce``) torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from analysis.progress import ProgressLine as _Progress
from trainables.errors import user_errors

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis",
                                description="All-pairs similarity analysis of a sweep.")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="compute the missing pair results of a sweep")
    run.add_argument("sweep")
    run.add_argument("--measures", nargs="+", default=None,
                     help="measure specs name[:key=value...], space or comma separated "
                          "(default: the paper's set + linear_cka + the inversion transfer, "
                          "which runs on the inverted set only)")
    run.add_argument("--actors", type=int, default=2,
                     help="Ray actors for the pair engine (0 = serial, no Ray); default 2")
    run.add_argument("--backend", default="numpy", choices=("numpy", "torch", "auto"),
                     help="array library of the measures: numpy (float64 reference), torch "
                          "(float32, CPU or GPU), auto (per measure, the faster); measures "
                          "without a torch implementation run on numpy; default numpy")
    run.add_argument("--device", default=None,
                     help="cpu, cuda (cuda:N with --actors 0); default cpu, or cuda with "
                          "--gpus-per-actor")
    run.add_argument("--gpus-per-actor", type=float, default=0.0,
                     help="GPUs each Ray actor reserves, fractions allowed (0.25: four actors "
                          "per GPU); needs --backend torch or auto; default 0")
    run.add_argument("--input-sets", default="clean",
                     help="comma separated: clean, adv (per model), adv_shared, inverted (per "
                          "model), train_split; options as name:key=value[:key=value], e.g. "
                          "inverted:iterations=200:num_targets=64; default clean")
    run.add_argument("--tracking-uri", default=None)
    run.add_argument("--retry-errors", action="store_true",
                     help="recompute pairs stored with status=error")
    run.add_argument("--no-report", action="store_true", help="skip building the report")
    run.add_argument("--epoch", "--epochs", dest="epochs", default=None, metavar="E[,E...]|all",
                     help="compare the models at these training epochs (the checkpoints logged "
                          "with train.checkpoint_every; the last epoch is the final model), "
                          "each with the models of its epoch; all: every logged epoch; "
                          "default: the final models")
    rep = sub.add_parser("report", help="figures + HTML report from the stored table")
    rep.add_argument("sweep")
    rep.add_argument("--tracking-uri", default=None)
    rpr = sub.add_parser("reproduce", help="the paper's experiments and a verdict on SPEC §8's "
                                          "eight targets -> reports/<sweep>/reproduction.md")
    rpr.add_argument("sweep")
    rpr.add_argument("--tracking-uri", default=None)
    rpr.add_argument("--ray", action="store_true",
                     help="run inversion and feature extraction as Ray tasks (a local Ray is "
                          "started unless RAY_ADDRESS names a cluster)")
    rpr.add_argument("--max-train", type=int, default=None,
                     help="train-split images for the probes (seeded subset; default: all)")
    for cmd in (run, rpr):
        g = cmd.add_argument_group("eval-set overrides (default: read from the sweep's runs)")
        g.add_argument("--data-root", default=None)
        g.add_argument("--eval-size", type=int, default=None)
        g.add_argument("--data-seed", type=int, default=None)
    return p


def _measures(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [m for v in values for m in v.split(",") if m.strip()]


def _run(args) -> None:
    from analysis.inputs import parse_epochs  # see the module docstring
    from analysis.pipeline import run_analysis
    from analysis.reporting import run_report

    epochs = None if args.epochs is None else parse_epochs(args.epochs)
    progress = _Progress(sys.stdout)  # stderr holds only the one-line error, if any
    res = run_analysis(args.sweep, tracking_uri=args.tracking_uri,
                       measures=_measures(args.measures), actors=args.actors,
                       input_sets=[s.strip() for s in args.input_sets.split(",") if s.strip()],
                       data_root=args.data_root, eval_size=args.eval_size,
                       data_seed=args.data_seed, retry_errors=args.retry_errors,
                       progress=progress, epochs=epochs, backend=args.backend,
                       device=args.device, gpus_per_actor=args.gpus_per_actor)
    print(f"analysed {len(res.models)} models of sweep {res.sweep!r}: {res.new_rows} new pair "
          f"results ({res.total_rows} stored, {res.error_rows} errors) in {res.wall_s:.1f} s")
    if args.actors > 0:  # what the Ray engine survived (the fault tests read this line)
        print(f"engine: {res.stats.get('pairs', 0)} pairs on {args.actors} actors, "
              f"{res.stats.get('restarts', 0)} actor restart(s), "
              f"{res.stats.get('requeued_tiles', 0)} re-queued tile(s)")
    for key, why in res.skipped.items():
        print(f"  skipped {why} [{key}]")
    print(f"table: {res.pairs_path}")
    if not args.no_report:
        html = run_report(args.sweep, tracking_uri=args.tracking_uri)
        print(f"report: {html}")
    print("browse runs and report artifacts with: make ui")


def _report(args) -> None:
    from analysis.reporting import run_report  # see the module docstring

    html = run_report(args.sweep, tracking_uri=args.tracking_uri)
    print(f"report: {html}")
    print("browse runs and report artifacts with: make ui")


def _reproduce(args) -> None:
    from analysis.pipeline import ensure_ray  # see the module docstring
    from analysis.reproduction import run_reproduction  # torch: only for this command

    started = ensure_ray(1 if args.ray else 0)
    try:
        md = run_reproduction(args.sweep, tracking_uri=args.tracking_uri,
                              data_root=args.data_root, eval_size=args.eval_size,
                              data_seed=args.data_seed, max_train=args.max_train,
                              use_ray=args.ray, progress=_Progress(sys.stdout))
    finally:
        if started:
            import ray  # ensure_ray started it, so it is imported already

            ray.shutdown()
    for g in json.loads(md.with_suffix(".json").read_text())["groups"]:
        print(f"  {g['dataset']}, {g['threat_model']}:")
        for t in g["targets"]:
            print(f"    target {t['number']}: {t['status']} - {t['title']}{_key_text(t['key'])}")
    print(f"reproduction: {md}")


def _key_text(key: dict | None) -> str:
    """`` (agreement cross +0.0065 [-0.0210, +0.0360], 3 x 2 loao-jackknife)`` or ``""``."""
    if not key or key.get("value") is None:
        return ""
    ci = f" [{key['ci'][0]:+.4f}, {key['ci'][1]:+.4f}]" if key.get("ci") else " (no interval)"
    return (f" ({key['measure']} {key['kind']} {key['value']:+.4f}{ci}, "
            f"{key['n_archs']} x {key['n_seeds']} {key['method']})")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        with user_errors():
            {"run": _run, "report": _report, "reproduce": _reproduce}[args.cmd](args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
