"""Study 2's generator: determinism by seed, the shapes the paper fixes (CoT sentences and subtasks
per hop count), balanced labels, no test item among the shots, the paper's ten subtasks and the
authors' corruption rule on its item 0, and one-line errors for bad settings."""
import random
import re

import pytest

from modules.studies.ontology.data.dataset import SCHEMAS, DataConfig, generate, subtask_rows, write_tables
from modules.studies.ontology.data.generator import HOPS, GeneratorError, Item, check_hops, render, sample_item
from modules.studies.ontology.vocabulary import CANONICAL, VocabularyError

CONFIG = dict(seed=0, hops=2, items=40, false_items=20, shots=6, onehop=10, onehop_shots=3)
PAPER_KINDS = ["decision", "copy", "decision", "copy", "decision", "induction",   # the paper's subtasks 0-9
               "decision", "copy", "decision", "induction"]


def sentences(text: str) -> list[str]:
    return re.findall(r"[^ .][^.]*\.", text)


@pytest.fixture(scope="module")
def tables():
    return {hops: generate(DataConfig(**{**CONFIG, "hops": hops}), CANONICAL) for hops in HOPS}


def test_parquet_files_are_deterministic_by_seed(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_tables(generate(DataConfig(**{**CONFIG, "seed": seed}), CANONICAL), tmp_path / name)
    for table in [*SCHEMAS, "onehop_shots"]:
        suffix = ".txt" if table == "onehop_shots" else ".parquet"
        a, b, c = ((tmp_path / d / f"{table}{suffix}").read_bytes() for d in "abc")
        assert a == b, f"{table}: same seed, different bytes"
        assert a != c, f"{table}: another seed, same bytes"


@pytest.mark.parametrize("hops", HOPS)
def test_cot_sentences_facts_and_subtasks_per_hop_count(tables, hops):
    items, shots, subtasks = (tables[hops][k] for k in ("items", "shots", "subtasks"))
    assert (items["hops"] == hops).all() and (shots["hops"] == hops).all()
    assert {len(sentences(c)) for c in items["cot"]} == {2 * hops + 1}
    assert {len(sentences(q)) for q in items["question"]} == {hops + 1}       # no distractors
    assert {len(sentences(q)) for q in shots["question"]} == {hops + 3}       # two distractors
    per_item = subtasks.groupby("item_id")
    assert set(per_item["subtask"].nunique()) == {4 * hops + 2}
    assert set(per_item.size()) == {4 * hops + 3}                             # + the fact variant
    fact = subtasks[subtasks["variant"] == "fact"]
    assert set(fact["subtask"]) == {4 * hops - 1} and set(fact["kind"]) == {"copy"}
    assert set(fact["target_type"]) == {"property"}


def test_labels_are_balanced_and_false_queries_ask_another_property(tables):
    items, shots = tables[2]["items"], tables[2]["shots"]
    assert items.groupby("ontology")["label"].mean().to_dict() == {"false": 0.5, "fictional": 0.5}
    assert shots.groupby("ontology")["label"].mean().to_dict() == {"false": 0.5, "fictional": 0.5}
    assert (items["label"] == (items["query_property"] == items["property"])).all()


def test_no_test_item_among_the_shots(tables):
    for frames in tables.values():
        items, shots = frames["items"], frames["shots"]
        key = lambda f: set(zip(f["ontology"], f["entity"], f["chain"], f["property"]))  # noqa: E731
        assert not key(items) & key(shots)
        assert not set(items["cot"]) & set(shots["cot"])
        assert items["id"].is_unique and len(key(items)) == len(items)


def test_the_papers_ten_subtasks_for_two_hops(tables):
    subtasks, items = tables[2]["subtasks"], tables[2]["items"]
    for item_id, rows in subtasks[subtasks["variant"] == "paper"].groupby("item_id"):
        cot = items.set_index("id").loc[item_id, "cot"]
        assert rows["subtask"].tolist() == list(range(10))
        assert rows["kind"].tolist() == PAPER_KINDS
        words = [w for s in sentences(cot) for w in (s.split()[0], s.split()[-1].rstrip("."))]
        assert rows["target"].tolist() == words


def _sentence_at(text: str, offset: int) -> str:
    """The sentence of ``text`` holding the character at ``offset``."""
    start = text.rfind(". ", 0, offset)
    return text[start + 2 if start >= 0 else 0:text.index(".", offset) + 1]


def test_the_corruption_rule_on_the_papers_item_zero():
    """Dutta et al.'s item 0 and their table of corruption sites: subtask 7's `paper` variant hits
    the query (the authors' quirk), its `fact` variant the fact "Sterpuses are earthy"."""
    item = Item("Wren", ("impus", "sterpus"), "earthy", "earthy", plural=(True, True))
    texts = render(item, CANONICAL)
    assert texts["question"] == "Sterpuses are earthy. Impuses are sterpuses. Wren is impus."
    assert texts["query"] == "True or false: Wren is earthy."
    assert texts["answer"] == ("Wren is impus. Impuses are sterpuses. Wren is sterpus. Sterpuses are earthy. "
                               "Wren is earthy. True")
    rows = subtask_rows(item, "paper-0", CANONICAL, seed=0)
    sites = {(r["subtask"], r["variant"]): (r["corrupt_segment"], r["corrupted_word"],
                                            _sentence_at(texts["input"] if r["corrupt_segment"] == "input"
                                                         else r["prefix"], r["corrupt_char"]))
             for r in rows}
    query = "True or false: Wren is earthy."
    assert sites == {
        (0, "paper"): ("input", "Wren", query),
        (1, "paper"): ("input", "impus", "Wren is impus."),
        (2, "paper"): ("input", "Impuses", "Impuses are sterpuses."),
        (3, "paper"): ("input", "sterpuses", "Impuses are sterpuses."),
        (4, "paper"): ("cot", "Wren", "Wren is impus."),
        (5, "paper"): ("cot", "sterpuses", "Impuses are sterpuses."),
        (6, "paper"): ("input", "Sterpuses", "Sterpuses are earthy."),
        (7, "paper"): ("input", "earthy", query),
        (7, "fact"): ("input", "earthy", "Sterpuses are earthy."),
        (8, "paper"): ("cot", "Wren", "Wren is sterpus."),
        (9, "paper"): ("cot", "earthy", "Sterpuses are earthy."),
    }
    for r in rows:   # the corrupted text is the clean one with that word replaced
        text = texts["input"] if r["corrupt_segment"] == "input" else r["prefix"]
        corrupted = r["corrupted_input"] if r["corrupt_segment"] == "input" else r["corrupted_prefix"]
        at, old, new = r["corrupt_char"], r["corrupted_word"], r["replacement"]
        assert corrupted == text[:at] + new + text[at + len(old):] and new != old


def _one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_bad_settings_fail_with_one_line():
    with pytest.raises(VocabularyError) as error:
        CANONICAL.families(["smell", "flavour"])
    _one_line(error, "unknown property family 'flavour'", "smell")
    with pytest.raises(VocabularyError) as error:
        sample_item(random.Random(0), CANONICAL, 2, True, families=("flavour",))
    _one_line(error, "flavour")
    for hops in (1, 5, True, "2"):
        with pytest.raises(GeneratorError) as error:
            check_hops(hops)
        _one_line(error, "hops must be one of 2, 3, 4")
    with pytest.raises(GeneratorError) as error:
        DataConfig(**{**CONFIG, "hops": 7})
    _one_line(error, "hops must be one of", "7")
    with pytest.raises(GeneratorError) as error:
        DataConfig(**{**CONFIG, "shots": 5})
    _one_line(error, "shots must be even")
    with pytest.raises(GeneratorError) as error:   # 9 entities x 17 concepts: no endless search
        generate(DataConfig(**{**CONFIG, "onehop": 500}), CANONICAL)
    _one_line(error, "onehop", "500")
