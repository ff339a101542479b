"""The sequence-parallel family: long sequences split over ranks, attention across them.

Spec: shared/techniques/sharding_and_topology.md §B2–§B9 (and §A5, §A8 for the planner's view).

- `layout`: which tokens a rank holds (contiguous, zigzag) and the SP groups.
- `kernels`: block attention with its log-sum-exp, the exact merge, the flash-style block backward.
- `common`: the call's `Plan`, rings inside SP groups, the autograd Function over explicit backwards.
- one module per method, forward and backward through the Collective: `ring` (Ring Attention), `burst`
  (BurstAttention), `token_ring` (TokenRing), `ulysses` (DeepSpeed-Ulysses and the USP hybrid), `lss`
  (LSS Transformer), `lasp` (LASP, linear attention), `star` (Star Attention, inference), `dsp`
  (Dynamic Sequence Parallelism); `attention.sp_attention` is the entry point of the softmax ones.
- `cost`: each method's schedule and its bytes, communication, compute and simulated time at any size.
- `memory`: activation bytes per rank (for the planner), checked against the tiny GPT's saved tensors.
- `gpt`: the tiny GPT with its context split over ranks; `technique`: the `sequence_parallel` technique.
- `report`: the notebook's exactness and reference tables; `distributed_run`: every method on gloo processes.
"""
from lab.sequence.attention import METHODS, sp_attention
from lab.sequence.memory import activation_bytes
from lab.sequence.technique import SequenceParallel

TECHNIQUES = (SequenceParallel,)

__all__ = ["METHODS", "TECHNIQUES", "SequenceParallel", "activation_bytes", "sp_attention"]
