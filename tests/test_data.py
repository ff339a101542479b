"""Partitioners split every example exactly once; batch streams are per-rank and reproducible."""
import pytest
import torch

from lab.data import RankBatches, load_chars, load_digits, partition


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_covers_every_example_once(scheme):
    d = load_digits()
    parts = partition(d.num_train, d.labels, scheme=scheme, num_workers=7, seed=0, alpha=0.5)
    allidx = torch.cat(parts).sort().values
    assert torch.equal(allidx, torch.arange(d.num_train))


def test_dirichlet_small_alpha_skews_labels_and_large_alpha_does_not():
    d = load_digits()

    def mean_classes_per_worker(alpha):
        parts = partition(d.num_train, d.labels, scheme="dirichlet", num_workers=10, seed=0, alpha=alpha)
        return sum(((d.labels[p].bincount(minlength=10) / len(p)) > 0.05).sum().item() for p in parts) / 10

    assert mean_classes_per_worker(0.05) < 4 < 9 < mean_classes_per_worker(100.0)


def test_label_shards_give_each_worker_few_labels():
    d = load_digits()
    parts = partition(d.num_train, d.labels, scheme="shards", num_workers=10, seed=0, shards_per_worker=2)
    assert max(len(d.labels[p].unique()) for p in parts) <= 4


def test_a_rank_draws_the_same_batches_alone_or_beside_others():
    d = load_digits()
    parts = partition(d.num_train, d.labels, scheme="iid", num_workers=4, seed=0)
    together = RankBatches(d.x_train, d.y_train, parts, batch_size=16, seed=5, ranks=[0, 1, 2, 3])
    alone = RankBatches(d.x_train, d.y_train, parts, batch_size=16, seed=5, ranks=[2])
    for _ in range(30):  # crosses epoch boundaries
        x4, y4 = together.next()
        x1, y1 = alone.next()
        assert torch.equal(x4[2], x1[0]) and torch.equal(y4[2], y1[0])


def test_char_corpus_windows_predict_the_next_character():
    d = load_chars()
    assert d.num_train > 500 and d.num_classes > 30
    assert torch.equal(d.x_train[0, 1:], d.y_train[0, :-1])
