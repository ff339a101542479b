"""Sync-period techniques, one module each."""
from lab.sync.ddp import DDP
from lab.sync.diloco import DiLoCo
from lab.sync.dimat import DIMAT
from lab.sync.dpsgd import DPSGD
from lab.sync.fedavg import FedAvg
from lab.sync.fedprox import FedProx
from lab.sync.fedvote import FedVote
from lab.sync.local_sgd import LocalSGD
from lab.sync.modest import MoDeST
from lab.sync.pgfed import PGFed
from lab.sync.qsr import QSR
from lab.sync.scaffold import Scafcom, Scaffold, Scallion
from lab.sync.streaming_diloco import StreamingDiLoCo

#: the registered techniques of this family (lab.registry)
TECHNIQUES = (DDP, LocalSGD, FedAvg, QSR, DiLoCo, StreamingDiLoCo, FedProx, Scaffold, Scallion, Scafcom, MoDeST,
              FedVote, PGFed, DIMAT, DPSGD)
