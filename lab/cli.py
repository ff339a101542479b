"""The `commlab` command line.

    commlab run --technique local_sgd --workers 8 --sync-period 16 --steps 200 --dataset digits --model mlp

prints a summary (final loss, accuracy, bytes, simulated time) and the run
directory. On a real process group, one process per worker:

    torchrun --nproc-per-node 4 -m lab.cli run --backend distributed --workers 4 ...

(rank 0 writes the run directory). A bad option value prints the validation
message and exits with status 2, without a traceback.

    commlab run --technique ddp --steps 200 --checkpoint-every 50
    commlab run --resume runs/<id>

checkpoints a simulated run every 50 steps and continues an interrupted one
from its last checkpoint, in its directory (lab.checkpoint).
"""
from __future__ import annotations

import argparse
import sys

from lab import checkpoint
from lab.config import ALWAYS, COMMON, KNOBS, ExperimentConfig, reads
from lab.experiment import run
from lab.registry import techniques

#: option names that read better than the field names
ALIASES = {"num_workers": "workers"}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def _number(kind):
    """int/float parsing that never raises OverflowError (the config then says what is allowed)."""
    def parse(text: str):
        try:
            return kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    return parse


TYPES = {int: _number(int), float: _number(float), str: str, bool: _bool}


def _option(name: str) -> str:
    return "--" + ALIASES.get(name, name).replace("_", "-")


def _help(name: str, knob) -> str:
    text = f"{knob.help}; {knob.allowed()} (default: {knob.default})"
    if name not in ALWAYS:
        who = [t for t in techniques() if name in reads(t)]
        text += f"; read by: {', '.join(who)}"
    if knob.read_when is not None:
        text += f" ({knob.why})"
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="commlab", description="communication-efficient training lab")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one experiment and print its summary",
                       description="Train one experiment and print its summary. Every option is a knob of "
                                   "lab.config.ExperimentConfig; an option the chosen technique does not read "
                                   "is refused. `commlab techniques` lists what each technique reads.")
    common = p.add_argument_group("common knobs")
    own = {}
    for name, cls in techniques().items():
        own[name] = p.add_argument_group(f"{name} ({cls.label or name})")
    placed = set()
    for name, knob in KNOBS.items():
        if name in COMMON:
            group = common
        else:
            group = next(own[t] for t, cls in techniques().items() if name in cls.declared_knobs())
        # options not given stay out of the config, so a technique's own defaults apply (lab.config.UNSET)
        kw = {"dest": name, "type": TYPES[knob.type], "default": argparse.SUPPRESS, "help": _help(name, knob)}
        if knob.choices is not None:
            kw["metavar"] = "NAME"
        group.add_argument(_option(name), **kw)
        placed.add(name)
    p.add_argument("--runs-dir", default=None, help="where run directories go (default: ./runs or $COMMLAB_RUNS_DIR)")
    p.add_argument("--no-save", action="store_true", help="do not write a run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-every", type=TYPES[int], default=None, metavar="K",
                   help="write runs/<id>/checkpoint.pt every K steps (K rounds for round-budgeted techniques)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint, with its config (options given "
                        "must equal it); it ends bit for bit where the uninterrupted run would")
    t = sub.add_parser("techniques", help="list the techniques and the knobs each reads")
    t.add_argument("name", nargs="?", default=None, help="one technique (default: all)")
    return parser


def list_techniques(name: str | None = None) -> str:
    """Every technique (or one) with its label, budget, compressor path and its own knobs."""
    lines = []
    for t, cls in techniques().items():
        if name is not None and t != name:
            continue
        path = f", compresses {cls.compressor_path}" if cls.compressor_path else ""
        lines.append(f"{t}: {cls.label or t} (budget: {cls.budget}{', federated' if cls.federated else ''}{path})")
        for field in sorted(reads(t) - set(ALWAYS)):
            lines.append(f"    {_option(field)}  {KNOBS[field].allowed()} (default: {KNOBS[field].default})")
    if name is not None and not lines:
        raise ValueError(f"technique={name!r} is invalid: expected one of {list(techniques())}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "techniques":
            print(list_techniques(args.name))
            return 0
        given = {name: getattr(args, name) for name in KNOBS if hasattr(args, name)}
        if args.resume is not None:  # the run's own config; an option given must not change it
            saved = checkpoint.read(args.resume)
            config = ExperimentConfig.from_dict(checkpoint.stored_config(saved))
            config = config.replace(**given) if given else config
        else:
            config = ExperimentConfig(**given)
        result = run(config, runs_dir=args.runs_dir, save=not args.no_save, progress=not args.quiet,
                     checkpoint_every=args.checkpoint_every, resume=args.resume)
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
        if result.error:
            print(f"  {result.status}: {result.error}")
        if result.path is not None:
            print(f"  run directory: {result.path}")
    return 0 if result.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
