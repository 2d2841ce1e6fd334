"""One question through the method, stage by stage: what 04_walkthrough shows.

`trace` answers one question greedily, as evaluation does, and keeps what each stage decided: the question's memory
(its chunks, which hold the evidence), the retrieval-control token (the paper's retrieval: the reasoner's argmax
ordinary token and its most likely alternatives), the chunks the run's retrieval mode ranked with their scores, the
budget each got, the reasoner's input column by column (`layout`), the answer, and #Tok by part. Nothing here
trains or changes the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..method.retrieval import Retriever, control_logprobs, last_states, question_ids

# a column of the reasoner's input, by what it holds (injection.Batch.spans)
KINDS = ("padding", "question", "control token", "soft tokens", "memory text", "separator", "instruction + options",
         "answer")
COLOURS = {"padding": "#ffffff", "question": "#4c72b0", "control token": "#c44e52", "soft tokens": "#55a868",
           "memory text": "#8fd19e", "separator": "#cccccc", "instruction + options": "#8172b2", "answer": "#dd8452"}


@dataclass
class Trace:
    question: object
    memory: list[dict]            # the question's chunks: row, text, evidence
    control: dict                 # the control token the paper's retrieval would feed, and its alternatives
    retrieved: list[dict]         # rank, row, score, evidence, budget, text
    layout: list[str]             # one kind (KINDS) per input column, answer included
    answer: str
    prediction: str | None
    correct: bool
    tokens: dict[str, int]        # #Tok by part: task_text, memory, output


def control_token(model, question, top: int = 5) -> dict:
    """The retrieval-control token of the paper's retrieval for `question`: the reasoner's argmax ordinary token after
    the question (evaluation), its probability, the `top` most likely ordinary tokens, and the chunks its query state
    ranks first, whatever retrieval.mode the run uses."""
    r = Retriever(dataclasses.replace(model.cfg.retrieval, mode="control_token"), model.tokenizer, model.bank,
                  model.retriever.index)
    with torch.no_grad():
        seq = [question_ids(model.tokenizer, question.question, model.cfg.retrieval.chat_template)]
        _, logits, _ = last_states(model.reasoner, seq, r.pad_id, model.device)
        logp = control_logprobs(logits[0].float(), r.allowed(logits.shape[-1], model.device),
                                model.cfg.retrieval.temperature)
        got = r(model.reasoner, [question], sample=False)
    best = torch.topk(logp, top)
    return {"token": model.tokenizer.decode([got.control_ids[0]]), "id": got.control_ids[0],
            "probability": float(logp[got.control_ids[0]].exp()),
            "alternatives": [(model.tokenizer.decode([int(i)]), float(p.exp())) for p, i in zip(best.values,
                                                                                               best.indices)],
            "rows": got.rows[0].tolist(), "scores": got.scores[0].tolist()}


def layout(batch, row: int, memory_mode: str) -> list[str]:
    """The kind of each column of one row of a built batch (left padding first, then the prompt's parts)."""
    spans = batch.spans[row]
    n = batch.inputs_embeds.shape[1]
    kinds = ["padding"] * n
    for name, kind in (("question", "question"), ("control", "control token"), ("tail", "instruction + options"),
                       ("end_memory", "soft tokens")):
        s, e = spans.get(name, (0, 0))
        kinds[s:e] = [kind] * (e - s)
    s, e = spans["memory"]
    memory_kind = "soft tokens" if memory_mode == "latent" else "memory text"
    kinds[s:e] = [memory_kind] * (e - s)
    return kinds


def trace(model, question) -> Trace:
    """Answer `question` greedily and keep every stage's decision (see the module docstring)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            plan = model.plan([question], sample=False)
            batch = model.build([question], plan)
            gen = model.generate(batch, model.cfg.grpo.max_new_tokens, sample=False)
    finally:
        model.train(was)
    bank, gold = model.bank, set(question.evidence or ())
    memory = [{"row": r, "chunk": bank.chunk_ids[r], "evidence": bank.chunk_ids[r] in gold,
               "text": model.chunk_texts.get(bank.chunk_ids[r], "")} for r in bank.rows(question.memory_id)]
    rows, scores = plan.retrieved.rows[0].tolist(), plan.retrieved.scores[0].tolist()
    budgets = plan.budgets.budgets[0].tolist()
    retrieved = [{"rank": j + 1, "row": r, "score": round(s, 3), "evidence": bank.chunk_ids[r] in gold,
                  "budget": b, "text": model.chunk_texts.get(bank.chunk_ids[r], "")}
                 for j, (r, s, b) in enumerate(zip(rows, scores, budgets)) if r >= 0]
    kinds = layout(batch, 0, model.memory)
    with torch.no_grad():  # each kept chunk's piece is followed by one "\n" separator: mark those columns
        widths = [len(x) if isinstance(x, (list, tuple)) else x.shape[0] for x in model.memory_items(plan)[0]]
    at = batch.spans[0]["memory"][0]
    for w in (w for w in widths if w > 0):
        kinds[at + w] = "separator"
        at += w + 1
    kinds += ["answer"] * len(gen.tokens[0])
    from ..method.rewards import parse_answer

    pred = parse_answer(gen.texts[0], len(question.options))
    return Trace(question, memory, control_token(model, question), retrieved, kinds, gen.texts[0], pred,
                 pred == question.gold, dict(batch.counts[0]))


def plot_layout(kinds: list[str], ax) -> None:
    """The reasoner's input as a strip of coloured columns, one per token, by kind (a legend names them)."""
    from matplotlib.patches import Patch, Rectangle

    shown = [k for k in kinds if k != "padding"]
    for x, k in enumerate(shown):
        ax.add_patch(Rectangle((x, 0), 1, 1, color=COLOURS[k], lw=0))
    ax.set(xlim=(0, len(shown)), ylim=(0, 1), yticks=[], xlabel="input position (tokens and soft tokens)")
    used = [k for k in KINDS if k in shown]
    ax.legend(handles=[Patch(color=COLOURS[k], label=f"{k} ({shown.count(k)})") for k in used],
              bbox_to_anchor=(0.5, -0.45), loc="upper center", ncol=len(used), fontsize=8, frameon=False)
