"""The independent checker: it re-derives the paper's own examples, passes every row of generated
data for each hop count, and flags a corrupted row with a reason naming it."""
import pandas as pd
import pytest

from modules.studies.ontology.checker import (ITEM_CHECKS, ONEHOP_CHECKS, SHOT_CHECKS, SUBTASK_CHECKS, CheckError,
                                              Lexicon, check_tables, cot_text, derive, slots)
from modules.studies.ontology.data.dataset import DataConfig, generate
from modules.studies.ontology.data.generator import HOPS
from modules.studies.ontology.vocabulary import CANONICAL

LEX = Lexicon(CANONICAL)
CHECKS = {"items": ITEM_CHECKS, "shots": SHOT_CHECKS, "subtasks": SUBTASK_CHECKS, "onehop": ONEHOP_CHECKS}


def test_the_papers_examples_are_rederived():
    d = derive("Jompus is fast. Tumpuses are jompuses. Sam is tumpus.", "True or false: Sam is loud.", LEX)
    prop, steps = d.proof()
    assert (prop, d.label, d.chain) == ("fast", False, ("tumpus", "jompus"))
    assert cot_text(steps) == "Sam is tumpus. Tumpuses are jompuses. Sam is jompus. Jompus is fast. Sam is fast."
    d = derive("Sterpuses are earthy. Impuses are sterpuses. Wren is impus.", "True or false: Wren is earthy.", LEX)
    steps = d.proof()[1]
    assert d.label is True
    assert [(s.word, s.kind) for s in slots(steps)] == [
        ("Wren", "decision"), ("impus", "copy"), ("Impuses", "decision"), ("sterpuses", "copy"),
        ("Wren", "decision"), ("sterpus", "induction"), ("Sterpuses", "decision"), ("earthy", "copy"),
        ("Wren", "decision"), ("earthy", "induction")]


def test_a_shot_label_counts_every_fact_and_a_false_ontology_reads():
    # Shot 1 of the paper's prompt: two properties on the chain; the query asks the distractor's.
    question = "Rompus is gorpus. Gorpus is small. Rompus is mean. Alex is rompus. Gorpus is twimpus."
    d = derive(question, "True or false: Alex is mean.", LEX)
    assert d.label is True and d.chain == ("rompus", "gorpus") and d.proof()[0] == "small"
    d = derive("Cats are butterflies. Butterflies are fast. Rex is cat.", "True or false: Rex is fast.", LEX)
    assert cot_text(d.proof()[1]) == ("Rex is cat. Cats are butterflies. Rex is butterfly. Butterflies are fast. "
                                      "Rex is fast.")


@pytest.mark.parametrize("question, query, reason", [
    ("Jompus is fast. Tumpuses are jompus. Sam is tumpus.", "True or false: Sam is fast.", "number or case"),
    ("Jompus is fast. Sam is tumpus.", "True or false: Sam is fast.", "no property"),
    ("Jompus is fast.  Sam is jompus.", "True or false: Sam is fast.", "single-spaced"),
    ("Jompus is fast. Sam is jompus.", "True or false: Sam is jompus.", "not a query"),
    ("Jompus is medium. Sam is jompus.", "True or false: Sam is fast.", "outside the vocabulary"),
])
def test_unreadable_text_is_a_reason(question, query, reason):
    with pytest.raises(CheckError, match=reason):
        derive(question, query, LEX)


@pytest.mark.parametrize("hops", HOPS)
def test_generated_tables_pass_every_check(hops):
    frames = generate(DataConfig(seed=hops, hops=hops, items=30, false_items=20, shots=6, onehop=10,
                                 onehop_shots=3), CANONICAL)
    checks = check_tables(frames, CANONICAL)
    for name, names in CHECKS.items():
        assert list(checks[name].columns[:len(names)]) == list(names)
        assert checks[name][list(names)].all().all(), checks[name]["reason"][checks[name]["reason"] != ""].head()
        assert (checks[name]["reason"] == "").all()
    assert checks["items"]["proof_key"].notna().all() and checks["shots"]["proof_key"].notna().all()


def test_a_corrupted_row_is_flagged_with_its_id():
    frames = generate(DataConfig(seed=0, hops=2, items=10, false_items=4, shots=2, onehop=2, onehop_shots=1),
                      CANONICAL)
    items, subtasks, onehop = frames["items"].copy(), frames["subtasks"].copy(), frames["onehop"].copy()
    items.loc[0, "question"] = items.loc[0, "question"].replace(" is ", " are ", 1)
    row = subtasks.index[(subtasks["corrupt_segment"] == "input") & (subtasks["item_id"] != items.loc[0, "id"])][0]
    subtasks.loc[row, "corrupted_input"] = subtasks.loc[row, "corrupted_input"].replace("Let us", "Let them")
    onehop.loc[0, "corrupted_text"] = onehop.loc[0, "text"]
    checks = check_tables({**frames, "items": items, "subtasks": subtasks, "onehop": onehop}, CANONICAL)
    bad_item = checks["items"].loc[0]
    assert not bad_item[list(ITEM_CHECKS)].any()                     # unreadable: every check fails
    assert bad_item["reason"].startswith(f"{items.loc[0, 'id']}: cot_ok") and "agree" in bad_item["reason"]
    bad = checks["subtasks"]
    failing = bad.index[bad["reason"] != ""]
    item_rows = subtasks.index[subtasks["item_id"] == items.loc[0, "id"]]
    assert set(failing) == {row, *item_rows}
    assert [c for c in SUBTASK_CHECKS if not bad.loc[row, c]] == ["corruption_ok"]
    assert [c for c in ONEHOP_CHECKS if not checks["onehop"].loc[0, c]] == ["one_word_ok", "corruption_ok",
                                                                            "corrupted_target_ok"]


def test_missing_columns_fail_the_rows_instead_of_crashing():
    frames = generate(DataConfig(seed=0, hops=2, items=4, false_items=2, shots=2, onehop=1, onehop_shots=0),
                      CANONICAL)
    checks = check_tables({name: frame.drop(columns=["id", frame.columns[-1]]) for name, frame in frames.items()},
                          CANONICAL)
    assert all(not checks[name][list(names)].all(axis=None) for name, names in CHECKS.items())
    assert check_tables({name: pd.DataFrame() for name in CHECKS}, CANONICAL)["items"].empty
