"""What ElasticMem learns from on ALFWorld: the expert's steps as training items, their reward, and the training run.

- `turns(episode)`: each expert step -> (objective, last `history` (action, observation) pairs, current
  observation, admissible commands) -> expert action, as the authors' `expand_il_samples`.
- `step_items` (one `StepItem` per expert step of the GRPO games: question = objective, tail = the step's prompt,
  gold = the expert action), `step_reward` (the expert-action reward), `ranked_action` (the admissible command of
  highest log-likelihood: alfworld.action_selection = rank), `step_accuracy` (held-out exact match of the chosen
  action, the training monitor), `training_config` (grpo with G, tokens, epochs and step caps of the alfworld
  section; no stage-0 reader warm-up), `behaviour_cloning_config` (stage 1 as epochs of imitation until held-out
  step accuracy plateaus), `train` (bank, step items, behaviour cloning, GRPO on the step reward with step-accuracy
  model selection: the one training path of 06_alfworld and `launch.py train`).

The games, replays and cards come from environment.py; playing the trained model is play.py's job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import derive
from ..memorysuite import loaders
from ..memorysuite.records import Dataset, Episode
from ..method.rewards import expert_action_reward
from . import AGENTS
from .environment import load

SYSTEM_INSTRUCTION = ("You are controlling a text-based ALFWorld environment. Choose the NEXT action as ONE "
                      "admissible command string. Output only the command, copied verbatim from the admissible list.")

# ---------------------------------------------------------------------------------------------------------------
# Turns: what the policy sees at one step
@dataclass
class Turn:
    objective: str
    history: list[tuple[str, str]]     # the last (action, observation) pairs, oldest first
    observation: str
    admissible: list[str]
    expert_action: str | None = None   # the training target (None when playing)
    episode_id: str = ""
    task_type: str = ""
    step: int = 0                      # 1-based index of the action to choose

    def tail(self) -> str:
        """History, observation and admissible commands, in the authors' wording (render_prompt_tail)."""
        parts = []
        if self.history:
            lines = [f"{kind}: {text}" for a, o in self.history for kind, text in (("ACTION", a), ("OBSERVATION", o))]
            parts += ["Interaction history so far:", "\n".join(lines), ""]
        parts += ["Current observation:", self.observation]
        if self.admissible:
            parts += ["", "Admissible actions (choose exactly ONE, copy verbatim):"]
            parts += [f"- {a}" for a in self.admissible]
        return "\n".join(parts + ["", "Action:"])

    def text(self) -> str:
        """The whole prompt of a text-only policy: instruction, goal, tail."""
        return f"{SYSTEM_INSTRUCTION}\n\nGoal: {self.objective}\n\n{self.tail()}"


def turns(episode: Episode, history: int = 5) -> list[Turn]:
    """One training turn per expert action after the reset step (the authors' expand_il_samples)."""
    steps = episode.steps
    out = []
    for t in range(1, len(steps)):
        prev = steps[t - 1]
        if prev.admissible_commands and steps[t].action not in prev.admissible_commands:
            # e.g. "put X in/on Y" demonstrations against ALFWorld 0.4's "move X to Y": imitation would teach
            # commands the engine refuses
            raise ValueError(f"expert replay {episode.episode_id}, step {t}: the action {steps[t].action!r} is not "
                             f"among that step's admissible commands ({', '.join(prev.admissible_commands[:6])}, ...): "
                             f"replays recorded by an engine with another action syntax; re-record them with the "
                             f"installed one (delete the game set's folder, alfworld.games_dir)")
        out.append(Turn(objective=episode.objective,
                        history=[(s.action, s.observation) for s in steps[max(1, t - history):t]],
                        observation=prev.observation or episode.first_observation,
                        admissible=list(prev.admissible_commands), expert_action=steps[t].action,
                        episode_id=episode.episode_id, task_type=episode.task_type, step=t))
    return out


# ---------------------------------------------------------------------------------------------------------------
# ElasticMem on ALFWorld: the step items it trains on, their reward, the training run
@dataclass
class StepItem:
    """One step as an ElasticMem item (the authors' field mapping): the question is the objective, so retrieval
    reads the objective and every step of an episode retrieves the same skill cards; the tail is the instruction
    and the step's prompt; the gold is the expert action (None when playing)."""
    qid: str                  # "<game id>#<step>"
    question: str             # the objective
    gold: str | None          # the expert action
    question_type: str        # the task type
    split: str
    turn: Turn
    memory_id: str = loaders.SKILL_BANK
    options: list[str] = field(default_factory=list)   # none: the admissible commands are in the tail
    evidence: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, turn: Turn, split: str = "play") -> "StepItem":
        return cls(f"{turn.episode_id}#{turn.step}", turn.objective, turn.expert_action, turn.task_type, split, turn)

    def tail_text(self, prompt: str = "generic") -> str:
        """What follows the memory: instruction, history, observation, admissible commands, "Action:" (ALFWorld's
        own prompt, whatever data.prompt says of the QA prompt)."""
        return f"\n{SYSTEM_INSTRUCTION}\n{self.turn.tail()}"


def step_items(dataset: Dataset, split: str, history: int = 5) -> list[StepItem]:
    """Every expert step of the `split` episodes ("train" | "val": the GRPO games) as a training item."""
    return [StepItem.of(t, split) for e in dataset.episodes if e.split == split for t in turns(e, history)]


def step_reward(text: str, item: StepItem) -> float:
    """The GRPO reward: 1 if the output, snapped to the step's admissible commands, is the expert action."""
    return expert_action_reward(text, item.turn.admissible, item.gold)


def ranked_action(model, batch, admissible: list[str], prefix=None) -> tuple[str, int]:
    """The admissible command of highest log-likelihood as `batch`'s one prompt's answer (" <command>" + EOS, the
    tokens stage 1 teaches), and its token count (the #Tok output of the step)."""
    candidates = [model.answer_ids(c) for c in admissible]
    scores = model.continuation_logprobs(batch, candidates, prefix=prefix)
    best = max(range(len(scores)), key=scores.__getitem__)
    return admissible[best], len(candidates[best])


def step_accuracy(model, items: list[StepItem], max_new_tokens: int | None = None) -> float:
    """Exact match of the chosen action with the expert's on held-out steps: the training monitor (`Trainer(
    evaluate_fn=...)`), under alfworld.action_selection (greedy output snapped, or the ranked admissible command);
    eval.max_questions caps the steps, eval.batch_size batches the generated ones."""
    cap, bs = model.cfg.eval.max_questions, model.cfg.eval.batch_size
    items = items[:cap] if cap > 0 else items
    if model.cfg.alfworld.action_selection == "rank":
        import torch

        hits, was_training = 0, model.training
        model.eval()
        with torch.no_grad():
            for q in items:
                batch = model.build([q], model.plan([q], sample=False))
                action = ranked_action(model, batch, q.turn.admissible)[0] if q.turn.admissible else ""
                hits += action.strip().lower() == q.gold.strip().lower()
        model.train(was_training)
        return hits / max(1, len(items))
    hits = 0.0
    for i in range(0, len(items), bs):
        batch = items[i:i + bs]
        hits += sum(step_reward(o["output"], q) for o, q in zip(model.answer(batch, max_new_tokens), batch))
    return hits / max(1, len(items))


def training_config(cfg):
    """The config ALFWorld trains with: grpo.group_size, max_new_tokens, epochs, max_steps and sft_steps replaced by
    the alfworld section's group_size, max_new_tokens, epochs, max_train_steps and sft_steps where those are set
    (the paper: G = 8, 16 tokens, 3 epochs; QA keeps 4, 5 and 10).
    The QA stage-0 reader warm-up is not run here (grpo.reader_warmup_steps = 0): skill cards as text would cost
    ~1,200 tokens per item, and stage 1 (grpo.sft_steps, on the expert actions) already teaches the action format."""
    a, g = cfg.alfworld, cfg.grpo
    # the task term of a step is the expert-action reward
    terms = {("alfworld_step" if k == "task" else k): v for k, v in g.reward_terms.items()}
    return derive(cfg, "ALFWorld training", grpo={
        "group_size": a.group_size or g.group_size, "reader_warmup_steps": 0, "reward_terms": terms,
        "max_new_tokens": a.max_new_tokens or g.max_new_tokens, "epochs": a.epochs or g.epochs,
        "max_steps": a.max_train_steps or g.max_steps,
        "sft_steps": g.sft_steps if a.sft_steps < 0 else a.sft_steps})


def behaviour_cloning_config(cfg, n_items: int):
    """Stage 1 as behaviour cloning when alfworld.bc_epochs is set: up to that many epochs over the `n_items` expert
    steps, the held-out step accuracy checked after each epoch (grpo.sft_eval_every), stopped after
    alfworld.bc_patience epochs without a better one (grpo.sft_patience), the best epoch kept and saved as sft/."""
    a, g = cfg.alfworld, cfg.grpo
    if a.bc_epochs <= 0:
        return cfg
    per_epoch = -(-n_items // g.sft_batch_size)
    return derive(cfg, "ALFWorld behaviour cloning", grpo={"sft_steps": a.bc_epochs * per_epoch,
                                                           "sft_eval_every": per_epoch, "sft_patience": a.bc_patience})


# ElasticMem's agent, and the imitation agents of the paired comparison (alfworld.agents): without memory, with the
# cards as text, and the MemGen-style agent (a LoRA weaver writes K latents from the objective, the retrieved cards and
# the step's prompt into a frozen reasoner: the QA track's latent-space baseline, baselines/memgen.py)
MEMORIES = ("latent", *AGENTS)
MODES = {"memgen": "weaver"}   # an agent's memory mode where it is not its name


def agent_config(cfg, memory: str):
    """The config an agent trains and plays with: `cfg` itself, except for the MemGen-style agent: eval.method memgen
    (so its results' fingerprint holds the memgen section), no latents inserted after delimiters in its answers and
    no trigger (a ranked command is scored with the prompt's latents only), none of the passes the baseline cannot
    take (recomputation under another adapter, a KL term against a reasoner that is already the frozen model) and
    none of ElasticMem's own stages (retrieval warm-up and loss, alignment: its weaver's imitation replaces them, as
    in baselines/memgen.train)."""
    if memory != "memgen":
        return cfg
    return derive(cfg, "ALFWorld MemGen-style agent", eval={"method": "memgen"},
                  memgen={"insert_delimiters": False, "trigger": "off"},
                  grpo={"gradient_checkpointing": False, "kl_beta": 0.0, "retrieval_warmup_steps": 0},
                  align={"steps": 0}, retrieval={"aux_weight": 0.0})


def memgen_model(cfg, dataset: Dataset, bank):
    """The MemGen-style agent's model, on a backbone of its own (its weaver's LoRA goes into that backbone, never into
    the one ElasticMem's LoRA is in); its new weights are drawn from runtime.seed, so a run that starts it again draws
    the same ones."""
    import torch

    from ..baselines.memgen import MemGen
    from ..core import backbone as bb
    from ..method import assemble

    with torch.random.fork_rng():   # every device's generator restored after
        torch.manual_seed(cfg.runtime.seed)
        return assemble.model_for(cfg, dataset, bb.from_config(cfg), bank, model_class=MemGen)


def agent_dir(run_dir: str | Path, setting: str, seed: int, memory: str = "latent") -> Path:
    """Where an agent trains: ElasticMem's (latent memory) in experiment.train_dir, the others beside its
    checkpoints in agent-<memory>/."""
    from ..core.experiment import train_dir

    folder = train_dir(run_dir, setting, seed)
    return folder if memory == "latent" else folder / f"agent-{memory}"


def train(cfg, run_dir: str | Path, backbone, accelerator=None, progress: bool = True, dataset: Dataset | None = None,
          bank=None, memory: str = "latent", model=None):
    """An agent trained on ALFWorld, the one path of 06_alfworld and `launch.py train`: the config of
    `training_config` (and `behaviour_cloning_config`), the skill-card bank (built once by the frozen `backbone`,
    before LoRA goes in), one item per expert step of the GRPO games (`step_items`: train, and val for model
    selection), behaviour cloning when alfworld.bc_epochs is set, GRPO on `step_reward`, validation by
    `step_accuracy`, checkpoints in `agent_dir`. `memory`: latent (ElasticMem: imitation, then GRPO) or, for the
    paired comparison, none / text / memgen (the same imitation, no GRPO: alfworld.bc_epochs must be set). Every
    agent but memgen starts from the same weights (init/, saved by the first). `dataset` / `bank` / `model`: the
    caller's, when it already has them (else loaded / built here; one model serves every agent but memgen, which
    has its own: LoRA goes into a backbone once).
    With an accelerate `accelerator`, every process calls this; process 0 prepares the game set first. Returns the
    trained Trainer (`trainer.model` is the model, its `best/` checkpoint in `trainer.dir`)."""
    from contextlib import nullcontext

    from ..core.config import ConfigError
    from ..method import assemble
    from ..training.grpo import Trainer

    if memory not in MEMORIES:
        raise ValueError(f"memory = {memory!r}: an ALFWorld agent has one of {', '.join(MEMORIES)}")
    acfg = agent_config(training_config(cfg), memory)
    if memory != "latent":
        if acfg.alfworld.bc_epochs <= 0:
            raise ConfigError(f"an ALFWorld agent with memory {memory!r} is trained by imitation only: set "
                              f"alfworld.bc_epochs")
        acfg = derive(acfg, f"ALFWorld agent, memory {memory}", grpo={"epochs": 0})   # no GRPO steps
    if dataset is None:
        with accelerator.main_process_first() if accelerator is not None else nullcontext():
            dataset = load(acfg, run_dir)  # the game set is generated once (cached by its params), by process 0
    if bank is None:
        bank = assemble.bank_for(acfg, dataset, backbone, run_dir, progress=progress, accelerator=accelerator)
    h = acfg.alfworld.history
    train_items, val_items = step_items(dataset, "train", h), step_items(dataset, "val", h)
    if not val_items:
        raise ValueError("no ALFWorld validation game: raise alfworld.n_train (validation = 10% of the GRPO games)")
    acfg = behaviour_cloning_config(acfg, len(train_items))
    if memory == "memgen":   # its own model and backbone, whatever the caller's
        model = memgen_model(acfg, dataset, bank)
    elif model is None:
        model = assemble.model_for(acfg, dataset, backbone, bank)
    folder = agent_dir(run_dir, dataset.setting, acfg.runtime.seed, memory)
    if acfg.alfworld.bc_epochs > 0 and (folder / "last").is_dir() and not (folder / "sft").is_dir():
        raise ConfigError(f"{folder} holds a training run without behaviour cloning (no sft/), and alfworld.bc_epochs "
                          f"is {acfg.alfworld.bc_epochs}: give this run its own folder (runtime.run_name) or delete it")
    if memory != "memgen":   # the MemGen-style agent has other weights (a weaver): its start is memgen_model's
        init = agent_dir(run_dir, dataset.setting, acfg.runtime.seed) / "init"
        if not (init / "elasticmem.json").is_file() and (accelerator is None or accelerator.is_main_process):
            model.save(init)   # the weights before any training: every other agent of this run starts from them
        if accelerator is not None:
            accelerator.wait_for_everyone()
        model.load(init, parts=model.parts)
    with model.using(cfg=acfg, memory=MODES.get(memory, memory)):
        trainer = Trainer(model, train_items, val_items, folder, accelerator=accelerator,
                          evaluate_fn=lambda items: step_accuracy(model, items), setting=dataset.setting)
        trainer.train(progress=progress)
    return trainer
