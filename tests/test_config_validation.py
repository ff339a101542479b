"""Every bad config value raises ValueError naming the field, the value and what is allowed."""
import pytest

from lab.experiment import ExperimentConfig, build_context

BAD = [
    ({"num_workers": 0}, "num_workers=0", "an integer in [1, "),
    ({"sync_period": 0}, "sync_period=0", "an integer in [1, "),
    ({"steps": -5}, "steps=-5", "an integer in [1, "),
    ({"compression_ratio": 0.0}, "compression_ratio=0.0", "(0, 1]"),
    ({"compression_ratio": 1.5}, "compression_ratio=1.5", "(0, 1]"),
    ({"client_fraction": 0}, "client_fraction=0.0", "(0, 1]"),
    ({"client_fraction": 1.01}, "client_fraction=1.01", "(0, 1]"),
    ({"technique": "gossipy"}, "technique='gossipy'", "ddp"),
    ({"model": "resnet"}, "model='resnet'", "mlp"),
    ({"dataset": "imagenet"}, "dataset='imagenet'", "digits"),
    ({"topology": "moon"}, "topology='moon'", "nvlink_node"),
    ({"partition": "random"}, "partition='random'", "dirichlet"),
    ({"dirichlet_alpha": 0}, "dirichlet_alpha=0.0", "in (0, "),
    ({"dirichlet_alpha": -1.0}, "dirichlet_alpha=-1.0", "in (0, "),
    ({"lr": 0}, "lr=0.0", "in (0, "),
    ({"momentum": 1.0}, "momentum=1.0", "[0, 1)"),
    ({"batch_size": 0}, "batch_size=0", "an integer in [1, "),
    ({"compressor": "zip"}, "compressor='zip'", "topk"),
    ({"error_feedback": "ef99"}, "error_feedback='ef99'", "ef"),
    ({"optimizer": "lion"}, "optimizer='lion'", "adamw"),
    ({"backend": "mpi"}, "backend='mpi'", "distributed"),
    ({"num_workers": "8"}, "num_workers='8'", "integer"),
    ({"lr": "fast"}, "lr='fast'", "number"),
    ({"model": "gpt"}, "model='gpt'", "dataset='digits'"),
    ({"dataset": "chars", "model": "gpt", "partition": "dirichlet"}, "partition='dirichlet'", "'iid'"),
    ({"num_workers": 12}, "num_workers=12", "at most 8"),
    ({"lr": float("nan")}, "lr=nan", "a finite number"),
    ({"lr": float("inf")}, "lr=inf", "a finite number"),
    ({"momentum": float("nan")}, "momentum=nan", "a finite number"),
    ({"lr": 10**400}, "lr=1000", "a finite number"),
    ({"seed": 20_000_000_000_000}, "seed=20000000000000", "an integer in [0, "),
    ({"grad_clip": -1.0}, "grad_clip=-1.0", "in [0, "),
]


@pytest.mark.parametrize("changes,named,allowed", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_value_names_field_value_and_what_is_allowed(changes, named, allowed):
    with pytest.raises(ValueError) as err:
        ExperimentConfig(**changes)
    assert named in str(err.value) and allowed in str(err.value)


def test_batch_larger_than_a_workers_shard_is_refused_before_training():
    cfg = ExperimentConfig(num_workers=8, batch_size=400)
    with pytest.raises(ValueError, match=r"batch_size=400 .*smallest worker's shard"):
        build_context(cfg)


def test_unknown_field_in_a_saved_config_is_named():
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        ExperimentConfig.from_dict({"colour": "red"})


def test_valid_defaults_construct():
    assert ExperimentConfig().technique == "ddp"


@pytest.mark.parametrize("changes,named,readers", [
    ({"technique": "fedavg", "sync_period": 4}, "sync_period=4", "local_sgd"),
    ({"technique": "ddp", "client_fraction": 0.5}, "client_fraction=0.5", "fedavg"),
    ({"technique": "zero", "compressor": "topk"}, "compressor='topk'", "ddp"),
    ({"compressor": "int8", "compression_ratio": 0.1}, "compression_ratio=0.1", "fixed size"),
    ({"partition": "iid", "dirichlet_alpha": 0.1}, "dirichlet_alpha=0.1", "partition='dirichlet'"),
    ({"optimizer": "adamw", "momentum": 0.9}, "momentum=0.9", "optimizer='sgd'"),
])
def test_a_knob_the_technique_does_not_read_is_refused_naming_who_reads_it(changes, named, readers):
    with pytest.raises(ValueError) as err:
        ExperimentConfig(**changes)
    assert named in str(err.value) and "is not read" in str(err.value) and readers in str(err.value)


def test_config_for_keeps_only_what_the_technique_reads():
    from lab.config import config_for, dropped

    shared = {"sync_period": 4, "lr": 0.1, "client_fraction": 0.5, "compressor": "topk", "compression_ratio": 0.1}
    fed = config_for("fedavg", **shared)
    assert (fed.lr, fed.client_fraction, fed.compressor, fed.sync_period) == (0.1, 0.5, "topk", 16)
    assert set(dropped("fedavg", shared)) == {"sync_period"}
    zero = config_for("zero", **shared)
    assert (zero.compressor, zero.compression_ratio) == ("none", 1.0)  # no compressed path: both dropped
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        config_for("ddp", colour="red")
