"""The engine on the real SmolLM2-135M (Llama, GQA 9/3) and Gemma-3-270M (q/k norms, sliding and
global layers with their own rotary bases, sandwich norms, scaled embedding, norm offset) against
TransformerLens 4.3 (TransformerBridge hooks) and nnsight 0.8 (batched invokes), to 1e-4 in
float32: residual, head-output, q/k/v and attention-pattern patching, and the logit lens. Each
library gets its own copy of the weights. Layers are a subset (first, a middle or global one, last)
to keep the suite fast; ``benchmarks/bench_real_lm.py`` runs full sweeps.

nnsight has no attention-pattern site (it would need tracing inside the attention function), so
patterns are compared with TransformerLens only."""
from __future__ import annotations

import warnings

import pytest
import torch

from modules.engine.adapters import EngineError, get_adapter
from modules.engine.hooks import capture
from modules.engine.lens import logit_lens
from modules.engine.patching import patch_head_sweep, patch_resid_sweep, patch_sweep

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4
LAYERS = {"smollm2-135m": [0, 13, 29], "gemma3-270m": [0, 5, 17]}  # Gemma: 5 and 17 are global layers
POSITIONS = [0, 2, 9, 10, -1]  # includes the name that differs (9 in SmolLM2, 10 after Gemma's <bos>)
# Indirect-object prompts: the target names one person, the source the other; equal token lengths.
TARGET = ["When Mary and John went to the store, Mary gave a drink to",
          "When Tom and Anna went to the park, Tom gave a ball to"]
SOURCE = ["When Mary and John went to the store, John gave a drink to",
          "When Tom and Anna went to the park, Anna gave a ball to"]
ANSWERS = [(" John", " Mary"), (" Anna", " Tom")]
HEAD_HOOKS = {"head_out": "attn.hook_z", "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v",
              "pattern": "attn.hook_pattern"}


class Setup:
    def __init__(self, name, real_lm):
        self.name = name
        self.model, self.tokenizer = real_lm(name)
        self.adapter = get_adapter(self.model)
        self.target = self.tokenizer(TARGET, return_tensors="pt").input_ids
        self.source = self.tokenizer(SOURCE, return_tensors="pt").input_ids
        assert self.target.shape == self.source.shape
        self.answers = torch.tensor([[self.tokenizer(w, add_special_tokens=False).input_ids[0] for w in pair]
                                     for pair in ANSWERS])
        self.layers = LAYERS[name]
        self.real_lm = real_lm

    def metric(self, logits):
        """Per-prompt logit difference (right minus wrong name) at the last position: [batch]."""
        last = logits[:, -1].float()
        rows = torch.arange(len(last))
        return last[rows, self.answers[:, 0]] - last[rows, self.answers[:, 1]]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def setup(request, real_lm):
    return Setup(request.param, real_lm)


@pytest.fixture(scope="module")
def bridge(setup):
    from transformer_lens.model_bridge import TransformerBridge

    model, tokenizer = setup.real_lm(setup.name, copy=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(str(model.name_or_path), hf_model=model, tokenizer=tokenizer)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(setup.source)
    return bridge, cache


@pytest.fixture(scope="module")
def lm(setup):
    from nnsight import LanguageModel

    model, tokenizer = setup.real_lm(setup.name, copy=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LanguageModel(model, tokenizer=tokenizer)


# --- TransformerLens: one hooked run per cell, on its own hook points ------------------------------
def tl_cell(bridge, cache, setup, hook_name, index):
    def hook(act, hook):
        act = act.clone()
        act[index] = cache[hook_name][index].to(act.dtype)
        return act
    with torch.no_grad():
        return setup.metric(bridge.run_with_hooks(setup.target, fwd_hooks=[(hook_name, hook)]))


def test_hook_points_equal_transformerlens(setup, bridge):
    _, cache = bridge
    for layer in setup.layers:
        sites = ["resid_pre", "resid_post", "attn_out", "mlp_out", "head_out", "q", "k", "v", "pattern"]
        with capture(setup.model, [f"{kind}.{layer}" for kind in sites]) as acts, torch.no_grad():
            setup.model(setup.source)
        names = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
                 "mlp_out": "hook_mlp_out", **HEAD_HOOKS}
        for kind in sites:
            theirs = cache[f"blocks.{layer}.{names[kind]}"]
            torch.testing.assert_close(acts[f"{kind}.{layer}"], theirs, atol=ATOL, rtol=0)


def test_resid_patching_equals_transformerlens(setup, bridge):
    _, cache = bridge
    ours = patch_resid_sweep(setup.model, setup.target, setup.source, setup.metric, layers=setup.layers,
                             positions=POSITIONS)
    theirs = torch.stack([torch.stack([tl_cell(bridge[0], cache, setup, f"blocks.{l}.hook_resid_pre",
                                               (slice(None), p)) for p in POSITIONS]) for l in setup.layers])
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert theirs.abs().max() > 0.5  # the patches matter


@pytest.mark.parametrize("site", ["head_out", "q", "k", "v", "pattern"])
def test_head_patching_equals_transformerlens(setup, bridge, site):
    _, cache = bridge
    n_heads = setup.adapter.n_heads_of(site)
    ours = patch_head_sweep(setup.model, setup.target, setup.source, setup.metric, site=site, layers=setup.layers)
    index = (lambda h: (slice(None), h)) if site == "pattern" else (lambda h: (slice(None), slice(None), h))
    theirs = torch.stack([torch.stack([tl_cell(bridge[0], cache, setup, f"blocks.{l}.{HEAD_HOOKS[site]}", index(h))
                                       for h in range(n_heads)]) for l in setup.layers])
    assert ours.shape == (len(setup.layers), n_heads, 2)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert theirs.abs().max() > 1e-3


# --- nnsight: batched invokes -------------------------------------------------------------------------
def test_resid_and_head_patching_equal_nnsight(setup, lm):
    import nnsight

    adapter, layers = setup.adapter, setup.layers
    blocks = lm.model.layers
    dh = adapter.head_dim
    modules = {"head_out": lambda l: blocks[l].self_attn.o_proj, "q": lambda l: blocks[l].self_attn.q_proj,
               "k": lambda l: blocks[l].self_attn.k_proj, "v": lambda l: blocks[l].self_attn.v_proj}
    with torch.no_grad(), lm.trace(setup.source):  # nnsight reads modules in execution order
        saved = nnsight.save({})
        for l in layers:
            saved[("resid", l)] = blocks[l].input
            saved[("q", l)] = blocks[l].self_attn.q_proj.output
            saved[("k", l)] = blocks[l].self_attn.k_proj.output
            saved[("v", l)] = blocks[l].self_attn.v_proj.output
            saved[("head_out", l)] = blocks[l].self_attn.o_proj.input

    def sweep(cells, write):
        values = []
        for start in range(0, len(cells), 16):
            with torch.no_grad(), lm.trace() as tracer:
                out = nnsight.save([])
                for cell in cells[start:start + 16]:
                    with tracer.invoke(setup.target):
                        write(*cell)
                        out.append(setup.metric(lm.lm_head.output))
            values += [v.detach() for v in out]
        return torch.stack(values)

    def write_resid(l, p):
        blocks[l].input[:, p] = saved[("resid", l)][:, p]
    theirs = sweep([(l, p) for l in layers for p in POSITIONS], write_resid).reshape(len(layers), len(POSITIONS), 2)
    ours = patch_resid_sweep(setup.model, setup.target, setup.source, setup.metric, layers=layers,
                             positions=POSITIONS)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)

    for site in ("head_out", "q", "k", "v"):
        def write(l, h, site=site):
            cols = slice(h * dh, (h + 1) * dh)
            if site == "head_out":
                modules[site](l).input[:, :, cols] = saved[(site, l)][:, :, cols]
            else:
                modules[site](l).output[:, :, cols] = saved[(site, l)][:, :, cols]
        n = adapter.n_heads_of(site)
        theirs = sweep([(l, h) for l in layers for h in range(n)], write).reshape(len(layers), n, 2)
        ours = patch_head_sweep(setup.model, setup.target, setup.source, setup.metric, site=site, layers=layers)
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0, msg=lambda m: f"{site}: {m}")


def test_logit_lens_equals_nnsight_and_transformerlens(setup, lm, bridge):
    import nnsight

    layers, positions = setup.layers, [-3, -2, -1]
    ours = logit_lens(setup.model, setup.target, "resid_post", layers=layers, positions=positions)
    with torch.no_grad(), lm.trace(setup.target):
        theirs = nnsight.save([lm.lm_head(lm.model.norm(lm.model.layers[l].output))[:, positions] for l in layers])
    torch.testing.assert_close(ours, torch.stack(list(theirs)), atol=ATOL, rtol=0)
    tl, _ = bridge
    with torch.no_grad():
        _, cache = tl.run_with_cache(setup.target)
        theirs = torch.stack([tl.unembed(tl.ln_final(cache[f"blocks.{l}.hook_resid_post"]))[:, positions]
                              for l in layers])
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # the last layer's lens is the model's own output
    with torch.no_grad():
        final = setup.model(setup.target).logits[:, positions]
    torch.testing.assert_close(ours[-1] if layers[-1] == setup.adapter.n_layers - 1 else final, final,
                               atol=ATOL, rtol=0)


# --- the layer convention and index errors ----------------------------------------------------------
def test_layer_convention_matches_output_hidden_states(setup):
    model, n = setup.model, setup.adapter.n_layers
    sites = [f"resid_pre.{l}" for l in range(n)] + [f"resid_post.{l}" for l in range(n)]
    with capture(model, sites) as acts, torch.no_grad():
        hidden = model(setup.target, output_hidden_states=True).hidden_states
    assert len(hidden) == n + 1
    for layer in range(n):
        assert torch.equal(acts[f"resid_pre.{layer}"], hidden[layer])
    for layer in range(n - 1):
        assert torch.equal(acts[f"resid_post.{layer}"], hidden[layer + 1])
    assert torch.equal(setup.adapter.final_norm(acts[f"resid_post.{n - 1}"]), hidden[n])


def test_out_of_range_layers_and_heads_are_one_line_errors(setup):
    adapter, model, n = setup.adapter, setup.model, setup.adapter.n_layers
    expected = {"smollm2-135m": (30, 9, 3), "gemma3-270m": (18, 4, 1)}[setup.name]
    assert (adapter.n_layers, adapter.n_heads, adapter.n_kv_heads) == expected
    cases = [
        (lambda: patch_resid_sweep(model, setup.target, setup.source, setup.metric, layers=[n]),
         rf"^layer {n} out of range for a {n}-layer model \(allowed 0..{n - 1}\)$"),
        (lambda: patch_head_sweep(model, setup.target, setup.source, setup.metric, heads=[adapter.n_heads]),
         rf"^head {adapter.n_heads} out of range for head_out with {adapter.n_heads} heads"),
        (lambda: patch_sweep(model, setup.target, setup.source, "k", setup.metric, heads=[adapter.n_kv_heads]),
         rf"^head {adapter.n_kv_heads} out of range for k with {adapter.n_kv_heads} key/value heads"),
        (lambda: capture(model, [f"q.{-1}"]).__enter__(), r"^layer -1 out of range"),
    ]
    for call, pattern in cases:
        with pytest.raises(EngineError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)
