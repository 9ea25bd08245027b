"""The refusal direction (difference in means) and linear probes, per layer and template position.

Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction": the candidate
direction at layer l and post-instruction position i is ``r = mean(harmful) - mean(harmless)`` of
the residual stream entering block l (``resid_pre``), computed in float64. Beside it, a logistic
regression on standardised features per (layer, position) (scikit-learn) gives a probe
probability, as Yin et al. 2025 ("Refusal Falls off a Cliff") read refusal with a linear prober.

``RefusalDirection`` is what a run selects and stores: the direction at the chosen position for
every layer, the probe weights there, and where it came from. ``from_result`` / ``from_store`` /
``load`` rebuild it, and the ``ablate-direction`` / ``add-direction`` interventions use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from posbench.errors import BadOptionError, MalformedDataError, PosbenchError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from posbench.protocols import ProbeResult


# ---------------------------------------------------------------------------- fitting
def difference_in_means(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """``mean(harmful) - mean(harmless)`` over the first axis, in float64 (Arditi et al.)."""
    return harmful.double().mean(0) - harmless.double().mean(0)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 = harmful); NaN with one class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def cohens_d(scores: np.ndarray, labels: np.ndarray) -> float:
    """Standardised gap of the class means: (mean_1 - mean_0) / pooled standard deviation
    (0 when both classes are identical, +-inf when they differ without spread)."""
    a, b = scores[labels == 1], scores[labels == 0]
    gap = float(a.mean() - b.mean())
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / max(len(a) + len(b) - 2, 1))
    if pooled > 0:
        return gap / float(pooled)
    return 0.0 if gap == 0 else math.copysign(math.inf, gap)


@dataclass(frozen=True)
class LinearProbe:
    """A logistic-regression probe folded back to raw features: ``p = sigmoid(x @ weight + bias)``.

    Fitted on standardised features (``StandardScaler`` then ``LogisticRegression``), then the
    scaling is folded into the weights so the probe applies to raw residual vectors."""

    weight: np.ndarray  # [D]
    bias: float

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, C: float = 1.0, seed: int = 0) -> "LinearProbe":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(features)
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(scaler.transform(features), labels)
        coef = clf.coef_[0] / scaler.scale_
        return cls(coef.astype(np.float64), float(clf.intercept_[0] - coef @ scaler.mean_))

    def logit(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight + self.bias

    def probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(features)))


def candidate_table(
    train: dict[str, torch.Tensor], val: dict[str, torch.Tensor], positions: list[int], tokens: list[str],
    C: float = 1.0, seed: int = 0,
) -> tuple[pd.DataFrame, torch.Tensor, dict[int, LinearProbe]]:
    """Every candidate (layer, position): the difference-in-means direction and how well its
    projection separates the validation split; and per layer a probe at the last template
    position (the token before the answer, where Yin et al. read refusal), with its validation
    accuracy and AUROC (the probe columns are NaN at the other positions).

    ``train`` / ``val`` map ``"harmful"`` / ``"harmless"`` to activations [n, P, L, D] (P template
    positions ``positions``, e.g. -5..-1). Returns (table, directions [P, L, D] float64, probes
    by layer)."""
    directions = difference_in_means(train["harmful"], train["harmless"])  # [P, L, D]
    n_pos, n_layers, _ = directions.shape
    y_train = np.r_[np.ones(len(train["harmful"])), np.zeros(len(train["harmless"]))]
    y_val = np.r_[np.ones(len(val["harmful"])), np.zeros(len(val["harmless"]))]
    rows, probes = [], {}
    for p in range(n_pos):
        for layer in range(n_layers):
            x_train = torch.cat([train["harmful"][:, p, layer], train["harmless"][:, p, layer]]).double().numpy()
            x_val = torch.cat([val["harmful"][:, p, layer], val["harmless"][:, p, layer]]).double().numpy()
            r = directions[p, layer].numpy()
            norm = float(np.linalg.norm(r))
            unit = r / norm if norm > 0 else r
            proj_train, proj_val = x_train @ unit, x_val @ unit
            midpoint = 0.5 * (proj_train[y_train == 1].mean() + proj_train[y_train == 0].mean())
            row = {
                "layer": layer, "position": positions[p], "token": tokens[p], "direction_norm": norm,
                "dim_val_auroc": auroc(proj_val, y_val),
                "dim_val_accuracy": float(((proj_val > midpoint) == y_val).mean()),
                "dim_val_d": cohens_d(proj_val, y_val),
                "probe_val_accuracy": math.nan, "probe_val_auroc": math.nan, "probe_bias": math.nan,
            }
            if positions[p] == -1:
                probe = probes[layer] = LinearProbe.fit(x_train, y_train, C=C, seed=seed)
                prob_val = probe.probability(x_val)
                row.update(probe_val_accuracy=float(((prob_val > 0.5) == y_val).mean()),
                           probe_val_auroc=auroc(prob_val, y_val), probe_bias=probe.bias)
            rows.append(row)
    return pd.DataFrame(rows), directions, probes


def rank_by_separation(candidates: pd.DataFrame, max_layer: float) -> pd.DataFrame:
    """Eligible candidates (layer >= 1 and layer < ``max_layer``, Arditi's late-layer filter)
    ordered by validation separation: AUROC of the direction's projection, then Cohen's d."""
    eligible = candidates[(candidates.layer >= 1) & (candidates.layer < max_layer)]
    if eligible.empty:
        eligible = candidates
    return eligible.sort_values(["dim_val_auroc", "dim_val_d", "layer"], ascending=[False, False, True])


# ---------------------------------------------------------------------------- the stored direction
@dataclass
class RefusalDirection:
    """A refusal direction: ``vector`` (the raw difference in means at ``layer``, ``position``),
    ``per_layer`` (the difference in means at ``position`` for every layer, [L, D]), and the probe
    of ``layer`` (``probe_weight`` [D], ``probe_bias``; fitted at the last template position) for
    probe probabilities.

    ``unit`` is what directional ablation removes; ``vector`` what activation addition adds."""

    model_id: str
    layer: int
    position: int
    per_layer: torch.Tensor  # [L, D] float64
    probe_weight: torch.Tensor  # [D] float64
    probe_bias: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def vector(self) -> torch.Tensor:
        return self.per_layer[self.layer]

    @property
    def unit(self) -> torch.Tensor:
        return unit(self.vector)

    @property
    def d_model(self) -> int:
        return int(self.per_layer.shape[-1])

    def at_layer(self, layer: int) -> torch.Tensor:
        """The difference in means at this direction's position, measured at ``layer``."""
        if not 0 <= layer < len(self.per_layer):
            raise BadOptionError(f"layer {layer} out of range: the direction has layers 0-{len(self.per_layer) - 1}")
        return self.per_layer[layer]

    def project(self, resid: torch.Tensor) -> torch.Tensor:
        """Scalar projection of residual vectors [..., D] on the unit direction."""
        return resid.double() @ self.unit.to(resid.device)

    def probability(self, resid: torch.Tensor) -> torch.Tensor:
        """The probe's refusal probability for residual vectors [..., D] at ``layer``."""
        return torch.sigmoid(resid.double() @ self.probe_weight.to(resid.device) + self.probe_bias)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_result(cls, result: "ProbeResult", layer: int | None = None) -> "RefusalDirection":
        """The direction a refusal run selected (or the one at ``layer``, same position)."""
        if result.probe != "refusal" or "direction" not in result.tables:
            raise BadOptionError(f"run {result.run_id or ''} is a '{result.probe}' run: a refusal direction "
                                 "comes from a 'refusal' run (posbench run refusal ...)")
        table = result.tables["direction"].sort_values(["layer", "dim"])
        n_layers = int(table.layer.max()) + 1
        per_layer = torch.tensor(table.direction.to_numpy(), dtype=torch.float64).reshape(n_layers, -1)
        weights = torch.tensor(table.probe_weight.to_numpy(), dtype=torch.float64).reshape(n_layers, -1)
        chosen = int(result.summary["layer"]) if layer is None else int(layer)
        position = int(result.summary["position"])
        cand = result.tables["candidates"]
        bias = cand[(cand.layer == chosen) & (cand.position == -1)].probe_bias
        meta = {"source": f"run {result.run_id}" if result.run_id else "result", "run_id": result.run_id,
                "prompt_format": result.summary.get("prompt_format"), "selection": result.config.get("selection")}
        out = cls(result.model_id, chosen, position, per_layer, weights[chosen], float(bias.iloc[0]), meta)
        out.at_layer(chosen)
        return out

    @classmethod
    def from_store(cls, run_id: str, store: Any = None, layer: int | None = None) -> "RefusalDirection":
        """Load from a results store (a ``Store``, a path, or None for the default store)."""
        from posbench.store import Store

        if not isinstance(store, Store):
            store = Store(store, readonly=True)
        try:
            result = store.load(run_id)
        except StoreError as err:
            raise StoreError(f"{err} (a refusal direction needs the id of a 'refusal' run)") from None
        return cls.from_result(result, layer=layer)

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "layer": self.layer, "position": self.position,
                "per_layer": self.per_layer.tolist(), "probe_weight": self.probe_weight.tolist(),
                "probe_bias": self.probe_bias, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        """Write the direction as JSON (``load`` reads it back; ``file=PATH`` on the command line)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RefusalDirection":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out = cls(str(data["model_id"]), int(data["layer"]), int(data["position"]),
                      torch.tensor(data["per_layer"], dtype=torch.float64),
                      torch.tensor(data["probe_weight"], dtype=torch.float64), float(data["probe_bias"]),
                      dict(data.get("meta", {})))
        except FileNotFoundError:
            raise MalformedDataError(f"no direction file {path}: write one with RefusalDirection.save(path)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise MalformedDataError(f"{path} is not a refusal direction file ({type(err).__name__}: {err}): "
                                     "write one with RefusalDirection.save(path)") from None
        out.meta.setdefault("source", f"file {path}")
        return out

    def check_model(self, model) -> None:
        """A clear error when this direction was not measured on ``model``."""
        if self.d_model != model.card.d_model:
            raise PosbenchError(f"the refusal direction has {self.d_model} dimensions but {model.model_id}'s residual "
                                f"stream has {model.card.d_model}: use a direction measured on this model")
        if self.model_id != model.model_id:
            raise PosbenchError(f"the refusal direction was measured on {self.model_id}, not {model.model_id}: "
                                "run `posbench run refusal` on this model first")

    def __repr__(self) -> str:
        return (f"RefusalDirection({self.model_id!r}, layer={self.layer}, position={self.position}, "
                f"norm={float(self.vector.norm()):.4g}, {self.meta.get('source', '')})")


def unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.double().norm()
    if norm == 0:
        raise BadOptionError("the direction is the zero vector: it has no unit direction")
    return vector.double() / norm
