"""The sharding family: ZeRO 1/2/3 and hybrid sharding, ZeRO++, 3-level partitioning, Adam-mini, the memory
model and the planner; the sharded step (lab.sharding.step) that ZeRO and the sync techniques composed with
sharding share (lab.sync.sharded), and what a composed run sends and holds (lab.sharding.composed) (Hecate
FSSDP shards experts: lab.moe.fssdp). Spec: shared/techniques/sharding_and_topology.md, Part A."""
from lab.sharding.zero import ZeRO

#: the registered techniques of this family (lab.registry)
TECHNIQUES = (ZeRO,)
