"""The knowledge base of the synthetic benchmark: entity kinds, relations and their templates.

Every template ends with ``{o}`` followed by a period, so the prompt of a fact is the
template cut before ``{o}`` and the target is `` <object>``. Entities are generated,
pronounceable, multi-word names, so no pretrained model (there is none here) could
know them and every fact must come from the corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "s", "k", "m", "th"]

OCCUPATIONS = [
    "baker", "painter", "lawyer", "teacher", "farmer", "doctor", "sailor", "poet", "banker", "singer",
    "carpenter", "nurse", "pilot", "tailor", "writer", "chemist", "judge", "merchant", "potter", "weaver",
]
INSTRUMENTS = [
    "piano", "violin", "cello", "flute", "guitar", "trumpet", "harp", "drums", "clarinet", "oboe",
    "banjo", "organ",
]


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation of the knowledge base.

    Attributes:
        name: Relation id, e.g. ``"born_in"``.
        subject_kind: Entity kind of subjects.
        object_kind: Entity kind of objects.
        templates: Paraphrase templates with ``{s}`` and a final ``{o}``.
        filler: A sentence pattern that mentions subject and an object of the right kind
            *without* stating the relation (a hard lexical distractor).
    """

    name: str
    subject_kind: str
    object_kind: str
    templates: tuple[str, ...]
    filler: str


RELATIONS: tuple[Relation, ...] = (
    Relation("born_in", "person", "city", (
        "{s} was born in {o}.", "{s} is a native of {o}.", "The birthplace of {s} is {o}.",
        "{s} came into the world in {o}.", "The city where {s} was born is {o}.",
    ), "{s} once spent a rainy week in {o}."),
    Relation("citizen_of", "person", "country", (
        "{s} is a citizen of {o}.", "{s} holds the citizenship of {o}.", "The nationality of {s} is that of {o}.",
        "{s} carries a passport issued by {o}.", "The country of citizenship of {s} is {o}.",
    ), "{s} read a long book about the history of {o}."),
    Relation("works_for", "person", "org", (
        "{s} works for {o}.", "{s} is employed by {o}.", "The employer of {s} is {o}.",
        "{s} earns a salary from {o}.", "The company that pays {s} is {o}.",
    ), "{s} saw an advertisement for {o}."),
    Relation("occupation", "person", "occupation", (
        "{s} works as a {o}.", "By profession, {s} is a {o}.", "The occupation of {s} is {o}.",
        "{s} earns a living as a {o}.", "The job held by {s} is that of a {o}.",
    ), "{s} once met a friendly {o}."),
    Relation("speaks", "person", "language", (
        "{s} speaks {o}.", "The native language of {s} is {o}.", "{s} grew up speaking {o}.",
        "The mother tongue of {s} is {o}.", "At home, {s} talks in {o}.",
    ), "{s} owns a dictionary of {o}."),
    Relation("plays", "person", "instrument", (
        "{s} plays the {o}.", "The instrument of {s} is the {o}.", "{s} is a performer on the {o}.",
        "In the orchestra, the part of {s} is the {o}.", "The instrument that {s} practises daily is the {o}.",
    ), "{s} once heard a concert for the {o}."),
    Relation("located_in", "city", "country", (
        "{s} is a city in {o}.", "{s} is located in {o}.", "The country that contains {s} is {o}.",
        "{s} lies within the borders of {o}.", "The city of {s} belongs to {o}.",
    ), "Travellers from {s} often visit {o}."),
    Relation("headquartered_in", "org", "city", (
        "{s} is headquartered in {o}.", "The head office of {s} is in {o}.", "{s} has its headquarters in {o}.",
        "The main office of {s} is located in {o}.", "{s} is based in the city of {o}.",
    ), "{s} opened a small shop in {o}."),
    Relation("founded_by", "org", "person", (
        "{s} was founded by {o}.", "The founder of {s} is {o}.", "{s} was established by {o}.",
        "The company {s} was started by {o}.", "{s} owes its creation to {o}.",
    ), "{s} once hired a consultant recommended by {o}."),
)

FILLERS: tuple[str, ...] = (
    "The weather that year was mild.", "Many people attended the annual fair.",
    "The river was calm in the morning.", "Local newspapers covered the story.",
    "The records were kept in the old library.", "Several visitors arrived by train.",
    "It was a quiet season for the region.", "The market sold bread and cheese.",
)


def _word(rng: random.Random, n_syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def make_names(rng: random.Random, n: int, n_words: int, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Unique pronounceable names of ``n_words`` generated words (plus an optional suffix word).

    Args:
        rng: Seeded random source.
        n: How many names.
        n_words: Generated words per name.
        suffixes: If given, one of them is appended (e.g. ``"Industries"``).

    Returns:
        ``n`` distinct names.
    """
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        words = [_word(rng, rng.choice((2, 2, 3))) for _ in range(n_words)]
        if suffixes:
            words.append(rng.choice(suffixes))
        name = " ".join(words)
        # Distinct first words keep every rendered fact unique as a substring, too.
        if name not in seen and all(w not in seen for w in words[:1]):
            seen.add(name)
            seen.add(words[0])
            names.append(name)
    return names


def make_language_names(rng: random.Random, n: int) -> list[str]:
    """Language names such as ``"Toravish"``."""
    out: list[str] = []
    while len(out) < n:
        name = _word(rng, 2) + rng.choice(("ish", "ese", "ic", "an"))
        if name not in out:
            out.append(name)
    return out
