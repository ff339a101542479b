"""Pre-trained backbones: trained on one part of the data, cached by config and seed, frozen under LoRA, and
FedEx-LoRA on a pre-trained tiny GPT close to full fine-tuning of it at a small fraction of the bytes."""
import os

import pytest
import torch

from lab import pretrain
from lab.config import ExperimentConfig, config_for
from lab.data import load_dataset
from lab.experiment import build_context, run
from lab.lora.fedpeft import FedPEFT


@pytest.fixture(scope="module", autouse=True)
def runs_dir(tmp_path_factory):
    """One backbone cache for this module, away from the repository's runs/."""
    path = tmp_path_factory.mktemp("runs")
    old = os.environ.get("COMMLAB_RUNS_DIR")
    os.environ["COMMLAB_RUNS_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("COMMLAB_RUNS_DIR")
    else:
        os.environ["COMMLAB_RUNS_DIR"] = old


def test_the_two_parts_do_not_overlap():
    digits = load_dataset("digits")
    pre, fine = pretrain.split(digits, "pretrain"), pretrain.split(digits, "finetune")
    assert set(pre.y_train.tolist()) == set(pre.y_test.tolist()) == {0, 1, 2, 3, 4}
    assert set(fine.y_train.tolist()) == set(fine.y_test.tolist()) == {5, 6, 7, 8, 9}
    assert pre.num_train + fine.num_train == digits.num_train
    chars = load_dataset("chars")
    a, b = pretrain.split(chars, "pretrain"), pretrain.split(chars, "finetune")
    assert torch.equal(torch.cat([a.x_train, b.x_train]), chars.x_train)  # consecutive halves of the text
    assert torch.equal(b.x_test, chars.x_test)  # the test text follows the fine-tuning half


def test_backbone_is_cached_by_config_and_seed_and_loads_as_plain_weights(runs_dir):
    cfg = ExperimentConfig(technique="fedavg", pretrained="on", pretrain_steps=30)
    path = pretrain.cache_path(cfg, 0)
    assert not path.exists()
    first = pretrain.backbone(cfg)
    assert path.exists() and path.is_relative_to(runs_dir / "pretrained")
    stamp = path.stat().st_mtime_ns
    again = pretrain.backbone(cfg)  # from the cache: not trained again
    assert path.stat().st_mtime_ns == stamp and all(torch.equal(first[k], again[k]) for k in first)
    assert set(torch.load(path, weights_only=True)) == set(first)
    assert pretrain.cache_path(cfg, 1) != path and pretrain.cache_path(cfg.replace(pretrain_steps=31), 0) != path
    assert not torch.equal(pretrain.backbone(cfg, seed=1)["fc1.weight"], first["fc1.weight"])
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary file left behind


def test_a_run_from_the_cached_backbone_equals_the_run_that_trained_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMLAB_RUNS_DIR", str(tmp_path))  # an empty cache
    cfg = config_for("dimat", num_workers=2, steps=4, sync_period=2, pretrain_steps=40, eval_every=2)
    first = run(cfg, save=False, progress=False)  # pre-trains both agents' backbones
    assert len(list((tmp_path / "pretrained").glob("*.pt"))) == 2
    again = run(cfg, save=False, progress=False)  # loads them
    drop = ["wall_seconds"]
    assert first.metrics.drop(columns=drop).equals(again.metrics.drop(columns=drop))
    assert torch.equal(first.model, again.model)


def test_lora_freezes_the_pretrained_backbone_and_fine_tunes_on_the_other_classes():
    cfg = config_for("fedpeft", num_workers=4, rounds=3, local_steps=10, lr=0.2,
                     eval_every=10_000)
    ctx, data = build_context(cfg)
    assert set(data.y_train.tolist()) == {5, 6, 7, 8, 9}
    tech = FedPEFT(cfg)
    tech.setup(ctx)
    assert torch.equal(tech.base, pretrain.flat(ctx.spec.module, pretrain.backbone(cfg)))  # what LoRA freezes
    tuned = run(cfg, save=False, progress=False).summary()["eval_loss"]
    scratch = run(cfg.replace(pretrained="off"), save=False, progress=False).summary()["eval_loss"]
    assert tuned < scratch  # adapters over pre-trained features beat adapters over a random network


def test_pretraining_knobs_are_checked():
    with pytest.raises(ValueError, match="pretrained='on'"):
        ExperimentConfig(technique="fedavg", dataset="lstsq", model="linear", pretrained="on")
    with pytest.raises(ValueError, match="pretrain_steps=50 is not read"):
        ExperimentConfig(technique="fedavg", pretrain_steps=50)  # fedavg starts from no backbone under 'auto'
    with pytest.raises(ValueError, match="pretrained='yes'"):
        ExperimentConfig(technique="fedpeft", pretrained="yes")
    assert not pretrain.uses_backbone(config_for("fedpeft", dataset="lstsq", model="linear"), FedPEFT)


def test_fedex_lora_on_a_pretrained_gpt_nears_full_fine_tuning_at_under_5_percent_of_the_bytes():
    # FedEx-LoRA's defaults: 3 clients, rank 4, alpha 8, adapters on the query and value projections
    common = dict(dataset="chars", model="gpt", num_workers=3, rounds=4, local_steps=8, batch_size=16,
                  eval_every=10**6)
    full = run(config_for("fedavg", pretrained="on", lr=0.5, **common), save=False, progress=False).summary()
    lora = run(config_for("fedex_lora", lr=4.0, lora_rank=4, **common), save=False, progress=False).summary()
    ctx, data = build_context(config_for("fedex_lora", **common))
    backbone = ctx.spec.metrics_fn(ctx.cluster.evaluate(ctx.cluster.params.detach()[0], data.x_test),
                                   data.y_test)["eval_loss"]
    # measured: backbone 2.48, full fine-tuning 2.27, FedEx-LoRA 2.37 nats/char (4.3% above); bytes 4.6% of
    # full fine-tuning's (rank-4 factors of q and v up and down, plus the residual's stacked factors down)
    assert full["eval_loss"] < backbone - 0.05 and lora["eval_loss"] < backbone - 0.05  # both learn the new text
    assert lora["eval_loss"] <= 1.10 * full["eval_loss"]
    assert lora["bytes"] < 0.05 * full["bytes"]
