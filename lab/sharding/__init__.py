"""The sharding family: ZeRO 1/2/3 and hybrid sharding, ZeRO++, 3-level partitioning, Adam-mini, Hecate FSSDP,
the memory model and the planner. Spec: shared/techniques/sharding_and_topology.md, Part A."""
from lab.sharding.zero import ZeRO

#: the registered techniques of this family (lab.registry)
TECHNIQUES = (ZeRO,)
