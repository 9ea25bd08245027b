"""Position bias: the position effects users feel, measured on any causal LM.

* **Lost in the middle** (Liu et al., TACL 2024) on ``kv`` (key-value retrieval) and ``mdqa``
  (multi-document QA): accuracy and gold log-probability by the gold segment's slot (the U
  curve), with bootstrap CIs and primacy / recency / middle-dip in numbers, at one or several
  numbers of segments (the context-length sweep, capped by the context and ``max_tokens``).
* **Multiple-choice selection bias** (Zheng et al., ICLR 2024) on ``mcq``: accuracy per gold
  slot, the PriDe label prior, RStd, permutation consistency; the labels also rotate over the
  slots so a preference for a label token and a preference for a slot are measured apart.
* **Judge order bias** (PINE's swap protocol, Wang et al., ICLR 2025) on ``judge``: flip rate
  when the answers swap, first-slot preference.
* **Attention basin and AttnRank** (Yi et al., arXiv 2508.05128): the attention mass from the
  answer position onto each segment by slot and layer; AttnRank's positional profile from
  calibration rows re-orders held-out prompts, and the accuracy with the gold document in the
  most (and least) attended slot is measured.

Choices are scored by log-likelihood (``posbench.scoring``; greedy generation optionally). Every
forward pass goes through ``model.run`` on ``segment_batch`` rows, so the probe runs under any
intervention, segment-aware ones (PINE) included. Metrics: ``posbench.metrics``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from posbench.data.base import read_text_file
from posbench.data.sweeps import LABELS, PositionBiasDataset
from posbench.errors import BadOptionError, EmptyDataError, MalformedDataError
from posbench.limits import MAX_INDEX, Workload, check_memory
from posbench.metrics import apply_attnrank, attnrank_order, attnrank_profile
from posbench.options import option
from posbench.progress import Progress
from posbench.protocols import Probe
from posbench.scoring import greedy_continuations, plan_scoring, run_plan

from . import analysis
from .prompts import FORMATS, chat_frame, formatted_item, resolve_format
from .tasks import (
    CHOICE,
    DATASETS,
    RETRIEVAL,
    SEGMENT_FIELD,
    TASKS,
    TaskItem,
    choice_items,
    fit_segments,
    fitting_rows,
    retrieval_item,
    retrieval_items,
)


@dataclass
class PositionBiasConfig:
    task: str = option("all", choices=("all", *TASKS),
                       help="kv | mdqa | mcq | judge, or all four at the default sizes (the report's choice)")
    n_items: int = option(4, min=0, counts="sequences", help="dataset rows per task (0 = every row)")
    n_segments: tuple[int, ...] = option((5,), min=2, max=1000, nonempty=True,
                                         help="kv pairs / mdqa documents per prompt; several values give the "
                                              "context-length sweep (each capped by the context and max_tokens)")
    slots: int = option(3, min=0, max=1000, help="kv/mdqa: gold slots visited, evenly spaced with first and last (0 = every slot)")
    label_rotations: bool = option(True, help="mcq/judge: rotate the labels over the slots too (k x k variants), "
                                              "so label-token bias and slot bias separate")
    scoring: str = option("loglik", choices=("loglik", "greedy"),
                          help="log-likelihood of every choice, or greedy generation scored by substring / label")
    normalise: bool = option(False, help="rank choices by log-likelihood per token")
    max_new_tokens: int = option(32, min=1, max=4096, help="greedy scoring: tokens generated per prompt")
    prompt_format: str = option("auto", choices=FORMATS, help="auto: the chat template if the model has one")
    # a cap, not a request: sizes beyond min(context, max_tokens) are replaced by the largest
    # that fits, so it does not count "tokens" (a tiny model's 512-token context is no error);
    # the memory check runs on the real rows once they are laid out (``_check_memory``)
    max_tokens: int = option(2048, min=16, max=131_072, help="longest row (prompt + choice) to run; larger sizes are capped")
    attention: bool = option(True, help="attention mass from the answer position onto each segment, per layer")
    attnrank: bool = option(True, help="kv/mdqa: AttnRank re-ordering of held-out rows (needs attention)")
    attnrank_calib: int = option(1, min=1, max=10_000, help="rows whose attention profile calibrates AttnRank")
    attnrank_layers: tuple[int, ...] = option((), min=0, max=MAX_INDEX, help="layers averaged into the AttnRank profile (empty: all)")
    pride_calib_frac: float = option(0.05, min=0.0, max=1.0, help="share of mcq items calibrating PriDe (at least 1)")
    n_boot: int = option(1000, min=0, max=100_000, help="bootstrap resamples for the confidence intervals (0: none)")
    seed: int = option(0, min=0, help="bootstrap and PriDe calibration draw")
    batch_size: int = option(8, min=1, counts="batch", help="rows per forward pass")
    pack: str = option("auto", choices=("auto", "on", "off"),
                       help="several choices of one prompt in one row (auto: unless an active intervention "
                            "cannot keep packed rows; PINE can)")


class PositionBiasProbe(Probe):
    name = "position-bias"
    work_factor = 2.4  # time estimate: cost per planned token (benchmarks/estimate_factors.py)
    summary = "lost in the middle (kv, mdqa), MCQ selection bias (PriDe), judge order bias, attention basin"
    Config = PositionBiasConfig
    tags = ("behavioural", "attention")
    data_help = ("a JSONL file in the schema of kv, mdqa, mcq or judge (datasets/README.md), "
                 "optionally as TASK:PATH; the task is read from the fields")

    # ------------------------------------------------------------------ data
    @classmethod
    def load_data(cls, spec: str) -> tuple[PositionBiasDataset, dict[str, Any]]:
        """``--data PATH`` (the task is recognised by its fields) or ``--data TASK:PATH``."""
        task, sep, rest = spec.partition(":")
        if sep and task in TASKS:
            dataset = DATASETS[task].from_jsonl(rest)
        else:
            dataset = DATASETS[cls._detect_task(spec)].from_jsonl(spec)
        return dataset, {"task": dataset.name}

    @staticmethod
    def _detect_task(path: str) -> str:
        text = read_text_file(path)
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedDataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            found = [t for t, f in SEGMENT_FIELD.items() if isinstance(row, dict) and f in row]
            if len(found) == 1:
                return found[0]
            fields = ", ".join(f'"{f}" ({t})' for t, f in SEGMENT_FIELD.items())
            raise MalformedDataError(
                f"{path}:{lineno}: cannot tell the task from this row: it needs exactly one of {fields}; "
                "or name it: --data kv:PATH"
            )
        raise EmptyDataError(f"{path} holds no rows: add at least one JSON object a line")

    @classmethod
    def check_data(cls, data: Any) -> PositionBiasDataset:
        """Data passed to ``run``: a dataset of one task, or a JSONL path (``TASK:PATH`` too),
        read and validated like ``--data``."""
        if isinstance(data, (str, Path)):
            data, _ = cls.load_data(str(data))
        if not isinstance(data, PositionBiasDataset):
            raise BadOptionError(f"position-bias takes a kv, mdqa, mcq or judge dataset or a JSONL path, "
                                 f"got {type(data).__name__}")
        return data

    def _datasets(self, data: PositionBiasDataset | None) -> dict[str, PositionBiasDataset]:
        task = self.config.task
        if data is None:
            names = TASKS if task == "all" else (task,)
            return {name: DATASETS[name].builtin() for name in names}
        data = self.check_data(data)
        if task not in ("all", data.name):
            raise BadOptionError(f"the data is a {data.name} dataset but task={task}: set task={data.name} (or all)")
        return {data.name: data}

    # ------------------------------------------------------------------ items
    def _items(self, model, datasets, frame) -> tuple[dict[str, list[TaskItem]], dict, list[str]]:
        c = self.config
        limit = min(c.max_tokens, model.card.context_length or c.max_tokens)
        items: dict[str, list[TaskItem]] = {}
        rows_used: dict[str, list[dict]] = {}
        notes: list[str] = []
        for task, dataset in datasets.items():
            rows = dataset.rows[: c.n_items] if c.n_items else dataset.rows
            if task in RETRIEVAL:
                sizes, task_notes = fit_segments(model, task, rows, c.n_segments, limit, frame)
                notes += task_notes
                items[task] = [it for n in sizes for it in retrieval_items(task, rows, n, c.slots, frame)]
            else:
                rows, task_notes = fitting_rows(model, task, rows, limit, frame)
                notes += task_notes
                items[task] = choice_items(task, rows, c.label_rotations, frame)
            rows_used[task] = rows
        items = {t: v for t, v in items.items() if v}
        if not items:
            raise EmptyDataError(f"nothing fits {model.model_id}: {'; '.join(notes)}")
        return items, rows_used, notes

    # ------------------------------------------------------------------ scoring
    def _plan(self, model, items: list[TaskItem]):
        c = self.config
        pack = {"auto": "auto", "on": True, "off": False}[c.pack]
        return plan_scoring(model, [t.item.prompt for t in items], [list(t.item.choices) for t in items], pack=pack,
                            max_packed=c.max_tokens)

    def planned_tokens(self, model) -> int | None:
        """Tokens of the scoring rows for the default data (laid out, nothing run; packing as it
        will be under the active interventions). AttnRank's re-ordered rows are not counted."""
        c = self.config
        if c.scoring != "loglik":
            return None
        frame = chat_frame(model) if resolve_format(model, c.prompt_format) == "chat" else None
        items, _, _ = self._items(model, self._datasets(None), frame)
        return sum(row.length for row in self._plan(model, [t for v in items.values() for t in v]).rows)

    def _score(self, model, items: list[TaskItem], desc: str, progress: bool, attention: bool):
        """(scores rows, attention rows, per-head attention rows) for items scored by log-likelihood."""
        c = self.config
        plan = self._plan(model, items)
        self._check_memory(model, len(plan.rows), max(r.length for r in plan.rows))
        with Progress(len(plan.rows), f"{desc} on {model.model_id}", enabled=progress, unit="row") as bar:
            result = run_plan(model, plan, batch_size=c.batch_size, attention=attention, progress=bar)
        rows, attn, heads = [], [], {}
        for k, t in enumerate(items):
            rows += t.score_rows(result.logprobs[k], result.n_tokens[k], result.prompt_tokens[k])
            if attention:
                mass = result.attention[k]  # [layers, heads, segments]
                attn += self._attention_rows(model, t, mass)
                key = (t.task, t.item.prompt.n_segments)
                total, count = heads.get(key, (0.0, 0))
                heads[key] = (total + mass, count + 1)
        head_rows = [{"task": task, "n_segments": n, "layer": layer, "head": h, "slot": s, "mass": float(m)}
                     for (task, n), (total, count) in heads.items()
                     for (layer, h, s), m in np.ndenumerate(total / count)]
        return rows, attn, head_rows

    @staticmethod
    def _attention_rows(model, t: TaskItem, mass: np.ndarray) -> list[dict]:
        """Head-averaged mass per layer and slot ([layers, heads, segments] in), with the
        segment's length in tokens and the variant's columns."""
        spans = model.tokenize_segments(t.item.prompt)[1].segments
        per_layer = mass.mean(axis=1)
        return [{"task": t.task, "item_id": t.row_id, "variant": t.variant, "n_segments": len(spans),
                 "layer": layer, "slot": slot, "mass": float(per_layer[layer, slot]),
                 "is_gold": slot == t.item.gold_segment, "n_tokens": end - start, "gold_slot": t.item.gold_segment,
                 **t.columns}
                for layer in range(mass.shape[0]) for slot, (start, end) in enumerate(spans)]

    def _generate(self, model, items: list[TaskItem], progress: bool):
        """(scores rows, generation rows) for items scored by greedy generation: the chosen
        choice gets score 0, the others -1 (no parse: all -1, a tie, counted wrong)."""
        c = self.config
        prompt_tokens = [len(model.tokenize_segments(t.item.prompt)[0]) for t in items]
        self._check_memory(model, len(items), max(prompt_tokens) + c.max_new_tokens)
        with Progress(len(items), f"position-bias generation on {model.model_id}", enabled=progress,
                      unit="prompt") as bar:
            outputs = greedy_continuations(model, [t.item.prompt for t in items], max_new_tokens=c.max_new_tokens,
                                           batch_size=c.batch_size, progress=bar)
        rows, gens = [], []
        for t, ids, n_prompt in zip(items, outputs, prompt_tokens):
            text = model.tokenizer.decode(ids, skip_special_tokens=True)
            chosen = parse_choice(t, text)
            scores = [0.0 if j == chosen else -1.0 for j in range(len(t.item.choices))]
            rows += t.score_rows(scores, [1] * len(scores), n_prompt)
            gens.append({"task": t.task, "item_id": t.row_id, "variant": t.variant, "text": text,
                         "choice": -1 if chosen is None else chosen, "correct": chosen == t.item.gold})
        return rows, gens

    def _check_memory(self, model, rows: int, longest: int) -> None:
        """The memory check of ``posbench.limits`` on the rows as laid out (the sizes are known
        only now: they are capped by the context), before any forward pass."""
        check_memory(self, model, Workload(rows, longest, self.config.batch_size),
                     fix="lower n_items, n_segments or batch_size (-o KEY=VALUE)")

    # ------------------------------------------------------------------ AttnRank
    def _attnrank(self, model, rows_used, attention: pd.DataFrame, scores: pd.DataFrame, frame, progress: bool):
        """Calibrate on the first ``attnrank_calib`` rows, re-order the held-out rows' prompts
        (gold ranked most relevant: into the most / least attended slot) and score them; the
        retrieval order (gold first) comes from the sweep."""
        c = self.config
        layers = list(c.attnrank_layers) or None
        items, reused, profiles, held_out, notes = [], [], [], {}, []
        for (task, n), att in attention[attention["task"].isin(RETRIEVAL)].groupby(["task", "n_segments"], sort=False):
            order_rows = [r for r in rows_used[task] if min(n, len(r[SEGMENT_FIELD[task]])) == n]
            calib = [r["id"] for r in order_rows[: c.attnrank_calib]]
            held = order_rows[c.attnrank_calib :]
            if not held:
                notes.append(f"{task}: AttnRank needs more rows than attnrank_calib={c.attnrank_calib} (n_segments={n})")
                continue
            profile = attnrank_profile(att[att["item_id"].isin(calib)], layers=layers)
            profiles.append(profile.assign(task=task, n_segments=n))
            held_out[(task, n)] = [r["id"] for r in held]
            # the sweep always visits slot 0 (evenly spaced slots include the first): gold first
            reused.append(scores[(scores["task"] == task) & (scores["variant"] == f"n{n}:slot0")
                                 & scores["item_id"].isin(held_out[(task, n)])].assign(variant="gold first"))
            for row in held:
                base = formatted_item(DATASETS[task].row_items(row, n_segments=n, slots=[0])[0], frame)
                for condition, ranking in (("attnrank", None), ("attnrank reversed", list(range(n))[::-1])):
                    order = attnrank_order(profile, ranking)
                    moved = replace(base, prompt=apply_attnrank(base.prompt, profile, ranking), gold_segment=order.index(0))
                    items.append(retrieval_item(task, moved, condition, order))
        if not items:
            return None, None, held_out, notes
        rows, _, _ = self._score(model, items, "AttnRank", progress, attention=False)
        reordered = pd.concat([pd.DataFrame(rows), *reused], ignore_index=True)
        return reordered, pd.concat(profiles, ignore_index=True), held_out, notes

    # ------------------------------------------------------------------ measure
    def measure(self, model, data, progress=False):
        c = self.config
        if c.attnrank_layers and max(c.attnrank_layers) >= model.n_layers:
            raise BadOptionError(f"attnrank_layers={list(c.attnrank_layers)}: {model.model_id} has layers "
                                 f"0-{model.n_layers - 1}")
        fmt = resolve_format(model, c.prompt_format)
        frame = chat_frame(model) if fmt == "chat" else None
        datasets = self._datasets(data)
        items, rows_used, notes = self._items(model, datasets, frame)
        all_items = [t for task_items in items.values() for t in task_items]
        attention = c.attention and c.scoring == "loglik"
        if c.attention and not attention:
            notes.append("attention: only with scoring=loglik")
        greedy_rows, attn_rows, head_rows = None, [], []
        if c.scoring == "greedy":
            score_rows, greedy_rows = self._generate(model, all_items, progress)
        else:
            score_rows, attn_rows, head_rows = self._score(model, all_items, f"position-bias ({', '.join(items)})",
                                                           progress, attention)
        scores = pd.DataFrame(score_rows)
        attn = pd.DataFrame(attn_rows) if attn_rows else None
        tables, more_notes = analysis.analyse(scores, attn, normalise=c.normalise, n_boot=c.n_boot, seed=c.seed,
                                              pride_calib_frac=c.pride_calib_frac)
        notes += more_notes
        if greedy_rows:
            tables["generations"] = pd.DataFrame(greedy_rows)
        if head_rows:
            tables["attention_heads"] = pd.DataFrame(head_rows)
        if c.attnrank and attn is not None:
            reordered, profiles, held_out, rank_notes = self._attnrank(model, rows_used, attn, scores, frame, progress)
            notes += rank_notes
            if reordered is not None:
                tables["attnrank"] = analysis.attnrank_table(scores, reordered, held_out, c.normalise)
                tables["attnrank_profile"] = profiles
                tables["attnrank_scores"] = reordered
        summary = {"prompt_format": fmt, "scoring": c.scoring, **analysis.summary(tables, c.normalise)}
        if notes:
            summary["notes"] = " | ".join(notes)
        data_record = {
            "datasets": {t: ds.record() for t, ds in datasets.items()},
            "rows": {t: [r["id"] for r in rows] for t, rows in rows_used.items()},
            "prompt_format": fmt,
            "chat_frame": frame,
        }
        return tables, summary, data_record


# ---------------------------------------------------------------------------- greedy parsing
def parse_choice(t: TaskItem, text: str) -> int | None:
    """The choice a generation names: kv/mdqa the candidate answer appearing first in it
    (case-insensitive substring, Liu et al.); mcq/judge the first stand-alone label letter."""
    if t.task in RETRIEVAL:
        folded = text.casefold()
        found = [(folded.find(c.strip().strip('"').casefold()), j) for j, c in enumerate(t.item.choices)]
        found = [(at, j) for at, j in found if at >= 0]
        return min(found)[1] if found else None
    labels = LABELS[: len(t.item.choices)]
    match = re.search(rf"(?<![A-Za-z])([{labels}])(?![A-Za-z])", text)
    return labels.index(match.group(1)) if match else None
