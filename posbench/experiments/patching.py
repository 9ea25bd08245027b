"""Activation and attention patching: an experiment over a clean and a corrupted run.

Run the corrupted prompt, overwrite one component's activation (a head's output ``z``, its
attention ``pattern``, the residual stream at one position, an MLP output, ...) with its value on
the clean prompt, and measure how much of the clean behaviour comes back (Meng et al. 2022,
"Locating and Editing Factual Associations in GPT"; Wang et al. 2022, "Interpretability in the
Wild"; Heimersheim & Nanda 2024, "How to use and interpret activation patching"). The design is
TransformerLens's ``patching.py``: one generic loop over patch indices (``run_patches``), one
setter for every site layout, any metric callable.

Conventions (docs/patching.md):

* ``metric(logits, batch) -> [batch]``; the default ``logit_diff`` is ``logit[answer] -
  logit[wrong]`` at the last position, averaged over the pairs. ``normalised = (patched -
  corrupted) / (clean - corrupted)``: 1 = the clean value, 0 = the corrupted value.
* ``mode="denoise"`` (default) runs the corrupted prompt and patches in clean activations
  (does this component *suffice* to restore the behaviour?); ``mode="noise"`` runs the clean
  prompt and patches in corrupted activations (is it *necessary*?). The normalisation is the same,
  so in noising the unpatched run sits at 1 and an important component pulls it towards 0.
* Heads are query heads for ``z``, ``q`` and ``pattern``, key/value heads for ``k`` and ``v``
  (under GQA one kv head feeds several query heads; TransformerLens does the same).
* Positions are token indices; every clean and corrupted prompt must have the same token length
  (the batches are never padded). ``pattern`` positions are destination (query) positions.

Each forward pass runs ``batch_size`` rows: the target prompts repeated once per patch, each copy
with its own patch. The patch enters through ``model.intervene`` as a small activation edit, so it
composes with any intervention already active, and the backend does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch

from ..errors import BadOptionError, EmptyDataError, HeadIndexError, PosbenchError
from ..progress import Progress
from ..protocols import ActivationEdit
from ..sites import Capture, Edit

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from ..batch import Batch
    from ..model import HookedModel

STREAM_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
HEAD_SITES = ("z", "q", "k", "v", "pattern")
KV_SITES = ("k", "v")
PATCH_SITES = STREAM_SITES + HEAD_SITES
MODES = ("denoise", "noise")
Metric = Callable[[torch.Tensor, "Batch"], torch.Tensor]


# ---------------------------------------------------------------------------- metrics
def last_position(metric: Metric) -> Metric:
    """Mark a metric that reads only the last position: it then gets logits [batch, 1, vocab],
    unembedded from the final residual of the last position alone (much cheaper for large
    vocabularies, e.g. Gemma 3's 262k tokens)."""
    metric.last_position = True  # type: ignore[attr-defined]
    return metric


@last_position
def logit_diff(logits: torch.Tensor, batch: "Batch") -> torch.Tensor:
    """``logit[answer] - logit[wrong]`` at the last position of every row (patching batches are
    never padded), with the token ids from ``batch.row_meta``: [batch]."""
    answer = torch.tensor([m["answer"] for m in batch.row_meta], device=logits.device)
    wrong = torch.tensor([m["wrong"] for m in batch.row_meta], device=logits.device)
    last = logits[:, -1].float()
    rows = torch.arange(last.shape[0], device=logits.device)
    return last[rows, answer] - last[rows, wrong]


def _last_logits(hidden: torch.Tensor, ctx) -> torch.Tensor:
    return ctx.unembed(hidden[:, -1])


def evaluate(model: "HookedModel", batch: "Batch", metric: Metric, captures: Sequence[Capture] = ()):
    """``(metric values [batch] on the CPU, run output)`` of one forward pass under the active
    interventions; a ``last_position`` metric gets only the last position's logits."""
    if getattr(metric, "last_position", False):
        out = model.run(batch, [*captures, Capture("_last_logits", "final_norm", _last_logits)])
        logits = out.captured["_last_logits"][:, None]
    else:
        out = model.run(batch, captures, logits=True)
        logits = out.logits
    values = torch.as_tensor(metric(logits, batch))
    if values.shape != (batch.size,):
        raise BadOptionError(
            f"the patching metric returned shape {tuple(values.shape)}; it must return one value per row, "
            f"shape ({batch.size},): metric(logits, batch) -> [batch]"
        )
    return values.detach().float().cpu(), out


# ---------------------------------------------------------------------------- inputs
@dataclass
class PatchPairs:
    """Tokenized clean/corrupted pairs of one token length, with the answer ids per pair."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    row_meta: list[dict[str, Any]]
    tokens: list[str]  # the first clean prompt's tokens, for axis labels

    @property
    def n_pairs(self) -> int:
        return len(self.clean)

    @property
    def length(self) -> int:
        return len(self.clean[0])


def _prompts(value, what: str) -> list:
    """A prompt or a list of prompts (texts, token-id lists, or a [pairs, T] tensor) as a list."""
    if isinstance(value, torch.Tensor):
        value = value.tolist() if value.dim() == 2 else [value.tolist()]
    if isinstance(value, str) or (isinstance(value, Sequence) and value and isinstance(value[0], int)):
        return [value]
    out = list(value)
    if not out:
        raise EmptyDataError(f"no {what} given: pass at least one")
    return out


def _answers(value) -> list:
    """An answer or a list of answers (texts or token ids) as a list ([] for None)."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, int)) else list(value)


def answer_tokens(model: "HookedModel", answer: str, wrong: str) -> tuple[list[int], int, int]:
    """``(shared prefix, answer id, wrong id)``: the first token where the two answers differ,
    and the tokens before it, which are appended to both prompts (teacher forcing). BPE
    tokenizers usually share nothing (" Mary" vs " John"); byte tokenizers share the space."""
    a = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    w = model.tokenizer(wrong, add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(a), len(w)) and a[k] == w[k]:
        k += 1
    if k == len(a) or k == len(w):
        raise BadOptionError(
            f"answers {answer!r} and {wrong!r} tokenize so that one is a prefix of the other: "
            "the logit difference needs answers that differ in some token"
        )
    return list(a[:k]), int(a[k]), int(w[k])


def prepare_pairs(model: "HookedModel", clean, corrupted, answer=None, wrong=None) -> PatchPairs:
    """Tokenize prompt pairs (texts, or token-id lists) and their answers (texts, or token ids);
    check that every prompt has the same token length."""
    clean, corrupted = _prompts(clean, "clean prompts"), _prompts(corrupted, "corrupted prompts")
    answers, wrongs = _answers(answer), _answers(wrong)
    if len(clean) != len(corrupted):
        raise BadOptionError(f"{len(clean)} clean prompts but {len(corrupted)} corrupted ones: give them in pairs")
    if bool(answers) != bool(wrongs) or (answers and len(answers) != len(clean)):
        raise BadOptionError("give one answer and one wrong answer per pair (or neither, with your own metric)")

    def ids(prompt):
        return list(prompt) if not isinstance(prompt, str) else model.tokenize([prompt])[0]

    rows_clean, rows_corrupt, meta = [], [], []
    for i, (c, k) in enumerate(zip(clean, corrupted)):
        c_ids, k_ids, m = ids(c), ids(k), {"pair": i}
        if answers:
            a, w = answers[i], wrongs[i]
            if isinstance(a, str) and isinstance(w, str):
                prefix, m["answer"], m["wrong"] = answer_tokens(model, a, w)
                c_ids, k_ids = c_ids + prefix, k_ids + prefix
            else:
                m["answer"], m["wrong"] = int(a), int(w)
        if len(c_ids) != len(k_ids):
            raise BadOptionError(
                f"pair {i}: the clean prompt has {len(c_ids)} tokens and the corrupted one {len(k_ids)}: patching "
                "compares positions one to one, so change words of equal token length (e.g. swap names)"
            )
        rows_clean.append(c_ids)
        rows_corrupt.append(k_ids)
        meta.append(m)
    lengths = sorted({len(r) for r in rows_clean})
    if len(lengths) > 1:
        raise BadOptionError(
            f"the pairs tokenize to different lengths ({', '.join(map(str, lengths))} tokens): every pair "
            "must have the same length so that positions line up; patch each length group on its own"
        )
    model.check_lengths(rows_clean, "prompt")
    tokens = [model.tokenizer.decode([t]) for t in rows_clean[0]]
    return PatchPairs(rows_clean, rows_corrupt, meta, tokens)


# ---------------------------------------------------------------------------- where
@dataclass(frozen=True)
class Patch:
    """One patch: a ``layer``, a ``head`` (None: every head, or a stream site) and a ``position``
    (None: every position; for ``pattern`` the destination position)."""

    layer: int
    head: int | None = None
    position: int | None = None


def site_axes(site: str) -> tuple[int | None, int]:
    """(head axis, position axis) of a site's canonical tensor (``posbench.sites.SITES``)."""
    if site == "pattern":
        return 1, 2
    if site in HEAD_SITES:
        return 2, 1
    return None, 1


def n_site_heads(model: "HookedModel", site: str) -> int:
    return model.n_kv_heads if site in KV_SITES else model.n_heads


def check_site(model: "HookedModel", site: str) -> None:
    if site not in PATCH_SITES:
        raise BadOptionError(f"cannot patch site '{site}': patchable sites are {', '.join(PATCH_SITES)}")
    if not model.supports(site, edit=True):
        raise PosbenchError(f"site '{site}' cannot be edited on {model.model_id}, so it cannot be patched there")


def patch_grid(model: "HookedModel", site: str, length: int, layers=None, heads=None, positions=None) -> list[Patch]:
    """Every patch of a sweep, in (layer, head, position) order.

    ``positions``: ``"all"`` (one patch over every position), ``"each"`` (one patch per
    position) or a list of positions (negative ones count from the end). The default is
    ``"each"`` for stream sites and ``"all"`` for head sites, as TransformerLens's
    ``get_act_patch_block_every`` and ``get_act_patch_attn_head_all_pos_every``.
    """
    check_site(model, site)
    layers = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise HeadIndexError(f"layer {layer} out of range: {model.model_id} has {model.n_layers} layers (0-{model.n_layers - 1})")
    if site in HEAD_SITES:
        n = n_site_heads(model, site)
        head_list: list[int | None] = list(range(n)) if heads is None else [int(h) for h in heads]
        for head in head_list:
            if not 0 <= head < n:
                kind = "key/value" if site in KV_SITES else "query"
                raise HeadIndexError(f"head {head} out of range for site '{site}': {model.model_id} has {n} {kind} heads (0-{n - 1})")
    else:
        if heads is not None:
            raise BadOptionError(f"site '{site}' has no heads: leave heads out, or patch z, q, k, v or pattern")
        head_list = [None]
    if positions is None:
        positions = "each" if site in STREAM_SITES else "all"
    if positions == "all":
        pos_list: list[int | None] = [None]
    elif positions == "each":
        pos_list = list(range(length))
    elif isinstance(positions, str):
        raise BadOptionError(f"positions must be 'all', 'each' or a list of token positions, got {positions!r}")
    else:
        pos_list = []
        for p in positions:
            if not -length <= int(p) < length:
                raise BadOptionError(f"position {p} out of range: the prompts have {length} tokens")
            pos_list.append(int(p) % length)
    return [Patch(layer, head, pos) for layer in layers for head in head_list for pos in pos_list]


def _setter(site: str, source: torch.Tensor, blocks: list[tuple[int, Patch]], n_pairs: int):
    """The edit of one layer: rows ``k*n_pairs .. (k+1)*n_pairs`` take patch ``blocks[k]`` from
    ``source`` (the other run's activation, [n_pairs, ...])."""
    head_axis, pos_axis = site_axes(site)

    def patch(x: torch.Tensor, ctx) -> torch.Tensor:
        mask = torch.zeros(x.shape[:-1] + (1,), dtype=torch.bool, device=x.device)
        for k, p in blocks:
            index: list[Any] = [slice(k * n_pairs, (k + 1) * n_pairs)] + [slice(None)] * (x.dim() - 1)
            if p.head is not None:
                index[head_axis] = p.head
            if p.position is not None:
                index[pos_axis] = p.position
            mask[tuple(index)] = True
        tiled = source.to(x.device, x.dtype).repeat(x.shape[0] // n_pairs, *([1] * (x.dim() - 1)))
        return torch.where(mask, tiled, x)

    return patch


class ActivationPatch(ActivationEdit):
    """The patches of one forward pass, entered with ``model.intervene`` so they apply after
    (and compose with) the interventions already active. Internal to the patching experiment:
    it needs the other run's activations, so it is not a command-line intervention."""

    name = "activation-patch"
    summary = "overwrite activations with those of another run (activation patching)"

    def __init__(self, site: str, edits: list[Edit], n_patches: int, mode: str):
        self.site, self._edits, self.n_patches, self.mode = site, edits, n_patches, mode

    def edits(self, model) -> list[Edit]:
        return list(self._edits)

    def params(self) -> dict[str, Any]:
        return {"site": self.site, "patches": self.n_patches, "mode": self.mode}


def _keep(x: torch.Tensor, ctx) -> torch.Tensor:
    return x.clone()


# ---------------------------------------------------------------------------- the loop
@dataclass
class PatchResult:
    """A sweep's tidy ``table`` (site, layer, head, position, metric, normalised) and baselines."""

    table: pd.DataFrame
    site: str
    mode: str
    clean_value: float
    corrupted_value: float
    tokens: list[str]
    model_id: str
    n_pairs: int
    metric_name: str = "logit_diff"
    pair_values: pd.DataFrame = field(default_factory=pd.DataFrame)

    def figure(self, title: str | None = None) -> "go.Figure":
        from .views import patch_heatmap

        title = title or (f"{'Denoising' if self.mode == 'denoise' else 'Noising'} {self.site} on {self.model_id} "
                          f"({self.n_pairs} pairs; 1 = clean, 0 = corrupted)")
        return patch_heatmap(self.table, self.tokens, title)

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` patches that move the metric furthest from the unpatched run."""
        base = 0.0 if self.mode == "denoise" else 1.0
        order = (self.table.normalised - base).abs().sort_values(ascending=False).index
        return self.table.loc[order[:n]].reset_index(drop=True)

    def __repr__(self) -> str:
        return (f"<PatchResult {self.mode} {self.site} on {self.model_id}: {len(self.table)} patches, "
                f"clean {self.clean_value:.4g}, corrupted {self.corrupted_value:.4g}>")


def run_patches(
    model: "HookedModel",
    pairs: PatchPairs,
    site: str,
    patches: Sequence[Patch],
    metric: Metric | None = None,
    mode: str = "denoise",
    batch_size: int = 32,
    progress: bool | None = None,
) -> PatchResult:
    """The generic patch loop: one metric value per patch, averaged over the pairs.

    Only ``site`` at the patched layers of the *source* run (clean when denoising) is kept:
    ``n_pairs x`` the site's size per layer (``[T, D]`` for stream sites, ``[T, H, d]`` for head
    vectors, ``[H, T, T]`` for patterns). ``batch_size`` rows run per forward pass
    (``batch_size // n_pairs`` patches at a time, at least one).
    """
    if mode not in MODES:
        raise BadOptionError(f"mode must be 'denoise' or 'noise', got {mode!r}")
    if batch_size < 1:
        raise BadOptionError(f"batch_size must be at least 1, got {batch_size}")
    check_site(model, site)
    if not patches:
        raise EmptyDataError("no patches to run: the sweep selects no layer, head or position")
    if metric is None:
        if "answer" not in pairs.row_meta[0]:
            raise BadOptionError("the default metric (logit difference) needs answer and wrong; or pass metric=")
        metric = logit_diff
    P = pairs.n_pairs
    clean = model.batch(pairs.clean, row_meta=pairs.row_meta)
    corrupted = model.batch(pairs.corrupted, row_meta=pairs.row_meta)
    keep = [Capture("source", site, _keep, layers=tuple(sorted({p.layer for p in patches})))]
    clean_values, clean_out = evaluate(model, clean, metric, keep if mode == "denoise" else ())
    corrupted_values, corrupted_out = evaluate(model, corrupted, metric, keep if mode == "noise" else ())
    source = (clean_out if mode == "denoise" else corrupted_out).captured["source"]
    clean_value, corrupted_value = float(clean_values.mean()), float(corrupted_values.mean())
    gap = clean_value - corrupted_value
    if abs(gap) <= 1e-6 * max(1.0, abs(clean_value)):
        raise PosbenchError(
            f"the metric is {clean_value:.6g} on both the clean and the corrupted prompts, so nothing can be "
            "normalised: choose a corruption that changes the answer"
        )
    target = pairs.corrupted if mode == "denoise" else pairs.clean
    per_pass = max(1, batch_size // P)
    values: list[torch.Tensor] = []
    with Progress(len(patches), f"patching {site} on {model.model_id}", enabled=progress, unit="patch") as bar:
        for start in range(0, len(patches), per_pass):
            chunk = list(patches[start : start + per_pass])
            batch = model.batch(target * len(chunk), row_meta=pairs.row_meta * len(chunk))
            by_layer: dict[int, list[tuple[int, Patch]]] = {}
            for k, p in enumerate(chunk):
                by_layer.setdefault(p.layer, []).append((k, p))
            edits = [Edit(site, _setter(site, source[layer], blocks, P), layers=(layer,)) for layer, blocks in by_layer.items()]
            with model.intervene(ActivationPatch(site, edits, len(chunk), mode)):
                out, _ = evaluate(model, batch, metric)
            values.append(out.view(len(chunk), P).mean(1))
            bar.update(len(chunk))
    patched = torch.cat(values)
    table = pd.DataFrame({
        "site": site,
        "layer": [p.layer for p in patches],
        "head": pd.array([p.head for p in patches], dtype="Int64"),
        "position": pd.array([p.position for p in patches], dtype="Int64"),
        "metric": patched.double().numpy(),
        "normalised": ((patched.double() - corrupted_value) / gap).numpy(),
    })
    pair_values = pd.DataFrame({"pair": range(P), "clean": clean_values.numpy(), "corrupted": corrupted_values.numpy()})
    return PatchResult(table, site, mode, clean_value, corrupted_value, pairs.tokens, model.model_id, P,
                       getattr(metric, "__name__", "metric"), pair_values)


def patch_sweep(
    model: "HookedModel",
    clean,
    corrupted,
    site: str = "z",
    *,
    answer=None,
    wrong=None,
    metric: Metric | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: str | Sequence[int] | None = None,
    mode: str = "denoise",
    batch_size: int = 32,
    progress: bool | None = None,
) -> PatchResult:
    """Patch ``site`` at every (layer, head, position) of the sweep; see the module docstring.

    ``clean``/``corrupted``: a prompt or a list of prompts (texts or token ids) of one token
    length; ``answer``/``wrong``: per pair, the clean and the corrupted answer (texts or token
    ids) for the default logit-difference metric, or pass ``metric(logits, batch) -> [batch]``.

    >>> result = patch_sweep(model, "When Mary and John went to the store, John gave a drink to",
    ...                      "When Mary and John went to the store, Mary gave a drink to",
    ...                      site="z", answer=" Mary", wrong=" John")
    >>> result.table, result.figure()
    """
    pairs = prepare_pairs(model, clean, corrupted, answer, wrong)
    patches = patch_grid(model, site, pairs.length, layers, heads, positions)
    return run_patches(model, pairs, site, patches, metric, mode, batch_size, progress)
