"""Experiments: methods that compare two runs of a model (clean and corrupted), so they are not
interventions. ``patching`` is activation and attention patching (docs/patching.md)."""

from .patching import (
    PATCH_SITES,
    ActivationPatch,
    Patch,
    PatchPairs,
    PatchResult,
    last_position,
    logit_diff,
    patch_grid,
    patch_sweep,
    prepare_pairs,
    run_patches,
)
from .views import patch_heatmap

__all__ = ["PATCH_SITES", "ActivationPatch", "Patch", "PatchPairs", "PatchResult", "last_position", "logit_diff",
           "patch_grid", "patch_heatmap", "patch_sweep", "prepare_pairs", "run_patches"]
