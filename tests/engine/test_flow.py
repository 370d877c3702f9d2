"""Copy scores and the backward information-flow trace (modules/engine/flow.py), on tiny random models
and on a tiny Llama with one planted copying head."""
import pytest
import torch

from modules.engine import tiny
from modules.engine.adapters import EngineError, get_adapter
from modules.engine.flow import (FlowNode, context_share_by_layer, copy_scores, rift_layer, trace_flow)
from modules.engine.hooks import capture
from tests.conftest import ARCHS, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

# --- planted model: head (1, PLANTED) copies the one "content" token of the prompt to the last position
PLANTED, CONTENT, QUERY = 2, range(8), 8  # content tokens w0..w7 (ids 0..7), the query token w8
FLAG_CONTENT, FLAG_QUERY = 0, 1           # residual dims: content flag, query flag, 2..9 content identity


def planted_llama(seed: int = 0):
    """Tiny Llama (2 layers, width 32, 4 heads over 2 key/value heads, vocab 64) whose head
    (1, PLANTED) attends from the query token to the content token (a query-flag x content-flag
    match in the lowest rotary frequency, so position barely matters) and writes that token's
    identity, which the unembedding reads as the same token. Every other weight stays random."""
    model = tiny.tiny_model("llama", seed=seed, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=64)
    head_dim, kv_head = 8, PLANTED // 2
    rows = slice(PLANTED * head_dim, (PLANTED + 1) * head_dim)
    kv_rows = slice(kv_head * head_dim, (kv_head + 1) * head_dim)
    slow = head_dim // 2 - 1  # the rotary pair (slow, slow + head_dim/2) turns by 1e-3 rad per position
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed, unembed = model.model.embed_tokens.weight, model.lm_head.weight
        other = torch.randn(64, 22, generator=generator)
        embed.zero_()
        embed[:, 10:] = 3.0 * other / other.norm(dim=-1, keepdim=True)  # non-content identities
        for token in CONTENT:
            embed[token] = 0.0
            embed[token, FLAG_CONTENT], embed[token, 2 + token] = 2.0, 3.0
        embed[QUERY, FLAG_QUERY] = 2.0
        unembed.copy_(embed)
        unembed[:, :2] = 0.0
        unembed *= 5.0 / 3.0
        attn = model.model.layers[1].self_attn
        attn.q_proj.weight[rows] = 0.0
        attn.q_proj.weight[PLANTED * head_dim + slow, FLAG_QUERY] = 3.0
        attn.k_proj.weight[kv_rows] = 0.0
        attn.k_proj.weight[kv_head * head_dim + slow, FLAG_CONTENT] = 3.0
        attn.v_proj.weight[kv_rows] = 0.0
        attn.v_proj.weight[kv_rows, 2:2 + head_dim] = torch.eye(head_dim)
        attn.o_proj.weight[:, rows] = 0.0
        attn.o_proj.weight[2:2 + head_dim, rows] = 4.0 * torch.eye(head_dim)
    return model


def planted_prompt(token: int, source: int, seq: int = 9, seed: int = 0) -> torch.Tensor:
    """Fillers (w9..w62), ``token`` at ``source``, the query token last: [1, seq]."""
    ids = torch.randint(9, 63, (1, seq), generator=torch.Generator().manual_seed(seed))
    ids[0, source], ids[0, -1] = token, QUERY
    return ids


@pytest.fixture(scope="module")
def planted():
    return planted_llama()


@pytest.mark.parametrize("token,source", [(3, 2), (6, 5), (0, 0)])
def test_trace_finds_the_planted_copying_head(planted, token, source):
    ids = planted_prompt(token, source, seed=token)
    predicted = int(planted(ids).logits[0, -1].argmax())
    assert predicted == token  # the planted head decides the output
    calls = []
    handle = planted.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        nodes = trace_flow(planted, ids, predicted)
    finally:
        handle.remove()
    assert len(calls) == 1  # one forward pass for the whole trace
    assert nodes[0] == FlowNode(depth=0, layer=1, head=PLANTED, query_position=8, key_position=source,
                                token=token, parent=-1, in_context=True)
    depth0 = [node for node in nodes if node.depth == 0]
    assert len(depth0) == 4 and all(node.parent == -1 for node in depth0)  # top_heads=4, one key, one token
    assert len({(node.layer, node.head) for node in depth0}) == 4
    for i, node in enumerate(nodes):
        if node.parent >= 0:  # a child continues from its parent's key position and token, below its layer
            parent = nodes[node.parent]
            assert node.parent < i and node.depth == parent.depth + 1 and node.layer < parent.layer
            assert node.query_position == parent.key_position and node.key_position <= node.query_position
            assert node.in_context == (node.token in ids[0].tolist())
    children = [node for node in nodes if node.parent == 0]
    if source == 0:  # position 0 attends to itself alone: no key is above its row's median
        assert children == []
    else:
        assert len(children) == 3 and {node.layer for node in children} == {0}  # top_heads shrinks to 3
    assert not any(node.parent >= 0 and nodes[node.parent].layer == 0 for node in nodes)  # stops at layer 0


def test_trace_options_and_padding(planted):
    ids = planted_prompt(4, 3)
    allowed = {(1, 0), (1, 1), (0, 2)}
    nodes = trace_flow(planted, ids, 4, heads=allowed, top_heads=2)
    assert {(node.layer, node.head) for node in nodes} <= allowed and (1, PLANTED) not in {
        (node.layer, node.head) for node in nodes}
    assert len([node for node in nodes if node.depth == 0]) == 2
    # left padding: the same prompt shifted by two masked positions; keys never land on padding
    padded = torch.cat([torch.full((1, 2), 63), ids], dim=1)
    mask = torch.ones_like(padded)
    mask[0, :2] = 0
    nodes = trace_flow(planted, padded, 4, attention_mask=mask, top_positions=9)
    assert nodes[0][:6] == (0, 1, PLANTED, 10, 5, 4) and nodes[0].in_context
    assert min(node.key_position for node in nodes) >= 2
    # padded keys count neither as candidates nor in a row's median: the unpadded trace, shifted
    unpadded = trace_flow(planted, ids, 4, top_positions=9)
    assert len(unpadded) > 20
    assert [node._replace(query_position=node.query_position + 2, key_position=node.key_position + 2)
            for node in unpadded] == nodes
    shallow = trace_flow(planted, ids, 4, position=3, top_heads=1)  # from the content token itself
    assert all(node.query_position <= 3 for node in shallow)


def test_trace_errors(planted):
    ids = planted_prompt(4, 3)
    for kwargs, message in [(dict(input_ids=ids.expand(2, -1)), r"input_ids must be \[1, seq\], got \(2, 9\)"),
                            (dict(position=9), "position 9 out of range for a sequence of length 9"),
                            (dict(token=64), "token id out of range for a vocabulary of 64"),
                            (dict(top_heads=0), "top_heads must be a positive integer"),
                            (dict(heads=[(2, 0)]), "layer 2 out of range for a 2-layer model"),
                            (dict(heads=[(1, 4)]), "head 4 out of range"),
                            (dict(heads=[1]), r"heads must be \(layer, head\) pairs")]:
        with pytest.raises(EngineError, match=message) as error:
            trace_flow(planted, **{"input_ids": ids, "token": 4, **kwargs})
        assert "\n" not in str(error.value)


def test_context_share_and_rift_layer():
    def node(layer, in_context):
        return FlowNode(0, layer, 0, 5, 1, 7, -1, in_context)
    nodes = [node(0, False), node(0, False), node(1, True), node(1, False), node(1, False),
             node(3, True), node(3, False), node(4, True), node(5, True), node(5, True)]
    share = context_share_by_layer(nodes, 6)
    assert share.counts.tolist() == [2, 3, 0, 2, 1, 2]
    torch.testing.assert_close(share.shares, torch.tensor([0.0, 1 / 3, float("nan"), 0.5, 1.0, 1.0],
                                                          dtype=torch.float64), equal_nan=True)
    assert rift_layer(share) == 3 and rift_layer(share.shares, threshold=0.6) == 4
    assert rift_layer(share, threshold=0.0) == 0
    assert rift_layer(torch.tensor([1.0, 1.0, 0.2])) is None  # the top layer falls below: no rift
    assert rift_layer(context_share_by_layer([], 4)) is None
    with pytest.raises(EngineError, match="node layer 6 out of range for 6 layers"):
        context_share_by_layer([node(6, True)], 6)


# --- copy scores -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS + ("gemma3",))
def test_copy_scores_match_a_direct_computation(tiny_model, arch):
    model, _ = tiny_model(arch)
    adapter = get_adapter(model)
    ids, sources, target = random_ids(3, 8, seed=7), torch.tensor([0, 4, 6]), torch.tensor([2, 30, 61])
    scores = copy_scores(model, ids, sources, target, position=-2)
    assert scores.attention.shape == scores.projection.shape == scores.score.shape == (3, 4, 3)
    attentions = model(ids, output_attentions=True).attentions  # eager attention
    expected = torch.stack([a[torch.arange(3), :, 6, sources].t() for a in attentions])
    torch.testing.assert_close(scores.attention, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scores.score, scores.attention * scores.projection)
    rows = model.get_output_embeddings().weight[target]  # [n, d_model]
    with capture(model, [f"{kind}.{layer}" for layer in range(3) for kind in ("head_out", "attn_out")]) as acts:
        model(ids)
    for layer in range(3):
        if adapter.spec.heads_are_linear:  # each head alone through the output projection (bias included)
            o_proj = adapter.module(layer, adapter.spec.o_proj)
            head_out = acts[f"head_out.{layer}"][:, 6]  # [n, heads, head_dim]
            for head in range(4):
                alone = torch.zeros_like(head_out)
                alone[:, head] = head_out[:, head]
                direct = (o_proj(alone.flatten(1)) * rows).sum(-1)
                torch.testing.assert_close(scores.projection[layer, head], direct, atol=1e-5, rtol=1e-5)
        else:  # Gemma: the frozen-scale parts add up to the real attention output's projection
            whole = (acts[f"attn_out.{layer}"][:, 6] * rows).sum(-1)
            torch.testing.assert_close(scores.projection[layer].sum(0), whole, atol=1e-5, rtol=1e-5)


def test_copy_scores_single_out_the_planted_head_and_errors(planted):
    ids = torch.cat([planted_prompt(3, 2), planted_prompt(6, 5, seed=1)])
    scores = copy_scores(planted, ids, torch.tensor([2, 5]), torch.tensor([3, 6]))
    assert (scores.attention[1, PLANTED] > 0.99).all()
    best = scores.score.flatten(0, 1).argmax(0)
    assert best.tolist() == [1 * 4 + PLANTED] * 2
    wrong = copy_scores(planted, ids, 2, 7)  # another token: the head writes nothing towards it
    assert (wrong.projection[1, PLANTED] < scores.projection[1, PLANTED] / 10).all()
    for args, message in [((ids, [1, 2, 3], 3), r"source_positions must be one position or one per example \(2\)"),
                          ((ids, 9, 3), "position 9 out of range"),
                          ((ids, 2, torch.tensor([1, 2, 3])), r"target must be one id or one per example \(2\)"),
                          ((ids, 2, -1), "target id out of range"),
                          ((ids, 2.5, 3), "source_positions must be integers"),
                          ((ids, 2, 3.0), "target must be integers")]:
        with pytest.raises(EngineError, match=message):
            copy_scores(planted, *args)
