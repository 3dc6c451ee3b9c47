"""Sentences for the espeak corpus, written for this project: a small seeded grammar over a
hand-made word list, giving varied lengths (2 to ~30 words), clauses with commas (internal
pauses), questions and exclamations, numbers spelled out, and every English phoneme."""
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


def _sentence(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.12:
        return r.choice(SHORT)
    if kind < 0.2:
        return f"Did {r.choice(NAMES)} really see {r.choice(THINGS)} {r.choice(PLACES)}?"
    n = 1 + (r.random() < 0.1)
    text = _clause(r)
    for _ in range(n - 1):
        text += f", {r.choice(CONNECT)} {_clause(r)}"
    text = text[0].upper() + text[1:]
    return text + ("!" if r.random() < 0.08 else ".")


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
