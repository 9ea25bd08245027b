"""``mdqa``: multi-document question answering over a world of invented entities (the protocol of
Liu et al. 2023, "Lost in the Middle"), with the gold document swept over every slot.

Every entity is fictional: towns, people, animal species and machines with names built from
syllables, and attributes (founding year, main export, river, inventor, colour, diet, ...) drawn
at random, so no answer can come from what a model already knows. A question asks one attribute
of one entity; the gold document states it once, in a sentence drawn from several templates, among
other facts about the entity; each distractor is a document about another entity of the same kind
that states its own, different value of the same attribute. Those values are the forced-choice
candidates.

A row is ``{"id", "question", "documents": [{"title", "text", "value"}, ...], "gold", "kind",
"attribute"}``: ``value`` is the answer the document gives to the question (the gold document's is
the answer), ``kind`` and ``attribute`` are optional labels. ``datasets/mdqa.jsonl`` ships
``MDQADataset.generate(seed=0)``: 60 questions of 20 documents (1 gold, 19 distractors), 55-90
words each.

Prompt (``row_items``)::

    Answer the question using only the documents below. Most of them are about something else.

    Document (Title: Velmora) Velmora is a small town in ...      <- one segment per document
    Document (Title: Drathen) ...

    Question: In what year was Velmora founded?
    Answer:

**Documents carry no number**, only their title: Liu et al.'s ``Document [i]`` index would change
with the slot, so a segment's text would depend on where it stands; without it every order (PINE's
included) shows the same segments. Each segment is one line ending in a newline. The choices are
``" " + value`` of every document in row order; ``gold`` is the answer's index, the same for every
slot, and ``meta["gold_value"]`` holds the answer for scoring greedy generations by substring.

Validation (``check_row``): values are distinct, every document states its own value (as whole
words, ignoring case), no other document and not the question mentions the answer. Generated rows
are stricter: every value appears exactly once, in its own document.

Sweep: ``MDQADataset.row_items(row, n_segments=None, slots=None)``: keep the first ``n_segments``
documents (the gold one always among them), then move the gold document to each slot in ``slots``
(None: every slot; an int k: k evenly spaced slots; a list: those slots).
``dataset.scored_items(...)`` does every row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..errors import BadOptionError
from .base import Field, non_empty
from .segments import ScoredItem
from .sweeps import (
    PositionBiasDataset, duplicate, gold_slot_items, index_problem, keep_with_gold, mentions, one_line,
)

PREFIX = "Answer the question using only the documents below. Most of them are about something else.\n\n"
SUFFIX = "\nQuestion: {question}\nAnswer:"


def document_line(title: str, text: str) -> str:
    """One segment: ``"Document (Title: <title>) <text>\\n"`` (no number: see the module doc)."""
    return f"Document (Title: {title}) {text}\n"


# ---------------------------------------------------------------------------- invented names
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th",
           "v", "z", "sh", "tr", "w")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
_ENDINGS = ("n", "r", "l", "th", "s", "nd", "m", "ra", "na", "la", "ven", "dor", "rin", "sk", "wen", "mar")


class Namer:
    """Invented names built from syllables, never the same one twice."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _fresh(self, make: Callable[[], str]) -> str:
        while (name := make()) in self.used:
            pass
        self.used.add(name)
        return name

    def _syllables(self, n: int) -> str:
        return "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))

    def word(self) -> str:
        """A place-like name: two syllables and an ending ("Velomar", "Kraithen")."""
        return self._fresh(lambda: (self._syllables(2) + self.rng.choice(_ENDINGS)).capitalize())

    def person(self) -> str:
        """A given name and a surname, the surname never used before ("Tira Drouvesk")."""
        given = (self._syllables(2) + self.rng.choice(("", "n", "s", "l"))).capitalize()
        return f"{given} {self.word()}"


# ---------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class Entity:
    title: str  # document title: "Korrith finch"
    name: str  # full mention inside a sentence: "the Korrith finch"
    refs: tuple[str, ...]  # ways a sentence refers to it: the name, "the finch", ...
    type: str  # "town", "finch", "engine", ...


@dataclass(frozen=True)
class Attribute:
    name: str
    question: str  # with {name}
    statements: tuple[str, ...]  # with {Ref}/{ref} (the entity), {value}/{Value} and {type}
    values: tuple[str, ...] | Callable[[Namer], str]  # a pool to draw from, or a name to invent

    def draw(self, rng: random.Random, namer: Namer) -> str:
        return rng.choice(self.values) if isinstance(self.values, tuple) else self.values(namer)


@dataclass(frozen=True)
class Kind:
    name: str
    entity: Callable[[random.Random, Namer], Entity]
    openers: tuple[str, ...]  # the first sentence, with {Name}, {type} / {a_type} and {region}
    attributes: tuple[Attribute, ...]
    fillers: tuple[str, ...]  # sentences that state no attribute


# Pools of attribute values. Names (rivers, birthplaces, inventors) come from ``Namer``, years from ``_years``.
EXPORTS = ("copper", "wool", "glass beads", "smoked fish", "barley", "timber", "clay pots", "honey", "linen", "rope",
           "leather boots", "cider", "slate", "paper", "candles", "cheese", "dyes", "iron nails", "saddles",
           "baskets", "tea", "salt", "wine", "bricks", "soap", "felt hats", "olive oil", "furniture", "carpets",
           "lace")
PROFESSIONS = ("clockmaker", "glassblower", "surveyor", "bookbinder", "cartographer", "beekeeper", "potter",
               "stonemason", "weaver", "shipwright", "botanist", "chemist", "miller", "printer", "tailor",
               "blacksmith", "carpenter", "brewer", "locksmith", "lens grinder", "rope maker", "saddler", "tanner",
               "jeweller", "baker", "dyer")
INVENTIONS = ("a folding loom", "a tide clock", "a wind-powered saw", "a glass beehive", "a rope-twisting wheel",
              "a water-cooled kiln", "a brass rain gauge", "a pedal lathe", "a floating lantern",
              "a spring-loaded plough", "a copper diving bell", "a clockwork oven", "a pocket sundial",
              "a rolling bridge", "a salt evaporator", "a night compass", "a hand-cranked printing press",
              "a double-walled ice box", "a sail-powered cart", "a cork life vest", "a lens-grinding wheel",
              "a counting frame", "a signal lamp", "a seed-sorting sieve")
COLOURS = ("amber", "azure", "beige", "black", "bronze", "brown", "copper", "crimson", "cream", "emerald", "golden",
           "grey", "indigo", "ivory", "lavender", "lilac", "maroon", "orange", "pink", "purple", "rust", "saffron",
           "scarlet", "silver", "teal", "turquoise", "violet", "white", "yellow")
HABITATS = ("salt marshes", "pine forests", "limestone caves", "mountain lakes", "river deltas", "sand dunes",
            "bamboo thickets", "peat bogs", "sea cliffs", "birch woods", "high meadows", "mangrove swamps",
            "volcanic slopes", "reed beds", "desert canyons", "heathland", "rocky islands", "tidal pools",
            "cloud forests", "chalk grasslands", "frozen tundra", "hot springs", "flooded meadows", "oak woodland")
DIETS = ("lichen", "reed seeds", "small fish", "snails", "moss", "fallen fruit", "earthworms", "pollen",
         "mosquito larvae", "water weeds", "ants", "clover", "acorns", "shrimp", "grass seeds", "mushrooms",
         "tree sap", "spiders", "crickets", "berries", "nectar", "algae", "flies", "bark")
PURPOSES = ("grinding grain", "measuring rainfall", "lifting water", "weaving rugs", "drying fish", "sorting coins",
            "cutting ice", "pressing olives", "spinning wool", "sharpening blades", "marking roads", "mixing paint",
            "testing metals", "pumping air into mines", "combing flax", "polishing lenses", "splitting logs",
            "sawing stone", "bottling cider", "rolling dough", "hauling boats", "printing maps", "threshing wheat",
            "winding thread")
MATERIALS = ("oak", "brass", "cast iron", "walnut", "bamboo", "tin", "pewter", "beech", "bronze", "copper", "steel",
             "zinc", "cedar", "maple", "horn", "cork", "elm", "birch", "willow", "clay", "granite", "lead")


def _years(first: int, last: int) -> tuple[str, ...]:
    return tuple(str(year) for year in range(first, last + 1))


def _town(rng: random.Random, namer: Namer) -> Entity:
    name = namer.word()
    return Entity(name, name, (name, name, "the town"), "town")  # the name twice as often


def _person(rng: random.Random, namer: Namer) -> Entity:
    name = namer.person()
    return Entity(name, name, (name, name.split()[1]), "person")


def _named_thing(*types: str) -> Callable[[random.Random, Namer], Entity]:
    def make(rng: random.Random, namer: Namer) -> Entity:
        kind = rng.choice(types)
        title = f"{namer.word()} {kind}"
        return Entity(title, f"the {title}", (f"the {title}", f"the {kind}", f"this {kind}"), kind)
    return make


KINDS = (
    Kind(
        "town", _town,
        openers=("{Name} is a small town in the {region} valley.",
                 "{Name} is an old market town in the province of {region}.",
                 "{Name} is a quiet town on the edge of the {region} hills."),
        attributes=(
            Attribute("founded", "In what year was {name} founded?", (
                "{Ref} was founded in {value}.",
                "Records show that {ref} was founded in {value}.",
                "Settlers founded {ref} in {value}, around a small ferry crossing.",
                "{Ref} dates its founding to {value}, when the first houses were built.",
            ), values=_years(1150, 1890)),
            Attribute("export", "What is the main export of {name}?", (
                "The main export of {ref} is {value}.",
                "{Ref} earns most of its income by exporting {value}.",
                "Merchants from {ref} are known far and wide for {value}, its main export.",
                "Most of the trade in {ref} rests on its main export, {value}.",
            ), values=EXPORTS),
            Attribute("river", "On which river does {name} stand?", (
                "{Ref} stands on the {value} River.",
                "{Ref} lies on the banks of the {value} River.",
                "The {value} River flows through the middle of {ref}.",
                "{Ref} grew up around a bridge over the {value} River.",
            ), values=Namer.word),
        ),
        fillers=("Its streets are narrow and paved with stone.",
                 "Travellers often remark on the steep roofs of its houses.",
                 "A weekly market fills the central square.",
                 "{Ref} has a small library and two schools.",
                 "Many of its families have lived there for generations.",
                 "In winter, fog often settles over the lower streets.",
                 "A clock tower stands beside the town hall.",
                 "The hills around {ref} are covered with orchards.",
                 "Visitors usually arrive by the old coach road from the north."),
    ),
    Kind(
        "person", _person,
        openers=("{Name} was a craftsperson whose work is still discussed today.",
                 "{Name} is remembered as a patient and inventive worker.",
                 "{Name} was a well-known figure in the {region} region."),
        attributes=(
            Attribute("born", "In what year was {name} born?", (
                "{Ref} was born in {value}.",
                "Born in {value}, {ref} showed a talent for building things from an early age.",
                "Parish records give {value} as the year {ref} was born.",
                "{Ref} was born in the year {value}.",
            ), values=_years(1620, 1880)),
            Attribute("birthplace", "In which town was {name} born?", (
                "{Ref} was born in the town of {value}.",
                "{Ref} was born and raised in the town of {value}.",
                "The town of {value} is where {ref} was born.",
                "{Ref} came from the town of {value}.",
            ), values=Namer.word),
            Attribute("profession", "What was the profession of {name}?", (
                "{Ref} worked as a {value} for many years.",
                "By trade, {ref} was a {value}.",
                "{Ref} earned a living as a {value}.",
                "{Ref} trained as a {value} and never changed trade.",
            ), values=PROFESSIONS),
            Attribute("invention", "What did {name} invent?", (
                "{Ref} invented {value}.",
                "{Ref} is best remembered for inventing {value}.",
                "The most famous invention of {ref} is {value}.",
                "After years of trials, {ref} invented {value}.",
            ), values=INVENTIONS),
        ),
        fillers=("{Ref} kept detailed notebooks throughout a long life.",
                 "{Ref} rarely travelled and preferred to work alone.",
                 "Friends described {ref} as patient and good-humoured.",
                 "Several letters written by {ref} survive in a private collection.",
                 "{Ref} took on apprentices and taught them for many years.",
                 "A small museum now displays some of the tools used by {ref}."),
    ),
    Kind(
        "species", _named_thing("finch", "moth", "newt", "heron", "vole", "toad", "lizard", "owl", "crab", "bat",
                                "hare", "wren", "eel", "beetle", "shrew", "gecko", "trout"),
        openers=("{Name} is a rare {type} from the {region} region.",
                 "{Name} is a kind of {type} known only from the {region} region.",
                 "{Name} is {a_type} first described by naturalists working in {region}."),
        attributes=(
            Attribute("colour", "What colour is {name}?", (
                "{Ref} is mostly {value} in colour.",
                "{Ref} is easy to recognise by its {value} colouring.",
                "Seen up close, {ref} is {value} almost all over.",
                "{Ref} is {value}, with a slightly paler underside.",
            ), values=COLOURS),
            Attribute("habitat", "Where does {name} live?", (
                "{Ref} lives in {value}.",
                "{Ref} is found only in {value}.",
                "The natural home of {ref} is {value}.",
                "{Ref} makes its home in {value}.",
            ), values=HABITATS),
            Attribute("diet", "What does {name} mainly eat?", (
                "{Ref} feeds mainly on {value}.",
                "{Ref} lives almost entirely on {value}.",
                "The diet of {ref} consists mostly of {value}.",
                "{Ref} spends much of the day searching for {value}, its main food.",
            ), values=DIETS),
        ),
        fillers=("{Ref} is most active in the early morning.",
                 "Local people say that seeing one brings good weather.",
                 "Its numbers have fallen in recent years.",
                 "The young stay close to their parents through their first winter.",
                 "{Ref} is shy and hard to approach.",
                 "It rests during the hottest hours of the day.",
                 "Few photographs of {ref} exist."),
    ),
    Kind(
        "machine", _named_thing("engine", "machine", "device", "apparatus", "mechanism", "wheel"),
        openers=("{Name} is a machine first used in the {region} region.",
                 "{Name} is one of the best-known machines from the workshops of {region}.",
                 "{Name} is an old design still shown in the museums of {region}."),
        attributes=(
            Attribute("inventor", "Who invented {name}?", (
                "{Ref} was invented by {value}.",
                "{Value} is credited with inventing {ref}.",
                "The first working {type} of this kind was built by {value}.",
                "{Ref} was the invention of {value}.",
            ), values=Namer.person),
            Attribute("built", "In what year was {name} first built?", (
                "{Ref} was first built in {value}.",
                "The first {type} of this design was completed in {value}.",
                "{Ref} dates from {value}, when the first one was finished.",
                "Work on the first {type} of this kind ended in {value}.",
            ), values=_years(1450, 1890)),
            Attribute("purpose", "What was {name} designed for?", (
                "{Ref} was designed for {value}.",
                "{Ref} was built for {value}.",
                "Workshops used {ref} mainly for {value}.",
                "The purpose of {ref} was {value}.",
            ), values=PURPOSES),
            Attribute("material", "What is {name} mostly made of?", (
                "{Ref} is made mostly of {value}.",
                "The frame of {ref} is built from {value}.",
                "{Ref} is made almost entirely of {value}.",
                "Most parts of {ref} are made of {value}.",
            ), values=MATERIALS),
        ),
        fillers=("Only a handful of the original machines survive today.",
                 "Early users complained that it was noisy.",
                 "Copies of the design spread slowly from workshop to workshop.",
                 "It needed two people to operate.",
                 "Later versions were smaller and cheaper to build.",
                 "A drawing of the original design hangs in a regional museum."),
    ),
)
"""The kinds of invented entity, their attributes and sentence templates."""


def _sentence(template: str, rng: random.Random, entity: Entity, **slots: str) -> str:
    ref = rng.choice(entity.refs)
    value = slots.pop("value", "")
    article = "an" if entity.type[0] in "aeiou" else "a"
    return template.format(Ref=ref[0].upper() + ref[1:], ref=ref, Name=entity.name[0].upper() + entity.name[1:],
                           type=entity.type, a_type=f"{article} {entity.type}", value=value,
                           Value=value[:1].upper() + value[1:], **slots)


def _passage(rng: random.Random, namer: Namer, kind: Kind, entity: Entity, values: dict[str, str]) -> str:
    """An opener, one sentence per attribute and fillers in a seeded order, 55-90 words."""
    opener = _sentence(rng.choice(kind.openers), rng, entity, region=namer.word())
    body = [_sentence(rng.choice(a.statements), rng, entity, value=values[a.name]) for a in kind.attributes]
    rng.shuffle(body)
    target = rng.randint(55, 75)
    for filler in rng.sample(kind.fillers, len(kind.fillers)):
        if len(" ".join([opener, *body]).split()) >= target:
            break
        body.insert(rng.randint(0, len(body)), _sentence(filler, rng, entity))
    return " ".join([opener, *body])


def _exclusive(documents: list[dict[str, str]]) -> bool:
    """Every document states its own value exactly once and no other document's value."""
    return all(mentions(d["text"], v["value"]) == (1 if i == j else 0)
               for i, d in enumerate(documents) for j, v in enumerate(documents))


# ---------------------------------------------------------------------------- the dataset
def _documents_problem(documents: list) -> str | None:
    if len(documents) < 2:
        return "needs at least 2 documents (the gold one and a distractor)"
    for i, doc in enumerate(documents):
        for key in ("title", "text", "value"):
            if not isinstance(doc.get(key), str):
                return f'[{i}] needs a "{key}" string: each document is {{"title", "text", "value"}}'
            reason = one_line(doc[key])
            if reason:
                return f'[{i}]["{key}"] {reason}'
        if not mentions(doc["text"], doc["value"]):
            return f'[{i}] ("{doc["title"]}") does not state its value "{doc["value"]}" in its text'
    dup = duplicate([d["value"] for d in documents])
    if dup:
        return (f'[{dup[0]}] and [{dup[1]}] give the same value "{documents[dup[1]]["value"]}": '
                "each document must give a different answer")
    return None


class MDQADataset(PositionBiasDataset):
    name = "mdqa"
    description = "multi-document QA over invented entities, the gold document swept over every slot (Liu et al. 2023)"
    fields = (
        Field("id", str, check=non_empty, help="row id, unique in the file"),
        Field("question", str, check=non_empty, help="the question, answered by one document"),
        Field("documents", list, item=dict, check=_documents_problem,
              help='{"title", "text", "value"} each; value is the answer the document gives'),
        Field("gold", int, help="index in documents of the one that answers the question"),
        Field("kind", str, required=False, help="the kind of entity (town, person, species, machine)"),
        Field("attribute", str, required=False, help="the attribute asked (founded, export, ...)"),
    )
    builtin_file = "mdqa.jsonl"
    example = ('{"id": "mdqa-000", "question": "In what year was Velmora founded?", "documents": ['
               '{"title": "Velmora", "text": "Velmora was founded in 1743.", "value": "1743"}, '
               '{"title": "Drathen", "text": "Drathen was founded in 1512.", "value": "1512"}], "gold": 0}')

    @classmethod
    def check_row(cls, row: dict[str, Any]) -> str | None:
        documents = row["documents"]
        reason = index_problem(row["gold"], len(documents), "documents")
        if reason:
            return f'"gold" {reason}'
        answer = documents[row["gold"]]["value"]
        if mentions(row["question"], answer):
            return f'"question" gives away the answer "{answer}": ask without naming it'
        for i, doc in enumerate(documents):
            if i != row["gold"] and mentions(doc["text"], answer):
                return (f'"documents"[{i}] ("{doc["title"]}") also mentions the answer "{answer}": '
                        "only the gold document may hold it")
        return None

    @classmethod
    def generate(cls, seed: int = 0, n_questions: int = 60, n_documents: int = 20) -> "MDQADataset":
        """``n_questions`` questions spread evenly over every (kind, attribute), each with
        ``n_documents`` documents about fresh invented entities of that kind."""
        rng = random.Random(seed)
        namer = Namer(rng)
        asked = [(kind, attribute) for kind in KINDS for attribute in kind.attributes]
        plan = [asked[i % len(asked)] for i in range(n_questions)]
        rng.shuffle(plan)
        most = min(len(a.values) for _, a in asked if isinstance(a.values, tuple))
        if not 2 <= n_documents <= most:
            raise BadOptionError(f"n_documents={n_documents}: ask for 2..{most} (the smallest value pool)")
        rows = []
        for q, (kind, attribute) in enumerate(plan):
            for _ in range(100):
                row = cls._question(rng, namer, kind, attribute, n_documents)
                if _exclusive(row["documents"]):
                    break
            else:  # pragma: no cover - the templates and pools are built to avoid this
                raise RuntimeError(f"could not write a clean mdqa question for {kind.name}.{attribute.name}")
            rows.append({"id": f"mdqa-{q:03d}", **row})
        return cls(rows, source=f"generated:mdqa(seed={seed}, n_questions={n_questions}, n_documents={n_documents})")

    @staticmethod
    def _question(rng: random.Random, namer: Namer, kind: Kind, attribute: Attribute, n: int) -> dict[str, Any]:
        answers: list[str] = []
        while len(answers) < n:
            value = attribute.draw(rng, namer)
            if value not in answers:
                answers.append(value)
        entities = [kind.entity(rng, namer) for _ in answers]
        documents = []
        for entity, answer in zip(entities, answers):
            values = {a.name: answer if a is attribute else a.draw(rng, namer) for a in kind.attributes}
            documents.append({"title": entity.title, "text": _passage(rng, namer, kind, entity, values),
                              "value": answer})
        gold = rng.randrange(n)
        return {"question": attribute.question.format(name=entities[gold].name), "documents": documents,
                "gold": gold, "kind": kind.name, "attribute": attribute.name}

    @classmethod
    def row_items(cls, row: dict[str, Any], n_segments: int | None = None,
                  slots: int | Iterable[int] | None = None) -> list[ScoredItem]:
        """Items with the gold document moved to each slot, over the first ``n_segments`` documents."""
        kept = keep_with_gold(len(row["documents"]), row["gold"], n_segments)
        documents = [row["documents"][i] for i in kept]
        gold = kept.index(row["gold"])
        return gold_slot_items(
            row["id"],
            prefix=PREFIX,
            segments=[document_line(d["title"], d["text"]) for d in documents],
            gold=gold,
            suffix=SUFFIX.format(question=row["question"]),
            choices=[f" {d['value']}" for d in documents],
            gold_choice=gold,
            slots=slots,
            meta={"dataset": cls.name, "kind": row.get("kind"), "attribute": row.get("attribute"),
                  "gold_value": documents[gold]["value"]},
        )


__all__ = ["KINDS", "MDQADataset", "Namer", "document_line"]
