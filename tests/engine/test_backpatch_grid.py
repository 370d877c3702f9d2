"""Grids of back-patching and Patchscope pairs (Biran et al. 2024), prompt-only contexts and the
sublayer lens: each grid row equals its per-pair run, the cached prompt-only patch equals re-patching
every forward, and the hooks read and write tensor and tuple block outputs alike."""
import pytest
import torch

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import Site, capture, intervene, patch
from modules.engine.interventions import knockout
from modules.engine.lens import sublayer_ranks
from modules.engine.patchscope import backpatch, backpatch_grid, generate_greedy, patchscope, patchscope_grid
from tests.conftest import random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_PAIRS = [(source, target) for source in range(3) for target in range(3)]  # back, identity and forward
LOGIT_ATOL = 2e-5  # rows batched together round differently from one row alone


def _reforward(model, ids, patches, steps, contexts=lambda seq: ()):
    """Greedy decoding without a cache: every step re-runs the whole sequence with the patches."""
    seq, tokens, logits = ids, [], []
    for _ in range(steps):
        with patch(model, patches):
            stack = list(contexts(seq))
            for context in stack:
                context.__enter__()
            try:
                step = model(seq, use_cache=False).logits[:, -1]
            finally:
                for context in reversed(stack):
                    context.__exit__(None, None, None)
        tokens.append(step.argmax(-1))
        logits.append(step)
        seq = torch.cat([seq, tokens[-1][:, None]], 1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("position", [0, 4, -1])
def test_backpatch_grid_equals_per_pair_backpatch(tiny_model, arch, position):
    model, _ = tiny_model(arch)
    ids = random_ids(1, 9, seed=2)
    grid = backpatch_grid(model, ids, position, ALL_PAIRS, max_new_tokens=5, batch_size=4, keep_logits=True)
    assert grid.tokens.shape == (9, 5) and grid.logits.shape == (9, 5, 64)
    plain = generate_greedy(model, ids, 5)
    moved = 0.0
    for row, (source, target) in enumerate(ALL_PAIRS):
        single = backpatch(model, ids, source, target, positions=[position], max_new_tokens=5)
        assert torch.equal(grid.tokens[row], single.tokens[0]), (source, target)
        torch.testing.assert_close(grid.logits[row], single.logits[0], atol=LOGIT_ATOL, rtol=0)
        if source == target:  # the identity pair is the unpatched generation
            assert torch.equal(grid.tokens[row], plain.tokens[0])
        moved = max(moved, float((single.logits[0] - plain.logits[0]).abs().max()))
    assert moved > 1e-3  # the grid is not trivially unpatched
    lean = backpatch_grid(model, ids, position, ALL_PAIRS, max_new_tokens=5, batch_size=32)
    assert lean.logits is None and torch.equal(lean.tokens, grid.tokens)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_row_a_batch_at_position_zero_is_backpatch_bit_for_bit(tiny_model, arch):
    """Without a prefix and one row a batch, a row runs exactly backpatch's computation (its prompt
    pass unembedding the last position only, as model.generate does)."""
    model, _ = tiny_model(arch)
    ids = random_ids(1, 7, seed=3)
    grid = backpatch_grid(model, ids, 0, [(1, 1), (2, 0)], max_new_tokens=4, batch_size=1, keep_logits=True)
    assert torch.equal(grid.logits[0], generate_greedy(model, ids, 4, logits_to_keep=1).logits[0])
    with capture(model, [Site("resid_post", 2, (0,))]) as acts:
        model(ids)
    moved = generate_greedy(model, ids, 4, prompt_patches={Site("resid_post", 0, (0,)): acts["resid_post.2"]},
                            logits_to_keep=1)
    assert torch.equal(grid.logits[1], moved.logits[0])
    assert torch.equal(grid.tokens[1], backpatch(model, ids, 2, 0, positions=[0], max_new_tokens=4).tokens[0])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_grid_rows_equal_repatching_every_forward_without_a_cache(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids, position = random_ids(1, 8, seed=4), 5
    pairs = [(2, 0), (1, 1), (0, 2), (2, 1)]
    grid = backpatch_grid(model, ids, position, pairs, max_new_tokens=5, batch_size=3, keep_logits=True)
    with capture(model, [Site("resid_post", layer, (position,)) for layer in range(3)]) as acts:
        model(ids)
    for row, (source, target) in enumerate(pairs):
        tokens, logits = _reforward(model, ids, {Site("resid_post", target, (position,)): acts[f"resid_post.{source}"]},
                                    5)
        assert torch.equal(grid.tokens[row], tokens[0])
        torch.testing.assert_close(grid.logits[row], logits[0], atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_patch_at_p_leaves_earlier_positions_unchanged(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids, position = random_ids(1, 8, seed=5), 5
    with capture(model, [f"resid_post.{layer}" for layer in range(3)]) as plain:
        plain_logits = model(ids).logits
    value = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(0))
    with capture(model, [f"resid_post.{layer}" for layer in range(1, 3)]) as acts, \
            patch(model, {Site("resid_post", 0, (position,)): value}):
        logits = model(ids).logits
    assert torch.equal(logits[:, :position], plain_logits[:, :position])
    for layer in range(1, 3):
        assert torch.equal(acts[f"resid_post.{layer}"][:, :position], plain[f"resid_post.{layer}"][:, :position])
        assert (acts[f"resid_post.{layer}"][:, position:] - plain[f"resid_post.{layer}"][:, position:]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_hooks_read_and_write_tensor_and_tuple_outputs(tiny_model, arch):
    """transformers 5 blocks return a tensor, earlier ones a tuple: the same site hook patches both
    (the block is called directly, its forward once as it is and once wrapped in a tuple)."""
    model, _ = tiny_model(arch)
    adapter = get_adapter(model)
    block = adapter.block(1)
    hidden = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    kwargs = {}
    if adapter.spec.rotary is not None:
        kwargs["position_embeddings"] = adapter.position_embeddings(hidden, torch.arange(6)[None], 1)
    value = torch.full((1, 1, 32), 0.5)
    plain = block(hidden, **kwargs)
    assert isinstance(plain, torch.Tensor)
    original = block.forward
    for wrap in (False, True):
        if wrap:
            block.forward = lambda *args, **kw: (original(*args, **kw), "extra")
        try:
            seen = []
            with intervene(model, {Site("resid_post", 1, (3,)): lambda act: seen.append(act.shape) or value}):
                out = block(hidden, **kwargs)
        finally:
            block.__dict__.pop("forward", None)
        if wrap:
            assert isinstance(out, tuple) and out[1] == "extra"
            out = out[0]
        assert seen == [(1, 1, 32)]
        assert torch.equal(out[:, 3:4], value)
        assert torch.equal(out[:, [0, 1, 2, 4, 5]], plain[:, [0, 1, 2, 4, 5]])


def test_mismatched_source_states_are_written_instead(tiny_model):
    model, _ = tiny_model("llama")
    ids, other, position = random_ids(1, 8, seed=6), random_ids(1, 8, seed=7), 3
    sites = [Site("resid_post", layer, (position,)) for layer in range(3)]
    with capture(model, sites) as acts:
        model(other)
    states = torch.stack([acts[s][0, 0] for s in sites])
    pairs = [(2, 0), (1, 1), (0, 2)]
    grid = backpatch_grid(model, ids, position, pairs, max_new_tokens=4, source_states=states, keep_logits=True)
    own = backpatch_grid(model, ids, position, pairs, max_new_tokens=4, keep_logits=True)
    for row, (source, target) in enumerate(pairs):
        expected = generate_greedy(model, ids, 4, prompt_patches={sites[target]: acts[f"resid_post.{source}"]})
        assert torch.equal(grid.tokens[row], expected.tokens[0])
        torch.testing.assert_close(grid.logits[row], expected.logits[0], atol=LOGIT_ATOL, rtol=0)
    assert (grid.logits[1] - own.logits[1]).abs().max() > 1e-3  # even the identity pair now moves


def test_backpatch_grid_checks_its_input(tiny_model):
    model, _ = tiny_model("llama")
    ids = random_ids(1, 6)
    cases = [
        (dict(position=6), r"position 6 out of range for a sequence of length 6 \(allowed -6..5\)"),
        (dict(position=-7), "position -7 out of range"),
        (dict(pairs=[(3, 0)]), r"layer 3 out of range for a 3-layer model \(allowed 0..2\)"),
        (dict(pairs=[(0, -1)]), "layer -1 out of range"),
        (dict(pairs=[]), "pairs is empty"),
        (dict(pairs=[(0, 1, 2)]), r"a pair is \(source_layer, target_layer\)"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(site="head_out"), "site must be one of"),
        (dict(source_states=torch.zeros(2, 32)), r"source_states must be \[n_layers, d_model\] = \[3, 32\]"),
        (dict(input_ids=random_ids(2, 6)), r"input_ids must be \[1, length >= 1\]"),
    ]
    for overrides, message in cases:
        kwargs = {**dict(input_ids=ids, position=2, pairs=[(1, 0)]), **overrides}
        with pytest.raises(EngineError, match=message) as error:
            backpatch_grid(model, kwargs.pop("input_ids"), kwargs.pop("position"), kwargs.pop("pairs"), **kwargs)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patchscope_grid_greedy_equals_per_pair_patchscope(tiny_model, arch):
    model, _ = tiny_model(arch)
    source, target = random_ids(1, 7, seed=8), random_ids(1, 9, seed=9)
    grid = patchscope_grid(model, source, 4, target, -1, ALL_PAIRS, max_new_tokens=5, batch_size=4,
                           keep_logits=True)
    for row, (ls, lt) in enumerate(ALL_PAIRS):
        single = patchscope(model, source, ls, 4, target, lt, -1, max_new_tokens=5)
        assert torch.equal(grid.tokens[row], single.tokens[0]), (ls, lt)
        torch.testing.assert_close(grid.logits[row], single.logits[0], atol=LOGIT_ATOL, rtol=0)
    with pytest.raises(EngineError, match="position 9 out of range"):
        patchscope_grid(model, source, 4, target, 9, ALL_PAIRS)
    with pytest.raises(EngineError, match=r"source_ids must be \[1, length >= 1\]"):
        patchscope_grid(model, random_ids(2, 7), 4, target, 3, ALL_PAIRS)


def test_patchscope_grid_samples_from_the_softmax_with_a_seed(tiny_model):
    model, _ = tiny_model("llama")
    source, target = random_ids(1, 7, seed=8), random_ids(1, 9, seed=9)
    pairs = [(2, 0), (1, 1), (0, 2), (2, 2), (1, 0)]
    with capture(model, [Site("resid_post", layer, (4,)) for layer in range(3)]) as acts:
        model(source)
    runs = {seed: patchscope_grid(model, source, 4, target, 6, pairs, max_new_tokens=6, batch_size=2, sample=True,
                                  seed=seed).tokens for seed in (0, 1)}
    again = patchscope_grid(model, source, 4, target, 6, pairs, max_new_tokens=6, batch_size=5, sample=True, seed=0)
    assert torch.equal(again.tokens, runs[0])  # deterministic, whatever the batch size
    assert not torch.equal(runs[0], runs[1])
    for row, (ls, lt) in enumerate(pairs):  # reference: one seeded generator, full re-forward each step
        generator, seq = torch.Generator().manual_seed(0), target
        for step in range(6):
            with patch(model, {Site("resid_post", lt, (6,)): acts[f"resid_post.{ls}"]}):
                probs = model(seq, use_cache=False).logits[:, -1].softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)
            assert int(token) == int(runs[0][row, step]), (ls, lt, step)
            seq = torch.cat([seq, token], 1)
    greedy = patchscope_grid(model, source, 4, target, 6, pairs, max_new_tokens=6)
    top1 = patchscope_grid(model, source, 4, target, 6, pairs, max_new_tokens=6, sample=True, top_k=1, seed=3)
    assert torch.equal(top1.tokens, greedy.tokens)


def test_top_50_sampling_reproduces_model_generate_with_a_prompt_only_hook(tiny_model):
    """``model.generate(do_sample=True)`` after ``torch.manual_seed(s)`` (its default top-k of 50), with
    a forward hook that overwrites block lt's output at the position while the sequence is longer
    than one token: the Patchscope as the paper's code runs it."""
    model, _ = tiny_model("llama", init_std=0.02)  # a flatter softmax: many tokens drawn
    adapter = get_adapter(model)
    source, target = random_ids(1, 7, seed=8), random_ids(1, 9, seed=9)
    with capture(model, [Site("resid_post", 2, (4,))]) as acts:
        model(source)
    vector = acts["resid_post.2"][0, 0]

    def hook(module, args, output):
        if output.shape[1] > 1:
            output = output.clone()
            output[:, 6] = vector
            return output
    grid = patchscope_grid(model, source, 4, target, 6, [(2, 0)], max_new_tokens=8, sample=True, seed=1, top_k=50)
    handle = adapter.block(0).register_forward_hook(hook)
    try:
        torch.manual_seed(1)
        expected = model.generate(target, do_sample=True, max_new_tokens=8, pad_token_id=63)[:, 9:]
    finally:
        handle.remove()
    assert torch.equal(grid.tokens, expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_contexts_apply_to_the_prompt_pass_only(tiny_model, arch):
    """Knock out last -> t1 while the prompt runs; the decode steps attend freely (as the paper)."""
    model, _ = tiny_model(arch)
    ids, t1, layers = random_ids(1, 8, seed=10), 3, [0, 1, 2]
    plain = generate_greedy(model, ids, 4)
    out = generate_greedy(model, ids, 4, prompt_contexts=[knockout(model, layers, edges=[(-1, t1)])])
    with knockout(model, layers, edges=[(-1, t1)]):
        knocked_first = model(ids).logits[:, -1]
    torch.testing.assert_close(out.logits[:, 0], knocked_first, atol=1e-6, rtol=0)
    assert (out.logits[:, 0] - plain.logits[:, 0]).abs().max() > 1e-3
    # the reference: every step re-runs the sequence with only the prompt's last query knocked out
    tokens, logits = _reforward(model, ids, {}, 4, lambda seq: [knockout(model, layers, edges=[(7, t1)])])
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.logits, logits, atol=LOGIT_ATOL, rtol=0)
    # knocking out every step's last query as well gives other logits from the second step on
    _, every = _reforward(model, ids, {}, 4, lambda seq: [knockout(model, layers, edges=[(-1, t1)])])
    assert (every[:, 1:] - out.logits[:, 1:]).abs().max() > 1e-4
    assert torch.equal(generate_greedy(model, ids, 4).logits, plain.logits)  # nothing left installed


def test_sublayer_ranks_match_a_manual_lens(tiny_model):
    model, _ = tiny_model("llama")
    ids, tokens = random_ids(1, 8, seed=11), [5, 17, 40]
    ranks = sublayer_ranks(model, ids, tokens, position=-1)
    assert set(ranks) == {"attn_out", "mlp_out", "attn_out_top", "mlp_out_top"}
    outputs = {}
    handles = [getattr(layer, name).register_forward_hook(
        lambda module, args, output, key=(name, i): outputs.__setitem__(key, output[0] if isinstance(output, tuple)
                                                                         else output))
        for i, layer in enumerate(model.model.layers) for name in ("self_attn", "mlp")]
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    for kind, name in (("attn_out", "self_attn"), ("mlp_out", "mlp")):
        assert ranks[kind].shape == (3, 3) and ranks[f"{kind}_top"].shape == (3,)
        for layer in range(3):
            logits = model.lm_head(model.model.norm(outputs[(name, layer)][0, -1]))
            order = logits.argsort(descending=True).tolist()
            assert ranks[kind][layer].tolist() == [order.index(t) for t in tokens]
            assert int(ranks[f"{kind}_top"][layer]) == order[0]
    with pytest.raises(EngineError, match="position 8 out of range"):
        sublayer_ranks(model, ids, tokens, position=8)
    with pytest.raises(EngineError, match=r"token ids must be in 0..63"):
        sublayer_ranks(model, ids, [64])
