"""``judge``: pairwise LM-as-judge items (a question, two responses, one clearly better), asked in
both orders to measure judge-order bias.

A row is ``{"id", "category", "question", "answers": [a, b], "better"}``: ``better`` is the index
of the better answer. The category names what is wrong with the worse one:

* ``wrong``: on topic, same shape, but factually wrong;
* ``evasive``: avoids the question;
* ``off-topic``: a correct answer to a different question;
* ``unhelpful``: a how-to question answered with a vague remark instead of steps.

``datasets/judge.jsonl`` ships ``JudgeDataset.generate(seed=0)``: 142 items built from the tables
below (40 facts x wrong / evasive / off-topic, 22 how-to questions), all written for posbench; the
seed picks the evasive reply, the off-topic partner, the row order and which side is better
(balanced).

Prompt (``row_items``)::

    Below are a question and two responses to it. ...

    Question: How many legs does a spider have?

    Response A:          <- one segment per response: header, text, blank line
    A spider has eight legs.

    Response B:
    A spider has six legs.

    Which response is better, A or B?
    Better response:

**The header label belongs to the segment and is tied to the slot** (the first block is always
"Response A"), exactly as the option labels of ``mcq``: the two orders are the two cyclic shifts
of the answers over labels A, B. The choices are " A" and " B"; ``gold`` is the slot (label) of
the better answer. If the segments are permuted later (PINE), each header moves with its text, so
``gold`` stays right.

Sweep: ``JudgeDataset.row_items(row, shifts=None, label_shifts=(0,))``: shift 0 shows the answers
as stored, shift 1 swapped (None: both); ``label_shifts=None`` also swaps the headers ("Response B"
first), so the label moves with the answer; ``meta`` holds ``shift``, ``order``, ``gold_content``
(the better answer's index), ``gold_label``, ``label_shift``, ``labels``, ``assignment`` and
``category``. ``dataset.scored_items(...)`` does every row.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from .base import Field, non_empty
from .segments import ScoredItem
from .sweeps import PositionBiasDataset, cyclic_shift_items, duplicate, index_problem, one_line

PREFIX = ("Below are a question and two responses to it. Decide which response is better. A better "
          "response answers the question correctly, stays on topic and is helpful.\n\nQuestion: {question}\n\n")
SUFFIX = "Which response is better, A or B?\nBetter response:"

# question | correct answer | wrong answer (same shape). Written for posbench.
_FACTS = """
How many legs does a spider have? | A spider has eight legs. | A spider has six legs.
What is the capital of Australia? | The capital of Australia is Canberra. | The capital of Australia is Sydney.
At what temperature does water boil at sea level? | At sea level, water boils at 100 degrees Celsius. | At sea level, water boils at 50 degrees Celsius.
Which planet is closest to the Sun? | Mercury is the planet closest to the Sun. | Neptune is the planet closest to the Sun.
Who wrote the play Hamlet? | Hamlet was written by William Shakespeare. | Hamlet was written by Charles Dickens.
What gas do plants absorb to make their food? | Plants absorb carbon dioxide and, with water and sunlight, turn it into sugar. | Plants absorb helium and, with water and sunlight, turn it into sugar.
How many minutes are there in an hour? | There are 60 minutes in an hour. | There are 100 minutes in an hour.
Which is the largest ocean on Earth? | The Pacific is the largest ocean on Earth. | The Arctic is the largest ocean on Earth.
What is 12 times 12? | 12 times 12 is 144. | 12 times 12 is 124.
Which organ pumps blood through the body? | The heart pumps blood through the body. | The liver pumps blood through the body.
At what temperature does water freeze? | Water freezes at 0 degrees Celsius. | Water freezes at 30 degrees Celsius.
What is the chemical symbol for gold? | The chemical symbol for gold is Au. | The chemical symbol for gold is Gd.
What language do most people in Brazil speak? | Most people in Brazil speak Portuguese. | Most people in Brazil speak German.
How many sides does a hexagon have? | A hexagon has six sides. | A hexagon has eight sides.
What is the tallest mountain above sea level? | Mount Everest is the tallest mountain above sea level. | Mont Blanc is the tallest mountain above sea level.
Which animal is the largest mammal? | The blue whale is the largest mammal. | The horse is the largest mammal.
What do bees make from nectar? | Bees turn nectar into honey. | Bees turn nectar into milk.
In which country are the pyramids of Giza? | The pyramids of Giza are in Egypt. | The pyramids of Giza are in Mexico.
What is half of 50? | Half of 50 is 25. | Half of 50 is 20.
How many days are there in a leap year? | A leap year has 366 days. | A leap year has 365 days.
Which is the longest river in Africa? | The Nile is the longest river in Africa. | The Thames is the longest river in Africa.
Which metal is a liquid at room temperature? | Mercury is the metal that is liquid at room temperature. | Iron is the metal that is liquid at room temperature.
How many players does a football team have on the field? | A football team has eleven players on the field. | A football team has five players on the field.
What is the capital of Canada? | The capital of Canada is Ottawa. | The capital of Canada is Toronto.
What keeps the planets in orbit around the Sun? | Gravity keeps the planets in orbit around the Sun. | Magnetism keeps the planets in orbit around the Sun.
What is the square root of 81? | The square root of 81 is 9. | The square root of 81 is 8.
Which instrument measures air pressure? | A barometer measures air pressure. | A thermometer measures air pressure.
What does a caterpillar become? | A caterpillar becomes a butterfly or a moth. | A caterpillar becomes a beetle.
How many hours are there in a day? | A day has 24 hours. | A day has 20 hours.
Who painted the Mona Lisa? | The Mona Lisa was painted by Leonardo da Vinci. | The Mona Lisa was painted by Vincent van Gogh.
Which is the largest planet in the solar system? | Jupiter is the largest planet in the solar system. | Mars is the largest planet in the solar system.
What is the opposite of "ancient"? | The opposite of "ancient" is "modern". | The opposite of "ancient" is "old".
Which gas do people need to breathe to stay alive? | People need oxygen to stay alive. | People need carbon monoxide to stay alive.
What is 100 divided by 4? | 100 divided by 4 is 25. | 100 divided by 4 is 40.
On which continent is Kenya? | Kenya is in Africa. | Kenya is in South America.
What is the plural of "mouse"? | The plural of "mouse" is "mice". | The plural of "mouse" is "mouses".
What colour do you get by mixing red and white paint? | Mixing red and white paint gives pink. | Mixing red and white paint gives green.
How many strings does a standard violin have? | A standard violin has four strings. | A standard violin has twelve strings.
What is the hardest natural material? | Diamond is the hardest natural material. | Chalk is the hardest natural material.
In which direction does the Sun rise? | The Sun rises in the east. | The Sun rises in the west.
"""

# question | helpful answer | unhelpful answer. Written for posbench.
_HOW_TO = """
How do I hard-boil an egg? | Put the egg in a pot of cold water, bring it to the boil, then simmer it for about nine minutes. Cool it in cold water before peeling. | Eggs are a popular food and can be cooked in many ways.
How can I stop my glasses from fogging up in winter? | Wash the lenses with a drop of dish soap, rinse them and let them dry in the air; the thin film left behind keeps fog from forming. | Glasses are made of glass or plastic, and winter is the coldest season.
How do I remove a splinter? | Wash the area, grip the end of the splinter with clean tweezers and pull it out along the angle it went in. Then wash again and cover it with a plaster. | Splinters are small pieces of wood.
How often should I water a cactus? | Water it thoroughly only when the soil has dried out completely, usually every two to three weeks, and far less in winter. Make sure the pot drains. | Cacti come in many shapes, and some of them have flowers.
How can I fall asleep more easily? | Go to bed at the same time every night, avoid screens and coffee in the evening, and keep the bedroom dark and cool. | Sleep is something everyone needs.
How do I keep bread fresh for longer? | Keep it in a bread bin or a paper bag at room temperature and eat it within a few days; freeze the slices you will not eat soon. | People have been baking bread for thousands of years.
How do I unclog a slow kitchen sink? | Pour a kettle of hot water down the drain and then use a plunger; if that does not work, take off and clean the U-shaped pipe under the sink. | Sinks sometimes get clogged.
How can I remember new words in a foreign language? | Review them in short sessions spread over several days, say them out loud, and use each new word in a sentence of your own. | Every language has a great many words.
How do I fix a flat bicycle tyre? | Take off the wheel, lever the tyre off the rim, patch or replace the inner tube, fit the tyre back on and pump it to the pressure printed on its side. | Most bicycles have two tyres.
How can I make my phone battery last through the day? | Turn down the screen brightness, close apps you are not using, and switch off location and Bluetooth when you do not need them. | Phones run on batteries.
How do I get a red wine stain out of a cotton shirt? | Blot up what you can, rinse the stain from the back with cold water, rub in a little liquid detergent and then wash the shirt as usual. | Red wine is made from grapes.
How should I prepare for a job interview? | Read about the company, practise answers to common questions out loud, prepare two or three questions of your own, and plan your route so you arrive early. | Interviews can make some people nervous.
How do I keep cut flowers fresh? | Trim the stems at an angle, remove any leaves below the water line, and change the water every two days. | Flowers come in many colours.
How can I spend less money on groceries? | Plan your meals for the week, shop with a list, compare prices per kilogram, and choose store brands for basic items. | Groceries are things people buy in shops.
How can I calm down before giving a speech? | Breathe slowly for a minute, rehearse your first few sentences, and speak to one friendly face in the audience at a time. | Speeches are given at many kinds of events.
How do I clean a cast-iron pan? | Rinse it with hot water while it is still warm, scrub it with a brush, dry it on the stove and wipe on a thin layer of oil. | Cast iron is a heavy metal.
How can I tell whether an egg is still fresh? | Put it in a bowl of water: a fresh egg sinks and lies on its side, while an old egg stands on end or floats. | Eggs come from chickens and other birds.
How do I stop a nosebleed? | Sit up, lean forward, and pinch the soft part of your nose for ten minutes while breathing through your mouth. | The nose is in the middle of the face.
How can I keep a room cool in summer without air conditioning? | Close the curtains during the day, open the windows at night to let cool air in, and set a fan in a window blowing outwards. | Summer is usually the warmest season of the year.
How do I ask politely for more time on a piece of work? | Explain briefly why you need more time, suggest a new date, and thank the person for considering it. | Work often takes longer than planned.
How should I store spare batteries? | Keep them in a cool, dry place in their packaging, away from metal objects such as coins and keys. | Batteries store energy.
What should I do about a houseplant with yellow leaves? | Feel the soil: yellow leaves often mean too much water, so let it dry out between waterings and make sure the pot drains. | Leaves can be many colours, including yellow.
"""

EVASIVE = (
    "That is an interesting question, and people have asked it for a long time.",
    "I would rather not say. You could look it up yourself.",
    "It depends on many things, so there is no simple answer.",
    "Good question! There are several ways to think about it.",
    "I am not sure that it matters much, but it is worth thinking about.",
    "Many sources discuss this, and opinions differ.",
    "Let us not worry about the details here.",
    "That is hard to say without more information.",
)
"""Replies that avoid any question (the worse answer of the ``evasive`` items)."""


def _table(text: str) -> tuple[tuple[str, str, str], ...]:
    return tuple(tuple(part.strip() for part in line.split("|")) for line in text.strip().splitlines())


FACTS = _table(_FACTS)
"""(question, correct answer, wrong answer)."""
HOW_TO = _table(_HOW_TO)
"""(how-to question, helpful answer, unhelpful answer)."""
CATEGORIES = ("wrong", "evasive", "off-topic", "unhelpful")


def response_block(label: str, answer: str) -> str:
    """One segment: ``"Response A:\\n<answer>\\n\\n"``."""
    return f"Response {label}:\n{answer.strip()}\n\n"


def _answers_problem(answers: list) -> str | None:
    if len(answers) != 2:
        return f"has {len(answers)} answers: give exactly 2 (the judge compares a pair)"
    for i, answer in enumerate(answers):
        if not answer.strip():
            return f"[{i}] is empty"
    if duplicate(answers):
        return "holds the same answer twice: the two answers must differ"
    return None


class JudgeDataset(PositionBiasDataset):
    name = "judge"
    description = "pairwise LM-as-judge items (one clearly better answer), asked in both orders"
    fields = (
        Field("id", str, check=non_empty, help="row id, unique in the file"),
        Field("category", str, check=one_line, help="what is wrong with the worse answer"),
        Field("question", str, check=non_empty, help="the question both answers reply to"),
        Field("answers", list, item=str, check=_answers_problem, help="the two answers"),
        Field("better", int, help="index in answers of the better one (0 or 1)"),
    )
    builtin_file = "judge.jsonl"
    example = ('{"id": "judge-000", "category": "wrong", "question": "How many legs does a spider have?", '
               '"answers": ["A spider has six legs.", "A spider has eight legs."], "better": 1}')

    @classmethod
    def check_row(cls, row: dict[str, Any]) -> str | None:
        reason = index_problem(row["better"], len(row["answers"]), "answers")
        return f'"better" {reason}' if reason else None

    @classmethod
    def generate(cls, seed: int = 0, n_items: int | None = None) -> "JudgeDataset":
        """Every item the tables give (the first ``n_items`` of them in a seeded order, default all),
        the better answer first in half of them."""
        rng = random.Random(seed)
        ring = list(range(len(FACTS)))
        rng.shuffle(ring)
        off_topic = {ring[i]: ring[(i + 1) % len(ring)] for i in range(len(ring))}  # never itself
        pairs = []  # (id, category, question, better answer, worse answer)
        for i, (question, correct, wrong) in enumerate(FACTS):
            pairs += [(f"judge-wrong-{i:02d}", "wrong", question, correct, wrong),
                      (f"judge-evasive-{i:02d}", "evasive", question, correct, rng.choice(EVASIVE)),
                      (f"judge-off-topic-{i:02d}", "off-topic", question, correct, FACTS[off_topic[i]][1])]
        pairs += [(f"judge-unhelpful-{i:02d}", "unhelpful", question, helpful, vague)
                  for i, (question, helpful, vague) in enumerate(HOW_TO)]
        rng.shuffle(pairs)
        pairs = pairs[:n_items]
        sides = [i % 2 for i in range(len(pairs))]
        rng.shuffle(sides)
        rows = []
        for (row_id, category, question, better, worse), side in zip(pairs, sides):
            answers = [better, worse] if side == 0 else [worse, better]
            rows.append({"id": row_id, "category": category, "question": question, "answers": answers,
                         "better": side})
        return cls(rows, source=f"generated:judge(seed={seed}, n_items={len(rows)})")

    @classmethod
    def row_items(cls, row: dict[str, Any], shifts: Iterable[int] | None = None,
                  label_shifts: Iterable[int] | None = (0,)) -> list[ScoredItem]:
        """The row in both orders (shift 0: as stored, shift 1: swapped) over the labels A, B (fixed,
        or also swapped with ``label_shifts=None``: "Response B" first)."""
        return cyclic_shift_items(
            row["id"],
            prefix=PREFIX.format(question=row["question"]),
            contents=row["answers"],
            correct=row["better"],
            block=response_block,
            suffix=SUFFIX,
            shifts=shifts,
            label_shifts=label_shifts,
            meta={"dataset": cls.name, "category": row["category"]},
        )


__all__ = ["CATEGORIES", "EVASIVE", "FACTS", "HOW_TO", "JudgeDataset", "response_block"]
