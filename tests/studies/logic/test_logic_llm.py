"""The LLM study on a tiny random Mistral with one planted query-copying head."""
import pytest
import torch

from modules.core.params import ParamsError
from modules.analysis.pairs import HEAD_SITES, StudyError, behaviour, head_patching, patching_effects
from modules.studies.logic.llm import StudyConfig, attention_stats, build_examples, run_study
from modules.studies.logic.data.dataset import generate_flip_pairs
from modules.engine.tiny import word_tokenizer
from tests.studies.logic.planted import PLANTED_HEAD, PLANTED_LAYER, nl_tokenizer, planted_mistral


@pytest.fixture(scope="module")
def setup():
    tokenizer = nl_tokenizer()
    pairs = generate_flip_pairs(1, 12, depth=2, k=1)
    examples = build_examples(pairs, tokenizer)
    return tokenizer, pairs, examples, planted_mistral(examples.suffix - 1)


def test_examples_point_at_the_right_tokens(setup):
    tokenizer, pairs, examples, _ = setup
    assert len(examples) == 2 * len(pairs) and not any(examples.dropped.values())
    for i in range(len(examples)):
        row = pairs.iloc[i // 2]
        direction, other = examples.group[i], ("linear" if examples.group[i] == "logop" else "logop")
        tokens = tokenizer.convert_ids_to_tokens(examples.ids[i])
        proof = row[f"answer_{direction}"].split()
        assert tokens[int(examples.positions["query"][i])] == row[f"query_{direction}"]
        assert tokens[int(examples.positions["conclusion"][i])] == row[f"query_{direction}"]
        assert tokens[int(examples.positions["conclusion"][i]) - 1] == "implies"
        assert tokens[int(examples.positions["start"][i])] == proof[-2]
        assert tokens[int(examples.positions["fact"][i]):int(examples.positions["fact"][i]) + 3] == [proof[0], "is", "true"]
        f0, f1 = examples.positions["facts"][i].tolist()
        assert tokens[f0] == "Facts" and tokens[f1] == "Question"
        assert tokens[int(examples.positions["context"][i])] == "Rules" and int(examples.positions["context"][i]) > 0
        assert tokenizer.convert_ids_to_tokens([int(examples.correct[i]), int(examples.wrong[i])]) == [
            row[f"first_{direction}"], row[f"first_{other}"]]
        # the flipped prompt differs from the clean one at the query only
        differ = (examples.ids[i] != examples.flip_ids[i]).nonzero().flatten().tolist()
        assert differ == [int(examples.positions["query"][i])]


def test_logit_difference_sign_convention(setup):
    """LD is clean-first minus flipped-first: the two directions of a pair mirror each other."""
    _, _, examples, model = setup
    result = behaviour(model, examples)
    logits = model(input_ids=examples.ids[0][None]).logits[0, -1]
    assert result["ld_clean"][0] == pytest.approx(float(logits[examples.correct[0]] - logits[examples.wrong[0]]),
                                                  abs=1e-4)
    # example 1 is example 0 with the roles swapped: its clean prompt is example 0's flipped one
    assert torch.equal(examples.ids[1], examples.flip_ids[0])
    assert result["ld_clean"][1] == pytest.approx(-float(result["ld_flip"][0]), abs=1e-4)
    assert (result["ld_clean"] != result["ld_flip"]).all()


def test_flipped_logit_difference_from_the_twin_equals_its_own_pass(setup):
    """ld_flip comes from the other direction's clean run where that example is there, and from a
    pass of its own where it is not (a subset with one direction of a pair)."""
    _, _, examples, model = setup
    twins = examples.twins()
    assert twins[0] == 1 and twins[1] == 0 and len(twins) == len(examples)
    both = behaviour(model, examples)["ld_flip"]
    alone = behaviour(model, examples.subset(range(0, len(examples), 2)))["ld_flip"]
    assert examples.subset(range(0, len(examples), 2)).twins() == {}
    assert torch.allclose(alone, both[::2], atol=1e-4)


def test_patching_finds_the_planted_head_through_its_values(setup):
    _, _, examples, model = setup
    result = behaviour(model, examples)
    effects = {}
    for site in HEAD_SITES:
        patched = head_patching(model, examples, site)
        assert patched.shape == (2, 4 if site in ("head_out", "q") else 2, len(examples))
        effects[site] = patching_effects(patched, result["ld_clean"], result["ld_flip"])[0]
    planted_kv = PLANTED_HEAD // 2
    assert effects["head_out"][PLANTED_LAYER, PLANTED_HEAD] == pytest.approx(1.0, abs=0.02)
    assert effects["v"][PLANTED_LAYER, planted_kv] == pytest.approx(1.0, abs=0.02)
    others = effects["head_out"].clone()
    others[PLANTED_LAYER, PLANTED_HEAD] = 0
    assert others.abs().max() < 0.05
    assert effects["q"].abs().max() < 0.05 and effects["k"].abs().max() < 0.05  # rotary-only routing


def test_attention_stats_see_the_planted_head_read_the_query(setup):
    _, _, examples, model = setup
    stats = attention_stats(model, examples)
    query = stats["query"].mean(0)
    assert query.shape == (2, 4)
    assert query[PLANTED_LAYER, PLANTED_HEAD] > 0.95
    query[PLANTED_LAYER, PLANTED_HEAD] = 0
    assert query.max() < 0.3


def test_study_names_the_planted_head_a_mover_and_it_is_necessary_and_sufficient(setup):
    tokenizer, pairs, _, model = setup
    result = run_study(model, tokenizer, pairs, StudyConfig(examples="all", n_boot=200, random_controls=2))
    summary = result.summary
    assert [(c["layer"], c["head"], c["family"]) for c in summary["circuit"]] == [
        (PLANTED_LAYER, PLANTED_HEAD, "mover")]
    # Ablating the mover removes the query-dependent part of the logit difference; keeping only
    # it keeps that part. Both are measured as shares of the clean logit difference.
    assert summary["necessity"]["mover"]["mean"] == pytest.approx(summary["necessity"]["circuit"]["mean"])
    assert abs(summary["sufficiency"]["mean"] - 1.0) < abs(summary["necessity"]["circuit"]["mean"] - 1.0)
    assert summary["random_control"]["n_sets"] == 2
    assert summary["paper_heads"]["locator"] == [{"layer": 12, "head": 9, "exists": False}]
    assert len(result.head_table) == 8 and set(result.head_table.family) == {"", "mover"}


def test_max_pairs_patches_the_first_pairs_whole_and_measures_accuracy_on_all(setup):
    tokenizer, pairs, _, model = setup
    config = StudyConfig(examples="all", max_pairs=2, sites=("head_out",), n_boot=50, random_controls=0)
    summary = run_study(model, tokenizer, pairs, config).summary
    assert summary["n_analysed"] == 4 < summary["n_examples"]
    assert summary["accuracy"]["all"]["n"] == summary["n_examples"]


def test_unsolved_pairs_give_a_one_line_error(setup):
    tokenizer, pairs, _, model = setup
    with pytest.raises(StudyError, match="solves no pair in both directions.*examples to 'all'"):
        run_study(model, tokenizer, pairs, StudyConfig(examples="solved"))


def test_bad_study_params_name_the_key():
    with pytest.raises(ParamsError, match=r"logic_llm.study.min_effect must be a number in \[0.0, 1.0\], got 2.0"):
        StudyConfig.from_mapping({"min_effect": 2})
    with pytest.raises(ParamsError, match="logic_llm.study: sites must include head_out"):
        StudyConfig.from_mapping({"sites": ["q"]})
    with pytest.raises(ParamsError, match="unknown key\\(s\\) \\['depth'\\]"):
        StudyConfig.from_mapping({"depth": 2})


def test_tokenizer_without_the_template_words_is_refused():
    pairs = generate_flip_pairs(0, 2, depth=2, k=1)
    with pytest.raises(StudyError, match="no usable example.*'same_tokens': 4"):  # every word is <eos>
        build_examples(pairs, word_tokenizer(8))
