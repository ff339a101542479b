"""The claim of sequence parallelism: every method of `sequence_parallel` (Ring Attention, TokenRing,
DeepSpeed-Ulysses, USP, BurstAttention, LSS Transformer) trains the tiny character GPT exactly as one
device would, with its own attention traffic.

Setting: one SP group of 4 ranks, AdamW, 3 steps (× budget) on the character corpus; the reference is
`lab.sequence.report.reference_losses`, the plain model on one device over the same batches. "Exact"
means every step's loss agrees to 1e-4 (fp32; the blockwise softmax merges associate differently).
"""
from __future__ import annotations

from lab.config import KNOBS
from lab.fidelity.claim import claim, sci, size
from lab.sequence.report import reference_losses

EXACT = 1e-4


@claim("sequence_parallel",
       paper="Liu et al. 2023 Ring Attention; Jacobs et al. 2023 Ulysses; Sun et al. 2024 BurstAttention; "
             "Wang et al. 2023 LSS; TokenRing; USP",
       claim="[V-abs] Attention over a sequence split across devices is exact (no approximation), so sequences "
             "grow with the device count (Ring Attention: P× longer; Ulysses: 4× longer at 2.5× speed).",
       evidence="Each method's message schedule is simulated hop by hop (bytes from the schedule); E1 exactness "
                "[V-sim]; LASP and Star Attention are modules of lab.sequence, not training methods here.",
       left="Speed and length headlines at GPU scale; activation memory per rank (modelled in lab.sequence.memory, "
            "notebook 05).")
def sequence_parallel(bench):
    steps = bench.n(3, 2)
    common = dict(num_workers=4, model="gpt", dataset="chars", steps=steps, eval_every=steps, batch_size=2,
                  lr=0.01, optimizer="adamw", topology="ethernet")
    gaps, traffic, want = {}, {}, None
    for method in KNOBS["sp_method"].choices:
        r = bench.run("sequence_parallel", sp_method=method, **common)
        want = want if want is not None else reference_losses(r.config)
        gaps[method] = max(abs(a - b) for a, b in zip(r.metrics.loss, want))
        traffic[method] = float(r.metrics.sp_bytes.iloc[-1]) / (4 * steps)
    worst = max(gaps, key=gaps.get)
    per_method = ", ".join(f"{m} {size(b)}" for m, b in traffic.items())
    text = (f"4-rank SP group, {steps} steps: all {len(gaps)} methods equal one device (largest loss gap "
            f"{sci(gaps[worst])}, {worst}); attention bytes per rank per step: {per_method}.")
    return text, gaps[worst] < EXACT
