"""The one params loader: unknown keys refused, recipe keys required, types and ranges checked,
a malformed params.yaml reported in one line."""
from dataclasses import dataclass

import pytest

from modules.core.params import ParamsError, load, param, read_params, section
from modules.studies.logic.params import SECTIONS, logic_section
from modules.studies.logic.training.train import TrainConfig


@dataclass(frozen=True)
class Inner:
    size: int = param(range=(0, 10))


@dataclass(frozen=True)
class Outer:
    lr: float = param(0.1, range=(0.0, 1.0))
    name: str = param("a", choices=("a", "b"))
    flag: bool = param(False)
    sizes: dict[str, int] = param(factory=dict)
    items: list[int] = param(factory=list)
    inner: Inner = param(factory=lambda: Inner(1))
    threads: int = param(0, optional=True)

    def __post_init__(self):
        if self.flag and self.name == "b":
            raise ValueError("flag needs name a")


GOOD = {"lr": 0.5, "name": "b", "flag": False, "sizes": {"x": 1}, "items": [1, 2], "inner": {"size": 3}}


def test_a_complete_section_loads_with_its_types():
    loaded = load(Outer, GOOD, "s")
    assert loaded == Outer(0.5, "b", False, {"x": 1}, [1, 2], Inner(3), 0)
    assert isinstance(load(Outer, {**GOOD, "lr": 1}, "s").lr, float)  # YAML's 1 is a number


@pytest.mark.parametrize("mapping, message", [
    ({**GOOD, "sizez": 1}, r"params.yaml s: unknown key\(s\) \['sizez'\]; allowed: "),
    ({k: v for k, v in GOOD.items() if k != "flag"}, r"params.yaml s: missing key\(s\) \['flag'\]"),
    ({**GOOD, "inner": {}}, r"params.yaml s.inner: missing key\(s\) \['size'\]"),
    ({**GOOD, "lr": 2.0}, r"params.yaml s.lr must be a number in \[0.0, 1.0\], got 2.0"),
    ({**GOOD, "lr": "fast"}, r"params.yaml s.lr must be a number, got 'fast'"),
    ({**GOOD, "flag": "yes"}, r"params.yaml s.flag must be true or false, got 'yes'"),
    ({**GOOD, "name": "c"}, r"params.yaml s.name must be one of \['a', 'b'\], got 'c'"),
    ({**GOOD, "items": [1, 2.5]}, r"params.yaml s.items\[1\] must be an int, got 2.5"),
    ({**GOOD, "sizes": {"x": True}}, r"params.yaml s.sizes.x must be an int, got True"),
    ({**GOOD, "inner": {"size": 11}}, r"params.yaml s.inner.size must be an int in \[0, 10\], got 11"),
    ({**GOOD, "flag": True}, r"params.yaml s: flag needs name a"),
    ([1, 2], r"params.yaml s must be a mapping of keys"),
])
def test_a_bad_section_is_one_line_naming_the_key(mapping, message):
    with pytest.raises(ParamsError, match=message) as error:
        load(Outer, mapping, "s")
    assert "\n" not in str(error.value)


def test_optional_and_incomplete_loading_fall_back_to_defaults():
    assert load(Outer, GOOD, "s").threads == 0
    assert load(Outer, {"lr": 0.2}, "s", complete=False) == Outer(lr=0.2)


def test_every_study_section_of_the_committed_params_loads():
    for name in SECTIONS:
        assert logic_section(name) is not None
    assert load(TrainConfig, section("logic", "train"), "logic.train").source_aux == 1.0


def test_dropping_a_recipe_key_is_refused_not_defaulted():
    train = dict(section("logic", "train"))
    del train["source_aux"], train["stop_on_perfect"]
    with pytest.raises(ParamsError, match=r"logic.train: missing key\(s\) \['source_aux', 'stop_on_perfect'\]"):
        load(TrainConfig, train, "logic.train")


def test_malformed_yaml_is_one_line_with_its_place(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("logic:\n  data: [1, 2\n  train: {}\n")
    with pytest.raises(ParamsError, match=r"params.yaml: invalid YAML at line \d+, column \d+") as error:
        read_params(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ParamsError, match="no such file"):
        read_params(tmp_path / "nothing.yaml")


def test_a_missing_section_names_its_dotted_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("logic:\n  data: {}\n")
    with pytest.raises(ParamsError, match="params.yaml: missing key logic.train"):
        section("logic", "train", path=path)
