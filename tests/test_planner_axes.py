"""The planner's new axes: sequence parallelism (degree and method), each model state sharded on its own
(InternEvo), the activation memory of long sequences — held to the tensors autograd saves in the tiny GPT — and
ByteScale's hybrid data parallelism as a what-if for mixed sequence lengths."""
import pytest
import torch
import torch.nn.functional as F

from lab import topology as topo
from lab.models import TinyGPT
from lab.sharding.bytescale import hdp_assign, hdp_whatif
from lab.sharding.memory import LAB_GPT, MODEL_SHAPES, ModelShape, Partition, activation_bytes, memory_per_rank
from lab.sharding.planner import Candidate, evaluate, plan, price, state_collectives, step_collectives

SEVEN_B = MODEL_SHAPES["llama2-7b"]


def test_7b_with_128k_context_on_4x8_fits_with_sequence_parallelism():
    cluster = topo.preset("multinode_4x8", 32)
    df = plan(SEVEN_B, cluster, memory_cap=80e9, seq_len=131072)
    top = df.iloc[0]
    assert top.fits and top.memory_gb <= 80 and top.sp_degree > 1
    assert top.tokens_per_s == df[df.fits].tokens_per_s.max()
    # without SP only full recomputation fits, and it is slower per token than the SP plan
    no_sp = df[df.sp_degree == 1]
    assert set(no_sp[no_sp.fits].recompute) == {"full"}
    assert no_sp[no_sp.fits].tokens_per_s.max() < top.tokens_per_s
    # a 128k sequence's activations alone are far beyond 80 GB on one rank
    assert activation_bytes(SEVEN_B, seq_len=131072, recompute="selective") > 500e9


def test_bad_sp_settings_are_refused():
    cluster = topo.preset("multinode_4x8", 32)
    with pytest.raises(ValueError, match="sp_degrees"):
        plan(SEVEN_B, cluster, memory_cap=80e9, sp_degrees=[3])
    with pytest.raises(ValueError, match="sp_methods"):
        plan(SEVEN_B, cluster, memory_cap=80e9, sp_methods=["flash"])
    with pytest.raises(ValueError, match="sp_degree"):
        activation_bytes(SEVEN_B, seq_len=4096, sp_degree=3)
    with pytest.raises(ValueError, match="sp_method"):
        activation_bytes(SEVEN_B, sp_degree=2, sp_method="flash")


def saved_bytes(layers: int, batch: int, seq: int, *, hidden=32, heads=4, vocab=20) -> int:
    """Bytes of the tensors autograd saves for the backward of lab.models.TinyGPT (parameters excluded)."""
    torch.manual_seed(0)
    model = TinyGPT(vocab, block_size=seq, n_layer=layers, n_head=heads, n_embd=hidden)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    x = torch.randint(0, vocab, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x).reshape(-1, vocab), x.reshape(-1))
    return sum(seen.values())


@pytest.mark.parametrize("batch,seq", [(2, 8), (3, 16), (1, 32)])
def test_activation_term_equals_the_tiny_gpts_saved_tensors(batch, seq):
    per_layer = saved_bytes(3, batch, seq) - saved_bytes(2, batch, seq)  # one more block, nothing else
    shape = ModelShape("tiny-gpt", num_layers=1, hidden=32, heads=4, ffn=128, vocab=20, seq_len=seq, style="gpt2")
    assert activation_bytes(shape, micro_batch=batch, recompute="none", profile=LAB_GPT) == per_layer


def test_sequence_parallel_activations_shrink_with_the_degree_plus_the_methods_buffers():
    s, h, kv, layers = 32768, SEVEN_B.hidden, SEVEN_B.kv_dim, SEVEN_B.num_layers
    one = activation_bytes(SEVEN_B, seq_len=s, recompute="selective")
    for g in (2, 8):
        uly = activation_bytes(SEVEN_B, seq_len=s, sp_degree=g, sp_method="ulysses")
        assert uly == pytest.approx(one / g + 2 * (s // g) * (h + 2 * kv) * 2)  # + all-to-all buffers, once
        ring = activation_bytes(SEVEN_B, seq_len=s, sp_degree=g, sp_method="ring")
        assert ring == pytest.approx(one / g + 4 * (s // g) * kv * 2)  # + two K/V blocks in flight
        lss = activation_bytes(SEVEN_B, seq_len=s, sp_degree=g, sp_method="lss")
        assert lss == pytest.approx(one / g + layers * 2 * s * kv * 2)  # the gathered K/V of every layer
    full = activation_bytes(SEVEN_B, seq_len=s, recompute="none")
    assert activation_bytes(SEVEN_B, seq_len=s, recompute="none", sp_degree=4, sp_method="ring") == pytest.approx(
        full / 4 + 4 * (s // 4) * kv * 2)  # the s² core shrinks by G too


@pytest.mark.parametrize("stage,degrees", [(0, (1, 1, 1)), (1, (1, 1, 4)), (2, (1, 4, 4)), (3, (4, 4, 4)),
                                           (1, (1, 1, 8)), (3, (8, 8, 8))])
def test_per_state_schedule_reproduces_the_zero_stages(stage, degrees):
    cluster = topo.preset("multinode_4x8", 16)
    s = degrees[2]
    zero = step_collectives(10_000_000, 16, stage=stage, sharding_degree=s if stage else 1, ranks_per_node=8, units=4)
    ours = state_collectives(10_000_000, 16, param_degree=degrees[0], grad_degree=degrees[1], optimizer_degree=s,
                             units=4)
    assert sorted(c.tag for c in ours) == sorted(c.tag for c in zero)
    assert price(ours, cluster) == pytest.approx(price(zero, cluster))


def test_internevo_degrees_trade_optimizer_memory_for_bytes():
    cluster = topo.preset("multinode_4x8", 32)
    ev = lambda c: evaluate(SEVEN_B, cluster, c, memory_cap=80e9)  # noqa: E731
    z3 = ev(Candidate(3, 8))  # parameters, gradients and optimizer states over 8 ranks (one node)
    ie = ev(Candidate(3, 8, param_degree=8, grad_degree=8, optimizer_degree=32))  # optimizer states over 32
    psi = SEVEN_B.num_params
    assert ie["states_gb"] * 1e9 == pytest.approx(memory_per_rank(SEVEN_B, Partition(8, 8, 32)).states)
    assert z3["states_gb"] - ie["states_gb"] == pytest.approx(12 * psi * (1 / 8 - 1 / 32) / 1e9, rel=1e-6)
    # across nodes a reduce-scatter + an all-gather of the optimizer shard move what the replicas' all-reduce
    # moves, but the gather of the updated shard runs after the step: it cannot hide behind compute
    assert ie["bytes_inter"] == pytest.approx(z3["bytes_inter"])
    assert ie["exposed_s"] > z3["exposed_s"]
    with pytest.raises(ValueError, match="each must divide"):
        state_collectives(100, 8, param_degree=4, grad_degree=2, optimizer_degree=8)


def test_bytescale_hybrid_data_parallelism_sends_far_less_than_static_cp():
    lengths = [65536] + [1024] * 60  # the spec's mixed batch, P = 8
    kv, b = 1024, 2
    out = hdp_whatif(lengths, num_ranks=8, capacity=16384, kv_dim=kv, cp_degree=8)
    assign = hdp_assign(lengths, num_ranks=8, capacity=16384)
    assert assign[0] == [0, 1, 2, 3] and all(len(r) == 1 and r[0] >= 4 for r in assign[1:])
    assert out["hdp"]["cp_bytes_per_layer"] == 4 * 2 * 3 * 16384 * kv * b  # only the long sequence pays
    static = sum(8 * 2 * 7 * (n / 8) * kv * b for n in lengths)
    assert out["static"]["cp_bytes_per_layer"] == pytest.approx(static)
    assert out["bytes_ratio"] > 4
    assert out["hdp"]["max_tokens_per_rank"] <= 16384
    with pytest.raises(ValueError, match="capacity"):
        hdp_whatif(lengths, num_ranks=8, capacity=8192, kv_dim=kv)
