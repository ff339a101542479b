"""Collectives over rank-stacked tensors, simulated or on torch.distributed, and the Ledger."""
from lab.comm.collective import Collective, ordered_sum
from lab.comm.ledger import Ledger
from lab.comm.packet import Packet, payload_nbytes
from lab.comm.simulated import SimulatedCollective

__all__ = ["Collective", "Ledger", "Packet", "SimulatedCollective", "ordered_sum", "payload_nbytes"]
