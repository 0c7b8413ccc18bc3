"""Prompts for teacher-generated distillation data: a built-in diverse set, or the user's own.

The built-in set (``builtin:seed-prompts``) crosses a few instruction templates with topics from
six areas a general assistant is asked about — everyday knowledge, science, how-to, reasoning,
stories and code — so a teacher writes broad text rather than more of one narrow corpus. The
order is a fixed interleaving of the areas, so any prefix of the set is itself balanced.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..errors import MinitronError

BUILTIN_PROMPTS = "builtin:seed-prompts"

_AREAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "everyday knowledge": (
        (
            "Explain {} to someone who has never heard of it.",
            "What are the most important facts to know about {}?",
            "Give a short overview of the history of {}.",
            "What are common misconceptions about {}?",
        ),
        (
            "the postal system",
            "public libraries",
            "the Olympic Games",
            "coffee",
            "the calendar",
            "money and banks",
            "elections",
            "the human heart",
            "sleep",
            "vaccines",
            "bread making",
            "maps",
            "the printing press",
            "trains",
            "national parks",
            "recycling",
            "tea",
            "the internet",
            "jazz music",
            "chess",
            "volcanoes",
            "the Roman Empire",
            "the Silk Road",
            "bicycles",
            "airports",
            "time zones",
            "museums",
            "football",
            "the United Nations",
            "honey bees",
            "rice farming",
            "languages of the world",
            "weather forecasts",
            "insurance",
            "the metric system",
            "photography",
            "first aid",
            "taxes",
            "composting",
            "ocean tides",
        ),
    ),
    "science": (
        (
            "Explain how {} works, step by step.",
            "What is the scientific explanation for {}?",
            "Describe an experiment that demonstrates {}.",
            "Why does {} matter for everyday life?",
        ),
        (
            "photosynthesis",
            "gravity",
            "the water cycle",
            "plate tectonics",
            "DNA replication",
            "electric current",
            "magnetism",
            "the immune system",
            "sound waves",
            "rainbows",
            "nuclear fusion in the Sun",
            "evolution",
            "chemical bonds",
            "black holes",
            "the greenhouse effect",
            "friction",
            "antibiotics",
            "the speed of light",
            "cell division",
            "ocean currents",
            "batteries",
            "lasers",
            "earthquakes",
            "the periodic table",
            "enzymes",
            "the seasons",
            "buoyancy",
            "radioactivity",
            "the nervous system",
            "semiconductors",
            "climate change",
            "the Doppler effect",
            "osmosis",
            "the Big Bang",
            "heat transfer",
            "lightning",
            "entropy",
            "tides",
        ),
    ),
    "how-to": (
        (
            "How do I {}? Give clear steps.",
            "What is the best way to {} for a beginner?",
            "List the mistakes people make when they {}, and how to avoid them.",
        ),
        (
            "plant a vegetable garden",
            "write a cover letter",
            "make a budget",
            "learn a new language",
            "cook rice perfectly",
            "change a flat tyre",
            "prepare for a job interview",
            "start running",
            "organise a small event",
            "clean a cast iron pan",
            "take better photos with a phone",
            "save energy at home",
            "write a clear email",
            "study for an exam",
            "fix a leaking tap",
            "bake a loaf of bread",
            "care for a houseplant",
            "give a good presentation",
            "back up a computer",
            "negotiate a salary",
            "make a simple website",
            "teach a child to ride a bike",
            "reduce food waste",
            "choose a laptop",
            "write a short poem",
            "meditate",
            "pack for a long trip",
            "learn to type faster",
            "brew good coffee",
            "paint a room",
            "set up a home aquarium",
            "sharpen a kitchen knife",
            "keep a daily journal",
        ),
    ),
    "reasoning": (
        (
            "{} Think it through step by step and give the answer.",
            "Solve this and explain your reasoning: {}",
        ),
        (
            "A train travels 120 km in 1.5 hours. What is its average speed?",
            "If three pencils cost 45 cents, how much do eleven pencils cost?",
            "A rectangle has a perimeter of 30 cm and a width of 5 cm. What is its area?",
            "Alice is older than Bob, and Bob is older than Carol. Who is the youngest?",
            "What is 15% of 240?",
            "A shop gives 20% off, then another 10% off the reduced price. What is the total discount?",
            "If today is Wednesday, what day of the week will it be in 100 days?",
            "How many handshakes happen when 8 people each shake hands once with everyone else?",
            "A tank fills in 6 hours with one pipe and 3 hours with another. How long with both?",
            "Is every square a rectangle? Is every rectangle a square?",
            "What is the next number in the sequence 2, 6, 12, 20, 30?",
            "A recipe for 4 people needs 300 g of flour. How much is needed for 10 people?",
            "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
            "What is the sum of the integers from 1 to 50?",
            "A car uses 6 litres of fuel per 100 km. How much fuel for 350 km?",
            "Two dice are rolled. What is the probability that the sum is 7?",
            "Convert 72 degrees Fahrenheit to Celsius.",
            "A clock shows 3:15. What is the angle between the hour and minute hands?",
            "If a number doubled and then increased by 7 gives 31, what is the number?",
            "Which is larger: 2 to the power 10, or 10 to the power 3?",
            "A farmer has chickens and cows with 30 heads and 74 legs. How many of each?",
            "What is the least common multiple of 12 and 18?",
            "If it takes 5 machines 5 minutes to make 5 widgets, how long do 100 machines take to make 100?",
            "A bag has 3 red and 5 blue marbles. What is the chance of drawing two red ones without replacement?",
        ),
    ),
    "stories": (
        (
            "Write a short story about {}.",
            "Write the opening scene of a story about {}.",
            "Tell a short fable about {}, ending with its moral.",
        ),
        (
            "a lighthouse keeper who finds a message in a bottle",
            "a robot learning to paint",
            "two friends lost in a city at night",
            "a dragon who is afraid of fire",
            "the last day of summer",
            "a detective solving a mystery in a library",
            "a child who can talk to birds",
            "a journey across a desert",
            "an old clock that runs backwards",
            "a baker who opens a shop on the moon",
            "a storm at sea",
            "a village that forgot how to sing",
            "a cat who becomes mayor",
            "a letter delivered fifty years late",
            "a gardener and a talking tree",
            "a scientist who shrinks herself",
            "the first snow in a warm country",
            "a lost dog finding its way home",
            "a musician who plays for the stars",
            "a train that never stops",
            "a fox and a crow who must cooperate",
            "a festival in a mountain town",
            "a map that changes every night",
        ),
    ),
    "code": (
        (
            "Write a Python function that {}. Include a short explanation.",
            "Explain how you would write code that {}, then show the code.",
        ),
        (
            "reverses a string",
            "checks whether a number is prime",
            "counts the words in a text",
            "finds the largest element in a list",
            "merges two sorted lists",
            "computes the Fibonacci numbers",
            "removes duplicates from a list while keeping order",
            "reads a CSV file and sums a column",
            "validates an email address",
            "converts Celsius to Fahrenheit",
            "implements binary search",
            "checks whether a string is a palindrome",
            "flattens a nested list",
            "counts letter frequencies",
            "sorts a list of dictionaries by a key",
            "computes the factorial of a number",
            "finds common elements",
            "generates a random password",
            "parses a date string",
            "computes a moving average",
            "implements a simple stack",
            "transposes a matrix",
            "groups words that are anagrams",
            "computes the greatest common divisor",
            "formats a number with thousands separators",
        ),
    ),
}


def builtin_seed_prompts() -> list[str]:
    """About 580 prompts over six areas, interleaved so every prefix mixes all of them."""
    per_area = []
    for templates, topics in _AREAS.values():
        # Each topic gets every template, with the template order rotated so neighbours differ.
        prompts = []
        for index, topic in enumerate(topics):
            for shift in range(len(templates)):
                prompts.append(templates[(index + shift) % len(templates)].format(topic))
        per_area.append(prompts)
    mixed = itertools.chain.from_iterable(itertools.zip_longest(*per_area))
    return [prompt for prompt in mixed if prompt is not None]


def load_prompts(source, column: str | None = None, split: str = "train", max_prompts: int | None = None) -> list[str]:
    """Prompts from a list, the built-in set, a .txt file (one per line), a .jsonl/.json/.parquet file or a
    HF dataset (``column``, else "prompt", "instruction", "question" or "text")."""
    if isinstance(source, (list, tuple)):
        prompts = [str(p) for p in source]
    elif source == BUILTIN_PROMPTS:
        prompts = builtin_seed_prompts()
    elif isinstance(source, (str, Path)) and Path(source).suffix == ".txt" and Path(source).is_file():
        prompts = Path(source).read_text(encoding="utf-8").splitlines()
    else:
        from ..training_data import load_training_dataset

        dataset = load_training_dataset(str(source), split=split)
        names = dataset.column_names
        chosen = column or next((c for c in ("prompt", "instruction", "question", "text") if c in names), None)
        if chosen is None or chosen not in names:
            raise MinitronError(
                f"No prompt column in '{source}'" + (f" (asked for '{column}')" if column else ""),
                f"the columns are {names}",
                "name the column holding the prompts (prompt_column / --prompt-column)",
            )
        prompts = [_as_text(value) for value in dataset[chosen]]
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if max_prompts is not None:
        prompts = prompts[:max_prompts]
    if not prompts:
        raise MinitronError(
            f"The prompt set '{source if not isinstance(source, (list, tuple)) else 'list'}' is empty",
            "the teacher writes its data in answer to prompts",
            f"give prompts, or use {BUILTIN_PROMPTS}",
        )
    return prompts


def _as_text(value) -> str:
    """A prompt cell as text: a string, or the last user turn of a chat message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        users = [m.get("content", "") for m in value if m.get("role") == "user"]
        return users[-1] if users else str(value[-1].get("content", ""))
    return str(value)
