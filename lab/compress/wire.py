"""Packets on the wire: per-row seeds, padding ragged payloads, and packets as raw bytes (for tensor-only calls).

Shared by the compressors (lab/compress/base.py) and the compressed collective algorithms
(lab/compress/exchange.py), which therefore do not import each other at module level.
"""
from __future__ import annotations

import torch

from lab.comm.packet import Packet


def row_seed(seed: int, call: int, rank: int) -> int:
    """A 63-bit seed for one (compressor seed, call, rank), the same on every process."""
    return ((seed * 1_000_003 + call) * 1_000_033 + rank * 7_919 + 12_345) % (2 ** 63 - 1)


def pad_ragged(collective, packet: Packet) -> Packet:
    """Pad the tensors a packet lists in meta['ragged'] (variable length along dim 1) to the longest
    row over all ranks, so every process sends the same shape. The length exchange is not recorded:
    the padded packet's size, recorded by the collective, is what every process agrees on."""
    names = packet.meta.get("ragged", ())
    if not names:
        return packet
    tensors = dict(packet.tensors)
    for name in names:
        t = tensors[name]
        longest = collective.all_gather(torch.tensor([[t.shape[1]]]).expand(t.shape[0], 1), record=False)
        width = int(longest.max())
        if width > t.shape[1]:
            t = torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1])], dim=1)
        tensors[name] = t
    return Packet(tensors, packet.header_bytes, dict(packet.meta))


def serialize(packet: Packet, row: int = 0) -> torch.Tensor:
    """One row of a packet as the bytes on the wire: its tensors' raw bytes concatenated, uint8
    (packet.nbytes() of them, header bytes excluded) — for sending a packet through a tensor-only call."""
    return torch.cat([t[row].contiguous().reshape(-1).view(torch.uint8) for t in packet.tensors.values()])


def serialize_rows(packet: Packet) -> torch.Tensor:
    """Every row of a packet as its bytes on the wire, (n, nbytes - header) uint8."""
    n = next(iter(packet.tensors.values())).shape[0]
    return torch.cat([t.contiguous().reshape(n, -1).view(torch.uint8) for t in packet.tensors.values()], dim=1)


def deserialize(rows: torch.Tensor, template: Packet) -> Packet:
    """(m, >= row bytes) uint8 rows laid out as `template`'s rows (its tensors' names, dtypes and shapes after
    the rank axis; extra trailing bytes are padding) -> a Packet of m rows with the template's meta."""
    out, at, m = {}, 0, rows.shape[0]
    for name, t in template.tensors.items():
        size = (t.numel() // max(t.shape[0], 1)) * t.element_size()
        chunk = rows[:, at:at + size].clone(memory_format=torch.contiguous_format)  # aligned for the view
        out[name] = chunk.view(t.dtype).reshape(m, *t.shape[1:])
        at += size
    return Packet(out, template.header_bytes, dict(template.meta))
