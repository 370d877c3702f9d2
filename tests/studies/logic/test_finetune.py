"""Fine-tuning a causal LM on the NL flip prompts (modules/studies/logic/finetune.py), on a tiny
random Llama with a word-level tokenizer over the prompts' words."""
import json
import os
import stat

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM

from modules.core.params import ParamsError
from modules.engine.tiny import tiny_model
from modules.studies.logic.data import generate_flip_pairs
from modules.studies.logic.finetune import (IGNORE, FinetuneConfig, FinetuneData, LoRALinear, PairBatches, Sequences,
                                            add_lora, answer_logits, answer_loss, answer_scores, collate,
                                            compact_prompts, finetune, finetune_pairs, merge_lora,
                                            suppressed_tokens, _loader, _ordered_batches)
from modules.studies.logic.llm import build_examples
from tests.studies.logic.planted import nl_tokenizer

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tiny(seed: int = 0):
    tokenizer = nl_tokenizer()
    model = tiny_model("llama", seed=seed, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                       vocab_size=len(tokenizer), max_positions=256, init_std=0.1)
    return model, tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, tokenizer = _tiny()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "LICENSE").write_text("licence text\n")
    return path


@pytest.fixture(scope="module")
def pairs():
    return finetune_pairs(FinetuneData(train_pairs=24, val_pairs=4, shots=0))


def test_training_and_validation_pairs_are_disjoint_and_avoid_the_excluded(pairs):
    held_out = generate_flip_pairs(0, 30, depth=2, k=0)
    train, val = finetune_pairs(FinetuneData(train_pairs=24, val_pairs=4, shots=0), compact_prompts(held_out))
    assert len(train) == 48 and len(val) == 8 and set(train.pair_id.str[:8]) == {"flip-d2-", "flip-and"}
    assert not compact_prompts(train) & compact_prompts(val)
    assert not (compact_prompts(train) | compact_prompts(val)) & compact_prompts(held_out)
    assert train.equals(pairs[0])  # nothing excluded here collides: the same pairs


def test_the_loss_mask_covers_the_answer_tokens_only(pairs, one_thread):
    tokenizer = nl_tokenizer()
    examples = build_examples(pairs[1], tokenizer)
    seqs = Sequences.from_examples(examples)
    batch = collate([seqs[i] for i in range(4)], pad_id=tokenizer.pad_token_id)
    for row in range(4):
        n, answer = len(examples.ids[row]), examples.answer_ids[row]
        labelled = (batch["labels"][row] != IGNORE).nonzero().flatten()
        assert labelled.tolist() == list(range(n, n + len(answer)))
        assert torch.equal(batch["labels"][row, labelled], answer)
        assert int(batch["attention_mask"][row].sum()) == n + len(answer)
        assert (batch["input_ids"][row, n + len(answer):] == tokenizer.pad_token_id).all()
    # the positions that reach the output layer predict exactly those tokens
    model, _ = _tiny()
    logits, target, first = answer_logits(model, batch)
    assert int((target != IGNORE).sum()) == sum(len(examples.answer_ids[i]) for i in range(4))
    assert target[first].tolist() == examples.correct[:4].tolist()
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    row, n = 1, len(examples.ids[1])
    assert torch.allclose(logits[row][first[row]], full[row, n - 1], atol=1e-5)
    # loss and scores: a model whose argmax is the target everywhere scores 1 and has a small loss
    perfect = torch.nn.functional.one_hot(target.clamp_min(0), logits.shape[-1]).float() * 50
    first_ok, proof_ok = answer_scores(perfect, target, first)
    assert first_ok.all() and proof_ok.all() and answer_loss(perfect, target, first) < 1e-6
    assert not answer_scores(perfect, target, first, suppress=examples.correct[:1].tolist())[0][0]
    # what greedy decoding may not pick: the generation config's suppressed tokens (Gemma-3's image tokens)
    assert suppressed_tokens(model) == []
    model.generation_config.suppress_tokens = [3, 5]
    assert suppressed_tokens(model) == [3, 5]


def test_batches_hold_whole_pairs_and_cycle():
    ids = [f"p{i // 2}" for i in range(10)]
    batches = list(PairBatches(ids, batch_size=4, n_batches=7, seed=0))
    assert len(batches) == 7 and all(len(b) == 4 for b in batches)
    for b in batches:
        assert all(ids[b[j]] == ids[b[j + 1]] for j in (0, 2))
    assert batches == list(PairBatches(ids, batch_size=4, n_batches=7, seed=0))


def test_lora_starts_as_the_base_and_merges_exactly(pairs, one_thread):
    model, tokenizer = _tiny()
    ids = build_examples(pairs[1], tokenizer).ids[0][None]
    before = model(input_ids=ids).logits
    names = add_lora(model, TARGETS, rank=4, alpha=8.0)
    assert len(names) == 2 * 7 and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(model(input_ids=ids).logits, before)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"{n}.lora_{ab}" for n in names for ab in "ab"}
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).lora_b.normal_(0, 0.2)
    adapted = model(input_ids=ids).logits
    assert not torch.allclose(adapted, before, atol=1e-3)
    assert merge_lora(model) == 14 and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-5)
    with pytest.raises(ValueError, match=r"lora_targets \['qkv'\] name no linear layer of LlamaForCausalLM"):
        add_lora(_tiny()[0], ["qkv"], 4, 8.0)


def _val_loss(path, val_pairs) -> tuple[float, float]:
    """Validation loss and first-token accuracy of the model saved at ``path``, recomputed."""
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    val = Sequences.from_examples(build_examples(val_pairs, tokenizer))
    losses, firsts, sizes = [], [], []
    with torch.no_grad():
        for batch in _loader(val, _ordered_batches(len(val), 32), tokenizer.pad_token_id):
            logits, target, first = answer_logits(model, batch)
            losses.append(float(answer_loss(logits, target, first)))
            firsts.append(float(answer_scores(logits, target, first)[0].float().mean()))
            sizes.append(len(target))
    total = sum(sizes)
    return (sum(l * s for l, s in zip(losses, sizes)) / total, sum(f * s for f, s in zip(firsts, sizes)) / total)


@pytest.mark.parametrize("method, lr", [("full", 3e-3), ("lora", 1e-2)])
def test_finetuning_lowers_the_loss_and_saves_the_best_model(saved, pairs, tmp_path, method, lr, one_thread):
    train, val = pairs
    config = FinetuneConfig(method=method, lr=lr, lora_rank=8, lora_alpha=64.0, lora_targets=TARGETS, max_steps=30,
                            val_every=10,
                            warmup_steps=3, batch_size=8, patience=10)
    out = tmp_path / "tuned"
    summary = finetune(saved, train, val, config, out)
    history = summary["history"]
    assert [h["step"] for h in history] == [0, 10, 20, 30] and summary["stopped_by"] == "max_steps"
    assert summary["n_train"] == 96 and summary["n_val"] == 16 and summary["steps"] == 30
    assert history[-1]["val_loss"] < 0.7 * history[0]["val_loss"]
    assert summary["best"] == max(history, key=lambda h: (h["val_first_token"], h["val_proof"], -h["val_loss"]))
    # a plain HF directory: safetensors, tokenizer, licence, summary; no LoRA left in the weights
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE", "finetune.json"} <= files
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the atomic write left nothing behind
    assert json.loads((out / "finetune.json").read_text())["best"] == summary["best"]
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}
    loss, first = _val_loss(out, val)
    assert loss == pytest.approx(summary["best"]["val_loss"], rel=1e-4, abs=1e-5)
    assert first == pytest.approx(summary["best"]["val_first_token"])
    if method == "lora":  # rank 8 on 7 layers of 2 blocks, width 64, MLP 128, key/value width 32
        assert summary["trainable_params"] == 2 * 8 * (2 * 128 + 2 * 96 + 3 * 192)


def test_stopping_at_the_target_and_on_patience_tracked_in_mlflow(saved, pairs, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    train, val = pairs
    statuses, messages = [], []  # the run's status while it trains, after Lightning's validate and fit calls

    def progress(message):
        messages.append(message)
        statuses.append(mlflow.MlflowClient().get_run(mlflow.active_run().info.run_id).info.status)

    at_target = finetune(saved, train, val, FinetuneConfig(target_accuracy=0.0, max_steps=50, val_every=2),
                         tmp_path / "a", track="llm-finetune-test", params={"data": {"shots": 0}}, progress=progress)
    assert statuses == ["RUNNING"] * 4  # set-up, step 0, the validation at step 2, the end
    assert messages[2].startswith("step 2: val first token ")
    assert at_target["stopped_by"] == "target" and at_target["steps"] == 2
    frozen = finetune(saved, train, val, FinetuneConfig(lr=1e-8, warmup_steps=0, max_steps=50, val_every=2,
                                                        patience=2, method="full"), tmp_path / "b")
    assert frozen["stopped_by"] == "patience" and frozen["steps"] == 6  # best at 2, then 2 without gain
    run = mlflow.MlflowClient().get_run(at_target["mlflow_run_id"])
    assert run.info.run_name == "llm-finetune-test" and run.data.params["method"] == "lora"
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "llm-finetune-test"
    assert run.data.params["data.shots"] == "0" and "val_first_token" in run.data.metrics
    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "curve.val_first_token")
    assert [m.step for m in curve] == [0, 2] and [m.value for m in curve] == [h["val_first_token"]
                                                                         for h in at_target["history"]]
    assert "curve.elapsed_s" in run.data.metrics


@pytest.mark.parametrize("params, message", [
    ({"method": "qlora"}, r"logic_llm\.finetune\.train\.method must be one of \['lora', 'full'\], got 'qlora'"),
    ({"batch_size": 7}, r"logic_llm\.finetune\.train: batch_size must be even"),
    ({"lr": 2.0}, r"logic_llm\.finetune\.train\.lr must be a number in"),
    ({"precision": "16-mixed"}, r"precision must be one of \['32-true', 'bf16-mixed'\]"),
    ({"learning_rate": 1e-3}, r"unknown key\(s\) \['learning_rate'\]"),
    ({"lora_targets": []}, r"lora_targets must name at least one linear layer"),
])
def test_bad_finetune_params_are_one_line_errors(params, message):
    with pytest.raises(ParamsError, match=message) as error:
        FinetuneConfig.from_mapping(params)
    assert "\n" not in str(error.value)


def test_a_missing_model_is_one_line_naming_its_path(pairs, tmp_path):
    from modules.engine import ModelLoadError

    with pytest.raises(ModelLoadError, match=f"^no model at {tmp_path / 'none'}: config.json is missing$"):
        finetune(tmp_path / "none", *pairs, FinetuneConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_incomplete_params_and_bad_data_settings_are_one_line_errors():
    with pytest.raises(ParamsError, match=r"logic_llm\.finetune\.train: missing key\(s\) \[.*'lr'"):
        FinetuneConfig.from_mapping({"method": "lora"}, complete=True)
    with pytest.raises(ParamsError, match=r"logic_llm\.finetune\.data: seed and val_seed must differ"):
        FinetuneData.from_mapping({"seed": 3, "val_seed": 3})
    with pytest.raises(ParamsError, match=r"logic_llm\.finetune\.data\.operators\[0\] must be a string"):
        FinetuneData.from_mapping({"operators": [1]})


def test_the_params_sections_load_complete():
    from modules.studies.logic.fewshot import FewShotConfig
    from modules.studies.logic.params import llm_params

    section = llm_params()
    grid = FewShotConfig.from_mapping(section.fewshot, complete=True)
    data = FinetuneData.from_mapping(section.finetune.data, complete=True)
    train = FinetuneConfig.from_mapping(section.finetune.train_for("smollm2-135m"), complete=True)
    assert grid.operators == ("or", "and") and data.operators == ("or", "and") and train.lora_targets == TARGETS
    assert train.precision == "bf16-mixed" and train.lr == 1e-3 and train.method == "lora"
    gemma = FinetuneConfig.from_mapping(section.finetune.train_for("gemma3-270m"), complete=True)
    assert gemma.method == "full" and gemma.lr == 5e-5 and gemma.batch_size == train.batch_size
