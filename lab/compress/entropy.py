"""Prefix codes on bit strings (numpy arrays of 0/1): canonical Huffman, Elias-gamma, fixed-width integers.

Every encoder returns the exact bit string a receiver would parse, and every
decoder parses it back; encoded sizes anywhere in commlab are the lengths of
these strings. Decoding is vectorized: for every bit position the length of a
codeword that would start there is computed at once, then the chain of actual
codeword starts (0, 0 + len(0), ...) is found by pointer doubling in
O(N log count) array operations.

Bits of an integer are written most significant first.
"""
from __future__ import annotations

import heapq

import numpy as np

MAX_CODE_LENGTH = 20  # decoding tables have 2^max_length entries


# ---- fixed width ------------------------------------------------------------------------------
def encode_fixed(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers (m,) -> m·width bits."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)


def decode_fixed(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    """The first count·width bits -> (count,) int64."""
    b = bits[: count * width].astype(np.int64).reshape(count, width)
    return (b << np.arange(width - 1, -1, -1, dtype=np.int64)).sum(axis=1)


# ---- chains of codewords --------------------------------------------------------------------------
def chain_starts(lengths: np.ndarray, count: int) -> np.ndarray:
    """Start positions of the first `count` codewords, given the length of a codeword starting at each bit.

    lengths: (N,) >= 1. The chain is 0, 0 + lengths[0], ...; returns (count,) int64.
    Raises ValueError if the bit string ends before `count` codewords.
    """
    n = len(lengths)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    jump = np.minimum(np.arange(n, dtype=np.int64) + lengths.astype(np.int64), n)  # n = past the end
    jump = np.append(jump, n)  # the sentinel jumps to itself
    found = np.zeros(1, dtype=np.int64)
    while len(found) < count:
        nxt = jump[found]
        nxt = nxt[nxt < n]
        if len(nxt) == 0:
            break
        found = np.union1d(found, nxt)
        jump = jump[jump]
    if len(found) < count:
        raise ValueError(f"bit string holds {len(found)} codewords, expected {count}")
    return found[:count]


# ---- canonical Huffman ---------------------------------------------------------------------------------
def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal code length per symbol from its count (0 for absent symbols; a lone symbol gets 1 bit)."""
    counts = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(counts > 0)
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(present) == 1:
        lengths[present] = 1
        return lengths
    heap = [(int(counts[s]), int(s), [int(s)]) for s in present]  # (weight, tiebreak, symbols below)
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, t1, s1 = heapq.heappop(heap)
        w2, t2, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), s1 + s2))
    if lengths.max() > MAX_CODE_LENGTH:
        raise ValueError(f"Huffman code longer than {MAX_CODE_LENGTH} bits: too many rare symbols")
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values from code lengths: symbols in (length, symbol) order get consecutive codes."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths > 0), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        prev = int(lengths[s])
        code += 1
    return codes


def encode_prefix(symbols: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Symbols (m,) -> the concatenation of their codewords."""
    width = int(lengths.max())
    table = ((codes[:, None] >> (lengths[:, None] - 1 - np.arange(width))) & 1).astype(np.uint8)  # (S, width)
    keep = np.arange(width)[None, :] < lengths[:, None]  # (S, width)
    return table[symbols][keep[symbols]]


def decode_prefix(bits: np.ndarray, lengths: np.ndarray, codes: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Parse `count` codewords from the start of `bits`; returns (symbols (count,), bits consumed)."""
    width = int(lengths.max())
    lookup_sym = np.full(2 ** width, -1, dtype=np.int64)
    lookup_len = np.ones(2 ** width, dtype=np.int64)
    for s in np.flatnonzero(lengths > 0):
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (width - int(lengths[s]))
        lookup_sym[lo:hi], lookup_len[lo:hi] = s, lengths[s]
    padded = np.concatenate([bits.astype(np.int64), np.zeros(width, dtype=np.int64)])
    window = np.zeros(len(bits), dtype=np.int64)
    for j in range(width):  # the `width` bits starting at each position, as an integer
        window = (window << 1) | padded[j:j + len(bits)]
    starts = chain_starts(lookup_len[window], count)
    symbols = lookup_sym[window[starts]]
    if (symbols < 0).any():
        raise ValueError("bit string is not a sequence of codewords of this code")
    end = int(starts[-1] + lookup_len[window[starts[-1]]]) if count else 0
    return symbols, end


# ---- Elias gamma (positive integers) ------------------------------------------------------------------
def encode_gamma(values: np.ndarray) -> np.ndarray:
    """Integers >= 1 (m,) -> Elias-gamma bits: ⌊log2 x⌋ zeros, then x in binary (2⌊log2 x⌋ + 1 bits each)."""
    x = values.astype(np.int64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.uint8)
    if (x < 1).any():
        raise ValueError("Elias-gamma codes integers >= 1")
    nz = np.floor(np.log2(x)).astype(np.int64)  # leading zeros
    nz += (x >> (nz + 1)) > 0  # guard float rounding for large x
    nz -= (x >> nz) == 0
    size = 2 * nz + 1
    ends = np.cumsum(size)
    out = np.zeros(int(ends[-1]), dtype=np.uint8)
    first_bin = ends - (nz + 1)  # where each binary part starts
    owner = np.repeat(np.arange(len(x)), nz + 1)  # value of each binary bit
    j = np.arange(len(owner)) - np.repeat(np.cumsum(nz + 1) - (nz + 1), nz + 1)  # index inside the binary part
    out[np.repeat(first_bin, nz + 1) + j] = (x[owner] >> (nz[owner] - j)) & 1
    return out


def decode_gamma(bits: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Parse `count` Elias-gamma codes from the start of `bits`; returns (values (count,), bits consumed)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    n = len(bits)
    ones = np.where(bits.astype(bool), np.arange(n), n)
    next_one = np.minimum.accumulate(ones[::-1])[::-1]  # first 1 at or after each position
    zeros = next_one - np.arange(n)  # leading zeros of a code starting here
    starts = chain_starts(2 * zeros + 1, count)
    z = zeros[starts]
    if (starts + 2 * z + 1 > n).any():
        raise ValueError("bit string ends inside an Elias-gamma code")
    b = bits.astype(np.int64)
    values = np.zeros(count, dtype=np.int64)
    for j in range(int(z.max()) + 1):  # read the binary parts bit by bit, all codes at once
        active = j <= z
        values[active] = (values[active] << 1) | b[(starts + z + j)[active]]
    return values, int(starts[-1] + 2 * z[-1] + 1)
