"""Ablate attention heads: replace a head's output z (before W_O) by zero, by its mean over
reference texts, or by its value on another text.

The conventions of causal-tracing and patching work (Wang et al. 2022, "Interpretability in the
Wild": mean ablation; Chan et al. 2022, "Causal Scrubbing": resample ablation; the ``z`` site):

* ``zero``: z = 0. Removes the head's W_O term; an o_proj bias, if any, stays.
* ``mean``: z = its mean over the reference texts **at the same token position**, where the
  reference reaches (every reference text that is long enough counts at a position; texts are
  read up to 256 tokens); later positions take the mean over all reference positions except the
  first.
  Position-matched because a position-effects tool must not erase what a head does *because of*
  position (the first token's z, sink heads, early-position heads differ systematically from
  later positions); the first position is left out of the pooled mean for the same reason.
* ``resample``: z = its value at the same token position on a reference text chosen by ``seed``:
  row b of a batch reads source ``b mod n_texts`` of a seeded order of the reference texts, each
  source being the texts joined (from that one on, in that order) and cut to the batch's length,
  so it is one natural document as long as the input, never cycled or padded. A source whose
  tokens equal the row's own input is skipped (the next source is used).

Reference texts default to the natural-text corpus (``posbench.data.natural_texts()``).
Reference activations come from the model **without interventions** (the plain model's mean /
resampled z), are computed once per model and cached on the intervention: the mean in
``validate`` (when entering ``model.intervene``), the resample sources just before the forward
pass that needs them (they depend on the batch's size and length).

Heads are query heads (0 .. n_heads-1) also under GQA. ``kv=True`` names key/value heads
instead and ablates **every query head that reads that kv head** (their z, i.e. the group's whole
output), not the kv head's k or v: zeroing k alone only flattens where the group looks, and
zeroing v is, in zero mode, exactly the group's zero ablation (tested), while mean / resample of
z stay comparable across the two. ``L.*`` ablates every head of layer L.
"""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..errors import BadOptionError, HeadIndexError, PosbenchError
from ..limits import MAX_INDEX
from ..options import build, option, parse_spec
from ..protocols import ActivationEdit, digest
from ..sites import Capture, Edit

if TYPE_CHECKING:  # pragma: no cover
    from ..batch import Batch
    from ..model import HookedModel

MODES = ("zero", "mean", "resample")
REFERENCE_BATCH = 8  # reference texts per forward pass when computing means
REFERENCE_TOKENS = 256  # mean: positions with a position-matched mean (the pooled mean after them)


def layer_head(text: str) -> tuple[int, int | None] | None:
    """``"3.1"`` as (3, 1), ``"3.*"`` as (3, None) (every head of layer 3), or None when the text
    is not LAYER.HEAD / LAYER.* within bounds."""
    layer, sep, head = text.strip().partition(".")
    head = head.strip()
    if not sep or not layer.strip().isdigit() or not (head.isdigit() or head == "*"):
        return None
    pair = int(layer), (None if head == "*" else int(head))
    return pair if max(x for x in pair if x is not None) <= MAX_INDEX else None


def _head_problem(text: str) -> str | None:
    if layer_head(text) is None:
        return (f"malformed head '{text}': write LAYER.HEAD or LAYER.* with indices 0-{MAX_INDEX}, "
                "e.g. ablate-heads:3.1,4.*;mode=mean")
    return None


@dataclass
class HeadAblationConfig:
    """The options of ``--intervention ablate-heads:HEADS[;key=value...]``."""

    heads: tuple[str, ...] = option((), nonempty=True, check=_head_problem, form="LAYER.HEAD|LAYER.*",
                                    help="heads to ablate, e.g. 3.1,4.*")
    mode: str = option("zero", choices=MODES, help="zero, mean (position-matched, over the reference texts) or resample")
    kv: bool = option(False, help="heads are key/value heads: ablate every query head reading each")
    seed: int = option(0, min=0, help="resample: the order in which reference texts feed the rows")
    ref: str | None = option(None, help="mean/resample: a .txt or .jsonl file of reference texts (default: the natural-text corpus)")


def _real_index(batch: "Batch", device) -> torch.Tensor:
    """[B, T]: each column's index among its row's real tokens (left pads get 0)."""
    cols = torch.arange(batch.width, device=device)[None]
    return (cols - batch.offsets.to(device)[:, None]).clamp(min=0)


def _position_sums(z: torch.Tensor, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (right padding: column = position): z summed over real tokens, and counts."""
    mask = ctx.batch.attention_mask.to(z.dtype)
    return (z * mask[:, :, None, None]).sum(0).cpu(), mask.sum(0).cpu()


def _keep(z: torch.Tensor, ctx) -> torch.Tensor:
    return z.cpu()


@dataclass
class _MeanZ:
    """Position-matched means [T_ref, H, d] and the pooled mean [H, d] of one layer."""

    by_position: torch.Tensor
    pooled: torch.Tensor

    def table(self, width: int) -> torch.Tensor:
        """Means for positions 0 .. width-1 (the pooled mean past the reference)."""
        have = self.by_position.shape[0]
        if width <= have:
            return self.by_position[:width]
        return torch.cat([self.by_position, self.pooled.expand(width - have, *self.pooled.shape)])


class HeadAblation(ActivationEdit):
    name = "ablate-heads"
    showcase = ("sinks", "0.*")  # does the sink still form without layer 0's heads?
    summary = "replace the output z of attention heads (before W_O) by zero, its mean, or a resample"
    spec_help = ("LAYER.HEAD|LAYER.*[,...][;mode=zero|mean|resample][;kv=true][;seed=N][;ref=FILE]  "
                 "e.g. ablate-heads:3.1,4.*;mode=mean. mean: position-matched mean of z over the reference "
                 "texts (default: the natural-text corpus; pooled past their length); resample: z at the same "
                 "positions of a reference text picked by seed; kv=true: HEAD is a key/value head and every "
                 "query head reading it is ablated")

    Config = HeadAblationConfig

    def __init__(
        self,
        heads: Any,
        mode: str = "zero",
        kv: bool = False,
        reference: Sequence[str] | str | None = None,
        seed: int = 0,
    ):
        """``heads``: (layer, head) pairs (head ``"*"`` or None: the whole layer), one pair, or
        text like ``"3.1,4.*"``; ``reference``: texts or a .txt/.jsonl file (mean / resample)."""
        if isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int):
            heads = [heads]
        if isinstance(heads, (list, tuple)):
            heads = [f"{h[0]}.{'*' if h[1] in (None, '*') else h[1]}" if isinstance(h, (list, tuple)) else h
                     for h in heads]
        owner = f"intervention '{self.name}'"
        config = build(self.Config, {"heads": heads, "mode": mode, "kv": kv, "seed": seed}, owner)
        pairs = {layer_head(h) for h in config.heads}
        self.whole_layers = sorted({layer for layer, head in pairs if head is None})
        self.heads = sorted((layer, head) for layer, head in pairs if head is not None)
        self.mode, self.kv, self.seed = config.mode, config.kv, config.seed
        if isinstance(reference, str):
            from ..data.texts import load_texts

            self.reference_source, self._texts = reference, load_texts(reference)
        elif reference is not None:
            self._texts = [str(t) for t in reference]
            if not self._texts or not all(t.strip() for t in self._texts):
                raise BadOptionError("ablate-heads reference texts must be a non-empty list of non-empty texts")
            self.reference_source = f"{len(self._texts)} given texts ({digest(self._texts)})"
        else:
            self.reference_source, self._texts = "natural-text corpus", None
        self._means: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {layer: _MeanZ}
        self._sources: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> resample cache

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"heads": part}

    @classmethod
    def from_spec(cls, arg: str) -> "HeadAblation":
        owner = f"intervention '{cls.name}'"
        values = parse_spec(cls.Config, arg, owner, bare=cls.bare_spec, grammar=cls.spec_help)
        reference = values.pop("ref", None)
        return cls(values.pop("heads", ()), reference=reference, **values)

    # ------------------------------------------------------------------ description
    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "heads": [f"{layer}.{head}" for layer, head in self.heads] + [f"{layer}.*" for layer in self.whole_layers],
            "mode": self.mode,
        }
        if self.kv:
            out["kv"] = True
        if self.mode != "zero":
            out["reference"] = self.reference_source
        if self.mode == "resample":
            out["seed"] = self.seed
        return out

    def reference_texts(self) -> list[str]:
        if self._texts is None:
            from ..data.texts import natural_texts

            self._texts = natural_texts()
        return self._texts

    # ------------------------------------------------------------------ heads
    def query_heads(self, model: "HookedModel") -> dict[int, list[int]]:
        """The query heads ablated in each layer (``kv=True`` expands kv heads to their groups)."""
        out: dict[int, set[int]] = {layer: set(range(model.n_heads)) for layer in self.whole_layers}
        for layer, head in self.heads:
            group = [q for q in range(model.n_heads) if model.card.kv_head_of(q) == head] if self.kv else [head]
            out.setdefault(layer, set()).update(group)
        return {layer: sorted(heads) for layer, heads in sorted(out.items())}

    def validate(self, model: "HookedModel") -> None:
        for layer in [layer for layer, _ in self.heads] + self.whole_layers:
            if not 0 <= layer < model.n_layers:
                raise HeadIndexError(
                    f"layer {layer} out of range: {model.model_id} has {model.n_layers} layers "
                    f"(0-{model.n_layers - 1})"
                )
        limit, kind = (model.n_kv_heads, "key/value heads") if self.kv else (model.n_heads, "query heads")
        for _, head in self.heads:
            if not 0 <= head < limit:
                raise HeadIndexError(
                    f"{'kv ' if self.kv else ''}head {head} out of range: {model.model_id} has {limit} {kind} "
                    f"per layer (0-{limit - 1})"
                )
        if self.mode == "mean":
            self.mean_z(model)

    # ------------------------------------------------------------------ reference activations
    def _reference_run(self, model: "HookedModel", sequences: list[list[int]], capture: Capture):
        """The plain model (no interventions) on reference sequences, right-padded."""
        model.check_lengths(sequences, "reference text")
        for start in range(0, len(sequences), REFERENCE_BATCH):
            batch = model.batch(sequences[start : start + REFERENCE_BATCH], "right")
            yield model.backend.run(batch, [capture]).captured[capture.name]

    def mean_z(self, model: "HookedModel") -> dict[int, _MeanZ]:
        """Per ablated layer, the position-matched and pooled means of z (computed once per model)."""
        if model not in self._means:
            layers = tuple(self.query_heads(model))
            sequences = [s[:REFERENCE_TOKENS] for s in model.tokenize(self.reference_texts())]
            sums: dict[int, torch.Tensor] = {}
            counts: dict[int, torch.Tensor] = {}
            for captured in self._reference_run(model, sequences, Capture("z_sums", "z", _position_sums, layers)):
                for layer, (s, n) in captured.items():
                    width = max(s.shape[0], sums[layer].shape[0] if layer in sums else 0)
                    sums[layer] = _pad(sums.get(layer), width, s) + _pad(s, width)
                    counts[layer] = _pad(counts.get(layer), width, n) + _pad(n, width)
            means = {}
            for layer in layers:
                s, n = sums[layer].double(), counts[layer].double()
                pooled = s[1:].sum(0) / n[1:].sum() if n.shape[0] > 1 else s[0] / n[0]
                means[layer] = _MeanZ((s / n[:, None, None]).float(), pooled.float())
            self._means[model] = means
        return self._means[model]

    def edit_batch(self, batch: "Batch", model: "HookedModel") -> "Batch":
        """Resample mode: make sure the resample sources cover this batch (the batch itself is
        returned unchanged). Runs before the forward pass, so no model run nests inside a hook."""
        if self.mode == "resample":
            self._resample_sources(model, n_rows=batch.size, width=batch.width)
        return batch

    def _resample_sources(self, model: "HookedModel", n_rows: int, width: int) -> dict[str, Any]:
        """Source token sequences and their z ([S, width, H, d] per ablated layer), cached and
        recomputed only when a batch needs more rows or positions."""
        texts = self.reference_texts()
        n_sources = min(n_rows + 1, len(texts))  # one spare: a row may have to skip its own text
        cached = self._sources.get(model)
        if cached is not None and cached["n"] >= n_sources and cached["width"] >= width:
            return cached
        if cached is not None:
            n_sources, width = max(n_sources, cached["n"]), max(width, cached["width"])
        order = list(range(len(texts)))
        random.Random(self.seed).shuffle(order)
        sequences = []
        for s in range(n_sources):
            joined = "\n\n".join(texts[order[(s + j) % len(texts)]] for j in range(len(texts)))
            ids = model.tokenize([joined])[0]
            if len(ids) < width:
                raise PosbenchError(
                    f"resample ablation needs {width} tokens of reference text, but all reference texts "
                    f"together give {len(ids)} on {model.model_id}: pass more or longer texts (ref=FILE)"
                )
            sequences.append(ids[:width])
        layers = tuple(self.query_heads(model))
        z: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for captured in self._reference_run(model, sequences, Capture("z", "z", _keep, layers)):
            for layer, value in captured.items():
                z[layer].append(value)
        cached = {"n": n_sources, "width": width, "tokens": sequences, "z": {k: torch.cat(v) for k, v in z.items()}}
        self._sources[model] = cached
        return cached

    def resample_assignment(self, model: "HookedModel", batch: "Batch") -> list[int]:
        """The source each row reads: ``row mod n_sources``, skipping a source equal to the row."""
        return _assign(self._resample_sources(model, batch.size, batch.width), batch)

    # ------------------------------------------------------------------ edits
    def edits(self, model: "HookedModel") -> list[Edit]:
        means = self.mean_z(model) if self.mode == "mean" else None

        def make(layer: int, heads: list[int]):
            def zero(z: torch.Tensor, ctx) -> torch.Tensor:  # [batch, pos, heads, d_head]
                out = z.clone()
                out[:, :, heads, :] = 0.0
                return out

            def mean(z: torch.Tensor, ctx) -> torch.Tensor:
                table = means[layer].table(z.shape[1]).to(z.device, z.dtype)  # [T, H, d]
                out = z.clone()
                out[:, :, heads] = table[_real_index(ctx.batch, z.device)][:, :, heads]
                return out

            def resample(z: torch.Tensor, ctx) -> torch.Tensor:
                sources = self._sources.get(model)  # prepared by edit_batch: never run the model in a hook
                if sources is None or sources["n"] < min(z.shape[0] + 1, len(self.reference_texts())) \
                        or sources["width"] < z.shape[1]:
                    raise PosbenchError("resample sources were not prepared for this batch: run it with model.run")
                rows = torch.tensor(_assign(sources, ctx.batch))
                source = sources["z"][layer][rows].to(z.device, z.dtype)  # [B, width, H, d]
                idx = _real_index(ctx.batch, z.device)[:, :, None, None].expand(-1, -1, *source.shape[2:])
                out = z.clone()
                out[:, :, heads] = source.gather(1, idx)[:, :, heads]
                return out

            return {"zero": zero, "mean": mean, "resample": resample}[self.mode]

        return [Edit("z", make(layer, heads), layers=(layer,)) for layer, heads in self.query_heads(model).items()]


def _assign(sources: dict[str, Any], batch: "Batch") -> list[int]:
    out = []
    n = sources["n"]
    for b in range(batch.size):
        row = batch.input_ids[b, batch.real_columns(b)].tolist()
        s = b % n
        if n > 1 and sources["tokens"][s][: len(row)] == row:
            s = (s + 1) % n
        out.append(s)
    return out


def _pad(x: torch.Tensor | None, width: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` zero-padded along dim 0 to ``width`` rows (zeros shaped like ``like`` for None)."""
    if x is None:
        return torch.zeros((width, *like.shape[1:]), dtype=like.dtype)
    if x.shape[0] == width:
        return x
    return torch.cat([x, torch.zeros((width - x.shape[0], *x.shape[1:]), dtype=x.dtype)])
