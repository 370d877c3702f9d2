"""E5 on a hand-wired two-hop model whose second hop sits *before* its first: the model answers the
bridge, and only a back-patch of the last token's later state into an earlier layer lets the second-hop
layer see the bridge. E5 must find that pair, keep identity patches equal to the baseline, and find
nothing with a mismatched source or forward patches."""
import pandas as pd
import torch

from modules.engine.tiny import tiny_model, vocabulary_tokenizer
from modules.studies.hopping.backpatch import BackpatchConfig, backpatch_metrics, run_backpatching

WORDS = [f"w{i}" for i in range(15)]   # + <eos>: 16 tokens, one-hot in a 16-wide residual stream
X, Y, Z = 3, 5, 7                      # e1's last token (at t2 here), the bridge, the answer


def planted_model():
    """Llama, 3 blocks, no attention; block 1's MLP maps the bridge Y to the answer Z (hop 2), block
    2's maps X to Y (hop 1): the first hop comes too late for the second."""
    model = tiny_model("llama", n_layers=3, d_model=16, n_heads=2, n_kv_heads=2, vocab_size=16)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(16))
        model.lm_head.weight.copy_(torch.eye(16))
        model.model.norm.weight.fill_(1.0)
        for block, (source, target, scale) in zip(model.model.layers, [(None, None, 0.0), (Y, Z, 1.0), (X, Y, 0.1)]):
            block.input_layernorm.weight.fill_(1.0)
            block.post_attention_layernorm.weight.fill_(1.0)
            if source is not None:
                block.mlp.gate_proj.weight[0, source] = 1.0
                block.mlp.up_proj.weight[0, source] = 1.0
                block.mlp.down_proj.weight[target, 0] = scale
    return model


def query(query_id: str, last: int, e2: int, e3: int) -> dict:
    return {"query_id": query_id, "prompt": f"w1 w2 w{last}", "t1_text": "w1 w2", "e1": f"w{last}", "e2": f"w{e2}",
            "e3": f"w{e3}", "e1_aliases": [f"w{last}"], "e2_aliases": [f"w{e2}"], "e3_aliases": [f"w{e3}"],
            "split": "test", "first_hop_prompt": "", "second_hop_prompt": ""}


def test_backpatching_finds_the_planted_fixing_pair():
    model, tokenizer = planted_model(), vocabulary_tokenizer(WORDS)
    queries = pd.DataFrame([query("q", X, Y, Z), query("other", 9, 11, 12)])
    prompt = torch.tensor([tokenizer("w1 w2 w3")["input_ids"]])
    assert int(model(prompt).logits[0, -1].argmax()) == Y        # the unpatched model answers the bridge
    evaluated = pd.DataFrame({"query_id": ["q", "other"], "subset": ["incorrect", "other"]})
    config = BackpatchConfig(positions=("t2",), max_new_tokens=1, incorrect_items=1, correct_items=0)
    table = run_backpatching(model, tokenizer, queries, evaluated, queries, config)
    fixed = table[table["correct"]]
    assert set(zip(fixed["kind"], fixed["source_layer"], fixed["target_layer"])) == {("back", 2, 0)}
    identity = table[table["kind"] == "identity"]
    assert len(identity) == 3 and identity["same_as_baseline"].all()
    metrics = backpatch_metrics(table, n_boot=50)["incorrect"]["t2"]
    assert metrics["oracle"]["k"] == 1 and metrics["best_pair_in_sample"] == {"pair": [2, 0], "rate": 1.0}
    assert metrics["forward_oracle"]["k"] == 0 and metrics["mismatched_oracle"]["k"] == 0
