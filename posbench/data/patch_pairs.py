"""``patch-pairs``: clean and corrupted prompt pairs for activation patching.

A row is ``{"clean", "corrupted", "answer", "wrong"}`` (plus optional ``id`` and ``task``): on the
clean prompt the model should prefer ``answer`` over ``wrong``; the corrupted prompt changes one
detail so that the preference flips. The default patching metric is the logit difference
``logit[answer] - logit[wrong]`` at the last position. Clean and corrupted prompts must tokenize
to the same length (checked per model when patching, since it depends on the tokenizer).

``PatchPairsDataset.generate(seed)`` writes two project-made tasks:

* ``ioi`` (indirect object identification, Wang et al. 2022, "Interpretability in the Wild"):
  "When Mary and John went to the store, John gave a drink to" -> " Mary" (the indirect object);
  the corrupted prompt repeats the other name ("..., Mary gave a drink to"), so " John" is right.
* ``kv`` (key-value retrieval): four ``key: colour`` lines, then a key and a colon
  ("482: pink\n913: blue\n275: gold\n641: navy\n913:" -> " blue"); the corrupted prompt asks
  another key of the same lines ("...\n275:", " gold" is right). Of the formats we tried on
  SmolLM2-135M (prose "The code 913 is", "913 is blue.", "box 913 holds the blue ball") this one
  gives the largest clean/corrupted gap. Only the asked key changes, so positions align one to one and the patch
  localises where the model reads the key and fetches its value.

One IOI template; names and colours of four letters, single tokens on the embedded models'
tokenizers; keys of three digits: every pair of a task has the same token length on those
tokenizers and on byte-level ones, so all of them can be patched together.
"""

from __future__ import annotations

import random

from .base import Dataset, Field, non_empty

IOI_TEMPLATE = "When {a} and {b} went to the store, {s} gave a drink to"
NAMES = ("Mary", "John", "Anna", "Paul", "Kate", "Mark", "Lisa", "Jack", "Emma", "Adam", "Sara", "Luke",
         "Rose", "Carl", "Jane", "Dave")
COLOURS = ("blue", "pink", "gray", "gold", "navy", "lime", "jade", "mint")
KV_PAIRS = 4  # key-value pairs in a kv context
TASKS = ("ioi", "kv")


def _differs(row: dict) -> str | None:
    if row["clean"] == row["corrupted"]:
        return '"corrupted" equals "clean": the corrupted prompt must change something'
    if row["answer"] == row["wrong"]:
        return '"wrong" equals "answer": the metric compares two different answers'
    if "task" in row and not row["task"].strip():
        return '"task" is empty'
    return None


class PatchPairsDataset(Dataset):
    name = "patch-pairs"
    description = "clean/corrupted prompt pairs with the answer each favours (activation patching)"
    fields = (
        Field("clean", str, check=non_empty, help="the prompt whose behaviour is patched in"),
        Field("corrupted", str, check=non_empty, help="the same prompt with one detail changed"),
        Field("answer", str, check=non_empty, help="the clean prompt's answer, e.g. ' Mary'"),
        Field("wrong", str, check=non_empty, help="the corrupted prompt's answer, e.g. ' John'"),
        Field("id", str, required=False),
        Field("task", str, required=False),
    )
    example = ('{"clean": "When Mary and John went to the store, John gave a drink to", '
               '"corrupted": "When Mary and John went to the store, Mary gave a drink to", '
               '"answer": " Mary", "wrong": " John"}')

    @classmethod
    def check_row(cls, row):
        return _differs(row)

    @classmethod
    def generate(cls, seed: int = 0, n_ioi: int = 8, n_kv: int = 8) -> "PatchPairsDataset":
        """``n_ioi`` IOI pairs and ``n_kv`` key-value pairs from a seeded ``random.Random``."""
        rng = random.Random(seed)
        rows = []
        for i in range(n_ioi):
            a, b = rng.sample(NAMES, 2)
            rows.append({
                "id": f"ioi-{i:03d}", "task": "ioi",
                "clean": IOI_TEMPLATE.format(a=a, b=b, s=b), "corrupted": IOI_TEMPLATE.format(a=a, b=b, s=a),
                "answer": f" {a}", "wrong": f" {b}",
            })
        for i in range(n_kv):
            keys = rng.sample(range(100, 1000), KV_PAIRS)
            colours = rng.sample(COLOURS, KV_PAIRS)
            asked, other = rng.sample(range(KV_PAIRS), 2)
            context = "".join(f"{k}: {c}\n" for k, c in zip(keys, colours))
            rows.append({
                "id": f"kv-{i:03d}", "task": "kv",
                "clean": f"{context}{keys[asked]}:", "corrupted": f"{context}{keys[other]}:",
                "answer": f" {colours[asked]}", "wrong": f" {colours[other]}",
            })
        return cls(rows, source=f"generated:patch-pairs(seed={seed}, n_ioi={n_ioi}, n_kv={n_kv})")
