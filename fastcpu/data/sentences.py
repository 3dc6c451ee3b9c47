"""Sentences for the espeak corpus, written for this project: a small seeded grammar over a
hand-made word list, giving varied lengths (2 to ~30 words), clauses with commas (internal
pauses), a mix of sentence types for varied intonation (statements; yes/no questions, which
rise; wh-questions; exclamations; lists, whose items rise before the last), numbers spelled
out, and every English phoneme."""
from __future__ import annotations

import random

NAMES = ["Anna", "the baker", "my neighbour", "a young pilot", "the old judge", "Thomas",
         "the quiet child", "our teacher", "a tired sailor", "the museum guard", "Joyce",
         "the farmer's daughter", "a careful engineer", "the choir", "Oliver", "the mayor"]
THINGS = ["a yellow umbrella", "the garden gate", "three wooden chairs", "a bowl of soup",
          "the morning paper", "an orange kite", "the violin", "a pair of boots", "the measure",
          "the heavy anchor", "a jar of honey", "the treasure map", "seven silver coins",
          "the broken clock", "a thick woollen scarf", "the village bridge", "a cup of tea",
          "the thunderstorm", "a bag of oranges", "the fishing boat", "the azure vase",
          "a bundle of letters", "the kitchen window", "a ripe pear", "the huge engine"]
PLACES = ["by the river", "near the harbour", "in the attic", "under the old oak tree",
          "at the station", "behind the theatre", "on the mountain path", "across the square",
          "inside the warehouse", "beside the fountain", "through the forest",
          "at the edge of the town", "in the hallway", "along the shore", "over the hills"]
VERBS = ["carried", "painted", "found", "fixed", "watched", "bought", "measured", "noticed",
         "borrowed", "pushed", "showed", "washed", "chose", "judged", "thought about",
         "remembered", "ignored", "gathered", "returned", "described", "polished", "sold"]
TIMES = ["yesterday", "this morning", "after lunch", "every Thursday", "last winter",
         "at midnight", "in the early evening", "before sunrise", "during the storm",
         "on a rainy Tuesday", "twice a year", "an hour ago"]
ADVERBS = ["slowly", "quietly", "happily", "carefully", "suddenly", "gently", "proudly",
           "eagerly", "rarely", "usually", "nearly", "truly"]
ADJECTIVES = ["bright", "curious", "enormous", "pleasant", "strange", "cheerful", "gloomy",
              "delicious", "ordinary", "mysterious", "noisy", "smooth", "fragile", "genuine"]
CONNECT = ["and then", "but", "because", "although", "while", "so", "until", "whenever"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "twenty", "forty two", "ninety nine", "a hundred",
           "three thousand", "sixteen"]
SHORT = ["Yes, of course.", "Not today.", "Look out!", "Thank you very much.", "Why not?",
         "Good morning.", "Wait here.", "That is enough.", "How strange!", "Come along.",
         "Right away.", "Nobody knows.", "Sure enough.", "Oh, I see."]


def _clause(r: random.Random) -> str:
    kind = r.randrange(6)
    if kind == 0:
        return f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}"
    if kind == 1:
        return f"{r.choice(NAMES)} {r.choice(ADVERBS)} {r.choice(VERBS)} {r.choice(THINGS)}"
    if kind == 2:
        return f"{r.choice(THINGS)} was {r.choice(ADJECTIVES)} {r.choice(TIMES)}"
    if kind == 3:
        return f"{r.choice(NAMES)} counted {r.choice(NUMBERS)} of them {r.choice(PLACES)}"
    if kind == 4:
        return f"{r.choice(TIMES)}, {r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)}"
    return f"{r.choice(NAMES)} said that {r.choice(THINGS)} looked {r.choice(ADJECTIVES)}"


WH = ["Where", "When", "Why", "How"]


def _sentence(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.10:
        return r.choice(SHORT)
    if kind < 0.20:                                   # yes/no questions
        return r.choice([f"Did {r.choice(NAMES)} really see {r.choice(THINGS)} "
                         f"{r.choice(PLACES)}?",
                         f"Is {r.choice(THINGS)} still {r.choice(ADJECTIVES)}?",
                         f"Could {r.choice(NAMES)} bring {r.choice(THINGS)} "
                         f"{r.choice(TIMES)}?"])
    if kind < 0.28:                                   # wh-questions
        return (f"{r.choice(WH)} did {r.choice(NAMES)} {r.choice(['hide', 'find', 'sell'])} "
                f"{r.choice(THINGS)}?")
    if kind < 0.36:                                   # exclamations
        adj = r.choice(ADJECTIVES)
        text = r.choice([f"What {'an' if adj[0] in 'aeiou' else 'a'} {adj} day it was!",
                         f"{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(THINGS)} "
                         f"{r.choice(PLACES)}!",
                         f"How {adj} {r.choice(THINGS)} looks!"])
        return text[0].upper() + text[1:]
    if kind < 0.44:                                   # lists
        items = r.sample(THINGS, 3)
        who = r.choice(NAMES)
        return f"{who[0].upper() + who[1:]} {r.choice(VERBS)} {items[0]}, {items[1]}, and " \
               f"{items[2]}."
    n = 1 + (r.random() < 0.15)
    text = _clause(r)
    for _ in range(n - 1):
        text += f", {r.choice(CONNECT)} {_clause(r)}"
    text = text[0].upper() + text[1:]
    return text + ("!" if r.random() < 0.05 else ".")


def generate(n: int, seed: int = 0) -> list:
    """n distinct sentences, deterministic for a given seed."""
    r = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        s = _sentence(r)
        if s not in seen or len(seen) >= 10 ** 6:
            seen.add(s)
            out.append(s)
    return out
