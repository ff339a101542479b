"""LoRA-based and parameter-efficient federated fine-tuning: only a small trainable vector travels.

- `fedpeft`: FedPEFT — bias / LoRA / head / full tuning, FedAvg on the trainable part.
- `fedex_lora`: FedEx-LoRA — exact aggregation with the residual folded into the frozen weight.
- `dp_lora`: DP-LoRA — per-client clipping and Gaussian noise, (ε, δ) from an RDP accountant.
- `cellm`: CELLM — sparse (top-k) LoRA updates up and down.
"""
from lab.lora.cellm import CELLM
from lab.lora.dp_lora import DPLoRA
from lab.lora.fedex_lora import FedExLoRA
from lab.lora.fedpeft import FedPEFT

TECHNIQUES = (FedPEFT, FedExLoRA, DPLoRA, CELLM)

__all__ = ["CELLM", "TECHNIQUES", "DPLoRA", "FedExLoRA", "FedPEFT"]
