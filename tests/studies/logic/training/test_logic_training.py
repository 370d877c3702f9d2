import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modules.training.decoding import teacher_forced_exact_match
from modules.studies.logic.training.evaluate import breakdown, exact_matches
from modules.training.sequences import encode
from modules.studies.logic.training.module import LogicLM
from modules.studies.logic.training.train import (RestartCheck, TrainConfig, export_model, restart_checks,
                                                  restart_seed, train_logic_model)
from modules.studies.logic.model import load_checkpoint
from modules.studies.logic.tokenizer import build_logic_tokenizer
from tests.studies.logic.training.conftest import TINY

ROOT = Path(__file__).resolve().parents[4]


def test_training_lowers_the_answer_loss_and_is_deterministic(small_splits):
    config = TrainConfig.from_params({**TINY, "max_steps": 30, "val_every": 15, "lr": 1e-2})
    first = train_logic_model(small_splits["train"], small_splits["val"], config, seed=3)
    second = train_logic_model(small_splits["train"], small_splits["val"], config, seed=3)
    assert first.steps == config.max_steps
    assert [h["step"] for h in first.history] == [15, 30]
    assert first.history[-1]["train_loss"] < 2.8  # starts near ln(39) = 3.66
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["val_exact_match"] for h in first.history] == [h["val_exact_match"] for h in second.history]


def test_interrupted_training_resumes_from_its_last_checkpoint(small_splits, tmp_path):
    half = TrainConfig.from_params({**TINY, "max_steps": 12})
    straight = train_logic_model(small_splits["train"], small_splits["val"], half, seed=1)
    # Stop after 6 of 12 steps, as a killed run would, then rerun with the same checkpoint dir.
    stopper = type("StopAt6", (__import__("lightning.pytorch").pytorch.Callback,), {
        "on_train_batch_end": lambda self, trainer, *a: setattr(trainer, "should_stop", trainer.global_step >= 6)})
    first = train_logic_model(small_splits["train"], small_splits["val"], half, seed=1,
                              ckpt_dir=tmp_path, callbacks=[stopper()])
    assert first.steps == 6 and (tmp_path / "last.ckpt").is_file()
    resumed = train_logic_model(small_splits["train"], small_splits["val"], half, seed=1, ckpt_dir=tmp_path)
    assert resumed.steps == 12
    assert [h["step"] for h in resumed.history] == [6, 12]  # the curve survives the restart
    for a, b in zip(straight.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_run_killed_between_validations_resumes_with_its_whole_curve(small_splits, tmp_path):
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3})
    straight = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1)

    class KillAtStep7(__import__("lightning.pytorch").pytorch.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 7:
                raise KeyboardInterrupt  # as Ctrl-C or a killed stage would, mid-way between validations

    with pytest.raises(BaseException):
        train_logic_model(small_splits["train"], small_splits["val"], config, seed=1, ckpt_dir=tmp_path,
                          callbacks=[KillAtStep7()])
    resumed = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1, ckpt_dir=tmp_path)
    # the checkpoint at step 6 was written after step 6's validation, so the curve keeps it
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history] == [3, 6, 9, 12]
    assert [h["val_exact_match"] for h in resumed.history] == [h["val_exact_match"] for h in straight.history]
    for a, b in zip(straight.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_run_that_fails_the_query_check_restarts_as_a_fresh_run_of_the_derived_seed(small_splits, tmp_path):
    # a minimum of 1.0 fails any tiny run at the check; the last run allowed trains on to the end
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "query_check_step": 6,
                                      "query_check_min": 1.0, "max_restarts": 1})
    plain = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3})
    restarted = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1)
    fresh = train_logic_model(small_splits["train"], small_splits["val"], plain, seed=restart_seed(1, 1))
    assert restart_seed(1, 0) == 1 and restart_seed(1, 1) not in (0, 1) and restart_seed(1, 1) == restart_seed(1, 1)
    assert [(r["attempt"], r["seed"], r["step"]) for r in restarted.restarts] == [(0, 1, 6)]
    assert restarted.seed == restart_seed(1, 1) and restarted.steps == 12
    # the curve runs on over the steps spent: the abandoned run's 6, then the restart's 12
    assert [(h["attempt"], h["step"]) for h in restarted.history] == [(0, 3), (0, 6), (1, 9), (1, 12), (1, 15), (1, 18)]
    assert [h["val_exact_match"] for h in restarted.history[2:]] == [h["val_exact_match"] for h in fresh.history]
    for a, b in zip(restarted.module.state_dict().values(), fresh.module.state_dict().values()):
        assert torch.equal(a, b)
    # a run that passes the check, or whose schedule ends before it, is untouched by it; a check
    # between validations is made at the next one
    for changed in ({"query_check_min": 0.0}, {"query_check_step": 12}, {"query_check_step": 40}):
        untouched = train_logic_model(small_splits["train"], small_splits["val"], replace(config, **changed),
                                      seed=restart_seed(1, 1))
        assert untouched.restarts == [] and [h["step"] for h in untouched.history] == [3, 6, 9, 12]
        assert all(torch.equal(a, b) for a, b in zip(untouched.module.state_dict().values(),
                                                      fresh.module.state_dict().values()))
    late = train_logic_model(small_splits["train"], small_splits["val"], replace(config, query_check_step=4), seed=1)
    assert [(r["attempt"], r["step"]) for r in late.restarts] == [(0, 6)]


def judge(check: RestartCheck, curve: dict[int, float], max_steps: int = 100) -> int | None:
    """Feed a validation curve to a check as Lightning would; the step it stopped the run at."""
    from types import SimpleNamespace
    for step, score in curve.items():
        trainer = SimpleNamespace(sanity_checking=False, global_step=step, max_steps=max_steps,
                                  callback_metrics={"val_exact_match": torch.tensor(score)}, should_stop=False)
        check.on_validation_end(trainer, None)
        if trainer.should_stop:
            assert check.failed == {"check": check.name, "step": step, "val_exact_match": pytest.approx(score)}
            return step
    assert check.failed is None
    return None


def test_a_run_still_rising_at_the_query_check_is_judged_again_at_each_validation():
    # the shapes of label runs at the check: a late reader still climbing, and a plateau
    climbing = {10: 0.50, 20: 0.55, 30: 0.70, 40: 0.78, 50: 0.91, 60: 0.40}
    plateau = {10: 0.50, 20: 0.80, 30: 0.84, 40: 0.86, 50: 0.85}
    assert judge(RestartCheck("query", 30, 0.9), climbing) == 30  # no grace: judged once, on its level
    assert judge(RestartCheck("query", 30, 0.9, rise=0.1, window=20), climbing) is None  # passed at 50
    assert judge(RestartCheck("query", 30, 0.9, rise=0.1, window=20), plateau) == 40  # rose 0.06 from step 20
    # a window reaching before the first validation grants no grace
    assert judge(RestartCheck("query", 30, 0.9, rise=0.1, window=40), climbing) == 30
    # the state a checkpoint keeps resumes the judgement where it was
    check = RestartCheck("query", 30, 0.9, rise=0.1, window=20)
    judge(check, dict(list(climbing.items())[:3]))
    resumed = RestartCheck("query", 30, 0.9, rise=0.1, window=20)
    resumed.load_state_dict(check.state_dict())
    assert judge(resumed, {40: 0.78, 50: 0.79}) == 50  # 0.09 above step 30's 0.70, known from the state
    config = TrainConfig.from_params({**TINY, "query_check_step": 30, "query_check_rise": 0.1,
                                      "query_check_window": 20})
    assert [(c.name, c.rise, c.window) for c in restart_checks(config)] == [("query", 0.1, 20)]


def test_a_run_without_a_perfect_validation_by_the_stall_check_restarts(small_splits):
    # the stall check judges the best validation so far: a tiny run never scores 1.0, so it is
    # abandoned at the first validation from the check's step on; the query check (minimum 0.0)
    # passes first, and the record names the check that fired
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "query_check_step": 3,
                                      "query_check_min": 0.0, "perfect_check_step": 7, "max_restarts": 1})
    stalled = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1)
    best = max(h["val_exact_match"] for h in stalled.history[:3])
    assert [(r["check"], r["step"], r["val_exact_match"]) for r in stalled.restarts] == [("perfect", 9, best)]
    assert stalled.seed == restart_seed(1, 1) and [h["step"] for h in stalled.history] == [3, 6, 9, 12, 15, 18, 21]
    without = train_logic_model(small_splits["train"], small_splits["val"], replace(config, perfect_check_step=0),
                                seed=1)
    assert without.restarts == [] and without.seed == 1


def test_a_restart_logs_into_the_same_mlflow_run(small_splits, tmp_path, monkeypatch):
    """The stage's MLflow run holds the abandoned run's curve and the restart's after it (at the
    steps spent); the restart's hyperparameters do not try to change the params the run holds."""
    import mlflow

    from modules.core.tracking import lightning_logger, tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "query_check_step": 6,
                                      "query_check_min": 1.0, "max_restarts": 1})
    with tracked_run("restart-test", "train-seed1", {**config.as_dict(), "seed": 1}) as run:
        result = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1,
                                   loggers=[lightning_logger(run)])
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "val_exact_match")
    assert [m.step for m in history] == [h["step"] for h in result.history] == [3, 6, 9, 12, 15, 18]
    params = client.get_run(run.info.run_id).data.params
    assert params["seed"] == "1" and "n_positions" in params  # the module's own hyperparameters, once


def test_an_interrupted_restart_resumes_in_the_restart(small_splits, tmp_path):
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "query_check_step": 6,
                                      "query_check_min": 1.0, "max_restarts": 2})
    straight = train_logic_model(small_splits["train"], small_splits["val"], config, seed=2)
    assert [r["attempt"] for r in straight.restarts] == [0, 1]

    class KillInSecondRestart(__import__("lightning.pytorch").pytorch.Callback):
        fits = 0

        def on_fit_start(self, trainer, pl_module):
            type(self).fits += 1

        def on_train_batch_start(self, trainer, pl_module, *args):
            if type(self).fits == 3 and trainer.global_step == 7:
                raise KeyboardInterrupt

    with pytest.raises(BaseException):
        train_logic_model(small_splits["train"], small_splits["val"], config, seed=2, ckpt_dir=tmp_path,
                          callbacks=[KillInSecondRestart()])
    assert (tmp_path / "restart2" / "last.ckpt").is_file()
    KillInSecondRestart.fits = 0
    resumed = train_logic_model(small_splits["train"], small_splits["val"], config, seed=2, ckpt_dir=tmp_path,
                                callbacks=[KillInSecondRestart()])
    assert KillInSecondRestart.fits == 1  # the abandoned runs are read from their records, not retrained
    assert resumed.restarts == straight.restarts and resumed.seed == restart_seed(2, 2)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history]
    for a, b in zip(straight.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


class RecordWeights(__import__("lightning.pytorch").pytorch.Callback):
    """The weights after every optimizer step and the weights each validation scores, by global step."""

    def __init__(self):
        self.after, self.validated = {}, {}

    @staticmethod
    def weights(pl_module):
        return {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.after[trainer.global_step] = self.weights(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, *args):  # after every epoch-start hook
        self.validated[trainer.global_step] = self.weights(pl_module)


def ema(start: dict, later: list[dict], decay: float) -> dict:
    average = dict(start)
    for weights in later:
        average = {k: decay * v + (1 - decay) * weights[k] if v.is_floating_point() else v
                   for k, v in average.items()}
    return average


def all_close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_weight_average_starts_at_the_learning_rate_peak_and_is_the_model_trained(small_splits):
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "warmup_frac": 0.5,
                                      "ema_decay": 0.6})
    seen = RecordWeights()
    result = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1, callbacks=[seen])
    # The peak is step 6: the average starts as the weights after step 7, then takes
    # average = 0.6 * average + 0.4 * weights after each later step.
    average_at = {step: ema(seen.after[7], [seen.after[s] for s in range(8, step + 1)], 0.6) for step in (9, 12)}
    # validations before the peak score the live weights, not the untrained copy the average starts from
    assert all_close(seen.validated[3], seen.after[3]) and all_close(seen.validated[6], seen.after[6])
    assert all_close(seen.validated[9], average_at[9]) and not all_close(seen.validated[9], seen.after[9])
    assert all_close(result.module.state_dict(), average_at[12])
    assert not all_close(result.module.state_dict(), seen.after[12])


def test_a_run_killed_while_averaging_resumes_the_average(small_splits, tmp_path):
    config = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "warmup_frac": 0.5, "ema_decay": 0.6})
    straight = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1)

    class KillAtStep10(__import__("lightning.pytorch").pytorch.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 10:
                raise KeyboardInterrupt

    with pytest.raises(BaseException):
        train_logic_model(small_splits["train"], small_splits["val"], config, seed=1, ckpt_dir=tmp_path,
                          callbacks=[KillAtStep10()])
    resumed = train_logic_model(small_splits["train"], small_splits["val"], config, seed=1, ckpt_dir=tmp_path)
    assert [h["val_exact_match"] for h in resumed.history] == [h["val_exact_match"] for h in straight.history]
    for a, b in zip(straight.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_finished_or_foreign_checkpoint_is_never_resumed(small_splits, tmp_path):
    config = TrainConfig.from_params({**TINY, "max_steps": 6, "val_every": 3})
    fresh = train_logic_model(small_splits["train"], small_splits["val"], config, seed=2)
    done = train_logic_model(small_splits["train"], small_splits["val"], config, seed=2, ckpt_dir=tmp_path)
    again = train_logic_model(small_splits["train"], small_splits["val"], config, seed=2, ckpt_dir=tmp_path)
    assert again.steps == 6 and [h["step"] for h in again.history] == [3, 6]  # trained, not reloaded
    other = TrainConfig.from_params({**TINY, "max_steps": 6, "val_every": 3, "lr": 0.02})
    # an unfinished run under other settings: its checkpoint must not seed this one
    stopper = type("StopAt3", (__import__("lightning.pytorch").pytorch.Callback,), {
        "on_train_batch_end": lambda self, trainer, *a: setattr(trainer, "should_stop", trainer.global_step >= 3)})
    train_logic_model(small_splits["train"], small_splits["val"], other, seed=2, ckpt_dir=tmp_path,
                      callbacks=[stopper()])
    resumed = train_logic_model(small_splits["train"], small_splits["val"], config, seed=2, ckpt_dir=tmp_path)
    for result in (done, again, resumed):
        for a, b in zip(fresh.module.state_dict().values(), result.module.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5)


class StepCounter(__import__("lightning.pytorch").pytorch.Callback):
    """Counts the training steps a call actually runs (a resumed run skips those in its checkpoint)."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, *args):
        self.steps += 1


def test_a_run_stopped_at_perfect_scores_is_continued_by_settings_that_train_on(small_splits, tmp_path, monkeypatch):
    # Every validation scores perfect, so the stop fires in a tiny run; validation never changes training.
    monkeypatch.setattr(LogicLM, "exact_matches", lambda self, batch: torch.ones(len(batch), dtype=torch.bool))
    full = TrainConfig.from_params({**TINY, "max_steps": 12, "val_every": 3, "stop_on_perfect": False})
    early = replace(full, stop_on_perfect=True, perfect_patience=2)

    def train(config):
        counter = StepCounter()
        result = train_logic_model(small_splits["train"], small_splits["val"], config, seed=4, ckpt_dir=tmp_path,
                                   callbacks=[counter])
        return result, counter.steps

    straight = train_logic_model(small_splits["train"], small_splits["val"], full, seed=4)
    stopped, ran = train(early)
    assert stopped.steps == ran == 6 and stopped.step_to_perfect_val == 3
    again, ran = train(early)
    assert again.steps == ran == 6  # the same settings would stop there again: trained afresh
    continued, ran = train(full)
    assert continued.steps == 12 and ran == 6  # resumed at step 6, not retrained
    assert continued.step_to_perfect_val == 3 and continued.history[-1]["step"] == 12
    for a, b in zip(straight.module.state_dict().values(), continued.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    longer, ran = train(replace(early, perfect_patience=3))  # nothing is left to continue after a whole schedule
    assert longer.steps == ran == 9


def test_evaluation_breakdown_counts_every_problem(small_splits, tmp_path):
    config = TrainConfig.from_params(TINY)
    result = train_logic_model(small_splits["train"], small_splits["val"], config, seed=0)
    export_model(result.module, tmp_path / "model")
    model, tokenizer = load_checkpoint(tmp_path / "model")
    test = small_splits["test"]
    correct = exact_matches(model, tokenizer, test, batch_size=64)
    # A model this undertrained answers "undetermined" or little else; score it by hand.
    assert 0 < correct.sum() < len(test)
    data = encode(tokenizer, test["prompt"].tolist(), test["answer"].tolist())
    one_pass = teacher_forced_exact_match(model, data.input_ids, data.prompt_lengths, data.lengths)
    assert one_pass.tolist() == correct.tolist()  # validation's one-pass score is greedy decoding's
    table = breakdown(test, correct)
    assert table["n"].sum() == len(test)
    for row in table.itertuples():
        group = (test.query_chain == row.query_chain) & (test.operator == row.operator) & \
                (test.source_truth == row.source_truth)
        assert row.n == group.sum()
        assert row.exact_match == pytest.approx(correct[group].mean())
        assert row.ci_low <= row.exact_match <= row.ci_high


def test_the_source_head_trains_on_the_task_rows_and_is_left_out_of_the_model(tmp_path):
    import pandas as pd
    from modules.studies.logic.data import generate_splits, generate_traces
    from modules.studies.logic.tokenizer import build_logic_tokenizer
    from modules.studies.logic.training.sequences import source_loss
    from modules.studies.logic.training.train import encode_frame
    splits = generate_splits(seed=7, sizes={"train": 600, "val": 120}, depth=3, prompt_end="query", rule_order="chain")
    traces = generate_traces(1, 200, 5, prompt_end="query", rule_order="chain")
    train = pd.concat([splits["train"], traces], ignore_index=True)
    config = TrainConfig.from_params({**TINY, "max_steps": 30, "val_every": 15, "lr": 1e-2, "source_aux": 1.0})
    first = train_logic_model(train, splits["val"], config, seed=3)
    second = train_logic_model(train, splits["val"], config, seed=3)
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert torch.equal(a, b)
    # the head reads the residual stream after layer 2 and has learned something there
    tokenizer = build_logic_tokenizer()
    batch = encode_frame(tokenizer, splits["val"])
    from modules.studies.logic.training.sequences import conclusion_source_targets
    targets = conclusion_source_targets(tokenizer, list(splits["val"].prompt), [True] * 120, batch.input_ids.shape[1])
    module = first.module.eval()
    untrained = type(module)(**{**module.hparams, "seed": 99}).eval()
    with torch.no_grad():
        losses = [source_loss(m.source_head(m.model(batch.input_ids, output_hidden_states=True).hidden_states[2]),
                              targets).item() for m in (module, untrained)]
    assert losses[0] < losses[1] - 0.5, losses
    assert (targets != -100).sum() == 4 * 120  # one label per rule, every val problem
    export_model(module, tmp_path / "model")
    plain = train_logic_model(splits["train"], splits["val"], replace(config, source_aux=0.0, max_steps=2), seed=3)
    assert set(load_checkpoint(tmp_path / "model")[0].state_dict()) == set(plain.module.model.state_dict())


def test_the_source_head_can_also_name_the_query_variables_source(small_splits):
    """``source_aux_query``: the query variable gets the label of the conclusion it names, the linear
    source for a linear query and the merge operator for a LogOp one; training takes it through the
    shared-prefix pass (query twins differ only there)."""
    from modules.studies.logic.tokenizer import build_logic_tokenizer
    from modules.studies.logic.training.sequences import conclusion_source_targets
    tokenizer = build_logic_tokenizer()
    vocab = tokenizer.get_vocab()
    prompts = ["rules R > J . W > X . J > L . V or E > W . facts V 1 R 0 E 0 query L answer",
               "rules R > J . W > X . J > L . V or E > W . facts V 1 R 0 E 0 query X answer"]
    plain = conclusion_source_targets(tokenizer, prompts, [True, True], 40)
    with_query = conclusion_source_targets(tokenizer, prompts, [True, True], 40, at_query=True)
    query = prompts[0].split().index("query") + 1
    assert (plain[:, query] == -100).all()
    assert with_query[:, query].tolist() == [vocab["R"], vocab["or"]]
    assert torch.equal(with_query[:, :query], plain[:, :query]) and (with_query[:, query + 1:] == -100).all()
    config = TrainConfig.from_params({**TINY, "max_steps": 6, "source_aux": 1.0, "source_aux_query": True})
    result = train_logic_model(small_splits["train"], small_splits["val"], config, seed=3)
    assert result.steps == 6 and result.history[-1]["train_loss"] == result.history[-1]["train_loss"]  # not NaN


def test_balanced_batches_repeat_the_rarer_query_chain(small_splits):
    from modules.studies.logic.training.train import balance_query_chains
    train = small_splits["train"]
    balanced = balance_query_chains(train)
    counts, before = balanced.query_chain.value_counts(), train.query_chain.value_counts()
    assert counts["logop"] == before["logop"] and 0.8 < counts["linear"] / counts["logop"] < 1.25
    assert set(balanced.id) == set(train.id)  # the same problems, the rarer chain repeated


def test_query_twins_share_a_batch_and_other_rows_stream_as_before(small_splits):
    from modules.studies.logic.data import generate_splits
    from modules.training.sequences import BatchStream
    from modules.studies.logic.training.train import balance_query_chains, rules_and_facts_groups
    train = small_splits["train"]
    data = encode(build_logic_tokenizer(), train.prompt.tolist(), train.answer.tolist())
    plain = BatchStream(data, 32, seed=5, n_batches=40)
    singles = BatchStream(data, 32, seed=5, n_batches=40, groups=rules_and_facts_groups(train))
    for i in range(40):  # every row its own group: the same batches, epoch after epoch
        assert torch.equal(plain[i].input_ids, singles[i].input_ids)
    balanced = balance_query_chains(train)
    assert torch.equal(rules_and_facts_groups(balanced), torch.arange(len(balanced)))  # repeats are no twins

    twins = generate_splits(seed=7, sizes={"train": 600}, depth=3, query_twins=["train"])["train"]
    groups = rules_and_facts_groups(twins)
    assert torch.equal(groups, torch.arange(600) // 2)
    stream = BatchStream(encode(build_logic_tokenizer(), twins.prompt.tolist(), twins.answer.tolist()), 32,
                         seed=5, n_batches=36, groups=groups)
    for i in range(36):  # two epochs of 18 batches; a batch of 32 rows holds 16 pairs, 15 if cut at both ends
        stream[i]
        slot = i % stream.per_epoch
        batch_groups = groups[stream._order[slot * 32:(slot + 1) * 32]]
        assert int(batch_groups.bincount().eq(2).sum()) >= 15
    assert sorted(stream._order.tolist()) == list(range(600))
    with pytest.raises(ValueError, match=r"groups must hold one group number per row \(600\), got shape \(3,\)"):
        BatchStream(stream.data, 32, seed=5, n_batches=1, groups=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("max_steps,warmup_frac", [(10, 0.1), (20, 0.05), (3, 0.5), (2, 0.1)])
def test_every_schedule_steps_to_its_end_even_a_one_step_warmup(max_steps, warmup_frac):
    module = LogicLM(n_layer=1, n_head=1, n_embd=8, n_positions=8, max_steps=max_steps, warmup_frac=warmup_frac)
    optimizers = module.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(max_steps):
        optimizer.step()
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert max(rates) <= module.hparams.lr * (1 + 1e-9) and rates[-1] < max(rates)


@pytest.mark.parametrize("key,value,message", [
    ("lr", -1.0, r"logic.train.lr must be a number in"),
    ("first_token_weight", -1, r"logic.train.first_token_weight must be a number in \[0.0, 100.0\]"),
    ("balance_query_chains", "yes", r"train.balance_query_chains must be true or false"),
    ("batch_size", 0, r"logic.train.batch_size must be an int in"),
    ("n_embd", 32, r"train.n_embd \(32\) must be divisible by train.n_head \(3\)"),
    ("bogus", 1, r"logic.train: unknown key\(s\) \['bogus'\]"),
    ("source_aux_layer", 3, r"train.source_aux_layer must be an int in \[1, train.n_layer=2\], got 3"),
    ("source_aux_layer", 1.5, r"logic.train.source_aux_layer must be an int, got 1.5"),
    ("source_aux", -0.5, r"logic.train.source_aux must be a number in"),
    ("source_aux_query", True, r"train.source_aux_query labels the query for the source head: it needs train.source_aux > 0"),
    ("ema_decay", 1.0, r"logic.train.ema_decay must be a number in \[0.0, 0.999999\], got 1.0"),
    ("activation", "relu6", r"train.activation must be one of \['gelu', 'gelu_new', 'gelu_pytorch_tanh'\], got 'relu6'"),
    ("query_check_step", -1, r"logic.train.query_check_step must be an int in"),
    ("query_check_min", 1.5, r"logic.train.query_check_min must be a number in \[0.0, 1.0\]"),
    ("perfect_check_step", -5, r"logic.train.perfect_check_step must be an int in"),
    ("query_check_rise", 1.5, r"logic.train.query_check_rise must be a number in \[0.0, 1.0\]"),
    ("query_check_window", 0, r"logic.train.query_check_window must be an int in"),
])
def test_bad_training_params_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_params({**TINY, key: value})


def test_two_process_ddp_on_cpu_trains(tmp_path):
    """Lightning DDP with 2 CPU processes (gloo) runs a few synchronised steps."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from modules.studies.logic.data import generate_splits
        from modules.studies.logic.training.train import TrainConfig, train_logic_model
        splits = generate_splits(seed=7, sizes={{"train": 256, "val": 64}}, depth=3)
        config = TrainConfig.from_params({{**{TINY!r}, "max_steps": 4, "val_every": 4,
                                           "accelerator": "cpu", "devices": 2, "strategy": "ddp"}})
        result = train_logic_model(splits["train"], splits["val"], config, seed=0)
        rank = result.module.global_rank
        weights = torch.cat([p.detach().flatten() for p in result.module.parameters()])
        with open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w") as f:
            json.dump({{"steps": result.steps, "world": result.module.trainer.world_size,
                        "checksum": float(weights.sum()), "n": weights.numel()}}, f)
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["steps"] == 4 for r in ranks)
    # DDP keeps the replicas identical: all-reduced gradients give the same weights on both ranks.
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
