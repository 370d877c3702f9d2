"""Study 2's token-mixing probes: the probe set, its independent check and GX suite, macro-F1, and
the probes on a tiny model where the label is planted in the residual stream."""
import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from modules.studies.ontology.data.generator import GeneratorError
from modules.studies.ontology.probe_data import ProbeDataConfig, generate_probe_pairs, write_pairs
from modules.studies.ontology.probe_validation import check_pairs, derive_label, validate_probe_data
from modules.studies.ontology.probes import ProbesConfig, macro_f1, run_probes
from modules.studies.ontology.report import probe_claims
from modules.studies.ontology.vocabulary import CANONICAL
from modules.validation import DataValidationError, raise_on_failure

CONFIG = ProbeDataConfig(seed=0, train_items=30, test_items=15)


@pytest.fixture(scope="module")
def pairs():
    return generate_probe_pairs(CONFIG, CANONICAL)


def test_the_set_is_balanced_deterministic_and_its_test_names_are_novel(pairs, tmp_path):
    counts = pairs.groupby(["split", "label"]).size()
    assert set(counts[("train",)]) == {4 * 30} and set(counts[("test",)]) == {4 * 15}  # 4 negatives a question
    write_pairs(pairs, tmp_path / "a")
    write_pairs(generate_probe_pairs(CONFIG, CANONICAL), tmp_path / "b")
    assert (tmp_path / "a/pairs.parquet").read_bytes() == (tmp_path / "b/pairs.parquet").read_bytes()
    vocabulary = {w.lower() for w in (*CANONICAL.concepts, *CANONICAL.entities)}
    test_words = {w.lower().removesuffix("es").removesuffix("s") for w in
                  pd.concat([pairs[pairs.split == "test"].word1, pairs[pairs.split == "test"].word2])}
    assert not {w for w in test_words if w in vocabulary}
    assert set(pairs[pairs.split == "train"].question).isdisjoint(pairs[pairs.split == "test"].question)


def test_every_pair_passes_the_independent_check(pairs):
    checked = check_pairs(pairs, CANONICAL)
    assert checked[["words_ok", "label_ok", "novel_ok", "split_balanced", "question_in_one_split"]].all().all()


def test_labels_rederived_from_crafted_questions():
    q = "Wren is dax. Daxes are not blue. Wumpuses are yumpuses. Yumpus is not dax. Zorp is red. True or false: Wren is blue."
    assert derive_label(q, 0, q.index("dax."), "Wren", "dax") == "positive"
    assert derive_label(q, q.index("Daxes"), q.index("blue"), "Daxes", "blue") == "negative"
    assert derive_label(q, q.index("Wumpuses"), q.index("Zorp"), "Wumpuses", "Zorp") == "unrelated"
    # joined through the negated link "Yumpus is not dax": related by a path, so not unrelated
    assert derive_label(q, 0, q.index("Wumpuses"), "Wren", "Wumpuses") == "positive-path"


@pytest.mark.parametrize("corrupt, check", [
    (lambda f: f.assign(label=f.label.where(f.index != 0, "negative")), "label_ok"),
    (lambda f: f.assign(char2=f.char2.where(f.index != 1, f.char2 + 1)), "words_ok"),
    (lambda f: f.drop(index=f.index[(f.split == "train") & (f.label == "unrelated")][:1]), "split_balanced"),
    (lambda f: f.assign(question=f.question.where(f.split == "train", f.question.replace(
        {q: q.replace(q.split()[0], "Wren", 1) for q in f.question}))), "novel_ok"),
])
def test_corrupted_pairs_fail_the_suite_with_one_line(pairs, tmp_path, corrupt, check):
    write_pairs(corrupt(pairs.copy()), tmp_path / "data")
    report = validate_probe_data(tmp_path / "data", tmp_path / "docs", tmp_path / "summary.json", CANONICAL)
    assert not report.success and any(check in o.expectation for o in report.failures())
    with pytest.raises(DataValidationError) as error:
        raise_on_failure(report)
    assert "\n" not in str(error.value)
    assert json.loads((tmp_path / "summary.json").read_text())["success"] is False


def test_the_generated_set_passes_the_suite(pairs, tmp_path):
    write_pairs(pairs, tmp_path / "data")
    report = validate_probe_data(tmp_path / "data", tmp_path / "docs", tmp_path / "summary.json", CANONICAL)
    assert report.success and (tmp_path / "docs/index.html").is_file()


def test_bad_settings_and_exhausted_names_are_one_line():
    with pytest.raises(GeneratorError, match=r"^probe_data.train_items must be a positive integer, got 0$"):
        ProbeDataConfig(seed=0, train_items=0, test_items=1)
    with pytest.raises(GeneratorError, match=r"^a probe question needs 7 concepts; the vocabulary has 6$"):
        generate_probe_pairs(CONFIG, dataclasses.replace(CANONICAL, concepts=CANONICAL.concepts[:6]))
    with pytest.raises(ValueError, match=r"ontology\.probes\.hidden"):
        ProbesConfig.from_mapping({"hidden": 0})


def test_macro_f1_on_hand_made_predictions():
    gold = np.array([0, 0, 1, 1, 2, 2])
    perfect = gold[:, None]
    assert macro_f1(perfect, gold)[0] == 1.0
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 2 fp 1 fn 0 -> 4/5; class 2: tp 2 fp 0 fn 0 -> 1
    predicted = np.array([0, 1, 1, 1, 2, 2])[:, None]
    assert macro_f1(predicted, gold)[0] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    weights = np.ones((1, 6))  # a resample equal to the sample gives the same score
    assert macro_f1(predicted, gold, weights)[0, 0] == pytest.approx(macro_f1(predicted, gold)[0])


def test_probes_on_a_tiny_random_model_read_word_identity(pairs):
    """A random tiny Llama: its states carry word identity (a word's type and, in distribution, the
    words themselves), which tells part of the label, so the held-out score is above chance; every
    layer and both probes are scored with a CI, and the claims table is built from the summary."""
    from modules.engine.tiny import tiny_model, vocabulary_tokenizer

    words = sorted({w for q in pairs.question.unique() for w in re.findall(r"\w+|[^\w\s]", q)})
    tokenizer = vocabulary_tokenizer(["###", "Input", "Response", *words], split_punctuation=True)
    model = tiny_model("llama", n_layers=2, d_model=32, vocab_size=len(tokenizer), max_positions=256)
    config = ProbesConfig(epochs=30, n_boot=50, batch_size=64, layers_per_fit=8)
    summary, table, tensors = run_probes(model, tokenizer, pairs, None, config, progress=lambda m: None)
    assert summary["n_layers"] == 2 and set(table.probe) == {"linear", "mlp"} and len(table) == 2 * 2 * 3
    assert (table.ci_low <= table.macro_f1).all() and (table.macro_f1 <= table.ci_high).all()
    assert summary["n_pairs"]["test"] == 3 * 4 * 15
    assert summary["probes"]["mlp"]["id"]["peak_ci"][0] > summary["chance"]
    rows = probe_claims({**summary, "seconds": 1.0, "mlflow_run_id": "x"})
    assert len(rows) == 5 and all(row[3] for row in rows)
