"""Built-in English filler text: technical prose written for this project, no downloads.

The haystack for NIAH and RULER and the chunks for KLD come from here, so every receipt can
be re-run offline. Sentences are assembled from hand-written parts with a seeded generator:
the same seed gives the same text, byte for byte, on every machine. Never reads the network.
"""

from __future__ import annotations

import random

_SUBJECTS = [
    "The scheduler", "A careful operator", "The storage layer", "Each worker process",
    "The replication protocol", "A well designed cache", "The compiler", "The load balancer",
    "Every incoming request", "The garbage collector", "A background thread", "The query planner",
    "The network stack", "An index on the table", "The build system", "The test suite",
    "A checksum", "The write-ahead log", "The memory allocator", "The monitoring agent",
    "A retry policy", "The configuration file", "The message queue", "A batch job",
    "The file system", "The thermal sensor", "A power supply", "The firmware update",
]
_VERBS = [
    "keeps track of", "reduces the cost of", "depends on", "records", "protects",
    "splits", "compresses", "validates", "schedules", "throttles", "measures",
    "rewrites", "caches", "verifies", "orders", "merges", "streams", "summarises",
    "allocates", "releases", "replays", "balances", "rejects", "prioritises",
]
_OBJECTS = [
    "the pending writes", "every page that changed", "the slowest queries", "short-lived connections",
    "the metadata of each file", "the order of events", "large transfers", "the latency of a round trip",
    "the size of the working set", "stale entries", "the hot keys", "partial failures",
    "the peak memory of a process", "the results of the last run", "idle sessions", "the clock skew",
    "the checkpoints on disk", "requests from a single client", "the fan speed", "corrupted blocks",
    "the rows that match a filter", "the plan for the next step", "the voltage on each rail",
]
_QUALIFIERS = [
    "so that a crash loses nothing", "before the deadline passes", "when the system is under load",
    "without blocking the main loop", "at the end of every interval", "whenever a threshold is crossed",
    "in a fixed amount of memory", "as long as the disk has room", "even when the network is slow",
    "so that operators can audit it later", "while the old version keeps serving", "in the order they arrived",
    "only after the checksum matches", "to keep the tail latency low", "during the nightly maintenance window",
    "for every tenant separately", "unless an administrator overrides it", "with a small amount of extra work",
]
_OPENERS = [
    "In practice,", "As a rule,", "On a busy day,", "For this reason,", "In most deployments,",
    "By design,", "Over time,", "In the simplest setup,", "After a restart,", "Under normal conditions,",
]
_REMARKS = [
    "This trade-off is worth writing down, because the next engineer will ask about it.",
    "Measurements matter more than intuition here, and the numbers often surprise people.",
    "Most outages begin with an assumption that nobody checked.",
    "A simple design that is easy to reason about usually beats a clever one.",
    "The documentation explains the defaults, but the defaults are not always right.",
    "Small changes in one component can ripple through the rest of the system.",
    "Logs are cheap to write and expensive to read, so they should say what matters.",
    "Nothing here is exotic; it is ordinary engineering done with patience.",
    "Capacity planning starts with knowing what the busiest hour looks like.",
    "When two parts disagree, the one with the better record is usually right.",
]


def sentence(rng: random.Random) -> str:
    """One sentence of filler prose."""
    if rng.random() < 0.12:
        return rng.choice(_REMARKS)
    core = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_QUALIFIERS)}."
    if rng.random() < 0.3:
        opener = rng.choice(_OPENERS)
        core = f"{opener} {core[0].lower()}{core[1:]}"
    return core


def sentences(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def paragraphs(seed: int, n_sentences: int, per_paragraph: int = 6) -> str:
    """``n_sentences`` sentences of prose grouped into paragraphs."""
    items = sentences(seed, n_sentences)
    blocks = [" ".join(items[i : i + per_paragraph]) for i in range(0, len(items), per_paragraph)]
    return "\n\n".join(blocks)


#: common English words for the common-word-extraction task (RULER's CWE)
WORDS = (
    "apple river stone garden window market silver candle forest engine harbor pencil ladder "
    "meadow rocket violin bridge lantern copper island jacket mirror planet saddle tunnel "
    "walnut basket castle desert falcon glacier hammer kettle lemon marble needle orchard "
    "parrot quartz ribbon spider timber umbrella velvet wagon yarn zebra anchor beacon "
    "cactus dolphin ember feather goblet helmet igloo jungle kayak lizard magnet nectar "
    "olive pepper quiver raven shovel teapot urchin valley whistle bucket canyon drum "
    "fountain granite hollow ivory jasmine kitten lobster maple nutmeg oyster pebble"
).split()
