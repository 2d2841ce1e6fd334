"""GRPO: the loss against a hand computation, a training run, resume equivalence, two processes = one."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from tinydata import QUESTIONS, tiny_bank, tiny_model

from elasticmem_core.core import sampling
from elasticmem_core.core.experiment import resolve, seed_everything
from elasticmem_core.method import rollout as rollouts
from elasticmem_core.method.rewards import WeightedReward
from elasticmem_core.training import grpo

NO_DROPOUT = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0")


def test_group_advantages_by_hand():
    adv = rollouts.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), clip=5.0)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # unbiased std of (1, 0, 0, 1) is sqrt(1/3)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected]))
    assert torch.equal(rollouts.group_advantages(torch.ones(4), clip=5.0), torch.zeros(4))   # no signal, no update
    assert rollouts.group_advantages(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), clip=2.0).max() == 2.0


def test_clipped_surrogate_and_gradient_by_hand():
    # ratio 1.25 (clipped at 1.2 for a positive advantage) and ratio 1.0
    old = torch.log(torch.tensor([[0.4, 0.25]]))
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, clip = grpo.clipped_surrogate(logp, old, torch.tensor([1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert clip.item() == pytest.approx(0.5)
    loss.backward()
    # the clipped branch is constant (zero gradient); d(-ratio * A)/dlogp = -ratio * A = -1, averaged over 2
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5]]))
    # a negative advantage takes the unclipped branch: -min(-1.25, -1.2) = 1.25, gradient 1.25 / 2
    logp.grad = None
    loss, _ = grpo.clipped_surrogate(logp, old, torch.tensor([-1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((1.25 + 1.0) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.625, 0.5]]))
    # sequence_mean averages within rows first; padding does not count
    logp2 = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.9]]))
    m2 = torch.tensor([[True, True], [True, False]])
    loss, _ = grpo.clipped_surrogate(logp2, logp2, torch.tensor([1.0, 2.0]), m2, 0.2, "sequence_mean")
    assert loss.item() == pytest.approx(-(1.0 + 2.0) / 2)
    loss, _ = grpo.clipped_surrogate(logp2, logp2, torch.tensor([1.0, 2.0]), m2, 0.2, "token_mean")
    assert loss.item() == pytest.approx(-(1.0 + 1.0 + 2.0) / 3)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return tiny_bank(tmp_path_factory.mktemp("bank"))


def test_token_logprobs_equal_the_full_vocabulary_pass(bank):
    """token_logprobs runs the vocabulary head on the action columns only; the log-probs are those of a full pass."""
    seed_everything(0)
    model = tiny_model(bank, *NO_DROPOUT, "grpo.temperature=0.7", "retrieval.temperature=1.3")
    model.eval()
    qs = QUESTIONS[:3]
    plan = model.plan(qs, sample=True, generator=torch.Generator().manual_seed(0))
    answers = [model.answer_ids(q.gold) for q in qs]
    answers[0] = answers[0] + answers[0]  # answers of different lengths: right padding
    logp, mask = rollouts.token_logprobs(model, qs, plan, answers, with_grad=False)
    batch = model.build(qs, plan, answers)
    with torch.no_grad():
        logits = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids).logits.float()
    assert mask[:, 0].all() and mask.shape[1] == 1 + len(answers[0])
    for i in range(len(qs)):
        col = batch.spans[i]["control"][0] - 1
        # scored under the distribution it was sampled from: ordinary tokens only, at the retrieval temperature
        allowed = model.retriever.allowed(logits.shape[-1], logits.device)
        assert not allowed.all()  # special tokens are excluded, so a full-vocabulary softmax would differ
        ctrl = torch.log_softmax(logits[i, col].masked_fill(~allowed, float("-inf")) / 1.3, -1)
        assert torch.allclose(logp[i, 0], ctrl[plan.retrieved.control_ids[i]], atol=1e-5)
        assert torch.allclose(logp[i, 0], plan.retrieved.control_logprob[i], atol=1e-5)  # = its sampling-time value
        for a in range(len(answers[i])):
            want = torch.log_softmax(logits[i, batch.prompt_len - 1 + a] / 0.7, -1)[answers[i][a]]
            assert mask[i, 1 + a] and torch.allclose(logp[i, 1 + a], want, atol=1e-5)
        assert not mask[i, 1 + len(answers[i]):].any()


def _train(bank, run_dir, *overrides, interrupt_at=None):
    seed_everything(42)  # as runner.start does: the same initial weights in every run
    model = tiny_model(bank, "grpo.epochs=2", "grpo.max_steps=4", "grpo.eval_every=2", "grpo.questions_per_step=2", "grpo.lr=1e-3",
                       "grpo.max_new_tokens=3", *overrides)
    trainer = grpo.Trainer(model, QUESTIONS, QUESTIONS[:2], run_dir)
    if interrupt_at is not None:
        step = trainer.train_step

        def failing():
            if trainer.step == interrupt_at:
                raise KeyboardInterrupt("simulated interruption")
            return step()
        trainer.train_step = failing
    trainer.train(progress=False)
    return model, trainer


def test_training_logs_selects_on_validation_and_updates_every_part(bank, tmp_path):
    model, trainer = _train(bank, tmp_path, "grpo.reader_warmup_steps=1", "grpo.sft_steps=1")
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in records]
    assert stages[:2] == ["reader_warmup", "sft"] and stages.count("grpo") == 4 and stages.count("val") == 3
    step = next(r for r in records if r["stage"] == "grpo")
    for key in ("reward_mean", "reward_std", "accuracy", "clip_frac", "policy_entropy", "mean_budget", "soft_tokens",
                "grad_norm", "seconds", "lr", "peak_mb"):
        assert key in step
    assert step["peak_mb"] > 100  # the process's peak RSS on CPU (the model is in memory): a real reading, not 0
    selection = json.loads((tmp_path / "best" / "selection.json").read_text())
    best_val = max(r["val_accuracy"] for r in records if r["stage"] == "val")
    assert selection["val_accuracy"] == best_val
    assert (tmp_path / "last" / "trainer_state.pt").is_file() and not (tmp_path / "last.tmp").exists()
    fresh = tiny_model(bank)
    changed = {n for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters())
               if p.requires_grad and not torch.equal(p, q)}
    assert any("lora_" in n for n in changed)
    assert any(n.startswith("projector.") for n in changed) and any(n.startswith("policy.") for n in changed)


def test_policy_learning_rate_is_its_own_when_set(bank, tmp_path):
    model = tiny_model(bank, "grpo.lr=1e-5", "grpo.policy_lr=1e-3")
    groups = grpo.Trainer(model, QUESTIONS, [], tmp_path).optimizer.param_groups
    policy = {id(p) for p in model.policy.parameters()}
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    assert all(id(p) not in policy for p in groups[0]["params"]) and {id(p) for p in groups[1]["params"]} == policy
    same = grpo.Trainer(tiny_model(bank, "grpo.lr=1e-5"), QUESTIONS, [], tmp_path / "b").optimizer.param_groups
    assert [g["lr"] for g in same] == [1e-5]   # 0 = one rate for every part, as the paper (one group: old resumes)


def test_non_finite_gradients_are_skipped_and_counted(bank, tmp_path):
    model = tiny_model(bank, "grpo.max_steps=1")
    trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    for p in model.trainable_parameters():
        p.grad = torch.full_like(p, float("nan"))
    assert trainer._apply_gradients() is None and trainer.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))


def test_two_runs_of_the_same_seed_agree_bit_for_bit(bank, tmp_path):
    """On one machine a run is a function of its seed: stage 0, stage 1 and GRPO give identical weights and logs
    (across machines CPU kernels differ in the last bits, which training compounds: README, run-to-run spread)."""
    runs = [_train(bank, tmp_path / name, "grpo.reader_warmup_steps=2", "grpo.sft_steps=1") for name in "ab"]
    for (n, p), (_, q) in zip(runs[0][0].named_parameters(), runs[1][0].named_parameters()):
        assert torch.equal(p, q), n
    logs = [[{k: v for k, v in json.loads(line).items() if k not in ("seconds", "peak_mb")}
             for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()] for name in "ab"]
    assert logs[0] == logs[1]
    other = _train(bank, tmp_path / "c", "runtime.seed=7", "grpo.reader_warmup_steps=2", "grpo.sft_steps=1")[0]
    assert any(not torch.equal(p, q) for p, q in zip(runs[0][0].parameters(), other.parameters()))


def test_resume_reaches_the_same_weights(bank, tmp_path):
    done, _ = _train(bank, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _train(bank, tmp_path / "b", interrupt_at=3)          # last/ was saved at step 2
    resumed, trainer = _train(bank, tmp_path / "b")
    assert trainer.step == 4
    for (n, p), (_, q) in zip(done.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def _torchrun(bank, tmp_path, n, args, sabotage="none", dynamic_sampling="0"):
    """Run the worker under torchrun with n CPU processes; returns its saved params and applied gradients."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(resolve("tests"))}
    target = tmp_path / f"p{n}-{sabotage}.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(29610 + n), str(resolve("tests/grpo_mp_worker.py")), str(bank.path),
           str(tmp_path / f"run{n}-{sabotage}"), str(target), *args, sabotage, dynamic_sampling]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(target)
    assert out["processes"] == n
    return out


def _same_training(one, two) -> str | None:
    """None if two processes applied one process's gradients (each step, to float order) and reached its weights
    (plain SGD: a weight moves by lr x gradient, so float noise stays float noise); else what differs."""
    if len(one["grads"]) != len(two["grads"]):
        return f"{len(one['grads'])} vs {len(two['grads'])} optimizer steps"
    for i, (a, b) in enumerate(zip(one["grads"], two["grads"])):
        if (a - b).norm() > 1e-4 * a.norm():
            return f"gradient of step {i}: relative difference {float((a - b).norm() / a.norm()):.2e}"
    for name, p in one["params"].items():
        if not torch.allclose(p, two["params"][name], atol=1e-6, rtol=1e-5):
            return name
    return None


@pytest.mark.parametrize("questions_per_step,n_questions,steps,sft_steps,dynamic_sampling", [
    ("2", "2", "2", "0", "0"),   # each process one question per step
    ("1", "2", "2", "1", "0"),   # the authors' one question per step: process 1 gets none (and stage 0 at batch 1)
    ("2", "3", "2", "0", "0"),   # a ragged last step: 2 questions, then 1
    ("2", "3", "2", "0", "2"),   # questions whose rollouts all score alike swapped (grpo.dynamic_sampling)
])
def test_two_processes_equal_one(bank, tmp_path, questions_per_step, n_questions, steps, sft_steps, dynamic_sampling):
    """torchrun with two CPU processes splits each step's questions; each step's summed gradient and the weights
    match one process, even when a process gets no question and when the processes' initial weights differ
    (broadcast from rank 0); with dynamic sampling the swaps and their count in the log match too."""
    args = [questions_per_step, n_questions, steps, sft_steps]
    one, two = (_torchrun(bank, tmp_path, n, args, dynamic_sampling=dynamic_sampling) for n in (1, 2))
    assert len(one["grads"]) >= int(steps) + int(sft_steps)   # every step applied (GRPO may take inner passes)
    assert _same_training(one, two) is None, _same_training(one, two)
    if dynamic_sampling != "0":
        assert one["swapped"] == two["swapped"] and sum(one["swapped"]) > 0, (one["swapped"], two["swapped"])


def test_two_processes_check_catches_a_lost_or_doubled_share(bank, tmp_path):
    """The comparison above has power: when process 1's gradient share is dropped from the sum, or counted twice,
    it reports a difference at the first step."""
    args = ["2", "2", "1", "0"]
    one = _torchrun(bank, tmp_path, 1, args)
    for sabotage in ("drop", "double"):
        found = _same_training(one, _torchrun(bank, tmp_path, 2, args, sabotage))
        assert found is not None and found.startswith("gradient of step 0"), (sabotage, found)


@pytest.mark.parametrize("loss_type", ["token_mean", "sequence_mean"])
def test_per_rollout_backward_and_checkpointing_give_the_batched_gradient(bank, tmp_path, loss_type, monkeypatch):
    """grpo.backward=rollout (one backward per rollout) and grpo.gradient_checkpointing give the batched step's
    gradients at every inner pass: the loss is an exact sum of per-rollout shares, and checkpointing recomputes the
    same activations. (Gradients, and plain SGD between the steps: AdamW turns float noise on a zero-gradient entry,
    such as the policy's attention key bias, into a full lr-sized step, so later passes would start elsewhere.)"""
    monkeypatch.setattr(grpo.torch.optim, "AdamW", lambda params, lr, weight_decay=0.0: torch.optim.SGD(params, lr=lr))
    grads = {}
    for name, extra in [("group", ()), ("rollout", ("grpo.backward=rollout",)),
                        ("checkpointing", ("grpo.gradient_checkpointing=true",))]:
        seed_everything(42)
        model = tiny_model(bank, *NO_DROPOUT, "grpo.max_steps=2", "grpo.questions_per_step=2", "grpo.lr=1e-3",
                           "grpo.max_new_tokens=3", f"grpo.loss_type={loss_type}", *extra)
        trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path / name)
        seen, apply = [], trainer._apply_gradients
        trainer._apply_gradients = lambda: seen.append(torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.trainable_parameters()
        ]).clone()) or apply()
        records = [trainer.train_step() for _ in range(2)]
        assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in records)
        grads[name] = seen
    assert len(grads["group"]) == 4   # 2 steps x 2 inner passes
    for other in ("rollout", "checkpointing"):
        for a, b in zip(grads["group"], grads[other]):
            assert (a - b).norm() <= 1e-4 * a.norm(), (other, float((a - b).norm() / a.norm()))


def test_group_action_counts_equal_the_loss_mask(bank):
    """The per-rollout backward's normalisers (counted from the rollouts) are the batched pass's mask counts."""
    model = tiny_model(bank, *NO_DROPOUT, "grpo.max_new_tokens=3")
    g = rollouts.rollout(model, QUESTIONS[0], 4, WeightedReward({"task": 1.0}), sampling.generator_for(model.device, 0))
    _, mask = rollouts.token_logprobs(model, g.questions, g.plan, g.answers, with_grad=False)
    assert torch.equal(g.action_counts(), mask.sum(1).cpu())


def test_resume_refuses_another_seed_or_setting(bank, tmp_path):
    _train(bank, tmp_path)
    for override, field in [("runtime.seed=7", "seed"), (None, "setting")]:
        model = tiny_model(bank, "grpo.max_steps=4", *([override] if override else []))
        trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path, setting="another" if field == "setting" else None)
        with pytest.raises(grpo.RunMismatchError, match=f"{field}: folder .* this run"):
            trainer.train(progress=False)


def test_every_sampling_site_uses_the_model_device_generator(bank, tmp_path, monkeypatch):
    """Each rollout's generator is made on the model's device, and every draw (control token, budgets, answer
    tokens) goes through `sampling`, whose device check would stop a CPU generator on CUDA tensors."""
    made, checked = [], []
    real_gen, real_check = sampling.generator_for, sampling.check
    monkeypatch.setattr(sampling, "generator_for", lambda device, seed: made.append(torch.device(device)) or
                        real_gen(device, seed))
    monkeypatch.setattr(sampling, "check", lambda gen, device, site: checked.append(
        (site, gen.device, torch.device(device))) or real_check(gen, device, site))
    for policy in ("transformer", "random"):
        model = tiny_model(bank, "grpo.max_steps=1", "grpo.max_new_tokens=2", f"budget.policy={policy}")
        grpo.Trainer(model, QUESTIONS, [], tmp_path / policy).train_step()
        assert made and all(d == model.device for d in made)
    sites = {site for site, _, _ in checked}
    assert sites == {"control token", "budget", "random budget", "answer token"}, sites
    assert all(g == d for _, g, d in checked)


def test_a_generator_of_another_device_is_refused():
    with pytest.raises(sampling.SamplingDeviceError, match="control token: generator on cpu cannot sample tensors "
                                                           "on meta"):
        sampling.categorical(torch.ones(2, 3, device="meta"), torch.Generator(), "control token")
    assert sampling.categorical(torch.tensor([[0.0, 1.0]]), sampling.generator_for("cpu", 0), "x").tolist() == [1]


def test_no_sampling_outside_the_sampling_module():
    """Static guard: a new sampling site cannot bypass the device check."""
    import re
    from pathlib import Path

    pattern = re.compile(r"torch\.(multinomial|rand|randint|randn|bernoulli|normal)\(|\.multinomial\(")
    offenders = [f"{p.name}:{i}" for p in Path(resolve("elasticmem_core")).rglob("*.py") if p.name != "sampling.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_policy_only_trains_the_budget_policy_alone_without_the_reasoner_in_the_loss(bank, tmp_path, monkeypatch):
    seed_everything(0)
    model = tiny_model(bank, *NO_DROPOUT, "grpo.policy_only=true", "grpo.policy_lr=1e-2", "grpo.max_steps=2",
                       "grpo.questions_per_step=2", "grpo.max_new_tokens=2",
                       "grpo.reward_terms={task: 1.0, token_price: 0.5}")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path)
    calls = []
    real = grpo.token_logprobs
    monkeypatch.setattr(grpo, "token_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    records = [trainer.train_step() for _ in range(2)]
    assert not calls                                  # no teacher-forced pass through the reasoner
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("policy.") for n in changed)
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == {id(p) for p in model.policy.parameters()}
    r = records[-1]
    assert r["phase"] == "policy_only" and "policy_entropy" in r and "lm_loss" not in r
    assert r["reward_token_price"] <= 0 and r["accuracy"] == r["reward_task"]
    assert abs(r["reward_mean"] - (r["reward_task"] + 0.5 * r["reward_token_price"])) < 1e-9
    assert r["evidence_budget"] >= 0 and r["other_budget"] >= 0  # the tiny questions name their evidence chunk


def test_advantages_mean_norm_keeps_the_price_scale():
    r = torch.tensor([1.0 - 0.01, 1.0 - 0.02, 1.0 - 0.03, 1.0 - 0.04])   # task ties; only the price differs
    std = rollouts.group_advantages(r, clip=5.0)
    mean = rollouts.group_advantages(r, clip=5.0, norm="mean")
    assert std[0] > 1.0                                   # amplified to unit variance: the collapse risk
    assert torch.allclose(mean, r - r.mean()) and mean.abs().max() < 0.02


def test_stage0_warms_up_decays_and_keeps_the_reader_at_its_best_validation_point(bank, tmp_path, monkeypatch):
    """grpo.sft_warmup_steps / sft_min_lr_ratio shape stage 0's rate; reader_eval_every draws the text-memory curve
    (stage reader_val) and the reader kept is the one at the curve's best point, not the last step's."""
    seed_everything(42)
    model = tiny_model(bank, *NO_DROPOUT, "grpo.sft_lr=1e-2", "grpo.sft_warmup_steps=2", "grpo.sft_min_lr_ratio=0.1",
                       "grpo.reader_eval_every=2", "grpo.sft_batch_size=2")
    trainer = grpo.Trainer(model, QUESTIONS, QUESTIONS[:2], tmp_path)
    scripted, seen = iter([0.5, 0.9, 0.1]), []

    def fake_accuracy(m, questions):
        assert m.memory == "text" and questions == QUESTIONS[:2]   # the reader reads text memory on validation
        seen.append({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        return next(scripted)
    monkeypatch.setattr(grpo, "validation_accuracy", fake_accuracy)
    trainer.supervised(6, "text", "reader_warmup")
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if r["stage"] == "reader_warmup"]
    assert lrs[0] == pytest.approx(5e-3) and lrs[1] == pytest.approx(1e-2)          # linear warm-up over 2 steps
    assert lrs[2] == lrs[1] and all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 1e-3   # cosine to 10%
    assert grpo._warmup_cosine(6, 6, 2, 0.1) == pytest.approx(0.1)             # ... which it reaches at the end
    assert [(r["step"], r["val_text_accuracy"]) for r in log if r["stage"] == "reader_val"] == \
        [(2, 0.5), (4, 0.9), (6, 0.1)]
    assert [r for r in log if r["stage"] == "reader_selected"] == \
        [{"stage": "reader_selected", "step": 4, "val_text_accuracy": 0.9, "steps_run": 6}]
    final = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], seen[1][n]) for n in final)                    # the step-4 reader, exactly
    assert any(not torch.equal(final[n], seen[2][n]) for n in final)                # not the last step's


def test_stage1_draws_its_curve_stops_when_it_plateaus_and_keeps_its_best_point(bank, tmp_path):
    """grpo.sft_eval_every checks stage 1 with the GRPO validation measure in the model's own memory mode;
    grpo.sft_patience stops it after that many checks without a better one; the best point is kept and saved
    as sft/ (ALFWorld's behaviour cloning)."""
    seed_everything(42)
    model = tiny_model(bank, *NO_DROPOUT, "grpo.sft_lr=1e-2", "grpo.sft_steps=20", "grpo.sft_eval_every=2",
                       "grpo.sft_patience=2", "grpo.sft_batch_size=2", "grpo.epochs=0")
    model.memory = "none"
    scripted, seen = iter([0.5, 0.6, 0.6, 0.4]), []

    def check(questions):
        seen.append((model.memory, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
        return next(scripted, 0.0)   # then the validation before GRPO
    trainer = grpo.Trainer(model, QUESTIONS, QUESTIONS[:2], tmp_path, evaluate_fn=check)
    trainer.train(progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_accuracy"]) for r in log if r["stage"] == "sft_val"] == [(2, 0.5), (4, 0.6), (6, 0.6),
                                                                                         (8, 0.4)]
    assert sum(r["stage"] == "sft" for r in log) == 8                       # two checks without gain: stopped
    assert [r for r in log if r["stage"] == "sft_selected"] == \
        [{"stage": "sft_selected", "step": 4, "val_accuracy": 0.6, "steps_run": 8}]
    assert all(memory == "none" for memory, _ in seen)                       # the agent's own memory mode
    final = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], seen[1][1][n]) for n in final)          # the step-4 weights, exactly
    assert (tmp_path / "sft").is_dir()


@pytest.mark.parametrize("patience, scripted", [
    (2, {2: 0.5, 4: 0.4, 6: 0.45, 8: 0.9}),   # an early stop after the check at 6 that needs the saved patience count
    (0, {2: 0.5, 4: 0.4, 6: 0.45, 8: 0.9}),   # the best point after the resume: its weights need the saved RNG
])
def test_a_stopped_supervised_stage_continues_where_it_was_saved(bank, tmp_path, monkeypatch, patience, scripted):
    """grpo.sft_save_every: a supervised stage stopped mid-way continues from its last save (weights, optimizer,
    schedule, best point, patience count, RNG: dropout is on) and ends as an uninterrupted run does - same weights,
    same checks, same early stop; its log keeps each step once; the partial folder is removed at the end; a saved
    stage made with other settings is refused."""
    real = grpo.supervised_loss

    def run(folder, stop_at=None, *extra):
        seed_everything(42)
        model = tiny_model(bank, "grpo.sft_lr=1e-2", "grpo.sft_eval_every=2", "grpo.sft_batch_size=2",
                           f"grpo.sft_patience={patience}", "grpo.sft_save_every=5", "grpo.sft_warmup_steps=2",
                           "grpo.sft_min_lr_ratio=0.1", *extra)
        assert model.cfg.lora.dropout > 0   # the masks come from the RNG a resume restores
        model.memory = "none"
        calls = []

        def loss(m, qs, **kw):
            calls.append(1)
            if len(calls) == stop_at:
                raise RuntimeError("stopped")
            return real(m, qs, **kw)
        monkeypatch.setattr(grpo, "supervised_loss", loss)

        def check(qs):   # scripted by the step just logged
            done = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
            return scripted[max(r["step"] for r in done if r["stage"] == "sft") + 1]
        trainer = grpo.Trainer(model, QUESTIONS, QUESTIONS[:2], folder, evaluate_fn=check)
        trainer.supervised(8, "none", "sft")
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return weights, [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]

    whole, whole_log = run(tmp_path / "a")
    n_steps = 6 if patience else 8                        # patience 2: stopped after the check at step 6
    assert [r["step"] for r in whole_log if r["stage"] == "sft"] == list(range(n_steps))
    with pytest.raises(RuntimeError, match="stopped"):
        run(tmp_path / "b", 6)           # stopped in step 5: the last save is after step 4 (one check without gain)
    state = torch.load(tmp_path / "b" / "sft.partial" / "stage_state.pt", weights_only=False)
    assert (state["step"], state["stale"]) == (5, 1)
    resumed, log = run(tmp_path / "b")
    for n in whole:
        torch.testing.assert_close(resumed[n], whole[n], rtol=1e-5, atol=1e-7)
    assert not (tmp_path / "b" / "sft.partial").exists()
    assert [r["step"] for r in log if r["stage"] == "sft"] == list(range(n_steps))      # each step once
    assert [r for r in log if r["stage"] == "sft_resumed"] == [{"stage": "sft_resumed", "step": 5}]
    strip = [r["stage"] for r in log if r["stage"] != "sft_resumed"]
    assert strip == [r["stage"] for r in whole_log]
    assert [r.get("val_accuracy") for r in log if r["stage"] in ("sft_val", "sft_selected")] == \
        [r.get("val_accuracy") for r in whole_log if r["stage"] in ("sft_val", "sft_selected")]
    selected = [r["step"] for r in whole_log if r["stage"] == "sft_selected"]
    assert selected == ([2] if patience else [8])        # without patience the kept weights come after the resume
    with pytest.raises(RuntimeError, match="stopped"):
        run(tmp_path / "c", 6)
    with pytest.raises(grpo.RunMismatchError, match="sft_lr"):   # a stage made with other settings is not continued
        run(tmp_path / "c", None, "grpo.sft_lr=5e-3")


@pytest.mark.parametrize("tries", [0, 2])
def test_dynamic_sampling_swaps_a_question_whose_rollouts_all_score_alike(bank, tmp_path, monkeypatch, tries):
    """grpo.dynamic_sampling: a question whose G rollouts all score alike is swapped for another training question,
    up to N times a step; the step's log counts the swaps. Off (0), each step rolls out its own question once."""
    model = tiny_model(bank, f"grpo.dynamic_sampling={tries}", *NO_DROPOUT)
    easy = {"q0", "q2"}   # every rollout of these scores 1: nothing to learn
    real, seen = model.rollout, []

    def rollout(q, group_size, reward_fn, gen):
        grp = real(q, group_size, reward_fn, gen)
        seen.append(q.qid)
        grp.rewards = torch.ones(group_size) if q.qid in easy else torch.arange(group_size, dtype=torch.float32)
        grp.advantages = rollouts.group_advantages(grp.rewards, model.cfg.grpo.adv_clip)
        return grp
    monkeypatch.setattr(model, "rollout", rollout)
    trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path)
    for _ in range(6):
        before = len(seen)
        record = trainer.train_step()
        step = seen[before:]
        first = trainer._step_questions(trainer.step - 1)[0][0][1].qid
        assert step[0] == first                                   # the step's own question comes first
        if tries == 0:
            assert len(step) == 1 and "swapped_questions" not in record
            continue
        # rolled out until a question with a signal, or 1 + N questions
        mixed = [i for i, qid in enumerate(step) if qid not in easy]
        assert len(step) == (mixed[0] + 1 if mixed else tries + 1) and mixed in ([], [len(step) - 1])
        assert record["swapped_questions"] == len(step) - 1
        assert record["zero_advantage_groups"] == (0 if mixed else 1)
    assert (len(seen) > 6) == (tries > 0)                        # with tries, some step did swap (4 of 6 start easy)
