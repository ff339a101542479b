"""ZeRO stages 1–3 with hybrid sharding (S × R) and ZeRO++ (qwZ, hpZ, qgZ), over the Collective.

Papers: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models" (SC'20); Zhao et al., "PyTorch FSDP" (VLDB'23) for hybrid
sharding; Wang et al., "ZeRO++" (arXiv 2306.10209). Spec:
shared/techniques/sharding_and_topology.md §A1–§A3.

Idea. Data parallelism where a copy of the model state is split S ways (a
*shard group* of S contiguous ranks) and replicated R = P/S times. Rank r owns
the contiguous slice `shard_index(r)` of the flat parameter vector (padded to a
multiple of S) and keeps the optimizer state (and, from stage 2, the gradient;
at stage 3, the parameters) only for that slice.

What is sent per step (one unit = the whole flat model; Ψ parameters, fp32):
- stages 1, 2: reduce-scatter of the gradient in the shard group (tag `grads`),
  all-reduce of the gradient slice across replicas when R > 1 (`grads_replicas`),
  all-gather of the updated slices in the shard group (`params`): (S−1)/S·4Ψ
  each way, the same bytes as DDP's all-reduce when S = P.
- stage 3: all-gather for the forward (`params_fwd`), again for the backward
  (`params_bwd`), reduce-scatter of the gradient: 1.5× DDP when S = P. The
  forward runs without keeping activations and the backward recomputes it from
  the re-gathered parameters (ZeRO-3 with full activation recomputation).
- ZeRO++ (stage 3, `zeropp`): `qwz` sends the forward gather as block-wise int8
  with fp32 scales (lab.compress.quantize.IntQuantizer); `hpz` keeps a
  secondary slice of the parameters per hpZ group of H ranks (default: one
  node) and gathers the backward inside it only; `qgz` replaces the gradient
  reduce-scatter by the 2-hop int4 all-to-all of lab.sharding.hierarchy.
- hierarchical gradient reduction (S = P, `reduce_levels`): 'node' is ZeRO++'s
  2-hop schedule (in the node, then across nodes), 'die+node' the Frontier
  scheme's 3 hops (the GPU's dies, the node's GPUs, the nodes; with
  `hpz_size` = dies per GPU or ranks per node for the secondary copy's level,
  lab.sharding.frontier); int4 at every hop with qgz.

Knobs (ExperimentConfig): `zero_stage` (1, 2, 3), `sharding_degree` S (0 = all
ranks; S < P is hybrid sharding, S = 1 is DDP), `zeropp` ('none' or a '+'-joined
subset of qwz, hpz, qgz), `hpz_size` H (0 = ranks per node), `quant_block`,
`reduce_levels` ('flat', 'node', 'die+node'), `dies_per_gpu`.

Exactness: with the same optimizer, parameters equal DDP's up to the order of
the gradient sums (E0/E1); qwZ and qgZ are lossy by design (E2).

The step itself is `lab.sharding.step.ShardedStep` (the one implementation of a
sharded step, which the sync techniques that compose with sharding run too:
`lab.sync.sharded`); ZeRO is that step with the dense mean of each gradient
slice over the replicas at every step — DDP across replicas.

`memory` holds, after every step, the bytes per rank of the tensors this
technique holds when the optimizer has stepped (params, grads, optimizer, buffers),
counted from the tensors themselves; `lab.sharding.memory` predicts them.
"""
from __future__ import annotations

from lab.knobs import Knob, bad
from lab.sharding.options import reads_sharding
from lab.sharding.step import ShardedStep, tensor_bytes  # noqa: F401  (tensor_bytes: re-exported)
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext

_SHARDED = "only sharding_degree > 1 reads it (technique='zero': always)"


class ZeRO(Technique):
    name = "zero"
    label = "ZeRO"
    reads = LOCAL_OPTIMIZER
    label_knobs = ("zero_stage", "sharding_degree")
    #: reads the sharding knobs at any S (S = 1 is DDP through the sharded code path)
    shards_always = True
    knobs = {
        "zero_stage": Knob(3, "model states sharded: 1 optimizer states, 2 + gradients, 3 + parameters",
                           choices=(1, 2, 3), read_when=reads_sharding, why=_SHARDED,
                           probe_with={"sharding_degree": 2}),
        "sharding_degree": Knob(0, "ranks sharing one copy of the model state, S (a divisor of num_workers; S < "
                                "num_workers replicates it R = num_workers/S times; 0 = the technique's default: "
                                "all workers for zero, no sharding (1) for the sync techniques that compose with "
                                "it: ddp, local_sgd, qsr, diloco, streaming_diloco shard inside each of the R "
                                "replicas and sync across them, lab.sync.sharded)", low=0, high=100_000, probe=2),
        "zeropp": Knob("none", "zero stage 3: ZeRO++ options, 'none' or a '+'-joined subset of qwz (int8 weight "
                       "gather), hpz (node-local secondary weights), qgz (int4 2-hop gradient reduction; zero only)",
                       probe="qwz", read_when=reads_sharding, why=_SHARDED, probe_with={"sharding_degree": 2}),
        "hpz_size": Knob(0, "ranks per secondary-partition group (0 = ranks per node; composed with a sync "
                         "technique: its gcd with sharding_degree, so the group stays in one replica)", low=0,
                         high=100_000, read_when=lambda c: reads_sharding(c) and "hpz" in c.zeropp,
                         why="only zeropp with 'hpz' reads it", probe_with={"zeropp": "hpz", "sharding_degree": 2}),
        "quant_block": Knob(256, "values per fp32 scale in block-wise quantization", low=1, high=2**24,
                            read_when=lambda c: reads_sharding(c) and ("qwz" in c.zeropp or "qgz" in c.zeropp),
                            why="only zeropp with 'qwz' or 'qgz' reads it",
                            probe_with={"zeropp": "qwz", "sharding_degree": 2}),
        "reduce_levels": Knob("flat", "zero (sharding_degree = all): gradient reduction: one reduce-scatter, or "
                              "hierarchical all-to-alls by node (ZeRO++'s 2 hops) or by die, GPU and node "
                              "(Frontier's 3)", choices=("flat", "node", "die+node")),
        "dies_per_gpu": Knob(2, "ranks per GPU (a divisor of the ranks per node)", low=1, high=1024,
                             read_when=lambda c: c.reduce_levels == "die+node",
                             why="only reduce_levels='die+node' reads it",
                             probe_with={"reduce_levels": "die+node"}),
    }

    @classmethod
    def check(cls, c) -> None:
        from lab.sharding import options

        options.check(c, bad)

    def setup(self, ctx: TrainContext) -> None:
        self.sharded = ShardedStep(self.config, ctx)

    @property
    def layout(self):
        return self.sharded.layout

    @property
    def memory(self) -> dict[str, int]:
        return self.sharded.memory

    def round(self, ctx: TrainContext) -> RoundResult:
        sh = self.sharded
        losses = sh.step(ctx, exchange=lambda g: sh.replica_mean(ctx, g))
        return RoundResult(ctx.collective.mean_metric(losses),
                           {"sharding_degree": sh.layout.sharding_degree, "replication_degree": sh.replication_degree})

    def model_row(self, ctx: TrainContext):
        """The current model (d,): every replica holds the same after each step (stage 3 gathers its slices,
        not recorded, into the cluster's parameter buffer)."""
        return self.sharded.full_rows(ctx)[0].clone()

    def state_dict(self) -> dict:
        return self.sharded.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sharded.load_state_dict(state)
