"""Bit packing: fewer-than-8-bit values stored densely in uint8 tensors, so a Packet counts packed bytes.

- `pack_bits` / `unpack_bits`: a boolean mask (n, d) as (n, ⌈d/8⌉) bytes.
- `pack_uint` / `unpack_uint`: unsigned integers of `bits` bits each (1..8) as (n, ⌈m·bits/8⌉) bytes.
- `bitstring_to_bytes` / `bytes_to_bitstring`: a flat 0/1 array (an entropy coder's output) as bytes.

Bit order is little-endian within each byte: value j of a row occupies bits
[j·bits, (j+1)·bits) of the row's bit stream, least significant bit first.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_WEIGHTS = 2 ** torch.arange(8, dtype=torch.uint8)  # (8,) bit j of a byte has weight 2^j


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(n, d) bool -> (n, ⌈d/8⌉) uint8, little-endian within each byte."""
    n, d = mask.shape
    padded = torch.zeros(n, math.ceil(d / 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :d] = mask.to(torch.uint8)
    return (padded.view(n, -1, 8) * _WEIGHTS.to(mask.device)).sum(dim=2, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, d: int) -> torch.Tensor:
    """(n, ⌈d/8⌉) uint8 -> (n, d) bool."""
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
    return bits.reshape(packed.shape[0], -1)[:, :d].bool()


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(n, m) integers in [0, 2^bits) -> (n, ⌈m·bits/8⌉) uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r} is invalid: expected 1..8")
    n, m = values.shape
    v = values.to(torch.uint8)
    if 8 % bits == 0:  # whole values per byte: no value straddles two bytes
        per = 8 // bits
        padded = torch.zeros(n, math.ceil(m / per) * per, dtype=torch.uint8, device=v.device)
        padded[:, :m] = v
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=v.device)  # (per,)
        return (padded.view(n, -1, per) << shifts).sum(dim=2, dtype=torch.uint8)
    bit_planes = (v.unsqueeze(-1) >> torch.arange(bits, dtype=torch.uint8, device=v.device)) & 1  # (n, m, bits)
    return pack_bits(bit_planes.reshape(n, m * bits).bool())


def unpack_uint(packed: torch.Tensor, bits: int, m: int) -> torch.Tensor:
    """(n, ⌈m·bits/8⌉) uint8 -> (n, m) uint8 values."""
    n = packed.shape[0]
    if 8 % bits == 0:
        mask = (1 << bits) - 1
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        return ((packed.unsqueeze(-1) >> shifts) & mask).reshape(n, -1)[:, :m]
    planes = unpack_bits(packed, m * bits).view(n, m, bits).to(torch.uint8)
    return (planes << torch.arange(bits, dtype=torch.uint8, device=packed.device)).sum(dim=2, dtype=torch.uint8)


def bitstring_to_bytes(bits: np.ndarray) -> np.ndarray:
    """Flat array of 0/1 (any integer dtype) -> uint8 bytes, little-endian within each byte."""
    return np.packbits(bits.astype(np.uint8), bitorder="little")


def bytes_to_bitstring(data: np.ndarray, nbits: int) -> np.ndarray:
    """uint8 bytes -> the first `nbits` bits as a uint8 array of 0/1."""
    return np.unpackbits(data.astype(np.uint8), bitorder="little", count=nbits)
