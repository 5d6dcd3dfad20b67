"""Generate the speech recipe's sentence lists: natural English written by this project, offline.

    python scripts/sentences/generate.py                 # rewrites speech_train*.txt and speech_eval.txt
    python scripts/sentences/generate.py --check         # exit 1 if the committed files are stale

The sentences come from a small hand-written grammar in this file (everyday scenes: people,
places, weather, food, travel, work, numbers and times), expanded with a fixed seed, so the lists
are the same on every machine and need no download and no third-party text. Licence: the
grammar and the generated lists are this project's own work, under the repository's licence.

Sentences are grammatical, mostly past-tense statements, with questions, requests, conditionals and
some numbers (which the normaliser reads out). The held-out list is drawn after the training list
and never repeats a training sentence; ``split_sentences`` checks that. A second training list
(``speech_train_extra.txt``) is drawn after both and repeats neither, so adding it left the first
two lists exactly as they were.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_FILE = os.path.join(HERE, "speech_train.txt")
EVAL_FILE = os.path.join(HERE, "speech_eval.txt")
EXTRA_FILE = os.path.join(HERE, "speech_train_extra.txt")
SEED = 20261201
N_TRAIN = 1600
N_EVAL = 60
N_EXTRA = 1400  # the recipe trains on both training lists: 3,000 sentences, about 3 hours of audio

NAMES = """Anna Ben Clara David Emma Frank Grace Henry Isabel Jack Karen Leo Maria Nathan Olivia Peter
Rachel Samuel Tina Victor Walter Helen Lucy Martin Nora Oscar Paul Ruth Simon Thomas Alice George
Laura Daniel Sophie Michael Julia Robert Ellen Charles""".split()

PEOPLE = """the old fisherman|the young doctor|my neighbour|the tired waiter|a quiet student|the baker
|her little brother|the farmer|our teacher|the pilot|a tall stranger|the shopkeeper|the nurse
|my grandmother|the bus driver|his cousin|the librarian|a friendly dog|the police officer|the painter
|the gardener|my uncle|the new manager|the captain|a small child|the engineer|the musician
|her best friend|the old woman|the mechanic|the carpenter|the chef|the sailor|a lost tourist
|the postman|the judge|my sister|the twins|the reporter|the coach""".replace("\n", "").split("|")

THINGS = """a heavy basket|the red umbrella|an old map|two paper bags|a wooden chair|the silver key
|a bowl of soup|the broken clock|a bundle of letters|the spare tyre|a jar of honey|the blue kettle
|a pair of boots|the garden hose|a loaf of bread|the photo album|a box of nails|the winter coat
|a bunch of flowers|the leather wallet|a bottle of milk|the kitchen knife|a stack of books
|the fishing rod|a warm blanket|the flashlight|a cup of coffee|the train tickets|a bag of apples
|the small suitcase|a pot of paint|the violin|a basket of eggs|the wooden ladder|a roll of tape
|the newspaper|a glass of water|the bicycle|a plate of cookies|the candle""".replace("\n", "").split("|")

CARRY_VERBS = """carried|dropped|found|lost|moved|cleaned|fixed|borrowed|hid|sold|packed|opened
|wrapped|checked|brought|left|noticed|picked up|put down|held""".replace("\n", "").split("|")

PLACES = """across the quiet harbour|near the train station|behind the old barn|at the end of the street
|into the kitchen|under the bridge|along the river bank|through the crowded market|up the narrow stairs
|beside the fountain|outside the bakery|in the back of the truck|on the top shelf|across the field
|inside the library|next to the post office|on the porch|down the hill|around the corner
|at the edge of the forest|into the garage|by the window|in the waiting room|over the fence
|near the lighthouse|on the kitchen table|at the bus stop|in the school yard|past the church
|into the cellar""".replace("\n", "").split("|")

TIMES = """Early this morning|Late last night|Just before dinner|On Sunday afternoon|After the storm
|Before the sun came up|During the long winter|Every summer|Yesterday evening|At noon
|Once the rain stopped|A few minutes later|Last Tuesday|After lunch|In the middle of the night
|On the way home|Before the meeting|That spring|When the bell rang|Right after breakfast""".replace(
    "\n", "").split("|")

WEATHER = """rains|snows|gets cold|stays sunny|turns windy|clears up|gets too hot|starts to storm""".split("|")

ACTIVITIES = """walk to the lake|have a picnic in the park|paint the fence|visit our cousins|stay at home
|bake some bread|go fishing on the pier|clean the attic|plant the tomatoes|watch a film
|ride our bikes to town|play cards by the fire|repair the roof|take the early train
|read in the garden|cook a big dinner|sort the old photos|climb the hill behind the house
|drive to the coast|wash the car""".replace("\n", "").split("|")

MANNER = """slowly|quietly|carefully|quickly|happily|nervously|loudly|gently|proudly|patiently
|suddenly|calmly|eagerly|politely""".replace("\n", "").split("|")

FEELINGS = """tired|hungry|surprised|worried|cheerful|nervous|proud|sleepy|curious|grateful|bored|calm
|excited|annoyed""".replace("\n", "").split("|")

REASONS = """the road was closed|it was getting dark|the shop had run out of bread|nobody answered the door
|the train was late|the water was too cold|the lights went out|the bridge was being painted
|the dog kept barking|the wind was too strong|the oven was broken|there was no more room
|the tickets were sold out|the path was covered in mud|the phone had stopped working
|the children were asleep|the letter never arrived|the kettle was still hot""".replace(
    "\n", "").split("|")

BASE_VERBS = """bring|return|check|clean|fix|wrap|pack|hide|find|carry|open|sell""".split("|")

EVENTS = """the guests arrive|the shop closes|it gets dark|the bus leaves|the film starts|dinner is ready
|the rain begins|you go to bed|the meeting ends|your mother calls""".replace("\n", "").split("|")

ADJ_NOUNS = """a tiny cottage|a noisy hotel|a wide valley|a farmhouse by a cold lake|a cabin in the woods
|an empty theatre|a crowded inn|a flat with a sunny balcony|a tent by a muddy field|a hut on a small island
|a room above the bakery|a green meadow|a quiet village|a boat on a narrow canal|a house by a windy beach
|an old lighthouse""".replace("\n", "").split("|")

SOUNDS = """the rain on the roof|a train in the distance|the waves on the shore|a bird outside the window
|the clock in the hall|children laughing in the street|a dog barking next door|music from upstairs
|the wind in the trees|footsteps on the gravel""".replace("\n", "").split("|")

FOODS = """soup|pancakes|apple pie|fresh bread|roast chicken|rice and beans|cheese sandwiches
|tomato salad|warm porridge|fried eggs|lemon cake|fish and chips|vegetable stew|hot chocolate""".replace(
    "\n", "").split("|")

NUMBERS = list(range(2, 13)) + [15, 20, 25, 30, 40, 50, 100]
CLOCK = ["7:15", "8:30", "9:45", "10:20", "11:00", "12:30", "2:15", "3:40", "4:05", "5:30", "6:50"]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _frames() -> list[Callable[[random.Random], str]]:
    c = random.Random.choice

    def f1(r):
        return f"{c(r, TIMES)}, {c(r, PEOPLE)} {c(r, CARRY_VERBS)} {c(r, THINGS)} {c(r, PLACES)}."

    def f2(r):
        return f"{_cap(c(r, PEOPLE))} {c(r, MANNER)} {c(r, CARRY_VERBS)} {c(r, THINGS)} because {c(r, REASONS)}."

    def f3(r):
        return f"If it {c(r, WEATHER)} tomorrow, we will {c(r, ACTIVITIES)}."

    def f4(r):
        return f"Did you remember to {c(r, BASE_VERBS)} {c(r, THINGS)} before {c(r, EVENTS)}?"

    def f5(r):
        return f"{c(r, NAMES)} felt {c(r, FEELINGS)}, so {c(r, PEOPLE)} made {c(r, FOODS)} for everyone."

    def f6(r):
        return f"We stayed in {c(r, ADJ_NOUNS)} and listened to {c(r, SOUNDS)}."

    def f7(r):
        return f"Please {c(r, BASE_VERBS)} {c(r, THINGS)} and leave it {c(r, PLACES)}."

    def f8(r):
        return f"{c(r, NAMES)} told {c(r, NAMES)} that {c(r, PEOPLE)} had {c(r, CARRY_VERBS)} {c(r, THINGS)}."

    def f9(r):
        return f"The train to {c(r, ['Boston', 'Denver', 'Chicago', 'Dallas', 'Seattle', 'Portland'])} leaves at " \
               f"{c(r, CLOCK)} on {c(r, DAYS)}, so {c(r, NAMES)} packed {c(r, THINGS)} the night before."

    def f10(r):
        n = c(r, NUMBERS)
        return f"{c(r, NAMES)} counted {n} {c(r, ['boats', 'sheep', 'windows', 'birds', 'cars', 'trees', 'chairs'])} " \
               f"{c(r, PLACES)}."

    def f11(r):
        return f"Why did {c(r, PEOPLE)} leave {c(r, THINGS)} {c(r, PLACES)}?"

    def f12(r):
        return f"{c(r, TIMES)}, {c(r, NAMES)} walked {c(r, MANNER)} {c(r, PLACES)} and waved at {c(r, PEOPLE)}."

    def f13(r):
        return f"In {c(r, MONTHS)}, {c(r, PEOPLE)} always {c(r, ['cooks', 'bakes', 'serves', 'orders'])} " \
               f"{c(r, FOODS)} for the whole family."

    def f14(r):
        return f"{_cap(c(r, PEOPLE))} was {c(r, FEELINGS)} when {c(r, REASONS)}."

    def f15(r):
        return f"It was {c(r, ['hard', 'slow', 'messy', 'heavy', 'tiring', 'careful', 'dull'])} work, but {c(r, NAMES)} {c(r, MANNER)} {c(r, CARRY_VERBS)} " \
               f"{c(r, THINGS)} {c(r, PLACES)}."

    def f16(r):
        return f"Could you ask {c(r, PEOPLE)} whether we can {c(r, ACTIVITIES)} on {c(r, DAYS)}?"

    return [f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16]


def generate(n: int, rng: random.Random, exclude: Optional[set[str]] = None) -> list[str]:
    """``n`` distinct sentences (none in ``exclude``), frames taken in turn so each is used evenly."""
    frames = _frames()
    out: list[str] = []
    seen = set(exclude or ())
    i = 0
    while len(out) < n:
        s = frames[i % len(frames)](rng)
        i += 1
        if s not in seen:
            seen.add(s)
            out.append(s)
        if i > 100 * n:
            raise RuntimeError("the grammar cannot make that many distinct sentences")
    return out


def split_sentences(n_train: int = N_TRAIN, n_eval: int = N_EVAL, seed: int = SEED,
                    n_extra: int = 0) -> tuple[list[str], ...]:
    """The training and held-out lists (and, with ``n_extra``, the extra training list drawn after
    them); the held-out ones never occur in training."""
    rng = random.Random(seed)
    train = generate(n_train, rng)
    held = generate(n_eval, rng, exclude=set(train))
    assert not set(train) & set(held)
    if not n_extra:
        return train, held
    extra = generate(n_extra, rng, exclude=set(train) | set(held))
    return train, held, extra


HEADER = ("# Generated by scripts/sentences/generate.py (seed {seed}); the project's own text, no third-party "
          "source.\n# Do not edit by hand: change the grammar and regenerate.\n")


def render(sentences: list[str], seed: int = SEED) -> str:
    return HEADER.format(seed=seed) + "\n".join(sentences) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that the committed lists are up to date")
    args = p.parse_args(argv)
    train, held, extra = split_sentences(n_extra=N_EXTRA)
    stale = []
    for path, sents in ((TRAIN_FILE, train), (EVAL_FILE, held), (EXTRA_FILE, extra)):
        text = render(sents)
        if args.check:
            if not os.path.isfile(path) or open(path, encoding="utf-8").read() != text:
                stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/sentences/generate.py", file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(train)} + {len(extra)} training and {len(held)} held-out sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
