import json

import torch
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast

from modules.training.decoding import exact_match, greedy_decode
from modules.engine.adapters import ModelLoadError
from modules.core.hf_dir import save_checkpoint
from modules.studies.logic.model import build_logic_model, load_checkpoint
from modules.studies.logic.tokenizer import VOCAB, build_logic_tokenizer
from modules.training.sequences import answer_loss, answer_loss_mask, encode, prompt_loss, training_loss


def test_tokenizer_covers_the_compact_vocabulary_and_round_trips(tmp_path):
    from modules.studies.logic.data import VOCAB as DATA_VOCAB

    tokenizer = build_logic_tokenizer()
    assert set(DATA_VOCAB) <= set(VOCAB)
    text = "rules A > B . C or D > E . facts A 1 C 0 query E answer"
    ids = tokenizer(text).input_ids
    assert len(ids) == len(text.split()) and tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == ids


def test_checkpoint_is_a_standard_hf_directory(tmp_path):
    model, tokenizer = build_logic_model(n_embd=24, n_layer=3, n_head=3), build_logic_tokenizer()
    save_checkpoint(model, tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, GPT2LMHeadModel)
    assert loaded.config.n_layer == 3 and loaded.config.n_head == 3
    ids = torch.tensor([tokenizer("rules A > B . facts A 1 query B answer").input_ids])
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    # the tokenizer as transformers 4.x reads it too: its generic fast class, the real context length
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in config
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert type(reloaded) is PreTrainedTokenizerFast and reloaded.model_max_length == model.config.n_positions
    assert reloaded("rules A > B . facts A 1 query B answer").input_ids == ids[0].tolist()


def test_missing_and_corrupt_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no model at .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(build_logic_model(n_embd=24), build_logic_tokenizer(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="model.safetensors is corrupted: sha256"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "checksums.json").unlink()  # an export without its record: the loader's own error
    with pytest.raises(ModelLoadError) as error:
        load_checkpoint(tmp_path / "m")
    assert "cannot load weights for" in str(error.value) and "\n" not in str(error.value)


def test_bad_model_shapes_are_rejected():
    with pytest.raises(ValueError, match="n_embd .* divisible by model.n_head"):
        build_logic_model(n_embd=32, n_head=3)
    with pytest.raises(ValueError, match="model.n_layer"):
        build_logic_model(n_layer=0)
    with pytest.raises(ValueError, match=r"model.activation must be one of \['gelu', 'gelu_new', 'gelu_pytorch_tanh'\]"):
        build_logic_model(activation="swish")


def test_each_activation_is_saved_in_the_config_and_reloaded(tmp_path):
    tokenizer = build_logic_tokenizer()
    ids = torch.tensor([tokenizer("rules A > B . facts A 1 query B answer").input_ids])
    logits = {}
    for activation in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        model = build_logic_model(n_embd=24, seed=0, activation=activation).eval()
        save_checkpoint(model, tokenizer, tmp_path / activation)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / activation)
        assert loaded.config.activation_function == activation
        logits[activation] = loaded(ids).logits
        assert torch.equal(logits[activation], model(ids).logits)
    # the same weights (same seed); the tanh form and its fused kernel are one function, the exact GELU is not
    assert torch.allclose(logits["gelu_new"], logits["gelu_pytorch_tanh"], atol=1e-5)
    assert not torch.equal(logits["gelu"], logits["gelu_new"])


def test_encode_writes_prompt_answer_and_eos_then_pads_each_row():
    tokenizer = build_logic_tokenizer()
    prompts = ["rules A > B . facts A 1 query B", "rules A or C > B . B > D . facts A 1 C 0 query D"]
    answers = ["A A > B B", "undetermined"]
    batch = encode(tokenizer, prompts, answers)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        words = prompt.split() + answer.split() + ["<eos>"]
        assert batch.lengths[row] == len(words) and batch.prompt_lengths[row] == len(prompt.split())
        assert tokenizer.convert_ids_to_tokens(batch.input_ids[row, :len(words)].tolist()) == words
        assert (batch.input_ids[row, len(words):] == tokenizer.pad_token_id).all()
    assert batch.input_ids.shape == (2, max(batch.lengths)) and batch.input_ids.dtype == torch.long
    with pytest.raises(ValueError, match="'Q!' is not in the vocabulary"):
        encode(tokenizer, ["rules Q! > B . facts A 1 query B"], [""])


def test_source_targets_label_rule_conclusions_alike_in_query_twins():
    from modules.studies.logic.training.sequences import conclusion_source_targets
    tokenizer = build_logic_tokenizer()
    twins = ["rules A or C > B . B > D . E > F . facts A 1 C 0 E 1 query D",
             "rules A or C > B . B > D . E > F . facts A 1 C 0 E 1 query F"]
    targets = conclusion_source_targets(tokenizer, [*twins, twins[0]], [True, True, False], 24)
    positions = (targets[0] != -100).nonzero()[:, 0].tolist()
    labelled = dict(zip(positions, tokenizer.convert_ids_to_tokens(targets[0, positions].tolist())))
    assert labelled == {5: "or", 9: "or", 13: "E"}  # the conclusions B, D (after the merge) and F
    assert torch.equal(targets[0], targets[1]) and (targets[2] == -100).all()


def test_loss_mask_covers_answer_and_eos_only():
    tokenizer = build_logic_tokenizer()
    batch = encode(tokenizer, ["rules A > B . facts A 1 query B answer", "rules A > B . facts A 0 query B answer"],
                   ["A B", "undetermined"])
    mask = answer_loss_mask(batch)
    targets = [batch.input_ids[i, 1:][mask[i]].tolist() for i in range(2)]
    assert tokenizer.convert_ids_to_tokens(targets[0]) == ["A", "B", "<eos>"]
    assert tokenizer.convert_ids_to_tokens(targets[1]) == ["undetermined", "<eos>"]


def test_prompt_loss_reads_prompt_targets_only_and_adds_to_the_answer_loss():
    tokenizer = build_logic_tokenizer()
    batch = encode(tokenizer, ["rules A > B . facts A 1 query B answer"], ["A B"])
    torch.manual_seed(0)
    logits = torch.randn(1, batch.input_ids.shape[1] - 1, len(VOCAB), requires_grad=True)
    prompt_loss(logits, batch).backward()
    touched = logits.grad.abs().sum(-1)[0].nonzero().flatten().tolist()
    prompt_length = int(batch.prompt_lengths[0])
    assert touched == list(range(prompt_length - 1))  # targets: prompt tokens 1 .. prompt_length - 1
    with torch.no_grad():
        assert torch.equal(training_loss(logits, batch, 2.0, 0.0), answer_loss(logits, batch, 2.0))
        mixed = training_loss(logits, batch, 2.0, 0.5)
        assert torch.allclose(mixed, answer_loss(logits, batch, 2.0) + 0.5 * prompt_loss(logits, batch))


def test_inner_answers_of_a_multi_query_prompt_get_the_first_token_weight():
    from modules.training.sequences import answer_loss_weights

    tokenizer = build_logic_tokenizer()
    batch = encode(tokenizer, ["rules A > B . facts A 1 query A answer A query B answer",
                               "rules A > B . facts A 1 query B answer"], ["A B", "A B"])
    answer_id = tokenizer.convert_tokens_to_ids("answer")
    plain = answer_loss_weights(batch, 3.0)
    weighted = answer_loss_weights(batch, 3.0, answer_id)
    extra = (weighted - plain).nonzero().tolist()
    # only the token after row 0's inner `answer` (input position 10) is added: target 10 is token 11
    assert extra == [[0, 10]] and weighted[0, 10] == 3.0
    assert tokenizer.convert_ids_to_tokens([int(batch.input_ids[0, 11])]) == ["A"]
    assert torch.equal(weighted[1], plain[1])  # a one-query prompt is unchanged


def test_greedy_decode_matches_hf_generate_and_exact_match_scores_it():
    torch.manual_seed(0)
    model, tokenizer = build_logic_model(n_embd=24).eval(), build_logic_tokenizer()
    prompts = torch.randint(2, len(VOCAB), (5, 9))
    ours = greedy_decode(model, prompts, 6, tokenizer.eos_token_id)
    theirs = model.generate(prompts, max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.eos_token_id)[:, 9:]
    for row_ours, row_theirs in zip(ours.tolist(), theirs.tolist()):
        stop = row_theirs.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row_theirs else 6
        assert row_ours[:stop] == row_theirs[:stop]
    # A reference equal to the model's own output scores 1; a changed token scores 0.
    sequences = torch.cat([prompts, ours], dim=1)
    lengths = torch.tensor([9 + (r.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in r else 6)
                            for r in ours.tolist()])
    assert exact_match(ours, sequences, torch.full((5,), 9), lengths).all()
    sequences[0, 9] = (sequences[0, 9] + 1) % len(VOCAB)
    assert not exact_match(ours, sequences, torch.full((5,), 9), lengths)[0]


def test_right_padded_logits_equal_the_unmasked_forward_bit_for_bit():
    from modules.training.decoding import right_padded_logits

    model = build_logic_model(n_layer=2, n_head=2, n_embd=16, seed=0)
    ids = torch.randint(1, model.config.vocab_size, (8, 20), generator=torch.Generator().manual_seed(0))
    ids[:, -6:] = model.config.pad_token_id  # right padding, as in every training batch
    plain = model(input_ids=ids).logits
    masked = right_padded_logits(model, ids)
    assert torch.equal(plain, masked)
    plain.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    masked.sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
