"""The benchmarks' --set overrides: only the named sections of params.yaml, values read as YAML."""
import pytest

from modules.core.params import apply_overrides


def test_overrides_set_data_and_train_keys_as_yaml_values():
    logic = {"data": {"rule_order": "shuffled", "sizes": {"train": 10}}, "train": {"source_aux": 0.0}}
    out = apply_overrides(logic, ["logic.data.rule_order=chain", "logic.data.sizes.train=200000",
                                  "logic.train.source_aux=1.0", "logic.train.stop_on_perfect=false"], "logic", ("data", "train"))
    assert out == {"data": {"rule_order": "chain", "sizes": {"train": 200000}},
                   "train": {"source_aux": 1.0, "stop_on_perfect": False}}


@pytest.mark.parametrize("assignment", ["logic.train.lr", "logic.tune.n_trials=3", "train.lr=0.1",
                                        "logic.data.rule_order.x=1"])
def test_bad_overrides_are_one_line_errors(assignment):
    with pytest.raises(ValueError, match="--set"):
        apply_overrides({"data": {"rule_order": "chain"}, "train": {"lr": 0.003}}, [assignment], "logic", ("data", "train"))
