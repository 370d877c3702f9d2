"""Study 2's one-hop heads: the paper's item selection, and the shared-components verdict."""
import pytest

from modules.engine.tiny import tiny_model, vocabulary_tokenizer
from modules.studies.ontology.data.dataset import DataConfig, generate
from modules.studies.ontology.onehop import OnehopConfig, onehop_prompt, select_examples
from modules.studies.ontology.report import _onehop
from modules.studies.ontology.vocabulary import CANONICAL


def curve(*agreements):
    return [{"heads": k, "fraction": f, "agreement": a, "random_agreement": 0.5}
            for (k, f), a in zip(((27, 0.1), (135, 0.5), (270, 1.0)), agreements)]


def summary(subtasks, top=True):
    entry = {"n": 3, "dropped": {"unequal_length": 2}, "top_patching": [
        {"layer": 23, "head": 0, "score": 0.4, "ci_low": 0.3, "ci_high": 0.5}]}
    return {"seconds": 1.0, "mlflow_run_id": "run", "corruptions": {"class": entry, "rule": entry, "property": entry},
            "top_combined": [{"layer": 23, "head": 0, "score": 0.4}] if top else [], "subtasks": subtasks}


def verdict(lines):
    row = next(line for line in lines if line.startswith("| the one-hop task's heads"))
    return row.rstrip(" |").rsplit("| ", 1)[1]


def test_the_shared_components_verdict():
    half = {"n": 4, "circuit_heads": 135, "circuit_fraction": 0.5, "curve": curve(0.5, 0.95, 1.0)}
    whole = {"n": 4, "circuit_heads": 270, "circuit_fraction": 1.0, "curve": curve(0.2, 0.5, 1.0)}
    assert verdict(_onehop(summary({"0": half, "2": half}), "f")) == "reproduced"
    assert verdict(_onehop(summary({"0": half, "2": whole}), "f")) == "not reproduced"
    assert verdict(_onehop(summary({"0": half}, top=False), "f")) == "not testable"
    assert verdict(_onehop(summary({"0": {"n": 0}}), "f")) == "not testable"


def test_selection_counts_every_item_and_keeps_equal_lengths():
    """A random tiny model: whatever it gets right, every scanned item is either kept (clean and
    corrupted prompts of one length) or counted under one reason."""
    frames = generate(DataConfig(seed=0, hops=2, items=4, false_items=2, shots=2, onehop=12, onehop_shots=3),
                      CANONICAL)
    onehop = frames["onehop"]
    words = sorted({w for text in [*onehop.text, *onehop.corrupted_text, *onehop.attrs["shots"],
                                   *onehop.target, *onehop.corrupted_target] for w in text.replace(".", " .").split()})
    tokenizer = vocabulary_tokenizer(words, split_punctuation=True)
    model = tiny_model("llama", n_layers=2, d_model=32, vocab_size=len(tokenizer), max_positions=512)
    for corruption in ("class", "rule", "property"):
        examples = select_examples(model, tokenizer, onehop, corruption, items=12)
        assert len(examples.ids) + sum(examples.dropped.values()) == 12
        assert all(len(c) == len(k) for c, k in zip(examples.clean, examples.corrupt))
    assert onehop_prompt(["a b", "c d"], "e is") == "a b\nc d\ne is"


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match=r"ontology\.onehop\.items"):
        OnehopConfig.from_mapping({"items": 0})
