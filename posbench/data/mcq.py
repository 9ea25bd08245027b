"""``mcq``: project-written 4-option questions, swept over every cyclic shift of the options
(the input of PriDe, Zheng et al. 2024: a per-label prior estimated from cyclic permutations).

A row is ``{"id", "topic", "question", "options": [...], "answer"}``: 2 to 8 distinct one-line
options (4 in the shipped file), ``answer`` the index of the correct one. ``datasets/mcq.jsonl``
ships ``MCQDataset.generate(seed=0)``: the 216 questions written below (36 in each of six topics:
science, geography, arithmetic, general, reasoning, language), in a seeded order, with the
correct option's slot balanced over A-D.

Prompt (``row_items``)::

    The following is a multiple-choice question. Reply with the letter of the correct option.

    Question: What is the capital of Italy?
    A. Rome              <- one segment per option line: label, content, newline
    B. Milan
    C. Venice
    D. Naples
    Answer:

**The label belongs to the segment and is tied to the slot**: shift s writes label i in front of
content (i + s) mod k, so in every shift the labels read A, B, C, D top to bottom. The choices are
" A" .. " D"; ``gold`` is the slot (label) of the correct content. If the segments are permuted
later (PINE), each label moves with its content, so ``gold`` stays right.

Sweep: ``MCQDataset.row_items(row, shifts=None, label_shifts=(0,))``: one item per cyclic shift
(None: all k), and per label rotation (``label_shifts=None``: all k rotations, label
``(i + r) % k`` in slot i; item ids gain ``:labels{r}`` for r > 0); ``meta`` holds ``shift``,
``order`` (content index per slot), ``gold_content``, ``gold_label``, ``label_shift``, ``labels``
(label per slot), ``assignment`` ((shift - label_shift) mod k) and ``topic``.
``dataset.scored_items(...)`` does every row.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from .base import Field, non_empty
from .segments import ScoredItem
from .sweeps import LABELS, PositionBiasDataset, cyclic_shift_items, duplicate, index_problem, one_line

PREFIX = ("The following is a multiple-choice question. Reply with the letter of the correct option.\n\n"
          "Question: {question}\n")
SUFFIX = "Answer:"
N_OPTIONS = 4  # options per question in the bank

# topic | question | correct option | three wrong options. Written for posbench.
_BANK = """
science | What gas do plants take in from the air to make their food? | carbon dioxide | oxygen | helium | neon
science | At sea level, at what temperature in degrees Celsius does water boil? | 100 | 50 | 0 | 212
science | Which planet is closest to the Sun? | Mercury | Venus | Mars | Jupiter
science | How many legs does an insect have? | six | four | eight | ten
science | What force pulls objects toward the ground? | gravity | magnetism | friction | electricity
science | Which organ pumps blood around the human body? | the heart | the lungs | the liver | the stomach
science | What is the chemical formula of water? | H2O | CO2 | O2 | NaCl
science | Which of these animals is a mammal? | a whale | a shark | a salmon | an octopus
science | What do bees collect from flowers to make honey? | nectar | sand | bark | leaves
science | Which part of a plant usually grows underground? | the roots | the flowers | the leaves | the fruit
science | In which state of matter is ice? | solid | liquid | gas | plasma
science | Which planet is known as the Red Planet? | Mars | Venus | Saturn | Neptune
science | What is the largest planet in our solar system? | Jupiter | Earth | Mars | Mercury
science | What are animals that eat only plants called? | herbivores | carnivores | predators | scavengers
science | Which gas makes up most of the air we breathe? | nitrogen | oxygen | carbon dioxide | hydrogen
science | Which of these metals is a liquid at room temperature? | mercury | iron | copper | gold
science | What does a thermometer measure? | temperature | weight | speed | distance
science | Which body part do people hear with? | the ears | the eyes | the nose | the hands
science | What is frozen water called? | ice | steam | fog | dew
science | Which star is at the centre of our solar system? | the Sun | the Moon | Sirius | Polaris
science | What does a caterpillar turn into? | a butterfly | a bee | a spider | a worm
science | Which gas does a fire need in order to burn? | oxygen | helium | neon | argon
science | Which of these natural materials is the hardest? | diamond | chalk | wood | wax
science | Which of these animals is a reptile? | a lizard | a frog | a dolphin | a sparrow
science | Which of these is a renewable source of energy? | sunlight | coal | oil | natural gas
science | What happens to water when it is heated to its boiling point? | it turns into steam | it turns into ice | it turns into salt | it turns into oil
science | How many planets are there in our solar system? | eight | five | twelve | twenty
science | Which part of the body holds the brain? | the head | the chest | the knee | the foot
science | What gas do plants give off during photosynthesis? | oxygen | carbon dioxide | smoke | methane
science | Which unit is used to measure electric current? | the ampere | the metre | the kilogram | the litre
science | Through which of these does sound travel fastest? | steel | air | water vapour | smoke
science | Which of these animals lays eggs? | a chicken | a cow | a horse | a dog
science | At what temperature in degrees Celsius does pure water freeze? | 0 | 100 | 10 | -50
science | Which blood vessels carry blood away from the heart? | arteries | veins | nerves | tendons
science | Which of these materials does a magnet attract? | iron | glass | wood | plastic
science | Which layer of gas high above the Earth blocks much of the Sun's ultraviolet light? | the ozone layer | the cloud layer | the rain layer | the dust layer
geography | What is the capital of France? | Paris | Lyon | Marseille | Nice
geography | Which is the largest ocean on Earth? | the Pacific Ocean | the Atlantic Ocean | the Indian Ocean | the Arctic Ocean
geography | On which continent is Kenya? | Africa | Asia | Europe | South America
geography | What is the capital of Japan? | Tokyo | Osaka | Kyoto | Seoul
geography | Which river flows through London? | the Thames | the Seine | the Danube | the Nile
geography | What is the capital of Italy? | Rome | Milan | Venice | Naples
geography | Which country has a coastline shaped like a boot? | Italy | Spain | Norway | Poland
geography | What is the capital of Spain? | Madrid | Barcelona | Seville | Lisbon
geography | Which is the largest hot desert in the world? | the Sahara | the Gobi | the Atacama | the Kalahari
geography | In which mountain range is Mount Everest? | the Himalayas | the Alps | the Andes | the Rockies
geography | What is the capital of Canada? | Ottawa | Toronto | Vancouver | Montreal
geography | On which continent is Brazil? | South America | Africa | Europe | Asia
geography | What is the capital of Germany? | Berlin | Munich | Hamburg | Vienna
geography | In which country is the city of Sydney? | Australia | New Zealand | Canada | South Africa
geography | On which continent does the river Nile flow? | Africa | Asia | Europe | Australia
geography | What is the capital of Egypt? | Cairo | Alexandria | Luxor | Aswan
geography | Which ocean lies between Europe and North America? | the Atlantic Ocean | the Pacific Ocean | the Indian Ocean | the Southern Ocean
geography | What is the capital of Russia? | Moscow | Saint Petersburg | Kyiv | Minsk
geography | In which country is the Great Wall? | China | India | Mexico | Peru
geography | What is the capital of the United Kingdom? | London | Manchester | Birmingham | Dublin
geography | Which is the longest river in South America? | the Amazon | the Mississippi | the Thames | the Volga
geography | What is the capital of Australia? | Canberra | Sydney | Melbourne | Perth
geography | Which city is nicknamed the Big Apple? | New York City | Chicago | Los Angeles | Boston
geography | What is the capital of Greece? | Athens | Sparta | Thessaloniki | Patras
geography | Mexico City is the capital of which country? | Mexico | Spain | Argentina | Colombia
geography | Which is the smallest continent by land area? | Australia | Asia | Africa | South America
geography | Which is the coldest continent? | Antarctica | Europe | Africa | Australia
geography | What is the capital of India? | New Delhi | Mumbai | Kolkata | Chennai
geography | Which city is famous for its canals and gondolas? | Venice | Madrid | Moscow | Cairo
geography | Which country lies directly north of the United States? | Canada | Mexico | Cuba | Brazil
geography | What is the capital of Portugal? | Lisbon | Porto | Madrid | Seville
geography | Which mountain range runs along the western side of South America? | the Andes | the Alps | the Himalayas | the Urals
geography | What is the capital of China? | Beijing | Shanghai | Hong Kong | Tokyo
geography | Which sea lies between southern Europe and northern Africa? | the Mediterranean Sea | the Red Sea | the Baltic Sea | the Caspian Sea
geography | Honshu and Hokkaido are islands of which country? | Japan | China | Thailand | Chile
geography | What is the capital of Kenya? | Nairobi | Lagos | Accra | Dakar
arithmetic | What is 7 plus 5? | 12 | 11 | 13 | 14
arithmetic | What is 9 times 6? | 54 | 45 | 56 | 63
arithmetic | What is 15 minus 8? | 7 | 6 | 8 | 9
arithmetic | What is 48 divided by 6? | 8 | 6 | 7 | 9
arithmetic | What is 25 plus 17? | 42 | 32 | 41 | 52
arithmetic | What is 12 times 12? | 144 | 124 | 132 | 154
arithmetic | What is 100 minus 37? | 63 | 73 | 67 | 53
arithmetic | What is half of 90? | 45 | 40 | 50 | 35
arithmetic | What is 3 squared? | 9 | 6 | 12 | 27
arithmetic | What is 81 divided by 9? | 9 | 8 | 7 | 11
arithmetic | What is 250 plus 250? | 500 | 400 | 550 | 450
arithmetic | What is 8 times 7? | 56 | 54 | 48 | 64
arithmetic | What is 1000 minus 1? | 999 | 900 | 990 | 1001
arithmetic | What is 6 plus 6 plus 6? | 18 | 16 | 12 | 24
arithmetic | What is 20 percent of 50? | 10 | 20 | 5 | 25
arithmetic | What is 14 plus 29? | 43 | 33 | 42 | 53
arithmetic | What is 60 divided by 5? | 12 | 10 | 15 | 11
arithmetic | How many minutes are there in two hours? | 120 | 100 | 60 | 200
arithmetic | What is 11 times 11? | 121 | 111 | 112 | 122
arithmetic | What is 72 minus 27? | 45 | 55 | 44 | 35
arithmetic | What number comes next in the sequence 2, 4, 6, 8? | 10 | 9 | 12 | 16
arithmetic | What is a quarter of 100? | 25 | 20 | 40 | 50
arithmetic | What is 5 times 9? | 45 | 40 | 54 | 35
arithmetic | What is 36 plus 64? | 100 | 90 | 110 | 96
arithmetic | What is 3 times 4, plus 2? | 14 | 18 | 20 | 12
arithmetic | What is 10 cubed? | 1000 | 100 | 30 | 10000
arithmetic | What is 7 times 8, minus 6? | 50 | 14 | 62 | 56
arithmetic | What is 99 plus 1? | 100 | 98 | 991 | 101
arithmetic | What is 144 divided by 12? | 12 | 11 | 14 | 10
arithmetic | What is 0 times 25? | 0 | 25 | 1 | 250
arithmetic | What is 2 to the power of 5? | 32 | 10 | 25 | 64
arithmetic | What is the sum of 13 and 19? | 32 | 31 | 22 | 42
arithmetic | What is 90 minus 45? | 45 | 35 | 55 | 40
arithmetic | What is one third of 27? | 9 | 3 | 7 | 18
arithmetic | What is 15 times 4? | 60 | 45 | 54 | 64
arithmetic | You have 3 bags with 5 apples in each. How many apples do you have? | 15 | 8 | 10 | 20
general | How many days are there in a week? | seven | five | six | ten
general | How many months are there in a year? | twelve | ten | eleven | thirteen
general | Which month comes after March? | April | May | February | June
general | What colour do you get by mixing blue and yellow paint? | green | purple | orange | pink
general | How many sides does a triangle have? | three | four | five | six
general | Which musical instrument has black and white keys? | the piano | the drum | the trumpet | the violin
general | What is a baby cat called? | a kitten | a puppy | a calf | a foal
general | How many hours are there in a day? | 24 | 12 | 20 | 48
general | Which season comes after summer? | autumn | spring | winter | summer
general | How many players does a football team have on the field at the start of a match? | eleven | nine | seven | fifteen
general | What do people usually use to cut paper? | scissors | a spoon | a pillow | a cup
general | What colour is a ripe banana? | yellow | blue | purple | green
general | How many legs does a spider have? | eight | six | ten | four
general | Which shape has four equal sides and four right angles? | a square | a triangle | a circle | a pentagon
general | What is the main language spoken in Brazil? | Portuguese | Spanish | French | English
general | Who wrote the play Romeo and Juliet? | William Shakespeare | Charles Dickens | Jane Austen | Mark Twain
general | Which animal gives us wool? | the sheep | the pig | the chicken | the horse
general | What is the largest animal alive today? | the blue whale | the elephant | the giraffe | the great white shark
general | How many letters are there in the English alphabet? | 26 | 24 | 28 | 22
general | Which meal is usually eaten in the morning? | breakfast | dinner | supper | lunch
general | What is the currency of Japan? | the yen | the euro | the dollar | the peso
general | What is a person who repairs water pipes called? | a plumber | a baker | a pilot | a florist
general | Which of these is a fruit? | an apple | a carrot | a potato | an onion
general | What does a red traffic light tell drivers to do? | stop | go faster | turn left | sound the horn
general | How many wheels does a bicycle have? | two | three | four | one
general | Which bird is often used as a symbol of peace? | the dove | the crow | the vulture | the eagle
general | What is the tallest animal? | the giraffe | the elephant | the horse | the camel
general | In which sport do players hit a shuttlecock with a racket? | badminton | tennis | golf | football
general | How many years are there in a century? | 100 | 10 | 50 | 1000
general | Which of these is used to tell the time? | a clock | a ruler | a kettle | a map
general | Which is the fastest land animal? | the cheetah | the lion | the horse | the elephant
general | What is the main ingredient of an omelette? | eggs | rice | flour | apples
general | How many sides does a hexagon have? | six | five | seven | eight
general | Which day comes after Friday? | Saturday | Thursday | Sunday | Monday
general | What colour is a clear sky at midday? | blue | green | red | brown
general | Which is the largest of these units of time? | a year | a month | a week | a day
reasoning | It is raining and you want to stay dry. What should you take outside? | an umbrella | sunglasses | a fan | a bucket
reasoning | Tom is taller than Sam, and Sam is taller than Ben. Who is the shortest? | Ben | Tom | Sam | they are all the same height
reasoning | A shop opens at 9 in the morning and closes 8 hours later. When does it close? | at 5 in the afternoon | at 4 in the afternoon | at 6 in the evening | at 8 in the evening
reasoning | If you drop a glass on a stone floor, what is most likely to happen? | it breaks | it bounces back up | it floats | it melts
reasoning | Anna has 10 coins and gives 4 of them away. How many coins does she have left? | 6 | 4 | 14 | 5
reasoning | What would you use to eat a bowl of soup? | a spoon | a fork | a knife | a comb
reasoning | If today is Monday, what day will it be in two days? | Wednesday | Tuesday | Thursday | Sunday
reasoning | Which is heavier, a kilogram of feathers or a kilogram of iron? | they weigh the same | the iron | the feathers | it depends on the weather
reasoning | A train leaves at 2 pm and the trip takes 3 hours. When does it arrive? | 5 pm | 4 pm | 6 pm | 1 pm
reasoning | You leave an ice cube in a warm room. What happens to it? | it melts | it grows | it turns blue | it gets harder
reasoning | Lisa is older than Mark, and Mark is older than Jo. Who is the oldest? | Lisa | Mark | Jo | Mark and Jo are the same age
reasoning | Where would you most likely find a stapler? | in an office | in a swimming pool | in a forest | in a bathtub
reasoning | A potted plant gets no water for a month. What is most likely to happen? | it wilts | it grows faster | it flowers more | it gets heavier
reasoning | You have a meeting at 3:00 pm and it is now 2:45 pm. How many minutes do you have? | 15 | 45 | 30 | 5
reasoning | What should you do before crossing a busy road? | look both ways | close your eyes | run without looking | sit down on the road
reasoning | You buy a book for 7 dollars and pay with a 10-dollar note. How much change do you get? | 3 dollars | 7 dollars | 17 dollars | 4 dollars
reasoning | Which of these would keep you warmest on a snowy day? | a wool coat | a swimsuit | a paper hat | sandals
reasoning | A box holds 6 eggs. How many boxes do you need for 18 eggs? | 3 | 2 | 4 | 6
reasoning | All cats are animals, and Tom is a cat. Which statement must be true? | Tom is an animal | Tom is a dog | Tom is a plant | Tom is not an animal
reasoning | Where is the best place to keep milk fresh? | in the fridge | in the oven | on a sunny windowsill | in the garden
reasoning | A clock shows 11:00. What time will it show one hour later? | 12:00 | 10:00 | 11:30 | 1:00
reasoning | Sara must be at school at 8:00 and the walk takes 20 minutes. When must she leave at the latest? | 7:40 | 8:20 | 7:20 | 8:00
reasoning | What do you need to open a locked door? | a key | a spoon | a pencil | a towel
reasoning | Four friends share 12 cookies equally. How many cookies does each friend get? | 3 | 4 | 2 | 6
reasoning | Which word does not belong with the others? | hammer | apple | banana | cherry
reasoning | You are very thirsty. What should you do? | drink some water | eat some salt | run a race | go to sleep
reasoning | A car burns more fuel the farther it drives. Which trip uses the least fuel? | a 5 km trip | a 50 km trip | a 500 km trip | a 100 km trip
reasoning | What comes next: Monday, Tuesday, Wednesday, ...? | Thursday | Friday | Sunday | Monday
reasoning | Ben put his keys in the drawer and left the house. Nobody touched them. Where are the keys? | in the drawer | in his pocket | on the table | in the car
reasoning | You pour more water into a glass that is already full. What happens? | it overflows | it shrinks | it empties | it freezes
reasoning | Which tool is best for measuring the length of a table? | a tape measure | a thermometer | a weighing scale | a clock
reasoning | Mia stands in a queue with 3 people in front of her and 2 behind her. How many people are in the queue? | 6 | 5 | 4 | 3
reasoning | A shirt costs 20 dollars and is sold at half price. How much do you pay? | 10 dollars | 20 dollars | 40 dollars | 5 dollars
reasoning | You want to read in a dark room. What would help most? | a lamp | a blanket | a mirror | a fan
reasoning | Which of these is the coldest? | an ice cube | a cup of warm tea | a candle flame | a bowl of hot soup
reasoning | A bus comes every 15 minutes. You just missed one. How long until the next bus? | 15 minutes | 5 minutes | 30 minutes | 1 hour
language | What does the word "enormous" mean? | very large | very small | very quick | very old
language | What is the opposite of "ancient"? | modern | old | broken | heavy
language | Which word means "happy"? | cheerful | gloomy | angry | tired
language | What does the word "fragile" mean? | easily broken | very strong | full of water | brightly coloured
language | What is the plural of "mouse"? | mice | mouses | meese | mousen
language | What is the opposite of "generous"? | selfish | kind | giving | rich
language | What does the word "purchase" mean? | to buy | to sell | to borrow | to lose
language | Which word means the same as "quick"? | fast | slow | heavy | quiet
language | What does the word "silent" mean? | making no sound | very loud | very bright | moving fast
language | Complete the sentence: "Yesterday I ___ to the market." | went | go | goes | going
language | What is the opposite of "arrive"? | depart | reach | enter | come
language | What does the word "weary" mean? | very tired | very hungry | very rich | very tall
language | What is a person who writes books called? | an author | a baker | a sailor | a judge
language | What does the word "transparent" mean? | see-through | very heavy | sticky | dark
language | What is the opposite of "increase"? | decrease | grow | expand | raise
language | What does the word "nocturnal" describe? | being active at night | being active at noon | living in water | eating only plants
language | Which word is spelled correctly? | necessary | neccessary | necesary | neccesary
language | What does the word "ancient" mean? | very old | very new | very cold | very fast
language | What is the plural of "child"? | children | childs | childes | childrens
language | Which of these words is a noun? | table | quickly | beautiful | seldom
language | What does the word "brave" mean? | showing courage | feeling sleepy | being rude | feeling cold
language | What is the opposite of "empty"? | full | hollow | bare | vacant
language | Which word rhymes with "cat"? | hat | dog | cup | sun
language | What does the word "humid" describe? | air that is damp | air that is very dry | a loud noise | a bright light
language | What does "to whisper" mean? | to speak very softly | to shout loudly | to sing a song | to laugh out loud
language | Which word means "to look at something carefully"? | examine | ignore | forget | throw
language | What is the opposite of "shallow"? | deep | narrow | wet | short
language | What does the word "annual" mean? | happening once a year | happening every day | happening once a week | never happening
language | Which of these words is a verb? | jump | chair | green | happiness
language | What is the plural of "foot"? | feet | foots | feets | footes
language | Which word means the same as "begin"? | start | finish | stop | end
language | What does the word "hilarious" mean? | extremely funny | extremely sad | very boring | very slow
language | What is the opposite of "ascend"? | descend | climb | rise | lift
language | What does the word "vanish" mean? | to disappear | to appear | to grow | to shine
language | What does the word "timid" mean? | shy and easily frightened | loud and bold | very tall | always hungry
language | What is the opposite of a "sharp" knife? | a blunt knife | a pointed knife | a new knife | a long knife
"""

QUESTIONS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = tuple(
    (topic, question, correct, tuple(wrong))
    for topic, question, correct, *wrong in (
        [part.strip() for part in line.split("|")] for line in _BANK.strip().splitlines()
    )
)
"""The bank: (topic, question, correct option, wrong options), in the order written."""


def option_line(label: str, option: str) -> str:
    """One segment: ``"A. option\\n"``."""
    return f"{label}. {option}\n"


def _options_problem(options: list) -> str | None:
    if not 2 <= len(options) <= len(LABELS):
        return f"has {len(options)} options: give 2 to {len(LABELS)} (labels {LABELS[0]}-{LABELS[-1]})"
    for i, option in enumerate(options):
        reason = one_line(option)
        if reason:
            return f"[{i}] {reason}"
    dup = duplicate(options)
    if dup:
        return f'[{dup[0]}] and [{dup[1]}] are the same option "{options[dup[1]]}": options must be distinct'
    return None


class MCQDataset(PositionBiasDataset):
    name = "mcq"
    description = "project-written multiple-choice questions, swept over the cyclic shifts of their options"
    fields = (
        Field("id", str, check=non_empty, help="row id, unique in the file"),
        Field("topic", str, check=one_line, help="what metrics group by (science, geography, ...)"),
        Field("question", str, check=non_empty, help="the question, without its options"),
        Field("options", list, item=str, check=_options_problem, help="2-8 distinct one-line options"),
        Field("answer", int, help="index in options of the correct one"),
    )
    builtin_file = "mcq.jsonl"
    example = ('{"id": "mcq-000", "topic": "geography", "question": "What is the capital of Italy?", '
               '"options": ["Milan", "Rome", "Venice", "Naples"], "answer": 1}')

    @classmethod
    def check_row(cls, row: dict[str, Any]) -> str | None:
        reason = index_problem(row["answer"], len(row["options"]), "options")
        if reason:
            return f'"answer" {reason}'
        return None

    @classmethod
    def generate(cls, seed: int = 0, n_questions: int | None = None) -> "MCQDataset":
        """The bank in a seeded order (the first ``n_questions``, default all), the correct option
        put in a seeded slot so that each slot holds it equally often."""
        rng = random.Random(seed)
        order = list(range(len(QUESTIONS)))
        rng.shuffle(order)
        order = order[:n_questions]
        slots = [i % N_OPTIONS for i in range(len(order))]
        rng.shuffle(slots)
        rows = []
        for b, slot in zip(order, slots):
            topic, question, correct, wrong = QUESTIONS[b]
            options = list(wrong)
            rng.shuffle(options)
            options.insert(slot, correct)
            rows.append({"id": f"mcq-{b:03d}", "topic": topic, "question": question, "options": options,
                         "answer": slot})
        return cls(rows, source=f"generated:mcq(seed={seed}, n_questions={len(rows)})")

    @classmethod
    def row_items(cls, row: dict[str, Any], shifts: Iterable[int] | None = None,
                  label_shifts: Iterable[int] | None = (0,)) -> list[ScoredItem]:
        """One item per cyclic shift of the options over the labels (fixed A-D top to bottom, or
        also rotated over the slots with ``label_shifts``; see ``cyclic_shift_items``)."""
        return cyclic_shift_items(
            row["id"],
            prefix=PREFIX.format(question=row["question"]),
            contents=row["options"],
            correct=row["answer"],
            block=option_line,
            suffix=SUFFIX,
            shifts=shifts,
            label_shifts=label_shifts,
            meta={"dataset": cls.name, "topic": row["topic"]},
        )


__all__ = ["MCQDataset", "QUESTIONS", "option_line"]
