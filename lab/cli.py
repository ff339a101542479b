"""The `commlab` command line.

    commlab run --technique local_sgd --workers 8 --sync-period 16 --steps 200 --dataset digits --model mlp

prints a summary (final loss, accuracy, bytes, simulated time) and the run
directory. On a real process group, one process per worker:

    torchrun --nproc-per-node 4 -m lab.cli run --backend distributed --workers 4 ...

(rank 0 writes the run directory). A bad option value prints the validation
message and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from lab.experiment import ExperimentConfig, run

#: option names that read better than the field names
ALIASES = {"num_workers": "workers"}
def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


TYPES = {"int": int, "float": float, "str": str, "bool": _bool}


def _option(name: str) -> str:
    return "--" + ALIASES.get(name, name).replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="commlab", description="communication-efficient training lab")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one experiment and print its summary",
                       description="Train one experiment and print its summary. Every option is a field of "
                                   "lab.experiment.ExperimentConfig.")
    for f in fields(ExperimentConfig):
        kw = {"dest": f.name, "type": TYPES[str(f.type)], "default": f.default,
              "help": f"{f.metadata['help']} (default: {f.default})"}
        if "choices" in f.metadata:
            kw["help"] = f"{f.metadata['help']}: {', '.join(map(str, f.metadata['choices']))} (default: {f.default})"
            kw["metavar"] = "NAME"
        p.add_argument(_option(f.name), **kw)
    p.add_argument("--runs-dir", default=None, help="where run directories go (default: ./runs or $COMMLAB_RUNS_DIR)")
    p.add_argument("--no-save", action="store_true", help="do not write a run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig)}
    try:
        config = ExperimentConfig(**values)
        result = run(config, runs_dir=args.runs_dir, save=not args.no_save, progress=not args.quiet)
    except ValueError as e:
        print(f"commlab: error: {e}", file=sys.stderr)
        return 2
    if result.path is not None or config.backend == "simulated":
        s = result.summary()
        acc = "" if s["eval_accuracy"] != s["eval_accuracy"] else f"  accuracy {s['eval_accuracy']:.4f}"
        print(f"{s['technique']} on {config.num_workers} workers: {s['status']} after {s['steps']} steps, "
              f"{s['rounds']} rounds")
        print(f"  final loss {s['final_loss']:.4f}  eval loss {s['eval_loss']:.4f}{acc}")
        print(f"  bytes sent {s['bytes']:,} ({s['bytes'] / 1e6:.2f} MB)  simulated time {s['sim_seconds']:.6g} s "
              f"on {config.topology}  (wall {s['wall_seconds']:.2f} s)")
        if result.path is not None:
            print(f"  run directory: {result.path}")
    return 0 if result.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
