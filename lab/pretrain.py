"""Pre-trained backbones, trained inside the lab (offline) and cached in the runs store.

Why: FedPEFT, FedEx-LoRA, DP-LoRA and CELLM fine-tune a *pre-trained* model —
LoRA freezes a backbone that already computes useful features — and DIMAT
merges agents that were each pre-trained first. Tuning adapters over a random
network measures nothing those papers claim, so runs of these techniques start
from a backbone pre-trained on one part of the data and fine-tune on the other:

- ``digits`` (``mlp``, ``cnn``): pre-train on the training images of classes 0–4;
  fine-tune on, and evaluate with, classes 5–9 (the 10-way head is kept; its
  rows for 5–9 are what fine-tuning must learn).
- ``chars`` (``gpt``): pre-train on the first half of the training text (the
  Bible passages and most of the Shakespeare); fine-tune on the second half
  (the rest of the Shakespeare, the founding texts, Lincoln, the first fables)
  and evaluate on the test split, the last 10% of the corpus (more fables),
  which follows the fine-tuning half.
- ``lstsq`` has no pre-training task.

Knobs: ``pretrained`` — 'auto' (start from a backbone exactly when the
technique's paper does: its class sets ``pretrained_backbone = True``), 'on'
(every technique, e.g. ``fedavg`` as the full fine-tuning baseline of the same
backbone), 'off' (a random initialisation, the old behaviour); and
``pretrain_steps``, the optimizer steps of pre-training.

Recipe (one model in one process, independent of the run's own optimizer):
AdamW (lr 1e-2, weight decay 0), minibatches of 32 examples drawn with
replacement from a generator seeded by the seed, `pretrain_steps` steps
(default 200). Measured on one shared core at 200 steps: the MLP in about
1 s (99% test accuracy on 0–4), the CNN about 1 s, the tiny GPT 3–4 s (test
loss 2.48 nats/char on the fine-tuning task from 4.46 at init; it overfits
the pre-training half beyond that: 2.85 at 400 steps).

Cache: ``<runs dir>/pretrained/<digest>.pt`` (runs dir: ``$COMMLAB_RUNS_DIR``
or ``runs``), the model's state dict, keyed by a digest of (model, dataset,
seed, pretrain_steps, recipe version); written atomically (temporary file,
then rename) and loaded with ``torch.load(weights_only=True)``. Same key, same
weights: a run from a cached backbone equals one that pre-trained it itself.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from lab.data import Dataset, load_dataset
from lab.models import model_for
from lab.paths import runs_dir as runs_root

CHOICES = ("auto", "on", "off")
RECIPE = "v1"  # bump when the recipe below changes: it is part of the cache key
BATCH = 32
LR = {"mlp": 1e-2, "cnn": 1e-2, "gpt": 1e-2}
PRETRAIN_CLASSES = range(0, 5)  # digits: pre-train on 0-4, fine-tune on 5-9


#: datasets with a pre-training part (see `split`)
DATASETS = ("digits", "chars")


def uses_backbone(config, technique=None) -> bool:
    """Whether a run of `config` starts from a pre-trained backbone (`technique`: the technique class).
    'auto' does where the technique's paper does and the dataset has a pre-training part."""
    if config.pretrained == "on":
        return True
    return (config.pretrained == "auto" and config.dataset in DATASETS
            and bool(getattr(technique, "pretrained_backbone", False)))


def check(c, bad) -> None:
    """Cross-field rule of `pretrained` (`bad(name, value, allowed)` raises); its choices are the Knob's."""
    if c.pretrained == "on" and c.dataset not in DATASETS:
        bad("pretrained", c.pretrained, f"'off' or 'auto' for dataset={c.dataset!r} (only {list(DATASETS)} have a "
            "pre-training part)")


# ---- the two parts of a dataset ---------------------------------------------------------------------
def split(data: Dataset, part: str) -> Dataset:
    """The 'pretrain' or 'finetune' part of `data` (see the module docstring); test data follows the task."""
    if part not in ("pretrain", "finetune"):
        raise ValueError(f"part={part!r} is invalid: expected 'pretrain' or 'finetune'")
    if data.name == "digits":
        def keep(y):
            mask = y < len(PRETRAIN_CLASSES)
            return mask if part == "pretrain" else ~mask

        tr, te = keep(data.y_train), keep(data.y_test)
        return dataclasses.replace(data, x_train=data.x_train[tr], y_train=data.y_train[tr], x_test=data.x_test[te],
                                   y_test=data.y_test[te], labels=data.labels[tr],
                                   meta={**data.meta, "part": part})
    if data.name == "chars":
        half = data.num_train // 2  # windows are consecutive slices of the training text
        sl = slice(0, half) if part == "pretrain" else slice(half, data.num_train)
        return dataclasses.replace(data, x_train=data.x_train[sl], y_train=data.y_train[sl],
                                   meta={**data.meta, "part": part})
    raise ValueError(f"dataset={data.name!r} has no pre-training part; allowed: {list(DATASETS)}")


def task_data(config, data: Dataset, technique=None) -> Dataset:
    """What the run trains and evaluates on: the fine-tuning part when it starts from a backbone."""
    return split(data, "finetune") if uses_backbone(config, technique) else data


# ---- the stage ---------------------------------------------------------------------------------------
def cache_key(config, seed: int) -> dict:
    key = {"model": config.model, "dataset": config.dataset, "seed": int(seed), "steps": config.pretrain_steps,
           "recipe": RECIPE}
    if config.model == "mlp" and config.mlp_hidden != 64:  # other widths get their own backbone
        key["mlp_hidden"] = config.mlp_hidden
    return key


def cache_path(config, seed: int, runs_dir: str | Path | None = None) -> Path:
    root = Path(runs_dir) if runs_dir is not None else runs_root()
    digest = hashlib.sha256(json.dumps(cache_key(config, seed), sort_keys=True).encode()).hexdigest()[:16]
    return root / "pretrained" / f"{config.model}-{config.dataset}-{digest}.pt"


def pretrain(config, *, seed: int) -> dict[str, torch.Tensor]:
    """Train a fresh `config.model` (initialised from `seed`) on the pre-training part; its state dict."""
    if config.model not in LR:
        raise ValueError(f"model={config.model!r} has no pre-training recipe; allowed: {list(LR)}")
    data = split(load_dataset(config.dataset, seed=seed, num_workers=config.num_workers), "pretrain")
    with torch.random.fork_rng():  # the run's global RNG is the same whether the backbone was cached or not
        spec = model_for(config, data, seed=seed)
        model = spec.module
        opt = torch.optim.AdamW(model.parameters(), lr=LR[config.model], weight_decay=0.0)
        g = torch.Generator().manual_seed(seed * 7_777 + 3)
        for _ in range(config.pretrain_steps):
            idx = torch.randint(0, data.num_train, (BATCH,), generator=g)
            loss = spec.loss_fn(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def backbone(config, *, seed: int | None = None, runs_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The pre-trained state dict for `config` and `seed` (default: config.seed): from the cache, or trained
    now and cached."""
    seed = config.seed if seed is None else seed
    path = cache_path(config, seed, runs_dir)
    if path.exists():
        return torch.load(path, weights_only=True)
    state = pretrain(config, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # unique per process: ranks may race
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


def load_backbone(config, module: torch.nn.Module, technique=None, *, seed: int | None = None) -> bool:
    """Load the backbone into `module` when the run starts from one; returns whether it did."""
    if not uses_backbone(config, technique):
        return False
    module.load_state_dict(backbone(config, seed=seed))
    return True


def flat(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """A state dict as a flat row (d,) in `module.named_parameters()` order (the cluster's layout)."""
    return torch.cat([state[name].reshape(-1).float() for name, _ in module.named_parameters()])
