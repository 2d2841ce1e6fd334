"""Typed configuration: one dataclass per part of the method, defaults = the paper's settings.

A params file (YAML) has one mapping per section (`runtime:`, `data:`, `bank:` ...). Every key is checked against
the dataclass field of the same name: an unknown or misspelled key, or a value of the wrong type, raises
`ConfigError` naming the key and the file; a key that has moved (renamed.py) is refused with its new name. Each
field carries a one-line help in its metadata (`help(field)`).

Plain `papermill -f params.yaml` injects the top-level YAML keys as notebook variables (each section a dict);
`from_sections` turns those dicts back into a typed `Config`. Checking the values (choices, ranges, registries) is
checks.py's job: `checks.load` / `checks.validate`.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .renamed import RENAMED


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the file and the key."""


def _f(default, help: str, **kw):
    """A dataclass field with a one-line help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    if dataclasses.is_dataclass(default):  # a nested section (e.g. an AgeMem stage): each Config its own copy
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RuntimeConfig:
    backbone: str = _f("smollm2-135m", "smollm2-135m | qwen2.5-0.5b | tiny-random | a Hugging Face id or local folder")
    dtype: str = _f("auto", "the frozen base's compute dtype (LoRA, projector and policy stay float32): auto (bfloat16 "
                            "on CUDA and on CPUs with AMX-BF16 or AVX512-BF16, else float32) | float32 | bfloat16 | "
                            "float16")
    device: str = _f("auto", "auto (cuda if available) | cpu | cuda")
    seed: int = _f(42, "global seed (python, numpy, torch)")
    seeds: list[int] = _f([], "seeds `elasticmem reproduce` runs every notebook but 07 for, into one run folder (each "
                               "seed trains its own reader and method; 07 pools them); [] = runtime.seed alone")
    skip_notebooks: list[str] = _f([], "numbered notebooks `elasticmem reproduce` leaves out, by name (e.g. "
                                       "06_alfworld); `elasticmem run` still runs any notebook it is given")
    run_name: str = _f("run", "name of the run folder under output_dir")
    output_dir: str = _f("outputs", "root of run folders, relative to the repository root")
    cache_dir: str | None = _f(None, "backbone/bank cache; None = $ELASTICMEM_CACHE or <repo>/outputs/cache")
    num_threads: int = _f(0, "torch CPU threads; 0 = torch's default")
    chat_prompt: str = _f("In one sentence, what is long-term memory for an assistant?",
                          "the short chat prompt 00_setup answers")
    max_new_tokens: int = _f(24, "tokens generated for the 00_setup chat prompt")


@dataclass
class MiniConfig:
    """MemorySuite-mini generator (the embedded default data; design in elasticmem_core/memorysuite/README.md)."""
    seed: int = _f(42, "generator seed; the same params give byte-identical files")
    n_memories: int = _f(12, "PersonaMem contexts / LoCoMo conversations per setting (>= 3: split 60/20/20); "
                             "LongMemEval-like gets n_memories x questions_per_memory one-question haystacks")
    sessions_per_memory: int = _f(3, "dialogue sessions per memory")
    turns_per_session: int = _f(6, "user->assistant turn pairs (= chunks) per session; evidence + distractors + "
                                   "small talk fill them")
    questions_per_memory: int = _f(8, "questions per memory (their evidence must fit in the memory's turns)")
    distractor_similarity: float = _f(0.5, "0..1: share of the non-evidence turns that are similar-attribute "
                                           "distractors (the rest is small talk)")
    filler_words: int = _f(0, "extra filler words per user turn (longer chunks, harder retrieval)")
    n_options: int = _f(0, "options per question; 0 = the real set's (4 PersonaMem-like, 10 MC10-like)")
    extra_test_memories: int = _f(0, "more memories, test split only, generated after the n_memories ones and their "
                                     "split (which stay byte-identical); LongMemEval-like gets x "
                                     "questions_per_memory haystacks (0 = no extra)")


@dataclass
class DataConfig:
    settings: list[str] = _f(["mini-locomo"],
                             "MemorySuite settings: personamem-32k, personamem-128k, locomo-mc10, longmemeval-mc10, "
                             "alfworld, or their generated counterparts mini-personamem, mini-locomo, mini-longmemeval")
    data_dir: str = _f("data", "folder holding the published files of the real settings "
                               "(layout: elasticmem_core/memorysuite/README.md)")
    mini_dir: str | None = _f(None, "where MemorySuite-mini is written; None = <run folder>/data")
    chunk_max_tokens: int = _f(2048, "chunks longer than this (backbone tokens) are truncated, and counted")
    prompt: str = _f("generic", "the QA prompt after the memory: generic (one instruction, the options, an 'Answer:' "
                                "cue; package default, kept so earlier results stay comparable) | authors (a "
                                "per-setting instruction chosen by the option count, the options, no cue)")
    skip_bad_records: bool = _f(False, "skip malformed records (each listed in the load summary) instead of failing")
    mini: MiniConfig = field(default_factory=MiniConfig, metadata={"help": "MemorySuite-mini generator"})


@dataclass
class AlfworldConfig:
    """The ALFWorld setting (data.settings: [alfworld]; 06_alfworld): games, skill cards, live play, and the GRPO
    settings its training uses in place of grpo's (alfworld/training.py: training_config)."""
    data: str | None = _f(None, "ALFWorld's own data folder (json_2.1.1/valid_seen and valid_unseen; with train too, "
                                "replays are recorded on its games); None = $ALFWORLD_DATA if it holds them, else "
                                "the offline game set the package writes")
    games_dir: str | None = _f(None, "folder of the offline game set; None = <mini folder>/alfworld-offline")
    seed: int = _f(42, "seed of the offline game set (rooms, goals, placement), of the choice of ALFWorld's own "
                       "training games, and of the bank/GRPO cut")
    n_train: int = _f(120, "training games (bank + GRPO games), task types in turn: offline ones, or with "
                           "ALFWorld's json_2.1.1/train that many of its games replayed here (0 = all of them)")
    n_seen: int = _f(36, "offline valid_seen evaluation games (training rooms and goal kinds)")
    n_unseen: int = _f(36, "offline valid_unseen evaluation games (new rooms, held-out object-receptacle goals)")
    cards: str = _f("template", "who writes the skill cards: template (deterministic, from the expert trajectory) | "
                                "backbone (the configured local model summarises it; no API)")
    bank_ratio: float = _f(0.8, "share of the successful training replays summarised into skill cards, the bank "
                                "(authors: 0.8); the rest are GRPO games, 10% of them for validation")
    max_steps: int = _f(30, "steps per game (expert replay and live play) before it ends as a failure")
    timeout_s: float = _f(240.0, "wall-clock seconds per game (expert replay, or play with its policy) before failure")
    history: int = _f(5, "last (action, observation) pairs shown in each step's prompt")
    group_size: int = _f(8, "GRPO group size G of ALFWorld training (paper 8); 0 = grpo.group_size")
    max_new_tokens: int = _f(16, "tokens generated per step, training and play (paper 16); 0 = grpo.max_new_tokens")
    epochs: int = _f(3, "GRPO epochs over the ALFWorld training steps (paper 3); 0 = grpo.epochs")
    max_train_steps: int = _f(0, "cap on ALFWorld's GRPO steps; 0 = grpo.max_steps (a CPU-sized run caps it)")
    sft_steps: int = _f(-1, "stage-1 supervised steps on the expert actions; -1 = grpo.sft_steps, 0 = off")
    bc_epochs: int = _f(0, "behaviour cloning: stage 1 as up to this many epochs over the expert steps, checked on "
                           "held-out steps after each, the best kept (replaces sft_steps; 0 = off)")
    bc_patience: int = _f(2, "behaviour cloning stops after this many epochs without a better check (0 = never)")
    agents: list[str] = _f(["none", "text"], "comparison agents 06 trains by the same imitation: none | text (cards as "
                                          "text) | memgen (a LoRA weaver writes K latents, the reasoner frozen)")
    elasticmem: bool = _f(True, "06 trains and plays ElasticMem (and its uniform-budget row); false = the agents only, "
                                "e.g. one a session, paired with another run on the same games (`alfworld-pair`)")
    action_selection: str = _f("generate", "generate (greedy text snapped to a command) | rank (likeliest command)")


@dataclass
class BankConfig:
    n_c: int = _f(20, "content-cache length N_c: last-layer states kept per chunk")
    max_length: int = _f(2048, "chunk truncation length in tokens when encoding")
    batch_size: int = _f(16, "chunks per forward pass (length-bucketed)")
    padding_side: str = _f("right", "right | left padding of a batch")
    storage_dtype: str = _f("bfloat16", "bfloat16 | float16 | float32 storage of keys and caches")
    shard_size: int = _f(1024, "chunks per shard file")
    index: str = _f("flat", "flat (exact inner product over normalised keys) | ivf (approximate)")
    ivf_nlist: int = _f(64, "inverted lists of the approximate index")
    ivf_nprobe: int = _f(8, "lists probed by the approximate index")
    verify: bool = _f(False, "also check each shard's sha256 when a bank is loaded (reads the whole bank: ~19 GB for "
                             "a 7B LongMemEval bank); false = sizes only, the sha256 recorded at build is checked on "
                             "demand (`elasticmem verify-bank <folder>`)")
    cache_layer: int = _f(-1, "layer whose states form the content cache: -1 = the last (paper); 0 = the input "
                              "embeddings, where a `residual` projector starts as exactly the text it replaces")


@dataclass
class RetrievalConfig:
    mode: str = _f("control_token", "control_token (the paper's) | control_token_head (beyond the paper: a retrieval "
                                    "head on the detached control-token state; reading never moves) | frozen_state | "
                                    "query_state | semantic | oracle")
    head_rank: int = _f(64, "control_token_head: rank r of the retrieval head q = s + U V s")
    top_z: int = _f(20, "chunks retrieved per question (Z)")
    temperature: float = _f(1.0, "control-token sampling temperature in training (argmax at evaluation)")
    chat_template: bool = _f(False, "wrap the question in the chat template before the control token (authors: no)")
    aux_loss: str = _f("none", "auxiliary retrieval loss on the state retrieval ranks with (retrieval_loss.py): "
                               "none (the paper's runs) | kl (toward the sentence embedder's scores, the authors' "
                               "off-by-default aux loss) | contrastive (on the gold evidence chunks, where known)")
    aux_weight: float = _f(0.0, "weight of retrieval.aux_loss beside the GRPO loss (authors: aux_lambda, 0 in every "
                                "script); the retrieval warm-up (grpo.retrieval_warmup_steps) uses it unweighted")
    aux_temperature: float = _f(0.05, "temperature tau of the auxiliary loss: softmax(cos / tau) for student and "
                                      "teacher")


@dataclass
class BudgetConfig:
    policy: str = _f("transformer", "transformer | mlp (learned) | uniform | random | top_k_whole | threshold | "
                                    "rank_profile | score_softmax (fixed rules, no parameters) | evidence_whole "
                                    "(an oracle reference: reads the gold evidence)")
    hidden: int = _f(256, "policy hidden size")
    heads: int = _f(4, "policy attention heads")
    layers: int = _f(2, "policy Transformer layers")
    dropout: float = _f(0.1, "policy dropout")
    b_max: int = _f(20, "largest budget B_max (soft tokens per chunk); must be <= bank.n_c")
    min_budget: int = _f(0, "smallest budget level: 0 lets the policy drop a chunk (paper), 1 never drops (code)")
    uniform_budget: int = _f(10, "budget of every chunk under the uniform policy")
    keep_top: int = _f(1, "top_k_whole: the keep_top best-ranked chunks get B_max (whole), the rest min_budget "
                          "(dropped at 0; 1 soft token at min_budget 1)")
    score_threshold: float = _f(0.5, "threshold: chunks with retrieval score (cosine) >= this get B_max, the rest "
                                     "min_budget (dropped at 0; 1 soft token at min_budget 1)")
    rank_budgets: list[int] = _f([], "rank_profile: the budget of each retrieval rank (ranks past the list's end get "
                                     "its last entry); [B_max, b] = top-1 whole + uniform b for the rest")
    softmax_total: int = _f(64, "score_softmax: soft tokens shared by the retrieved chunks in proportion to the "
                                "softmax of their retrieval scores (each clipped to min_budget..B_max)")
    softmax_temperature: float = _f(0.05, "score_softmax: temperature of that softmax over cosine scores")
    sees_evidence: bool = _f(False, "oracle-feature policy (beyond the paper; a reference, not a bound): each "
                                    "chunk token also carries whether the chunk is gold evidence, which no deployed "
                                    "policy knows; needs questions with an evidence field")
    sees_length: bool = _f(False, "beyond the paper: each chunk token also carries the chunk's length min(L_j, B_max) / "
                                  "B_max, so a policy priced on injected tokens sees what a budget can inject")
    entropy_coef: float = _f(0.001, "entropy bonus weight of the budget policy")
    arch: str = _f("package", "package (LayerNorm on q and k, pre-LN layers, sinusoidal ranks: no weight depends on "
                              "Z, so a checkpoint runs at any top_z) | authors (plain Linear inputs, post-LN layers, a "
                              "learned rank table sized by retrieval.top_z)")


@dataclass
class ProjectorConfig:
    kind: str = _f("mlp", "mlp (Linear-GELU-Dropout-Linear-LayerNorm, paper) | identity (ablation) | residual "
                          "(x + MLP(x), output layer zero-initialised: starts as the identity)")
    hidden: int = _f(2560, "projector inner width")
    dropout: float = _f(0.1, "projector dropout")
    ln_gain_init: str = _f("embedding_rms", "start of the mlp projector's LayerNorm gain: embedding_rms (soft tokens "
                                            "start at the text embeddings' scale) | one (torch's, the authors')")


@dataclass
class LoRAConfig:
    r: int = _f(32, "LoRA rank")
    alpha: int = _f(64, "LoRA alpha")
    dropout: float = _f(0.1, "LoRA dropout")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "modules adapted by LoRA")


@dataclass
class GRPOConfig:
    group_size: int = _f(4, "rollouts per question G (QA 4, ALFWorld 8)")
    questions_per_step: int = _f(1, "questions per optimisation step (authors: 1)")
    dynamic_sampling: int = _f(0, "a question whose G rollouts all score alike (zero advantage) is swapped for another "
                                  "training question, up to this many times a step (DAPO's dynamic sampling); 0 = off")
    max_new_tokens: int = _f(5, "answer tokens sampled per rollout (QA 5, ALFWorld 16)")
    temperature: float = _f(1.0, "answer sampling temperature")
    clip_eps: float = _f(0.05, "PPO clip epsilon (authors' code 0.05, older docs 0.2)")
    inner_passes: int = _f(2, "optimisation passes per rollout group")
    kl_beta: float = _f(0.0, "KL weight to the frozen base model (authors: 0, no reference model)")
    adv_clip: float = _f(5.0, "advantages clamped to [-adv_clip, adv_clip]")
    loss_type: str = _f("token_mean", "token_mean (pool the group's tokens; package default) | sequence_mean "
                                      "(mean per rollout, then over G: the authors')")
    reward_terms: dict[str, float] = _f({"task": 1.0}, "weighted reward terms (rewards.REWARD_TERMS): task (answer "
                                        "correct: the paper's), alfworld_step (expert action, ALFWorld's task), "
                                        "token_price (-memory tokens / (Z x B_max), weight lambda; beyond the paper)")
    advantage_norm: str = _f("std", "std ((r - mean) / std within a group: the paper) | mean (r - mean only: a "
                                    "token price keeps its scale when every task reward of a group ties)")
    policy_only: bool = _f(False, "GRPO trains the budget policy alone: reasoner and projector frozen, rollouts and "
                                  "the policy's surrogate only, no backward through the LM (a fixed checkpoint's "
                                  "allocation at a token price; beyond the paper)")
    train_mode_passes: bool = _f(False, "run rollouts and GRPO loss passes in train mode (dropout on), as the "
                                        "authors; off: the surrogate's ratio compares the policy with itself")
    backward: str = _f("group", "group (one forward/backward over all G rollouts) | rollout (one per rollout, the "
                                "same gradient: activation memory of one rollout, for long prompts on one GPU)")
    gradient_checkpointing: bool = _f(False, "recompute the reasoner's layer activations in the backward of the "
                                             "loss passes (the same gradient, less activation memory, ~30% slower)")
    lr: float = _f(2e-5, "AdamW learning rate")
    policy_lr: float = _f(0.0, "AdamW learning rate of the budget policy in GRPO; 0 = grpo.lr (paper: one rate)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    grad_clip: float = _f(1.0, "gradient-norm clip")
    epochs: int = _f(10, "epochs over the training questions (QA 10, ALFWorld 3)")
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps before the cosine schedule")
    min_lr_ratio: float = _f(0.0, "GRPO's cosine ends at this share of the learning rate (0: decays to 0 at the last "
                                  "step, the package's default; 1: constant)")
    max_steps: int = _f(0, "stop after this many steps; 0 = epochs decide")
    eval_every: int = _f(100, "validate every N steps (model selection on validation only)")
    reader_warmup_steps: int = _f(0, "stage 0: LoRA SFT steps with the retrieved memory as TEXT (0 = off, as the "
                                     "paper); teaches a small reader to read before latent memory is trained")
    retrieval_warmup_steps: int = _f(0, "retrieval warm-up steps after stage 0: retrieval.aux_loss alone, a forward "
                                        "and backward over the question and the control token (0 = off, as the "
                                        "paper)")
    retrieval_warmup_lr: float = _f(1e-3, "learning rate of the retrieval warm-up (LoRA, or the retrieval head in "
                                          "control_token_head mode)")
    retrieval_warmup_reading_weight: float = _f(0.0, "weight of the stage-0 reading loss (memory as text, gold answer) "
                                                     "added to every retrieval warm-up step, so that the shared LoRA "
                                                     "keeps reading (0 = the retrieval loss alone)")
    retrieval_warmup_reading_retrieval: str = _f("", "the retrieval mode whose chunks the warm-up's reading loss "
                                                      "reads (\"\" = retrieval.mode, the control token in training)")
    retrieval_warmup_guard: float = _f(0.0, "stop the retrieval warm-up and roll LoRA back to its last checked state "
                                            "when validation reading accuracy (memory as text, oracle retrieval) "
                                            "falls more than this below the reader it started from (0 = no check)")
    retrieval_warmup_check_every: int = _f(25, "retrieval warm-up steps between reading checks")
    sft_steps: int = _f(0, "stage 1 supervised warm-up steps (latent memory, gold answer) before GRPO (0 = off)")
    sft_lr: float = _f(5e-4, "learning rate of both supervised warm-ups")
    sft_warmup_steps: int = _f(0, "supervised warm-ups: linear learning-rate warm-up steps, then a cosine decay to "
                                  "grpo.sft_min_lr_ratio x grpo.sft_lr at the stage's last step (0 and ratio 1: "
                                  "a constant rate, as before)")
    sft_min_lr_ratio: float = _f(1.0, "supervised warm-ups: the cosine's floor as a share of grpo.sft_lr (1 = no "
                                      "decay)")
    reader_eval_every: int = _f(0, "stage 0: text-memory validation accuracy every N steps and at the end (the "
                                   "reader's learning curve in train_log.jsonl, stage reader_val); the reader kept is "
                                   "the best point of that curve (0 = no curve, the last step's reader)")
    sft_eval_every: int = _f(0, "stage 1: the GRPO validation measure every N steps and at the end; best kept")
    sft_patience: int = _f(0, "stage 1: stop after this many checks without a better one (0 = never)")
    sft_batch_size: int = _f(8, "questions per supervised warm-up step")
    sft_save_every: int = _f(0, "supervised stages: steps between resumable saves (training/stage_state.py); 0 = "
                                "none, a stopped stage starts over")
    sft_prefix_batches: bool = _f(False, "supervised stages: one question's items batched together, their shared "
                                         "prompt prefix run once (supervision.prefix_shared_loss); off = random order")
    tracker: str = _f("", "optional accelerate tracker: tensorboard | wandb (never required)")
    settings: list[str] = _f([], "settings trained (03, one model each) and compared (02, 04, 05); empty = every "
                                 "data.settings entry")


@dataclass
class AlignConfig:
    steps: int = _f(0, "alignment steps between the reader warm-up and GRPO (alignment.py; 0 = off, as the paper): "
                       "the projector learns to make the content cache readable before any task reward")
    objectives: dict[str, float] = _f({"reconstruction": 1.0}, "weighted alignment losses (alignment.OBJECTIVES): "
                                      "reconstruction (ICAE), self_distill (KL from the answer with text memory "
                                      "to the one with latent memory; xRAG), answer (gold answer, latent memory)")
    lr: float = _f(1e-3, "learning rate of the alignment stage (a projector pretraining rate, far above GRPO's)")
    train_lora: bool = _f(False, "LoRA learns in the alignment stage too (false: the projector alone)")
    batch_size: int = _f(8, "chunks (reconstruction) and questions (self_distill, answer) per alignment step")
    b_min: int = _f(2, "smallest b: soft tokens per chunk, drawn uniformly from align.b_min..align.b_max each step")
    b_max: int = _f(0, "largest b; 0 = budget.b_max (must be <= bank.n_c)")
    max_text_tokens: int = _f(64, "a deeper cache's reconstruction target: the chunk's first tokens, at most this many")
    corpus_memories: int = _f(0, "0 = align on the training memories; N >= 3 = on N mini memories written for it")
    b_start: int = _f(0, "curriculum: b's upper bound falls linearly from this to align.b_max (0 = off)")
    curve_steps: list[int] = _f([], "steps at which the learning curve is measured on validation (0 = at the start)")
    curve_b: int = _f(8, "tokens per chunk of the learning curve's accuracy and of the ledger's C7 row")
    cue: str = _f("Repeat the text above.", "text between a chunk's soft tokens and its regenerated text")
    kl_temperature: float = _f(1.0, "temperature tau of self_distill (the loss is scaled by tau^2)")
    save_every: int = _f(50, "alignment steps between resumable saves (<train dir>/align.partial/)")


@dataclass
class MemGenConfig:
    """The MemGen-style baseline (memgen.py; eval.method = memgen): a frozen reasoner, a LoRA weaver."""
    latents: int = _f(8, "K: latent tokens the weaver writes per insertion (MemGen: 8 in most settings)")
    bridge_init: str = _f("identity", "the two Linear bridges' start: identity (one hidden size; the weaver "
                                      "reads the text as its base LLM does) | default (random, as MemGen's code)")
    insert_delimiters: bool = _f(False, "also weave K latents after each ',', '.' or newline the reasoner generates, "
                                        "up to memgen.max_insertions (MemGen's inference augmentation; its released "
                                        "results: off)")
    max_insertions: int = _f(3, "cap on delimiter insertions per answer (MemGen: 3-5)")
    delimiters: list[str] = _f([",", ".", "\n"], "a generated token whose text ends with one of these is an "
                                                 "insertion point")
    trigger: str = _f("off", "off (every insertion point inserts: MemGen's released setting, trigger inactive) | "
                             "learned (a LoRA trigger with a Linear(H, 2) head decides at each insertion point, "
                             "trained by GRPO after the weaver, the weaver frozen)")
    trigger_steps: int = _f(0, "GRPO steps of the trigger stage (memgen.trigger = learned), after the weaver's")
    trigger_lr: float = _f(1e-6, "learning rate of the trigger stage (MemGen: 1e-6)")
    weaver_lr: float = _f(0.0, "learning rate of the weaver's own weights (bridges, query latents; its LoRA keeps the "
                               "stage's rate) in every stage; 0 = the stage's rate (grpo.sft_lr, grpo.lr)")
    sft_steps: int = _f(-1, "supervised weaver steps before GRPO (grpo.sft_batch_size, grpo.sft_lr); -1 = as many as "
                            "the method's (grpo.reader_warmup_steps + grpo.sft_steps), or one epoch where it has none")


@dataclass
class Mem0Config:
    """The Mem0-style text-memory baseline (mem0.py; eval.method = mem0): facts the backbone extracts per turn pair
    and manages with ADD / UPDATE / DELETE / NOOP, given to the reader as text."""
    extract_max_new_tokens: int = _f(40, "tokens the backbone may write when extracting the facts of one turn pair")
    max_facts_per_turn: int = _f(3, "facts kept from one turn pair's extraction (the first ones written)")
    similar: int = _f(5, "stored facts retrieved for each new fact's ADD / UPDATE / DELETE / NOOP decision (Mem0: 5)")
    top_k: int = _f(0, "facts given as text at question time; 0 = retrieval.top_z (as many as the method's chunks)")
    batch_size: int = _f(16, "prompts per generation batch while building the stores")


@dataclass
class AgeMemStage:
    """One stage of the AgeMem-style curriculum: its step-wise GRPO steps and its weighted episode rewards."""
    steps: int = _f(-1, "GRPO steps of this stage (episodes of grpo.questions_per_step memories, grpo.group_size "
                        "trajectories each); -1 = one epoch over the training memories; 0 skips it; "
                        "eval.variant_steps > 0 caps it")
    rewards: dict[str, float] = _f({"answer": 1.0}, "weighted episode reward terms (agemem.EPISODE_REWARDS): answer, "
                                   "stored_evidence, filtered_distractors, valid_calls")


@dataclass
class AgeMemConfig:
    """The AgeMem-style baseline (agemem.py; eval.method = agemem): the agent's own output calls memory tools while
    the conversation streams in; trained by step-wise GRPO over a three-stage curriculum."""
    max_tool_tokens: int = _f(32, "tokens the agent may write per step (its tool calls)")
    context_tokens: int = _f(384, "short-term context cap in tokens: above it the oldest context items are evicted "
                                  "(counted); Summary and Filter are the agent's way to stay under it")
    retrieve_k: int = _f(0, "facts a Retrieve call returns; 0 = retrieval.top_z")
    distractors: int = _f(3, "turns of other memories injected into each stage-2 (filter) episode")
    format_steps: int = _f(0, "supervised steps cloning a rule teacher (ADD each user message, RETRIEVE the question) "
                              "before the curriculum, for a backbone that writes no valid tool call; 0 = none "
                              "(AgeMem's instruct backbones follow the tool list)")
    val_memories: int = _f(0, "validation memories each stage is selected on (the first ones); 0 = all")
    loss_steps: int = _f(0, "steps of each trajectory that enter the GRPO loss (a random subset, the same advantage "
                            "each); 0 = all (AgeMem); fewer for CPU-sized runs")
    store: AgeMemStage = _f(AgeMemStage(rewards={"stored_evidence": 1.0, "valid_calls": 0.2}),
                            "stage 1: learn to store facts from the turns (no distractors)")
    filter: AgeMemStage = _f(AgeMemStage(rewards={"filtered_distractors": 1.0, "stored_evidence": 0.5,
                                                  "valid_calls": 0.2}),
                             "stage 2: learn to filter the context under injected distractor turns")
    answer: AgeMemStage = _f(AgeMemStage(rewards={"answer": 1.0, "valid_calls": 0.2}),
                             "stage 3: answer the memory's questions with the managed memory")


@dataclass
class EvalConfig:
    splits: list[str] = _f(["val", "test"], "splits evaluated")
    max_questions: int = _f(0, "evaluate at most this many questions per split; 0 = all")
    batch_size: int = _f(8, "questions answered per batch at evaluation")
    bootstrap: int = _f(1000, "bootstrap resamples for the 95% intervals")
    seeds: list[int] = _f([42], "training seeds (the paper reports means over 5)")
    method: str = _f("elasticmem", "the method a params file describes: a name of methods.METHODS (elasticmem, "
                                   "no_memory, text_rag, memgen, ...; params/baselines/ select them)")
    text_top_k: int = _f(0, "chunks the text-RAG baselines put in as text; 0 = retrieval.top_z (same Z as the method)")
    context_window: int = _f(0, "full-context baseline window in tokens; 0 = the backbone's max_position_embeddings")
    full_context_batch_tokens: int = _f(2048, "full-context prompts longer than this (tokens) are answered one at "
                                             "a time (no padding: no [B, 1, P, P] attention mask); shorter ones in "
                                             "batches of eval.batch_size")
    checkpoint: str = _f("", "checkpoint 04_evaluate loads ({setting} and {seed} are filled in); "
                             "'' = <run>/train/<setting>/seed<seed>/best")
    baselines: list[str] = _f(["no_memory", "full_context", "text_rag_semantic", "text_rag_keys"],
                              "params/baselines/<name>.yaml run by 02_baselines; the trained ones (lora_text_sft, "
                              "lora_text_grpo, identity_projector) cost a training run per setting and seed")
    ablations: list[str] = _f(["elasticmem_reference", "budget_uniform"],
                              "params/ablations/<name>.yaml run by 05_ablations (each a training run per setting "
                              "and seed; elasticmem_reference is the grid's unablated method)")
    frontier_uniform: list[int] = _f([4, 8, 12, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 48],
                                     "uniform budgets b of the accuracy-vs-memory-tokens frontier (frontier.py; above "
                                     "budget.b_max skipped; no memory is always a point; every 2 tokens where "
                                     "accuracy moves on mini)")
    frontier_thresholds: list[float] = _f([0.25, 0.3, 0.35, 0.4, 0.45, 0.5],
                                          "retrieval-score thresholds of the frontier's threshold rule")
    frontier_top1_rest: list[int] = _f([4, 8, 16, 24], "the frontier's 'top-1 whole + uniform b for the rest' rules "
                                       "(rank_profile [B_max, b]), one per b")
    frontier_softmax_totals: list[int] = _f([32, 64, 96], "the frontier's score-proportional rules (score_softmax), "
                                            "one per total, at budget.softmax_temperature")
    frontier_profile_levels: list[int] = _f([0, 16, 32, 48], "per-rank profiles searched on validation: every "
                                            "non-increasing budget per rank from these levels is answered on "
                                            "validation, and the profiles on its upper hull join the fixed rules on "
                                            "test; [] = none")
    frontier: bool = _f(False, "05_frontier measures the budget frontier on 03's checkpoint (costly: see docs/results.md)")
    frontier_prices: list[float] = _f([0.0, 0.2, 0.5], "token prices lambda of the frontier's learned points (one "
                                      "policy-only GRPO run per price and seed)")
    frontier_seeds: list[int] = _f([42, 43, 44], "seeds of each learned point's policy training (the point is "
                                   "their mean, with the range)")
    frontier_steps: int = _f(32, "policy-only GRPO steps per learned point")
    frontier_questions_per_step: int = _f(8, "questions per policy-only GRPO step of a learned point")
    frontier_policy_lr: float = _f(3e-4, "budget-policy learning rate of the learned points' GRPO (with clip 0.2: clip "
                                         "fraction under 0.2 after step 1 on mini; 1e-3 with clip 0.05 clipped most)")
    frontier_clip_eps: float = _f(0.2, "PPO clip epsilon of the learned points' GRPO; 0 = grpo.clip_eps")
    frontier_group_size: int = _f(0, "rollouts per question G of the learned points' GRPO; 0 = grpo.group_size")
    frontier_train_split: str = _f("val", "questions the learned points' policies train on: val (the reader answers "
                                   "train questions with almost any memory; docs/rewards.md) | train (paper); not test")
    frontier_dense_prices: list[float] = _f([], "token prices at which a learned point also trains on the dense reward "
                                            "gold_logprob (the frozen reader's log p of the gold answer); [] = none")
    frontier_sees_length: bool = _f(True, "the learned points' policies see each chunk's length (budget.sees_length; "
                                    "beyond the paper: the price counts injected tokens, min(b_j, L_j))")
    frontier_oracle_prices: list[float] = _f([0.0], "token prices of the oracle-feature policy (budget.sees_evidence), "
                                             "trained like a learned point: a reference, not a bound; [] = none")
    retrieval_study: bool = _f(False, "05_retrieval trains each eval.retrieval_variants entry from 03's reader (warm-up, "
                                      "then GRPO) per eval.retrieval_seeds entry and measures recall@Z, reading and "
                                      "accuracy with each retrieval mode (retrieval_study.py -> metrics/retrieval.json)")
    retrieval_seeds: list[int] = _f([42, 43, 44], "seeds of the retrieval study's runs (warm-up data order, GRPO "
                                    "sampling, a retrieval head's initialisation)")
    retrieval_variants: list[str] = _f(["retrieval_control_token_reading_warmup", "retrieval_head_warmup"],
                                       "the retrieval study's variants (params/ablations/<name>.yaml, each with a "
                                       "trainable retrieval); the first is the ledger's C6 row: the paper's way")
    frontier_probe: bool = _f(True, "the frontier also fits linear probes: can the policy's inputs (query state, "
                                    "keys, scores, ranks) tell an evidence chunk from the others?")
    compression: bool = _f(False, "05_compression measures accuracy against tokens per chunk for truncated text and each content "
                                  "cache on 03's stage-0 reader (compression.py -> metrics/compression.json)")
    compression_caches: list[str] = _f(["0", "mid+align"], "caches of the compression table: a layer (0 = the input "
                                       "embeddings, -1 = the last layer, mid = the middle one), '+align' = the "
                                       "projector first trained by the alignment stage, '+align+lora' = LoRA too")
    compression_budgets: list[int] = _f([2, 4, 8, 16, 32], "tokens per retrieved chunk b of the compression table "
                                        "(above bank.n_c skipped)")
    compression_seeds: list[int] = _f([42, 43, 44], "seeds of each aligned cache's alignment stage (a row is their "
                                      "mean, with each seed)")
    compression_align_steps: int = _f(200, "alignment steps of an aligned cache in the compression table (the rest "
                                           "from the align section)")
    compression_projector: str = _f("mlp", "projector kind of caches of a layer other than 0 in the compression "
                                           "table (layer 0 uses projector.kind)")
    variant_steps: int = _f(0, "GRPO (or text SFT) steps of each trained baseline and ablation: -1 = as the grpo "
                               "section says (paper, mini); 0 = untrained, a plumbing check (smoke); N = at most N")


@dataclass
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    alfworld: AlfworldConfig = field(default_factory=AlfworldConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    memgen: MemGenConfig = field(default_factory=MemGenConfig)
    mem0: Mem0Config = field(default_factory=Mem0Config)
    agemem: AgeMemConfig = field(default_factory=AgeMemConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))


# ----------------------------------------------------------------------------------------------------------------
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` checked (and int->float widened) against annotation `tp`; raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_check_type(k, kt, where): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads `2e-5` (no dot) as a string: accept it as the number it is
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")  # a bug in this module, not in the params


def _build(cls: type, values: Any, where: str):
    """Build dataclass `cls` from a mapping, checking every key and type."""
    if values is None:
        values = {}
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    defaults = None
    for key, value in values.items():
        if key not in known:
            if _join(where, str(key)) in RENAMED:  # moved (renamed.py): say where to
                raise ConfigError(f"{_join(where, str(key))}: an old key; it is now {RENAMED[_join(where, str(key))]}")
            close = [k for k in known if _similar(k, str(key))]
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{_join(where, str(key))}: unknown key{hint}")
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]):
            # a partly given nested section keeps its parent's defaults for the rest (an AgeMem stage's rewards)
            defaults = defaults or cls()
            value = {**dataclasses.asdict(getattr(defaults, key)), **value}
        kwargs[key] = _check_type(value, hints[key], _join(where, key))
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _similar(a: str, b: str) -> bool:
    import difflib
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def from_sections(source: str = "<params>", **sections: Any) -> Config:
    """Typed Config from section mappings (as papermill injects them), keys and types checked; `source` names the
    origin in errors. checks.validate checks the values."""
    unknown = [k for k in sections if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}; sections are: {', '.join(SECTIONS)}")
    try:
        return _build(Config, sections, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def derive(cfg: Config, source: str = "<derived config>", **sections: dict[str, Any]) -> Config:
    """`cfg` with some fields of some sections replaced whole, checked as a params file is (`cfg` is unchanged):
    derive(cfg, "why", grpo={"lr": 1e-5}, runtime={"seed": 7})."""
    base = cfg.to_dict()
    if any(name not in base for name in sections):   # from_sections names it
        return from_sections(source, **sections)
    return from_sections(source, **{**base, **{name: {**base[name], **dict(fields)}
                                               for name, fields in sections.items()}})


def field_help(section: str, key: str) -> str:
    """The one-line help of `section.key`."""
    cls = type(getattr(Config(), section))
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[key]
