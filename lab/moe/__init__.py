"""The MoE family: a trainable MoE transformer block, expert parallelism over the Collective, and the
techniques that change where experts live and where tokens go. Spec: shared/techniques/sharding_and_topology.md
§B10–§B14 and §A6.

- `router`: top-k gating, capacity, dropped tokens, load-balancing loss.
- `exchange`: the all_to_all_v of tokens (counts first, true bytes, autograd).
- `layer`: experts, the single-device reference, `ExpertParallel` (dispatch / compute / combine).
- `model`: the rank-stacked MoE GPT / classifier; `strategies`: where experts live.
- `ep`: the techniques `moe_ep` (expert parallelism + DDP) and `moe_dp` (replicated experts).
- `locmoe` (LocMoE: node-local routing), `scmoe` (ScMoE: shortcut + overlap on the clock), `ppmoe` (Pipeline
  MoE: index slicing + one intra-node all-reduce), `fssdp` (Hecate: fully sharded sparse data parallelism).
- `exflow`: ExFlow's inter-layer affinity, exact placement and context-coherent dispatch (an inference
  schedule, not a training technique).
- `analysis`: the notebook's measurements at scale (all-to-all cost sweeps, routing traces, ScMoE timelines).
"""
from lab.moe.ep import ExpertParallelTraining, ReplicatedTraining
from lab.moe.fssdp import FSSDPTraining
from lab.moe.locmoe import LocMoETraining
from lab.moe.ppmoe import PPMoETraining
from lab.moe.scmoe import ScMoETraining

#: the registered techniques of this family (lab.registry)
TECHNIQUES = (ExpertParallelTraining, ReplicatedTraining, LocMoETraining, ScMoETraining, PPMoETraining, FSSDPTraining)

__all__ = ["TECHNIQUES", "ExpertParallelTraining", "FSSDPTraining", "LocMoETraining", "PPMoETraining",
           "ReplicatedTraining", "ScMoETraining"]
