"""Every bad config value raises ValueError naming the field, the value and what is allowed."""
import pytest

from lab.experiment import ExperimentConfig, build_context

BAD = [
    ({"num_workers": 0}, "num_workers=0", ">= 1"),
    ({"sync_period": 0}, "sync_period=0", ">= 1"),
    ({"steps": -5}, "steps=-5", ">= 1"),
    ({"compression_ratio": 0.0}, "compression_ratio=0.0", "(0, 1]"),
    ({"compression_ratio": 1.5}, "compression_ratio=1.5", "(0, 1]"),
    ({"client_fraction": 0}, "client_fraction=0.0", "(0, 1]"),
    ({"client_fraction": 1.01}, "client_fraction=1.01", "(0, 1]"),
    ({"technique": "gossipy"}, "technique='gossipy'", "ddp"),
    ({"model": "resnet"}, "model='resnet'", "mlp"),
    ({"dataset": "imagenet"}, "dataset='imagenet'", "digits"),
    ({"topology": "moon"}, "topology='moon'", "nvlink_node"),
    ({"partition": "random"}, "partition='random'", "dirichlet"),
    ({"dirichlet_alpha": 0}, "dirichlet_alpha=0.0", "> 0"),
    ({"dirichlet_alpha": -1.0}, "dirichlet_alpha=-1.0", "> 0"),
    ({"lr": 0}, "lr=0.0", "> 0"),
    ({"momentum": 1.0}, "momentum=1.0", "[0, 1)"),
    ({"batch_size": 0}, "batch_size=0", ">= 1"),
    ({"compressor": "zip"}, "compressor='zip'", "topk"),
    ({"error_feedback": "ef99"}, "error_feedback='ef99'", "ef"),
    ({"optimizer": "lion"}, "optimizer='lion'", "adamw"),
    ({"backend": "mpi"}, "backend='mpi'", "distributed"),
    ({"num_workers": "8"}, "num_workers='8'", "integer"),
    ({"lr": "fast"}, "lr='fast'", "number"),
    ({"model": "gpt"}, "model='gpt'", "dataset='digits'"),
    ({"dataset": "chars", "model": "gpt", "partition": "dirichlet"}, "partition='dirichlet'", "'iid'"),
    ({"num_workers": 12}, "num_workers=12", "at most 8"),
    ({"grad_clip": -1.0}, "grad_clip=-1.0", ">= 0"),
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
