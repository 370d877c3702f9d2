"""The shared-prefix training pass: each prefix that rows share runs once, with the plain pass's losses."""
from dataclasses import replace

import pytest
import torch

from modules.studies.logic.data import splits_from_params
from modules.training.decoding import right_padded_outputs
from modules.training.sequences import EncodedSequences, _take
from modules.studies.logic.training.shared_prefix import shared_prefix_lengths, shared_prefix_outputs
from modules.studies.logic.training.train import TrainConfig, TrainingData, new_logic_module


def twin_data(prompt_end="query", config=TrainConfig(source_aux=1.0, first_token_weight=8.0)):
    data = {"seed": 0, "depth": 3, "logop_share": 0.8, "operators": ["and", "or"], "prompt_end": prompt_end,
            "rule_order": "chain", "query_twins": ["train"], "sizes": {"train": 96, "val": 16, "test": 16}}
    splits = splits_from_params(data)
    return TrainingData.from_frames(splits["train"], splits["val"], config)


@pytest.mark.parametrize("prompt_end, unshared", [("query", 1), ("answer", 2)])
def test_query_twins_share_all_but_the_query_onward(prompt_end, unshared):
    data = twin_data(prompt_end)
    train = data.train
    assert torch.equal(train.shared_lengths, train.prompt_lengths - unshared)
    first, second = train.input_ids[0], train.input_ids[1]  # twins sit side by side
    assert int(data.groups[0]) == int(data.groups[1])
    cut = int(train.shared_lengths[0])
    assert torch.equal(first[:cut], second[:cut]) and first[cut] != second[cut]


def test_shared_lengths_are_the_group_common_prefix_capped_before_the_last_prompt_token():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 4, 9], [5, 6, 3, 8, 9], [1, 2, 3, 4, 0]])
    prompt_lengths = torch.tensor([4, 4, 4, 3])
    groups = torch.tensor([0, 0, 0, 1])  # three rows in one group, one alone
    assert shared_prefix_lengths(ids, prompt_lengths, groups).tolist() == [2, 2, 2, 2]
    assert shared_prefix_lengths(ids[:2], prompt_lengths[:2], groups[:2]).tolist() == [3, 3]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_shared_pass_gives_the_plain_pass_loss_and_gradients(attention):
    config = TrainConfig(source_aux=1.0, first_token_weight=8.0, attention=attention)
    data = twin_data(config=config)
    module = new_logic_module(config, 0, data.train, data.val)
    # rows 0-31 hold 16 twin pairs; 40 and 43 are singletons cut from two other pairs
    batch = _take(data.train, torch.cat([torch.arange(32), torch.tensor([40, 43])]))
    results = []
    for rows in (replace(batch, shared_lengths=None), batch):
        module.zero_grad()
        loss = module.training_step(rows, 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.parameters()]))
    (plain_loss, plain_grads), (shared_loss, shared_grads) = results
    assert torch.allclose(plain_loss, shared_loss, atol=1e-6)
    for plain, shared in zip(plain_grads, shared_grads):
        assert torch.allclose(plain, shared, atol=1e-5)
    shared = shared_prefix_outputs(module.model, batch, hidden_states=True)
    assert shared.prefix_hidden[0].shape[0] == 18  # 16 pairs and 2 singletons: 18 distinct prefixes


def test_hidden_states_and_answer_logits_match_the_plain_pass_at_every_position():
    data = twin_data()
    module = new_logic_module(TrainConfig(), 0, data.train, data.val)
    batch = EncodedSequences(data.train.input_ids[:8], data.train.prompt_lengths[:8], data.train.lengths[:8],
                             shared_lengths=data.train.shared_lengths[:8])
    with torch.no_grad():
        shared = shared_prefix_outputs(module.model, batch, hidden_states=True)
        plain = right_padded_outputs(module.model, batch.input_ids, hidden_states=True)
    rows, cols = (torch.arange(batch.input_ids.shape[1]) < batch.lengths.unsqueeze(1)).nonzero(as_tuple=True)
    for layer in range(4):
        assert torch.allclose(shared.hidden_at(layer, rows, cols), plain.hidden_states[layer][rows, cols], atol=1e-5)
    starts = batch.shared_lengths
    for row in range(8):
        tail = slice(int(starts[row]), int(batch.lengths[row]))
        assert torch.equal(shared.suffix.input_ids[row, :tail.stop - tail.start], batch.input_ids[row, tail])
        assert torch.allclose(shared.logits[row, :tail.stop - tail.start], plain.logits[row, tail], atol=1e-5)


def test_a_batch_without_shared_prefixes_takes_the_plain_pass():
    data = twin_data()
    module = new_logic_module(TrainConfig(), 0, data.train, data.val)
    singles = EncodedSequences(data.train.input_ids[0:96:2], data.train.prompt_lengths[0:96:2],
                               data.train.lengths[0:96:2], shared_lengths=data.train.shared_lengths[0:96:2])
    assert shared_prefix_outputs(module.model, singles) is None
    assert shared_prefix_outputs(module.model, replace(singles, shared_lengths=None)) is None


def test_an_unknown_attention_kernel_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"train.attention must be one of \['eager', 'sdpa'\], got 'flash'"):
        TrainConfig.from_params({"attention": "flash"})


def test_shared_prefix_false_trains_every_row_whole():
    data = twin_data(config=TrainConfig(shared_prefix=False))
    assert data.train.shared_lengths is None and not data.suits(TrainConfig(shared_prefix=True))
    with pytest.raises(ValueError, match="train.shared_prefix must be true or false, got 'yes'"):
        TrainConfig.from_params({"shared_prefix": "yes"})
