"""Few-shot behaviour grid (modules/studies/logic/fewshot.py) and the AND flip pairs it needs."""
import hashlib

import pytest
import torch

from modules.analysis.pairs import behaviour
from modules.core.params import ParamsError
from modules.engine.metrics import wilson_ci
from modules.engine.tiny import tiny_model
from modules.studies.logic.data import generate_flip_pairs, parse_compact_prompt, solve_compact, solve_natural
from modules.studies.logic.fewshot import (COLUMNS, FewShotConfig, behaviour_table, cell_pairs, held_out_prompts,
                                           last_position_logits, markdown, tabulate)
from modules.studies.logic.llm import build_examples
from tests.studies.logic.planted import nl_tokenizer

# sha256 of generate_flip_pairs(5, 20, depth=2, k=2).to_csv(index=False) before the operator argument existed
OR_PAIRS_SHA256 = "ebb71e386e63b294b23d738461d0b2e3b2fec512ee2ae194c47b276d18b1f3df"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = nl_tokenizer()
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=len(tokenizer),
                       max_positions=512)
    return model, tokenizer


def test_or_pairs_are_unchanged_by_the_operator_argument():
    pairs = generate_flip_pairs(5, 20, depth=2, k=2)
    assert hashlib.sha256(pairs.to_csv(index=False).encode()).hexdigest() == OR_PAIRS_SHA256
    assert generate_flip_pairs(5, 20, depth=2, k=2, operator="or").equals(pairs)


@pytest.mark.parametrize("depth", [2, 3])
def test_and_pairs_query_a_conjunction_whose_sources_are_all_true(depth):
    pairs = generate_flip_pairs(3, 40, depth=depth, k=2, operator="and")
    assert pairs.pair_id.is_unique and pairs.pair_id.str.startswith(f"flip-and-d{depth}-s3-").all()
    assert not set(pairs.prompt_logop) & set(generate_flip_pairs(3, 40, depth=depth, k=2).prompt_logop)
    for row in pairs.itertuples():
        st = parse_compact_prompt(row.prompt_logop)
        merge = next(r for r in st.rules if r.op)
        assert merge.op == "and" and all(t for _, t in st.facts)
        assert row.prompt_logop.split(" query ")[0] == row.prompt_linear.split(" query ")[0]
        assert solve_compact(row.prompt_logop) == row.answer_logop
        assert solve_compact(row.prompt_linear) == row.answer_linear
        assert solve_natural(row.nl_prompt_logop) == row.nl_answer_logop
        assert solve_natural(row.nl_prompt_linear) == row.nl_answer_linear
        assert row.first_logop != row.first_linear
        if depth == 2:  # the proof opens with the first-written antecedent's fact
            assert row.first_logop == merge.premises[0]
            assert row.nl_answer_logop.startswith(f"{merge.premises[0]} is true. {merge.premises[1]} is true.")
    with pytest.raises(ValueError, match=r"^operator must be one of \['and', 'or'\], got 'xor'$"):
        generate_flip_pairs(3, 4, depth=2, operator="xor")


def test_last_position_logits_leave_behaviour_unchanged(tiny, one_thread):
    model, tokenizer = tiny
    examples = build_examples(generate_flip_pairs(0, 4, depth=2, k=1, operator="and"), tokenizer)
    plain = behaviour(model, examples)
    with last_position_logits(model):
        assert model(input_ids=examples.ids[0][None]).logits.shape[1] == 1
        fast = behaviour(model, examples)
    assert "forward" not in vars(model)
    assert model(input_ids=examples.ids[0][None]).logits.shape[1] == len(examples.ids[0])
    for key in plain:
        assert torch.allclose(plain[key].float(), fast[key].float(), atol=1e-5), key
    # a forward wrapper already on the instance (accelerate's device hooks) is kept and restored
    hooked = model.forward
    model.forward = hooked
    with last_position_logits(model):
        assert model(input_ids=examples.ids[0][None]).logits.shape[1] == 1
    assert vars(model)["forward"] is hooked
    del model.forward


def test_tabulate_counts_and_wilson_intervals():
    # pairs p0..p3, both directions; first token right 5 of 8, both directions of p0 and p2
    first = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    proof = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    ld = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0, -0.5, -2.0, 0.1])
    result = {"first_ok": first, "proof_ok": proof, "ld_clean": ld, "ld_flip": -ld}
    group = ["logop", "linear"] * 4
    pair_id = [f"p{i // 2}" for i in range(8)]
    rows = {row["query"]: row for row in tabulate(result, group, pair_id, model="m", k=2, operator="or")}
    assert list(rows) == ["all", "logop", "linear"]
    top = rows["all"]
    assert (top["n"], top["n_pairs"], top["model"], top["k"], top["operator"]) == (8, 4, "m", 2, "or")
    for name, successes in (("first_token", 5), ("proof", 2), ("choice", 5), ("pair_both", 2)):
        ci = wilson_ci(successes, 4 if name == "pair_both" else 8)
        assert top[name] == pytest.approx(float(ci.mean))
        assert top[f"{name}_low"] == pytest.approx(float(ci.low))
        assert top[f"{name}_high"] == pytest.approx(float(ci.high))
        assert top[f"{name}_low"] <= top[name] <= top[f"{name}_high"]
    assert rows["logop"]["n"] == 4 and rows["logop"]["first_token"] == pytest.approx(3 / 4)
    assert rows["linear"]["first_token"] == pytest.approx(2 / 4) and "pair_both" not in rows["linear"]
    assert top["ld_clean"] == pytest.approx(float(ld.mean())) and top["ld_flip"] == pytest.approx(-float(ld.mean()))
    assert rows["logop"]["ld_clean"] == pytest.approx(float(ld[::2].mean()))


def test_behaviour_table_has_a_row_per_cell_and_direction(tiny, one_thread):
    model, tokenizer = tiny
    config = FewShotConfig(shots=(0, 1), operators=("or", "and"), pairs=3, batch_size=4)
    table = behaviour_table(model, tokenizer, config, model_name="tiny")
    assert list(table.columns) == list(COLUMNS) and len(table) == 2 * 2 * 3
    top = table[table["query"] == "all"]
    assert sorted(zip(top.k, top.operator)) == [(0, "and"), (0, "or"), (1, "and"), (1, "or")]
    assert (top["n"] == 6).all() and (top["n_pairs"] == 3).all() and (top["dropped"] == 0).all()
    for name in ("first_token", "proof", "choice", "pair_both"):
        assert ((top[f"{name}_low"] <= top[name]) & (top[name] <= top[f"{name}_high"])).all()
    assert ((top["first_token"] * 6).round(9) % 1 == 0).all() and (top["proof"] <= top["first_token"]).all()
    assert (table["seconds_per_prompt"] > 0).all()
    assert markdown(table).count("\n| tiny |") == 4
    # what fine-tuning data must exclude: every prompt of every cell
    cells = [cell_pairs(config, k, op) for k in config.shots for op in config.operators]
    assert held_out_prompts(config) == {p for c in cells for p in (*c.prompt_logop, *c.prompt_linear)}
    assert len(held_out_prompts(config)) > 2 * 3 * 2  # the cells of other k hold other problems


@pytest.mark.parametrize("params, message", [
    ({"operators": ["xor"]}, r"logic_llm\.fewshot\.operators must be one of \['and', 'or'\]"),
    ({"shots": [0, -1]}, r"logic_llm\.fewshot\.shots must be a .* in \[0, 64\], got \(0, -1\)"),
    ({"shots": []}, r"shots must be a non-empty list"),
    ({"pairs": 0}, r"logic_llm\.fewshot\.pairs must be an int in"),
    ({"pair": 10}, r"unknown key\(s\) \['pair'\]"),
])
def test_bad_fewshot_params_are_one_line_errors(params, message):
    with pytest.raises(ParamsError, match=message) as error:
        FewShotConfig.from_mapping(params)
    assert "\n" not in str(error.value)
