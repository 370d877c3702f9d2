"""The small-model circuit study on a GPT-2 with a planted query-copying head (tests/analysis/
planted_gpt2.py): the study must find that head by patching and ablation, steer it along the
routing direction, and report a model that solves no flip pair as such."""
import pytest
import torch

from modules.core.params import ParamsError
from modules.studies.logic.circuit import (CircuitConfig, StudyError, cached_residuals, compact_examples,
                                            encode_prompts, queried_conclusion_positions, routing_summary,
                                            run_circuit_study, section_attention)
from modules.studies.logic.circuit_outputs import circuit_metrics
from modules.studies.logic.data.dataset import generate_flip_pairs, generate_splits
from modules.engine import capture
from modules.engine.activation_cache import ActivationCache, save_activations
from tests.studies.logic.planted_gpt2 import PLANTED_HEAD, PLANTED_LAYER, planted_gpt2

LENGTH = 29  # compact prompt tokens at depth 3
QUERY = {"logop": "D", "linear": "G"}  # every prompt of a chain asks the same variable


def _swap(prompt: str, a: str, b: str) -> str:
    """``prompt`` with the variables ``a`` and ``b`` renamed into each other: the same problem."""
    return " ".join(b if word == a else a if word == b else word for word in prompt.split())


def _fix_queries(prompt: str, logop: str, linear: str) -> str:
    """Rename the chains' query variables to QUERY's letters (one renaming for both prompts of a pair)."""
    prompt = _swap(prompt, logop, QUERY["logop"])
    return _swap(prompt, logop if linear == QUERY["logop"] else linear, QUERY["linear"])


@pytest.fixture(scope="module")
def planted():
    return planted_gpt2(LENGTH)


@pytest.fixture(scope="module")
def copy_task():
    """Flip pairs and test problems whose variables are renamed so that every query of a chain asks
    the same letter, answered by that letter: the task the planted head solves. Rules and facts stay
    identical within a pair."""
    pairs = generate_flip_pairs(3, 40, depth=3, k=0)
    for chain in QUERY:
        pairs[f"prompt_{chain}"] = [_fix_queries(p, a, b) for p, a, b in
                                    zip(pairs[f"prompt_{chain}"], pairs.query_logop, pairs.query_linear)]
        pairs[f"answer_{chain}"] = QUERY[chain]
    test = generate_splits(5, {"test": 300}, depth=3, logop_share=0.5)["test"]
    query = [p.split()[-2] for p in test.prompt]
    test["prompt"] = [_swap(p, q, QUERY[c]) for p, q, c in zip(test.prompt, query, test.query_chain)]
    return pairs, test


def _residuals(model, tokenizer, test, tmp_path):
    ids = encode_prompts(test.prompt.tolist(), tokenizer)
    positions = [-3, -2, -1]
    sites = [f"resid_post.{layer}" for layer in range(model.config.n_layer)]
    with torch.no_grad(), capture(model, sites) as acts:
        model(ids)
    save_activations(tmp_path / "cache", {s: acts[s][:, positions] for s in sites}, model="planted",
                     tokenizer="logic", dataset_hash="test", examples_per_shard=128)
    return cached_residuals(ActivationCache(tmp_path / "cache"), positions, ids[0], tokenizer)


def test_compact_examples_index_the_query_and_both_first_tokens(planted):
    _, tokenizer = planted
    pairs = generate_flip_pairs(0, 5, depth=3, k=0)
    examples = compact_examples(pairs, tokenizer)
    assert len(examples) == 10 and examples.suffix == 2
    row = pairs.iloc[0]
    first = lambda chain: tokenizer.convert_tokens_to_ids(row[f"answer_{chain}"].split()[0])  # noqa: E731
    assert examples.group[:2] == ["logop", "linear"]
    assert int(examples.correct[0]) == first("logop") and int(examples.wrong[0]) == first("linear")
    assert int(examples.correct[1]) == first("linear") and int(examples.wrong[1]) == first("logop")
    tokens = row.prompt_logop.split()
    assert tokens[int(examples.positions["query"][0])] == row.query_logop
    start, end = examples.positions["facts"][0].tolist()
    assert tokens[start - 1] == "facts" and tokens[end] == "query"
    assert (examples.ids[0] != examples.flip_ids[0]).nonzero().flatten().tolist() == [LENGTH - 2]


@pytest.mark.parametrize("prompt_end,rule_order", [("answer", "shuffled"), ("query", "chain")])
def test_queried_conclusion_is_the_query_variable_where_a_rule_concludes_it(planted, prompt_end, rule_order):
    _, tokenizer = planted
    test = generate_splits(3, {"test": 50}, depth=3, prompt_end=prompt_end, rule_order=rule_order)["test"]
    ids = encode_prompts(test.prompt.tolist(), tokenizer)
    for prompt, position in zip(test.prompt, queried_conclusion_positions(ids, tokenizer).tolist()):
        words = prompt.split()
        query = words[words.index("query") + 1]
        assert words[position] == query and words[position - 1] == ">" and position < words.index("facts")
    words = test.prompt[0].split()
    query, unused = words[words.index("query") + 1], sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZ") - set(words))[0]
    unconcluded = encode_prompts([test.prompt[0].replace(f"> {query} ", f"> {unused} ", 1)], tokenizer)
    with pytest.raises(StudyError, match="exactly one rule that concludes its query variable"):
        queried_conclusion_positions(unconcluded, tokenizer)


def test_routing_summary_names_the_last_layer_head_that_separates_the_chains():
    chains = ["linear"] * 4 + ["logop"] * 4
    attention = {name: torch.zeros(8, 2, 3) for name in ("query", "conclusion", "rules", "facts")}
    attention["conclusion"][:4, 1, 2] = 0.9   # reads the queried rule only for linear queries
    attention["conclusion"][:, 1, 0] = 0.95   # reads it for every query: no routing
    attention["query"][4:, 1, 1] = 0.5        # prefers LogOp queries: the wrong way round
    summary, tensors = routing_summary(attention, chains, n_boot=50)
    head = summary["conclusion_head"]
    assert (head["layer"], head["head"]) == (1, 2)
    assert head["linear"]["mean"] == pytest.approx(0.9) and head["logop"]["mean"] == pytest.approx(0.0)
    assert summary["routing_head"]["head"] != 1
    assert float(tensors["attention.conclusion.all"][1, 0]) == pytest.approx(0.95)


def test_section_attention_finds_the_planted_query_head(planted, copy_task):
    model, tokenizer = planted
    _, test = copy_task
    attention = section_attention(model, tokenizer, encode_prompts(test.prompt.tolist(), tokenizer), 128)
    total = attention["query"] + attention["rules"] + attention["facts"]
    assert attention["query"].shape == (300, 2, 3) and bool((total <= 1 + 1e-5).all())
    assert bool((attention["conclusion"] <= attention["rules"] + 1e-6).all())  # one token of the rules
    assert float(attention["query"][:, PLANTED_LAYER, PLANTED_HEAD].min()) > 0.99
    assert float(attention["query"][:, 0].mean()) < 0.2  # unplanted heads spread out


def test_study_finds_steers_and_isolates_the_planted_head(planted, copy_task, tmp_path):
    model, tokenizer = planted
    pairs, test = copy_task
    residuals = _residuals(model, tokenizer, test, tmp_path)
    config = CircuitConfig(n_problems=300, probe_epochs=60, routing_layer=0, random_directions=3,
                           random_controls=10, batch_size=64, n_boot=200)
    result = run_circuit_study(model, tokenizer, test, pairs, residuals, range(len(test)), config)
    summary = result.summary
    assert summary["flip_pairs"]["n_solved_examples"] == 80
    for chain in QUERY:  # the planted head reads the query whichever chain it names: no routing gap
        assert float(result.tensors[f"attention.query.{chain}"][PLANTED_LAYER, PLANTED_HEAD]) > 0.99
    # patching: the query position carries the whole decision until the planted head moves it
    heads = result.tensors["effect.head_out"]
    assert float(heads[PLANTED_LAYER, PLANTED_HEAD]) == pytest.approx(1.0, abs=0.02)
    others = heads.clone()
    others[PLANTED_LAYER, PLANTED_HEAD] = 0
    assert float(others.abs().max()) < 0.05
    resid = result.tensors["effect.resid_pre"]
    assert resid.shape == (2, LENGTH)
    assert float(resid[:, LENGTH - 2].min()) > 0.95 and float(resid[:, :LENGTH - 2].abs().max()) < 1e-4
    assert float(resid[1, LENGTH - 1].abs()) < 0.05  # before the planted layer the last position knows nothing
    circuit = summary["circuit"]
    assert circuit["circuit"] == [{"layer": PLANTED_LAYER, "head": PLANTED_HEAD}]
    assert circuit["sufficiency"]["mean"] > 0.9 and circuit["necessity"]["mean"] < 0.2
    # ten draws of one head from all six would include the planted one; the control never keeps it
    assert circuit["random_control"]["n_sets"] == 10 and circuit["random_control"]["max"] < 0.2
    # the routing direction (G minus D at the query) flips the answer; random ones of its norm do not
    steering = summary["steering"]
    assert steering["difference_of_means"]["flip"]["mean"] > 0.95
    assert steering["random"]["flip"]["mean"] < 0.1
    probes = summary["probes"]["best"]
    assert probes["queried_chain"]["accuracy"] > 0.95 and probes["queried_chain"]["position"] == "query"
    metrics = circuit_metrics(summary)
    assert metrics["circuit_heads"] == 1.0 and metrics["steering_flip"] > 0.95


def test_a_model_that_solves_no_pair_is_reported_not_patched(planted, copy_task, tmp_path):
    model, tokenizer = planted
    _, test = copy_task
    residuals = _residuals(model, tokenizer, test, tmp_path)
    real_pairs = generate_flip_pairs(4, 20, depth=3, k=0)  # the proof starts at a source, never the query
    config = CircuitConfig(n_problems=100, probe_epochs=20, routing_layer=0, n_boot=50, batch_size=64)
    summary = run_circuit_study(model, tokenizer, test, real_pairs, residuals, range(len(test)), config).summary
    assert summary["flip_pairs"]["n_solved_examples"] == 0
    assert "solves no flip pair" in summary["skipped"] and "steering" not in summary
    assert "circuit_heads" in circuit_metrics(summary)


@pytest.mark.parametrize("params, message", [
    ({"break_share": 1.5}, "logic.analysis.break_share must be a number in [1e-09, 1.0], got 1.5"),
    ({"n_problems": 0}, "logic.analysis.n_problems must be an int in [1, 100000000], got 0"),
    ({"layers": 2}, "logic.analysis: unknown key(s) ['layers']"),
])
def test_bad_analysis_params_are_one_line_errors(params, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        CircuitConfig.from_mapping(params)


def test_routing_layer_out_of_range_is_one_line(planted, copy_task, tmp_path):
    model, tokenizer = planted
    pairs, test = copy_task
    residuals = _residuals(model, tokenizer, test, tmp_path)
    with pytest.raises(StudyError, match=r"routing_layer must be in \[0, 1\], got 5"):
        run_circuit_study(model, tokenizer, test, pairs, residuals, range(len(test)), CircuitConfig(routing_layer=5))


def test_the_papers_linear_source_probe_reads_linear_query_problems_only():
    """The paper probes the linear chain's source on linear-query problems only: LogOp-query rows get
    -1 and are left out of that probe, whose held-out set is a quarter of the linear rows; a site that
    encodes the source on linear queries alone reads it there and not over every problem."""
    from modules.studies.logic.circuit import probe_labels, run_probes
    test = generate_splits(5, {"test": 400}, depth=3, logop_share=0.5)["test"]
    labels = probe_labels(test)
    linear = torch.tensor((test.query_chain == "linear").to_numpy())
    assert torch.equal(labels["linear_source_linear_queries"] >= 0, linear)
    assert torch.equal(labels["linear_source_linear_queries"][linear], labels["linear_source"][linear])
    encoded = torch.nn.functional.one_hot(labels["linear_source"], 26).float() * linear[:, None]
    noise = torch.randn(len(test), 26, generator=torch.Generator().manual_seed(0)) * 0.01
    table, _ = run_probes({(0, "query"): encoded + noise}, labels, epochs=150)
    row = table.set_index("target").loc
    assert row["linear_source_linear_queries", "n_test"] < 0.3 * int(linear.sum())
    assert row["linear_source_linear_queries", "accuracy"] > 0.9 > row["linear_source", "accuracy"]


def test_a_probe_with_too_few_problems_to_hold_out_is_one_line():
    from modules.studies.logic.circuit import probe_labels, run_probes
    test = generate_splits(5, {"test": 40}, depth=3, logop_share=0.5)["test"]
    labels = probe_labels(test)
    linear = labels["queried_chain"].bool()
    first = int(linear.nonzero()[0])
    labels["linear_source_linear_queries"] = torch.full_like(linear, -1, dtype=torch.long)
    labels["linear_source_linear_queries"][first] = 3  # one linear problem: none can be held out
    with pytest.raises(StudyError, match="too few to hold any out: raise logic.activations.n_examples"):
        run_probes({(0, "query"): torch.randn(len(test), 8)}, labels, epochs=5)
