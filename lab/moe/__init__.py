"""The MoE family: a trainable MoE transformer block, expert parallelism over the Collective, and the
techniques that change where experts live and where tokens go. Spec: shared/techniques/sharding_and_topology.md
§B10–§B14 and §A6.

- `router`: top-k gating, capacity, dropped tokens, load-balancing loss.
- `exchange`: the all_to_all_v of tokens (counts first, true bytes, autograd).
- `layer`: experts, the single-device reference, `ExpertParallel` (dispatch / compute / combine).
- `model`: the rank-stacked MoE GPT / classifier.
- `strategies`: where experts live (replicated, expert parallel); `ppmoe`: PPMoE; `fssdp`: Hecate FSSDP.
- `ep`: the training techniques `moe_ep` and `moe_dp`; `locmoe`, `scmoe`, `ppmoe_technique`,
  `fssdp_technique`: their variants.
- `exflow`: ExFlow's inter-layer affinity, exact placement and context-coherent dispatch (inference).
"""
from lab.moe.ep import ExpertParallelTraining, ReplicatedTraining

TECHNIQUES = (ExpertParallelTraining, ReplicatedTraining)

__all__ = ["TECHNIQUES", "ExpertParallelTraining", "ReplicatedTraining"]
