"""Study 2's bad input: one line each, and the first-sub-token rule for targets."""
import pytest
import yaml

from modules.core.params import ParamsError, ROOT, load
from modules.studies.ontology.data.dataset import DataConfig, generate
from modules.studies.ontology.heads import HeadsConfig
from modules.studies.ontology.params import OntologyParams
from modules.studies.ontology.prompts import PromptError, shot_blocks, target_token
from modules.studies.ontology.vocabulary import CANONICAL, VocabularyError, load_vocabulary


def section(**changes) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["ontology"]
    for dotted, value in changes.items():
        node = params
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return params


def test_the_committed_section_loads():
    params = load(OntologyParams, section(), "ontology")
    assert params.data.hops == 2 and params.models == ("smollm2-135m",)
    HeadsConfig.from_mapping(params.heads, complete=True)


@pytest.mark.parametrize("change,message", [
    ({"data__hops": 5}, r"ontology.data.hops must be one of \[2, 3, 4\], got 5"),
    ({"data__colours": 3}, r"ontology.data: unknown key\(s\) \['colours'\]"),
    ({"models": []}, "models must be a non-empty list"),
])
def test_bad_params_are_one_line(change, message):
    with pytest.raises(ParamsError, match=message):
        load(OntologyParams, section(**change), "ontology")


def test_bad_heads_settings_name_the_key():
    with pytest.raises(ParamsError, match=r"ontology.heads.subtask7 must be one of \['paper', 'fact'\]"):
        HeadsConfig.from_mapping({"subtask7": "query"})


def test_more_shots_than_generated_examples_is_one_line():
    shots = generate(DataConfig(0, 2, 4, 2, 4, 2, 2), CANONICAL)["shots"]
    assert len(shot_blocks(shots, "fictional", 4)) == 4
    with pytest.raises(PromptError, match="6 shots asked for, but the data has 4 fictional examples"):
        shot_blocks(shots, "fictional", 6)


def test_unknown_property_family_and_malformed_vocabulary(tmp_path):
    with pytest.raises(VocabularyError, match="unknown property family 'flavour'"):
        CANONICAL.families(["colour", "flavour"])
    path = tmp_path / "vocabulary.yaml"
    path.write_text("concepts: [wumpus\n")
    with pytest.raises(VocabularyError, match=r"not valid YAML at line 2"):
        load_vocabulary(path)
    with pytest.raises(VocabularyError, match="no ontology vocabulary at"):
        load_vocabulary(tmp_path / "missing.yaml")


def test_target_is_the_first_sub_token_and_a_merged_boundary_is_refused():
    full = [1, 5, 6, 7, 8, 9]           # prompt + gold chain: the target word is tokens 7, 8
    found = target_token(full, [1, 5, 6])
    assert (found.position, found.token) == (2, 7)
    assert target_token(full, [1, 5, 4]) is None   # the prefix tokenizes differently alone: merged
    assert target_token(full, full) is None
