"""The experiment config: common knobs here, each technique's own knobs in its class, one validated dataclass.

`ExperimentConfig` is assembled from `COMMON` (what every run has: workers,
data, model, optimizer, topology, compression) and the `knobs` every
registered technique declares (`lab.registry`). It is frozen and checked on
construction, before anything is allocated:

1. every field against its Knob (type, finite, bounds, choices);
2. every field set away from its default must be read by the chosen technique
   (`Technique.read_fields()`, the compressor fields where it declares a
   `compressor_path`, conditional knobs whose `read_when` holds) — otherwise a
   ValueError names the field, the technique and the techniques that read it;
3. cross-field rules: the families' options modules and `Technique.check`.

Two checks need the data or the machine and run when the run starts, before
the model is replicated (`lab.experiment.build_context`): `batch_size` against
the smallest worker's shard, and the memory estimate (`lab.budget`).

`config_for(technique, **settings)` builds a config from a shared base keeping
only what that technique reads, for notebooks that sweep several techniques.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from lab import pretrain, registry
from lab.compress.error_feedback import FEEDBACK
from lab.compress.registry import COMPRESSORS, SCOPED, SCOPES, has_algorithms, reads_ratio
from lab.data import DATASETS, PARTITIONS
from lab.device import DEVICES, check as check_device
from lab.knobs import Knob, bad
from lab.models import COMPATIBLE, MODELS
from lab.schedule import SCHEDULES
from lab.topology import ALL_REDUCE_CHOICES, PRESETS
from lab.topology.compressed import CHOICES as COMPRESSED_CHOICES

OPTIMIZERS = ("sgd", "adamw", "adam_mini")
BACKENDS = ("simulated", "distributed")
BIG = 10**9  # upper bound of counts that size nothing by themselves


def _tech(c):
    return registry.technique(c.technique)


def _optimizer(c) -> str:
    from lab.optim import optimizer_name

    return optimizer_name(c)


def _takes_compressor(c) -> bool:
    return _tech(c).compressor_path is not None


#: knobs every technique reads (or reads under the stated condition)
COMMON: dict[str, Knob] = {
    "technique": Knob("ddp", "training technique (lab.registry)", choices=None),  # choices filled below
    "num_workers": Knob(8, "number of workers (ranks or federated clients)", low=1, high=100_000),
    "steps": Knob(200, "local steps per worker (step-budgeted techniques)", low=1, high=10**7,
                  read_when=lambda c: _tech(c).budget == "steps", why="the technique is budgeted in rounds"),
    "rounds": Knob(20, "communication rounds (round-budgeted techniques, e.g. federated ones)", low=1, high=10**6,
                   read_when=lambda c: _tech(c).budget == "rounds", why="the technique is budgeted in steps"),
    "dataset": Knob("digits", "dataset", choices=DATASETS),
    "model": Knob("mlp", "model", choices=MODELS),
    "partition": Knob("iid", "how data is split across workers", choices=PARTITIONS),
    "dirichlet_alpha": Knob(0.5, "Dirichlet concentration for partition=dirichlet (small = skewed)", low=0.0,
                            low_open=True, high=1e6, read_when=lambda c: c.partition == "dirichlet",
                            why="only partition='dirichlet' reads it"),
    "shards_per_worker": Knob(2, "label shards per worker for partition=shards", low=1, high=10_000,
                              read_when=lambda c: c.partition == "shards", why="only partition='shards' reads it"),
    "examples_per_worker": Knob(0, "partition='iid': examples each worker holds (0 = an equal split of the training "
                                "set; k > 0: k each, dealt from fresh shuffles of the set as often as the workers "
                                "need, so workers share examples when num_workers x k exceeds it)", low=0,
                                high=10**6, read_when=lambda c: c.partition == "iid",
                                why="only partition='iid' reads it"),
    "batch_size": Knob(32, "minibatch size per worker", low=1, high=65_536),
    "lr": Knob(0.5, "learning rate; left at 0.5, a technique that declares its own default_lr uses that "
               "(large values are allowed: divergence is reported, not prevented)", low=0.0,
               low_open=True, high=1e30, scale="log"),
    "topology": Knob("nvlink_node", "network preset for simulated time", choices=tuple(PRESETS)),
    "all_reduce_algorithm": Knob("auto", "all-reduce algorithm of the cost model: auto (ring vs hierarchical/torus), "
                                 "cheapest (every algorithm), or one pinned", choices=ALL_REDUCE_CHOICES),
    "slow_ranks": Knob(0, "simulated clock: the last ranks compute straggler_slowdown times slower (stragglers)",
                       low=0, high=100_000),
    "straggler_slowdown": Knob(4.0, "how many times slower a straggler computes (slow_ranks, straggler_prob)",
                               low=1.0, high=1e4, read_when=lambda c: c.slow_ranks > 0 or (
                                   _tech(c).federated and c.straggler_prob > 0),
                               why="it needs slow_ranks > 0 or, for federated techniques, straggler_prob > 0"),
    "mlp_hidden": Knob(64, "hidden width of model='mlp' (64 -> hidden -> 10)", low=1, high=4096,
                       read_when=lambda c: c.model == "mlp", why="only model='mlp' reads it"),
    "device": Knob("cpu", "where the cluster's tensors live (lab.device): 'cpu', 'cuda' (refused without a GPU), "
                   "or 'auto' (the GPU when there is one)", choices=DEVICES),
    "threads": Knob(0, "torch CPU threads while this run trains (0 = the lab's choice: $COMMLAB_THREADS, else 1; "
                    "lab.threads)", low=1, high=1024, special=(0,)),
    "eval_every": Knob(20, "evaluate every this many steps", low=1, high=10**7),
    "seed": Knob(0, "random seed", low=0, high=2**31 - 1),
    "on_divergence": Knob("stop", "a non-finite loss, gradient or parameter stops the run (status 'diverged'), "
                          "or training continues (to study divergence)", choices=("stop", "continue")),
    "backend": Knob("simulated", "simulated (one process) or distributed (torchrun)", choices=BACKENDS),
    "comm_timeout": Knob(300.0, "backend='distributed': seconds a collective waits for its peers; a rank that "
                         "stops answering ends the run (status 'failed', naming the rank and the collective) "
                         "within about this (lab.comm.distributed)", low=1.0, high=86_400.0, scale="log",
                         read_when=lambda c: c.backend == "distributed", why="only backend='distributed' reads it"),
    "heartbeat_timeout": Knob(0.0, "backend='distributed': end a collective's wait as soon as a peer's heartbeat has "
                              "been silent this many seconds, sooner than comm_timeout (0 = off; "
                              "lab.comm.heartbeat)", low=0.5, high=86_400.0, special=(0.0,), scale="log",
                              read_when=lambda c: c.backend == "distributed",
                              why="only backend='distributed' reads it"),
    # ---- a pre-trained backbone (lab.pretrain): digits classes 0-4 / the first half of the chars text ----
    "pretrained": Knob("auto", "start from a backbone pre-trained on the other part of the data (lab.pretrain): "
                       "'auto' where the technique's paper does (LoRA/PEFT, DIMAT), 'on' always (e.g. fedavg: full "
                       "fine-tuning of the same backbone), 'off' from a random init", choices=pretrain.CHOICES),
    "pretrain_steps": Knob(200, "optimizer steps that pre-train the backbone (cached in the runs store)", low=1,
                           high=10**6, read_when=lambda c: pretrain.uses_backbone(c, _tech(c)),
                           why="the run starts from no pre-trained backbone (pretrained)"),
    # ---- the local optimizer: read by techniques that list LOCAL_OPTIMIZER (lab.technique) ----
    "optimizer": Knob("auto", "local optimizer ('auto': the technique's own, AdamW for diloco and streaming_diloco "
                      "as in the DiLoCo paper, SGD otherwise; lab.optim)", choices=("auto",) + OPTIMIZERS),
    "momentum": Knob(0.0, "SGD momentum", low=0.0, high=1.0, high_open=True,
                     read_when=lambda c: _optimizer(c) == "sgd", why="only optimizer='sgd' reads it",
                     probe_with={"optimizer": "sgd"}),
    "adam_beta1": Knob(0.9, "AdamW / Adam-mini beta1 (first-moment decay)", low=0.0, high=1.0, high_open=True,
                       read_when=lambda c: _optimizer(c) in ("adamw", "adam_mini"),
                       why="only optimizer='adamw' or 'adam_mini' reads it", probe_with={"optimizer": "adamw"}),
    "adam_beta2": Knob(0.0, "AdamW / Adam-mini beta2 (second-moment decay; 0 = the technique's own: 0.95 for "
                       "diloco and streaming_diloco as in the DiLoCo paper, torch's 0.999 otherwise)", low=0.0,
                       low_open=True, high=1.0, high_open=True, special=(0.0,),
                       read_when=lambda c: _optimizer(c) in ("adamw", "adam_mini"),
                       why="only optimizer='adamw' or 'adam_mini' reads it", probe_with={"optimizer": "adamw"}),
    "weight_decay": Knob(0.0, "weight decay", low=0.0, high=1e3),
    "grad_clip": Knob(0.0, "per-worker gradient-norm clip (0 = off)", low=0.0, high=1e9, probe=0.1),
    "lr_schedule": Knob("constant", "learning-rate schedule over `steps`", choices=SCHEDULES),
    "warmup_steps": Knob(0, "linear learning-rate warm-up steps", low=0, high=10**7),
    # ---- compression: read by techniques that declare a compressor_path ----
    "compressor": Knob("none", "compressor of what the technique sends (its compressor_path)", choices=COMPRESSORS),
    "compression_ratio": Knob(1.0, "target TRAFFIC ratio in (0, 1]: bytes the busiest rank sends per exchange / "
                              "the dense exchange's (fp32 ring all-reduce; dense upload on an uplink), mapped "
                              "through the chosen algorithm at this P to the compressor's own parameter "
                              "(lab.compress.channel)", low=0.0, low_open=True, high=1.0, scale="log",
                              read_when=lambda c: reads_ratio(c.compressor),
                              why="no compressor is set, or the chosen one has a fixed size (lab.compress.registry)",
                              probe_with={"compressor": "randk"}),
    "compress_scope": Knob("layer", "top-k, scaled sign, QSGD: per parameter tensor ('layer') or over the whole "
                           "vector ('global')", choices=SCOPES, read_when=lambda c: c.compressor in SCOPED,
                           why="only compressors " + ", ".join(SCOPED) + " have a scope",
                           probe_with={"compressor": "qsgd", "compression_ratio": 0.1}),
    "compress_algorithm": Knob("auto", "how compressed payloads are all-reduced: auto (two-phase; the server on a "
                               "star), cheapest, or pinned (lab.topology.compressed)", choices=COMPRESSED_CHOICES,
                               read_when=lambda c: has_algorithms(c.compressor) and _tech(c).compressor_path not in (
                                   "uplink", "downlink"),
                               why="the compressor has one way across ranks (summable or all-gathered), or the "
                                   "technique compresses a federated uplink",
                               probe="all_gather", probe_with={"compressor": "qsgd", "compression_ratio": 0.1}),
    "powersgd_start_iter": Knob(0, "compressor=powersgd: exchanges all-reduced uncompressed before PowerSGD starts "
                                "(torch's start_powerSGD_iter; 10 there, 0 in the paper)", low=0, high=10**7,
                                read_when=lambda c: c.compressor == "powersgd",
                                why="only compressor='powersgd' reads it",
                                probe_with={"compressor": "powersgd", "compression_ratio": 0.1}),
    "error_feedback": Knob("ef", "error feedback around the compressor", choices=tuple(FEEDBACK),
                           read_when=lambda c: c.compressor != "none" or not _takes_compressor(c),
                           why="no compressor is set (compressor='none')",
                           probe_with={"compressor": "topk", "compression_ratio": 0.1}),
    "econtrol_eta": Knob(0.0, "error_feedback=econtrol: weight eta of the fed-back error (0 = the compressor's "
                         "contraction delta, k/d for top-k; eta > delta can diverge and warns)", low=0.0, high=1.0,
                         read_when=lambda c: c.error_feedback == "econtrol",
                         why="only error_feedback='econtrol' reads it",
                         probe=0.02,
                         probe_with={"compressor": "topk", "compression_ratio": 0.1, "error_feedback": "econtrol"}),
}
#: what a technique with a compressor_path reads
COMPRESSOR_FIELDS = ("compressor", "compression_ratio", "compress_scope", "compress_algorithm", "error_feedback",
                     "econtrol_eta", "powersgd_start_iter")
FEEDBACK_FIELDS = ("error_feedback", "econtrol_eta")
#: compressor fields of an all-reduce among the workers: not read where a technique compresses a federated
#: uplink or downlink (the server decodes messages one by one; PowerSGD is refused there)
ALL_REDUCE_FIELDS = ("compress_algorithm", "powersgd_start_iter")
#: common knobs every technique reads (the rest are read only by techniques that list them)
ALWAYS = ("technique", "num_workers", "steps", "rounds", "dataset", "model", "partition", "dirichlet_alpha",
          "shards_per_worker", "batch_size", "lr", "topology", "all_reduce_algorithm", "slow_ranks",
          "straggler_slowdown", "eval_every", "seed", "on_divergence", "backend", "comm_timeout", "heartbeat_timeout",
          "pretrained", "pretrain_steps",
          "examples_per_worker", "mlp_hidden", "device", "threads")


def all_knobs() -> dict[str, Knob]:
    """Every config field's Knob: the common ones, then each registered technique's, in registry order."""
    out = dict(COMMON)
    out["technique"] = dataclasses.replace(COMMON["technique"], choices=tuple(registry.techniques()))
    owner = {}
    for name, cls in registry.techniques().items():
        for field, knob in cls.declared_knobs().items():
            if field in out and out[field] is not knob:
                raise AssertionError(f"config field {field!r} of technique {name!r} is declared twice "
                                     f"(by {owner.get(field, 'lab.config')}); declare it once and list it in `reads`")
            out[field] = knob
            owner.setdefault(field, name)
    return out


def reads(technique_name: str) -> frozenset[str]:
    """Every config field the technique reads when its conditions hold."""
    cls = registry.technique(technique_name)
    own = set(ALWAYS) | cls.read_fields()
    if cls.compressor_path is not None:
        own |= set(f for f in COMPRESSOR_FIELDS if cls.takes_feedback or f not in FEEDBACK_FIELDS)
        if cls.compressor_path in ("uplink", "downlink"):
            own -= set(ALL_REDUCE_FIELDS)
    return frozenset(own)


def is_read(config, field: str) -> tuple[bool, str]:
    """(whether `config.technique` reads `field` as configured, the reason when it does not)."""
    if field not in reads(config.technique):
        who = [t for t in registry.techniques() if field in reads(t)]
        return False, f"technique={config.technique!r} does not read it; techniques that do: {who}"
    knob = KNOBS[field]
    if knob.read_when is not None and not knob.read_when(config):
        return False, f"{knob.why}"
    return True, ""


class _Unset:
    """The dataclass default of every field: a field left out takes the technique's own default (its
    `defaults`, `default_lr`) or else the knob's, so a value the user passes is never replaced."""

    def __repr__(self) -> str:
        return "<default>"


UNSET = _Unset()


def _post_init(self):
    unset = {name for name in KNOBS if getattr(self, name) is UNSET}
    if "technique" in unset:
        object.__setattr__(self, "technique", KNOBS["technique"].default)
    object.__setattr__(self, "technique", KNOBS["technique"].check("technique", self.technique))
    tech = registry.technique(self.technique)
    own = tech.own_defaults()
    for name, knob in KNOBS.items():
        value = getattr(self, name)
        if value is UNSET:
            value = own.get(name, knob.default)
        object.__setattr__(self, name, knob.check(name, value))
    own_lr = tech.default_lr  # a technique's own rate is for its own default optimizer (lab.optim)
    if "lr" in unset and own_lr is not None and _optimizer(self) == tech.default_optimizer:
        object.__setattr__(self, "lr", float(own_lr))  # the config holds the rate really applied
    for name, knob in KNOBS.items():
        if getattr(self, name) != knob.default:
            ok, why = is_read(self, name)
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not read: {why}; leave it at its default "
                                 f"{knob.default!r} (lab.config.config_for keeps only what a technique reads)")
    if self.dataset not in COMPATIBLE[self.model]:
        bad("model", self.model, f"a model for dataset={self.dataset!r}: "
            f"{[m for m, ds in COMPATIBLE.items() if self.dataset in ds]}")
    if self.dataset == "chars" and self.partition != "iid":
        bad("partition", self.partition, "'iid' for dataset='chars' (text has no labels to skew)")
    check_device(self.device, bad)
    from lab.compress import options as compress_options
    from lab.topology import check_config, preset

    compress_options.check(self, bad)
    pretrain.check(self, bad)
    registry.technique(self.technique).check(self)
    preset(self.topology, self.num_workers)  # raises if the workers do not fit the preset
    check_config(self, bad)


def _replace(self, **changes):
    return dataclasses.replace(self, **changes)


def _to_dict(self) -> dict:
    return dataclasses.asdict(self)


@classmethod
def _from_dict(cls, d: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"config has unknown fields {unknown}; allowed: {sorted(known)}")
    return cls(**d)


def _digest(self) -> str:
    return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def _as_technique(self, technique: str):
    """This config's settings for another technique, keeping only what that technique reads
    (`config_for`); e.g. `zero_cfg.as_technique('ddp')` for the DDP baseline of a ZeRO run (a ZeRO run's
    `sharding_degree` > 1 carries over: DDP sharded inside its replicas, lab.sync.sharded — the same numbers)."""
    changed = {k: v for k, v in self.changed().items() if k != "technique"}
    return config_for(technique, **changed)


def _diff(self) -> dict:
    """The fields set away from their defaults."""
    return {n: getattr(self, n) for n, k in KNOBS.items() if getattr(self, n) != k.default}


KNOBS = all_knobs()
ExperimentConfig = dataclasses.make_dataclass(
    "ExperimentConfig",
    [(name, knob.type, dataclasses.field(default=UNSET, metadata={"knob": knob, "help": knob.help,
                                                                         **({"choices": knob.choices}
                                                                            if knob.choices else {})}))
     for name, knob in KNOBS.items()],
    namespace={"__post_init__": _post_init, "replace": _replace, "to_dict": _to_dict, "from_dict": _from_dict,
               "digest": _digest, "changed": _diff, "as_technique": _as_technique,
               "__doc__": "A validated experiment: every field is a Knob (lab.config.all_knobs()); see lab.config."},
    frozen=True)
ExperimentConfig.__module__ = __name__  # pickles as lab.config.ExperimentConfig (spawned ranks import it)


def config_for(technique: str, **settings):
    """An ExperimentConfig of `technique` from shared `settings`, dropping those it does not read.

    For sweeps over techniques from one base: `config_for('fedavg', sync_period=8, lr=0.1)` keeps lr and drops
    sync_period (FedAvg does not read it). Fields it reads only under a condition are kept when the condition
    holds for the resulting config. Unknown field names raise ValueError.
    """
    unknown = sorted(set(settings) - set(KNOBS))
    if unknown:
        raise ValueError(f"config has unknown fields {unknown}; allowed: {sorted(KNOBS)}")
    kept = {k: v for k, v in settings.items() if k in reads(technique)}
    probe = draft(technique, **kept)
    kept = {k: v for k, v in kept.items() if KNOBS[k].read_when is None or KNOBS[k].read_when(probe)}
    return ExperimentConfig(technique=technique, **kept)


def draft(technique: str, **settings):
    """An unvalidated ExperimentConfig with `settings` over the technique's defaults (and the knobs'), for asking
    `is_read` and the knobs' `read_when` conditions about settings that may not construct (widgets, config_for)."""
    own = registry.technique(technique).own_defaults()
    d = ExperimentConfig.__new__(ExperimentConfig)
    for name, knob in KNOBS.items():
        object.__setattr__(d, name, settings.get(name, own.get(name, knob.default)))
    object.__setattr__(d, "technique", technique)  # a `technique` in settings is overridden by the argument
    return d


def dropped(technique: str, settings: dict) -> dict:
    """{field: reason} of the settings `config_for(technique, **settings)` leaves out (for listing)."""
    cfg = config_for(technique, **settings)
    return {k: is_read(cfg, k)[1] for k, v in settings.items() if getattr(cfg, k) != v}
