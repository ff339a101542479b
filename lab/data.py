"""Datasets that need no download, partitioners across workers, and per-rank batch streams.

Datasets
- ``digits``: scikit-learn's bundled 8×8 digits (1797 images, 10 classes), scaled to [0, 1];
  a fixed stratified 80/20 train/test split.
- ``lstsq``: synthetic heterogeneous least squares. Group g draws x ~ N(0, I) and
  y = x·w_g + noise with w_g = w* + h·u_g, so groups disagree on the optimum
  (``heterogeneity`` h). The group id is the "label" partitioners see.
- ``chars``: a character-level LM on a public-domain text shipped in ``lab/assets``;
  windows of ``block_size`` characters with next-character targets; the last 10% of the
  text is the test split.

Partitioners (``partition``): ``iid`` (a random equal split), ``dirichlet`` (label skew:
each class's examples split across workers by proportions ~ Dir(α); Hsu et al. 2019),
``shards`` (McMahan et al. 2017: sort by label, cut into ``num_workers × shards_per_worker``
shards, deal each worker ``shards_per_worker`` of them).

``RankBatches`` (lab.batches) gives each rank its own stream of minibatches from its shard, driven
by a generator seeded from (seed, rank), so a rank draws the same batches whether it is
simulated beside others or runs alone under torch.distributed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch

from lab.batches import RankBatches  # noqa: F401 (re-exported: lab.data.RankBatches, the per-rank batch streams)

DATASETS = ("digits", "lstsq", "chars")
PARTITIONS = ("iid", "dirichlet", "shards")


@dataclass
class Dataset:
    name: str
    kind: str  # 'classification' | 'regression' | 'lm'
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels: torch.Tensor | None  # (n_train,) what partitioners split on; None: only iid
    num_classes: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return self.x_train.shape[0]


def load_digits() -> Dataset:
    x, y = _digits_arrays()
    x = x / 16.0  # (1797, 64)
    g = torch.Generator().manual_seed(1234)
    test_idx = []
    for c in range(10):  # stratified 20% test split, fixed for every run
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: len(idx) // 5])
    test = torch.cat(test_idx).sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test] = False
    return Dataset("digits", "classification", x[mask], y[mask], x[test], y[test], y[mask], 10,
                   {"input_shape": (64,), "image_shape": (1, 8, 8)})


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (data (1797, 64) float32, target (1797,) long), read from the file it ships
    (what `sklearn.datasets.load_digits` reads) without importing scikit-learn, which takes seconds."""
    import gzip
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dataset='digits' needs scikit-learn installed (it ships the digits)")
    path = f"{spec.submodule_search_locations[0]}/datasets/data/digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # (1797, 65): 64 pixels, then the label
    return torch.tensor(table[:, :-1], dtype=torch.float32), torch.tensor(table[:, -1].astype(int), dtype=torch.long)


def load_lstsq(*, num_groups: int = 8, dim: int = 20, per_group: int = 200, heterogeneity: float = 1.0,
               noise: float = 0.1, seed: int = 0) -> Dataset:
    """Group by group: u_g, then x, then the noise, from one generator; then a random permutation splits the
    rows (the first fifth: test). Written so memory stays one copy of the data at 10^5 groups: a first pass
    only advances the generator to the permutation's draw, a second draws the same numbers again and puts each
    row where the permutation sends it (train and test are views of one buffer)."""
    g = torch.Generator().manual_seed(seed + 7)
    w_star = torch.randn(dim, generator=g)
    start = g.get_state()
    n = num_groups * per_group
    u, xk, e = torch.empty(dim), torch.empty(per_group, dim), torch.empty(per_group)  # scratch of one group
    for _ in range(num_groups):  # pass 1: the draws, discarded
        torch.randn(dim, generator=g, out=u)
        torch.randn(per_group, dim, generator=g, out=xk)
        torch.randn(per_group, generator=g, out=e)
    perm = torch.randperm(n, generator=g)  # position j holds row perm[j]
    where = torch.empty(n, dtype=torch.long)
    where[perm] = torch.arange(n)  # row i goes to position where[i]
    x, y = torch.empty(n, dim), torch.empty(n)  # (n, dim), (n,) in split order
    g.set_state(start)
    for k in range(num_groups):  # pass 2: the same draws, each row where the permutation puts it
        w_k = w_star + heterogeneity * torch.randn(dim, generator=g)
        torch.randn(per_group, dim, generator=g, out=xk)
        pos = where[k * per_group:(k + 1) * per_group]
        x[pos] = xk
        y[pos] = xk @ w_k + noise * torch.randn(per_group, generator=g)
    n_test = n // 5
    groups = perm[n_test:] // per_group  # each training row's group
    return Dataset("lstsq", "regression", x[n_test:], y[n_test:], x[:n_test], y[:n_test], groups, 0,
                   {"input_shape": (dim,), "w_star": w_star, "num_groups": num_groups})


def corpus_text() -> str:
    return resources.files("lab").joinpath("assets/corpus.txt").read_text(encoding="ascii")


def load_chars(*, block_size: int = 32) -> Dataset:
    text = corpus_text()
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))

    def windows(seq: torch.Tensor):
        n = (len(seq) - 1) // block_size
        x = seq[: n * block_size].view(n, block_size)
        y = seq[1: n * block_size + 1].view(n, block_size)
        return x, y

    x_tr, y_tr = windows(ids[:split])
    x_te, y_te = windows(ids[split:])
    return Dataset("chars", "lm", x_tr, y_tr, x_te, y_te, None, len(vocab),
                   {"vocab": "".join(vocab), "block_size": block_size})


def load_dataset(name: str, *, seed: int = 0, num_workers: int = 8) -> Dataset:
    """Dataset `name`, cached in the process (a sweep loads it once): the same tensors every time, never to be
    written in place; the Dataset itself (and its meta dict) is a fresh copy."""
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; allowed: {list(DATASETS)}")
    key = (name, seed, max(num_workers, 1)) if name == "lstsq" else (name,)  # what the data depends on
    data = _cached_dataset(key)
    return dataclasses.replace(data, meta=dict(data.meta))


@functools.lru_cache(maxsize=4)
def _cached_dataset(key: tuple) -> Dataset:
    if key[0] == "digits":
        return load_digits()
    if key[0] == "lstsq":
        return load_lstsq(num_groups=key[2], seed=key[1])
    return load_chars()


# ---- partitioners ------------------------------------------------------------------------------
def partition(num_examples: int, labels: torch.Tensor | None, *, scheme: str, num_workers: int, seed: int,
              alpha: float = 0.5, shards_per_worker: int = 2, min_size: int = 1,
              examples_per_worker: int = 0) -> list[torch.Tensor]:
    """Split example indices across `num_workers`; returns one sorted LongTensor per worker.

    Cached per (examples, labels, settings, seed): a sweep in one kernel partitions once. With `scheme='iid'` and
    `examples_per_worker` k > 0, each worker holds k examples instead: passes over fresh shuffles of the
    examples deal ⌊n/k⌋ workers k consecutive ones each until every worker has its k (disjoint workers when
    num_workers·k <= n; beyond, workers of different passes share examples)."""
    settings = dict(scheme=scheme, num_workers=num_workers, seed=seed, alpha=alpha,
                    shards_per_worker=shards_per_worker, min_size=min_size, examples_per_worker=examples_per_worker)
    digest = None if labels is None else hashlib.blake2b(labels.detach().cpu().numpy().tobytes(),
                                                         digest_size=16).hexdigest()
    key = (num_examples, digest, tuple(sorted(settings.items())))
    if key not in _PARTITIONS:
        _PARTITIONS[key] = tuple(_partition(num_examples, labels, **settings))
        while len(_PARTITIONS) > 8:  # keep the latest few
            _PARTITIONS.pop(next(iter(_PARTITIONS)))
    return list(_PARTITIONS[key])


_PARTITIONS: dict = {}  # (examples, labels digest, settings) -> the workers' shards


def _partition(num_examples: int, labels: torch.Tensor | None, *, scheme: str, num_workers: int, seed: int,
               alpha: float, shards_per_worker: int, min_size: int, examples_per_worker: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    if scheme == "iid" and examples_per_worker:
        return _dealt(num_examples, num_workers, examples_per_worker, g)
    if scheme == "iid":  # perm.tensor_split(num_workers), each part sorted: the first n % N parts one longer
        perm = torch.randperm(num_examples, generator=g)
        q, r = divmod(num_examples, num_workers)
        longer = perm[: r * (q + 1)].view(r, q + 1).sort(dim=1).values
        return list(longer) + list(perm[r * (q + 1):].view(num_workers - r, q).sort(dim=1).values)
    if labels is None:
        raise ValueError(f"partition={scheme!r} needs labels, and this dataset has none; allowed: 'iid'")
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_workers, alpha, min_size, seed)
    elif scheme == "shards":
        num_shards = num_workers * shards_per_worker
        if num_shards > num_examples:
            raise ValueError(f"shards_per_worker={shards_per_worker!r} is too large: {num_shards} shards "
                             f"for {num_examples} examples")
        order = torch.argsort(labels * num_examples + torch.randperm(num_examples, generator=g))
        deal = torch.randperm(num_shards, generator=g).view(num_workers, shards_per_worker)  # worker -> its shards
        owner_of_shard = torch.empty(num_shards, dtype=torch.long)
        owner_of_shard[deal.reshape(-1)] = torch.arange(num_workers).repeat_interleave(shards_per_worker)
        owner = torch.repeat_interleave(owner_of_shard, _split_sizes(num_examples, num_shards))  # of order[j]
        return _by_owner(order, owner, num_workers, num_examples)
    else:
        raise ValueError(f"partition={scheme!r} is unknown; allowed: {list(PARTITIONS)}")
    return [p.sort().values for p in parts]


def _split_sizes(n: int, parts: int) -> torch.Tensor:
    """Sizes of `tensor_split(parts)` of n items: the first n % parts parts one longer."""
    sizes = torch.full((parts,), n // parts, dtype=torch.long)
    sizes[: n % parts] += 1
    return sizes


def _by_owner(examples: torch.Tensor, owner: torch.Tensor, num_workers: int, num_examples: int) -> list[torch.Tensor]:
    """Each worker's examples (examples[j] belongs to owner[j]), ascending: one sort for all workers."""
    ordered = torch.sort(owner * num_examples + examples).values % num_examples
    return list(ordered.split(torch.bincount(owner, minlength=num_workers).tolist()))


def _dealt(num_examples: int, num_workers: int, k: int, g: torch.Generator) -> list[torch.Tensor]:
    """`examples_per_worker` = k: passes over fresh shuffles deal ⌊n/k⌋ workers k consecutive examples each."""
    per_pass = num_examples // k
    if per_pass == 0:
        raise ValueError(f"examples_per_worker={k!r} is invalid: expected at most the {num_examples} training "
                         f"examples")
    passes = -(-num_workers // per_pass)
    dealt = torch.stack([torch.randperm(num_examples, generator=g)[: per_pass * k] for _ in range(passes)])
    return list(dealt.reshape(-1, k)[:num_workers].sort(dim=1).values)  # (N, k) rows


def _dirichlet(labels: torch.Tensor, num_workers: int, alpha: float, min_size: int, seed: int):
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    classes = np.unique(y)
    for _ in range(100):  # redraw until every worker has at least min_size examples
        buckets = [[] for _ in range(num_workers)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_workers, alpha))) * len(idx)).astype(int)[:-1]
            for w, part in enumerate(np.split(idx, cuts)):
                buckets[w].extend(part.tolist())
        if min(len(b) for b in buckets) >= min_size:
            return [torch.tensor(sorted(b), dtype=torch.long) for b in buckets]
    raise ValueError(f"dirichlet_alpha={alpha!r} with num_workers={num_workers} leaves some worker fewer than "
                     f"{min_size} examples (batch_size) in 100 draws; raise dirichlet_alpha or lower the batch size")

