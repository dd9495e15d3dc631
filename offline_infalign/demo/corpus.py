"""Template text for the embedded demo: review prompts, review bodies for the tiny base LM, labelled sentences.

Everything here is pure Python and deterministic given a seed, so the demo needs no download and two machines
build the same model. The reviews mix positive, neutral, negative and mixed tones on purpose: the base model
learns that mix, so its sampled completions vary in sentiment and best-of-N has something to choose from.

Text is lower case, punctuation is written normally ("great, and ..."); the word-level tokenizer splits
punctuation into its own tokens, and decoding glues it back.
"""

from __future__ import annotations

import random

__all__ = ["PLACES", "all_prompts", "review_corpus", "sentiment_lines", "template_texts", "SENTIMENT_SEED"]

SENTIMENT_SEED = 1234  # the seed `sentiment_lines` used to write the shipped demo/data/sentiment.tsv

# Adjectives and words for each aspect category, by sentiment. "pos"/"neu"/"neg" are what a reader would say.
_ASPECT_WORDS: dict[str, dict[str, list[str]]] = {
    "food": {
        "pos": ["delicious", "excellent", "amazing", "fresh", "perfect", "wonderful", "tasty"],
        "neu": ["okay", "fine", "average", "decent", "nothing special"],
        "neg": ["awful", "bland", "cold", "stale", "terrible", "disappointing", "greasy"],
    },
    "people": {
        "pos": ["friendly", "helpful", "lovely", "kind", "attentive", "wonderful"],
        "neu": ["okay", "fine", "busy", "quiet", "polite enough"],
        "neg": ["rude", "slow", "unfriendly", "careless", "terrible", "annoyed"],
    },
    "price": {
        "pos": ["fair", "very reasonable", "cheap", "great value"],
        "neu": ["about average", "okay", "normal for the area"],
        "neg": ["far too high", "a rip off", "way too expensive", "outrageous"],
    },
    "space": {
        "pos": ["clean", "cozy", "lovely", "spotless", "comfortable", "beautiful"],
        "neu": ["okay", "plain", "small", "a bit dated", "fine"],
        "neg": ["dirty", "noisy", "cramped", "filthy", "uncomfortable", "smelly"],
    },
    "sound": {
        "pos": ["relaxing", "lovely", "just right", "great"],
        "neu": ["okay", "a bit loud", "fine"],
        "neg": ["far too loud", "awful", "annoying", "terrible"],
    },
}

# place -> aspects as (noun, "was"/"were", category)
PLACES: dict[str, list[tuple[str, str, str]]] = {
    "cafe": [
        ("coffee", "was", "food"),
        ("cakes", "were", "food"),
        ("tea", "was", "food"),
        ("staff", "were", "people"),
        ("music", "was", "sound"),
        ("seats", "were", "space"),
        ("prices", "were", "price"),
    ],
    "restaurant": [
        ("food", "was", "food"),
        ("pasta", "was", "food"),
        ("soup", "was", "food"),
        ("service", "was", "people"),
        ("waiter", "was", "people"),
        ("prices", "were", "price"),
        ("dining room", "was", "space"),
    ],
    "bakery": [
        ("bread", "was", "food"),
        ("croissants", "were", "food"),
        ("cakes", "were", "food"),
        ("staff", "were", "people"),
        ("prices", "were", "price"),
        ("shop", "was", "space"),
    ],
    "hotel": [
        ("room", "was", "space"),
        ("bed", "was", "space"),
        ("breakfast", "was", "food"),
        ("staff", "were", "people"),
        ("bathroom", "was", "space"),
        ("price", "was", "price"),
    ],
    "diner": [
        ("burgers", "were", "food"),
        ("fries", "were", "food"),
        ("coffee", "was", "food"),
        ("waitress", "was", "people"),
        ("prices", "were", "price"),
        ("booths", "were", "space"),
    ],
    "pizza place": [
        ("pizza", "was", "food"),
        ("crust", "was", "food"),
        ("salad", "was", "food"),
        ("staff", "were", "people"),
        ("garlic bread", "was", "food"),
        ("prices", "were", "price"),
    ],
    "noodle shop": [
        ("noodles", "were", "food"),
        ("broth", "was", "food"),
        ("dumplings", "were", "food"),
        ("service", "was", "people"),
        ("prices", "were", "price"),
        ("tables", "were", "space"),
    ],
    "bar": [
        ("drinks", "were", "food"),
        ("beer", "was", "food"),
        ("music", "was", "sound"),
        ("bartender", "was", "people"),
        ("prices", "were", "price"),
        ("cocktails", "were", "food"),
    ],
}

_PLACE_ADJECTIVES = [
    "cozy",
    "little",
    "busy",
    "quiet",
    "old",
    "new",
    "small",
    "big",
    "popular",
    "local",
    "family",
    "hidden",
]
_LOCATIONS = [
    "in town",
    "near the station",
    "by the river",
    "on main street",
    "near the park",
    "downtown",
    "by the beach",
    "near the market",
    "on the corner",
    "near campus",
]

_OPENERS = [
    "we came here for dinner.",
    "i stopped by on a sunday.",
    "first time here.",
    "we went there last week.",
    "i came here for lunch with a friend.",
    "we stayed here for two nights.",
    "i had heard a lot about this place.",
    "we tried it on a rainy evening.",
]
_CLOSERS = {
    "pos": [
        "we will definitely come back.",
        "highly recommended.",
        "i loved it.",
        "five stars.",
        "a real gem.",
        "cannot wait to return.",
    ],
    "neu": [
        "it was an okay visit.",
        "maybe we will try it again.",
        "not bad, not great.",
        "it does the job.",
        "three stars.",
    ],
    "neg": [
        "we will not come back.",
        "avoid this place.",
        "what a waste of money.",
        "never again.",
        "one star.",
        "very disappointing.",
    ],
}
# Per review tone: probability that each aspect sentence is pos / neu / neg.
_TONES = {
    "pos": (0.8, 0.15, 0.05),
    "neu": (0.2, 0.6, 0.2),
    "neg": (0.05, 0.15, 0.8),
    "mixed": (0.45, 0.1, 0.45),
}
_TONE_WEIGHTS = {"pos": 0.32, "neu": 0.2, "neg": 0.32, "mixed": 0.16}


def all_prompts() -> list[str]:
    """Every review prompt, in a fixed order: "review of the cozy cafe near the station:" (960 of them)."""
    return [
        f"review of the {adjective} {place} {location}:"
        for place in PLACES
        for adjective in _PLACE_ADJECTIVES
        for location in _LOCATIONS
    ]


def template_texts() -> list[str]:
    """Every piece of text a prompt or review can contain (the tokenizer's vocabulary is built from these)."""
    texts = all_prompts() + _OPENERS + [line for lines in _CLOSERS.values() for line in lines]
    texts += [f"the {noun} {verb}" for aspects in PLACES.values() for noun, verb, _ in aspects]
    texts += [
        word for by_sentiment in _ASPECT_WORDS.values() for words in by_sentiment.values() for word in words
    ]
    return texts + [", and", ", but", "."]


def _clause(rng: random.Random, aspect: tuple[str, str, str], sentiment: str) -> str:
    noun, verb, category = aspect
    return f"the {noun} {verb} {rng.choice(_ASPECT_WORDS[category][sentiment])}"


def _sentiment(rng: random.Random, tone: str) -> str:
    return rng.choices(["pos", "neu", "neg"], weights=_TONES[tone])[0]


def _review_body(rng: random.Random, place: str) -> str:
    """One review of `place`: optional opener, one or two aspect sentences, optional closing line."""
    tone = rng.choices(list(_TONE_WEIGHTS), weights=list(_TONE_WEIGHTS.values()))[0]
    aspects = rng.sample(PLACES[place], k=min(4, len(PLACES[place])))
    parts = []
    if rng.random() < 0.3:
        parts.append(rng.choice(_OPENERS))
    sentiments = []
    for _ in range(rng.choice([1, 2, 2])):
        first, second = aspects.pop(), aspects.pop()
        s1 = _sentiment(rng, tone)
        sentiments.append(s1)
        if rng.random() < 0.6:
            s2 = _sentiment(rng, tone)
            sentiments.append(s2)
            # "and" joins clauses of one sentiment, "but" joins opposite ones, so the text reads naturally.
            joiner = "and" if s1 == s2 or "neu" in (s1, s2) else "but"
            parts.append(f"{_clause(rng, first, s1)}, {joiner} {_clause(rng, second, s2)}.")
        else:
            parts.append(f"{_clause(rng, first, s1)}.")
    if rng.random() < 0.6:
        score = sentiments.count("pos") - sentiments.count("neg")
        overall = "pos" if score > 0 else "neg" if score < 0 else "neu"
        parts.append(rng.choice(_CLOSERS[overall]))
    return " ".join(parts)


def _place_of(prompt: str) -> str:
    for place in sorted(PLACES, key=len, reverse=True):  # "pizza place" before any shorter overlapping name
        if f" {place} " in prompt:
            return place
    raise ValueError(f"no known place in prompt {prompt!r}")


def review_corpus(num_reviews: int, seed: int = 0) -> list[tuple[str, str]]:
    """`num_reviews` (prompt, review body) pairs; prompts drawn from `all_prompts()` with replacement."""
    rng = random.Random(seed)
    prompts = all_prompts()
    out = []
    for _ in range(num_reviews):
        prompt = rng.choice(prompts)
        out.append((prompt, _review_body(rng, _place_of(prompt))))
    return out


def sentiment_lines(num_lines: int = 480, seed: int = SENTIMENT_SEED) -> list[tuple[int, str]]:
    """Balanced (label, sentence) lines for the demo reward: 1 = positive, 0 = negative.

    Single-sentiment sentences only (aspect clauses, pairs joined by "and", closing lines): a classifier
    trained on them scores a mixed or neutral review in between, which spreads the rewards of sampled reviews.
    """
    rng = random.Random(seed)
    aspects = [aspect for place_aspects in PLACES.values() for aspect in place_aspects]
    lines: list[tuple[int, str]] = []
    seen: set[str] = set()
    while len(lines) < num_lines:
        label = len(lines) % 2  # alternate so the classes stay balanced
        sentiment = "pos" if label == 1 else "neg"
        kind = rng.random()
        if kind < 0.2:
            text = rng.choice(_CLOSERS[sentiment])
        elif kind < 0.6:
            text = f"{_clause(rng, rng.choice(aspects), sentiment)}."
        else:
            first, second = rng.sample(aspects, 2)
            text = f"{_clause(rng, first, sentiment)}, and {_clause(rng, second, sentiment)}."
        if text not in seen:
            seen.add(text)
            lines.append((label, text))
    return lines
