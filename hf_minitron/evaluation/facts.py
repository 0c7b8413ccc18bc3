"""Everyday facts as a multiple-choice task (``builtin:everyday-facts``), shipped with the library.

A small model keeps most of its facts in a few layers: removing the contiguous block of least LM loss
can cost it a capital or a planet while the next-best block keeps them (bench/README.md, SmolLM2).
This task lets the ``downstream`` layer selection rank blocks by what they know, offline, the way
Minitron ranked them by Winogrande. Each row is an everyday statement with four endings, one right;
the gold position rotates so no position is favoured. The demo's own sample prompts ("The capital of
France is") are deliberately not among them: choosing the layers on those would grade the demo on
its own answers.
"""

from __future__ import annotations

BUILTIN_FACTS = "builtin:everyday-facts"

# (statement, right ending, three wrong endings)
_FACTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("The capital of Japan is", "Tokyo", "Osaka", "Seoul", "Beijing"),
    ("The capital of Italy is", "Rome", "Milan", "Venice", "Naples"),
    ("The capital of Germany is", "Berlin", "Munich", "Vienna", "Hamburg"),
    ("The capital of Spain is", "Madrid", "Barcelona", "Lisbon", "Seville"),
    ("The capital of the United Kingdom is", "London", "Manchester", "Dublin", "Edinburgh"),
    ("The capital of Russia is", "Moscow", "Saint Petersburg", "Kyiv", "Warsaw"),
    ("The capital of Egypt is", "Cairo", "Alexandria", "Baghdad", "Tunis"),
    ("The capital of Canada is", "Ottawa", "Toronto", "Vancouver", "Montreal"),
    ("The largest planet in the solar system is", "Jupiter", "Mars", "Venus", "Mercury"),
    ("The planet closest to the Sun is", "Mercury", "Neptune", "Saturn", "Uranus"),
    ("The planet known as the Red Planet is", "Mars", "Jupiter", "Venus", "Saturn"),
    ("The star at the centre of our solar system is the", "Sun", "Moon", "comet", "galaxy"),
    (
        "At sea level, water boils at",
        "100 degrees Celsius",
        "10 degrees Celsius",
        "50 degrees Celsius",
        "500 degrees Celsius",
    ),
    ("Water freezes at", "0 degrees Celsius", "40 degrees Celsius", "100 degrees Celsius", "70 degrees Celsius"),
    ("The chemical symbol for gold is", "Au", "Ag", "Fe", "Pb"),
    ("The chemical formula of water is", "H2O", "CO2", "NaCl", "O3"),
    ("Plants take in carbon dioxide and give off", "oxygen", "helium", "salt", "iron"),
    ("The gas that people need to breathe is", "oxygen", "neon", "argon", "chlorine"),
    ("The largest ocean on Earth is the", "Pacific", "Atlantic", "Indian", "Arctic"),
    ("The tallest mountain in the world is Mount", "Everest", "Kilimanjaro", "Fuji", "Olympus"),
    ("The longest river in Africa is the", "Nile", "Thames", "Danube", "Seine"),
    ("The largest desert in Africa is the", "Sahara", "Gobi", "Atacama", "Mojave"),
    ("Kangaroos live in the wild in", "Australia", "Europe", "Antarctica", "South America"),
    ("The first president of the United States was George", "Washington", "Lincoln", "Jefferson", "Adams"),
    ("Romeo and Juliet was written by William", "Shakespeare", "Wordsworth", "Blake", "Golding"),
    ("The Mona Lisa was painted by", "Leonardo da Vinci", "Pablo Picasso", "Vincent van Gogh", "Claude Monet"),
    ("Albert Einstein is famous for the theory of", "relativity", "evolution", "plate tectonics", "germs"),
    ("Evolution by natural selection was put forward by Charles", "Darwin", "Dickens", "Babbage", "Chaplin"),
    ("The currency of Japan is the", "yen", "euro", "dollar", "rupee"),
    ("The currency of the United States is the", "dollar", "peso", "pound", "franc"),
    ("The opposite of hot is", "cold", "warm", "loud", "tall"),
    ("The opposite of up is", "down", "left", "over", "high"),
    ("A week has seven", "days", "months", "hours", "years"),
    ("A year has twelve", "months", "weeks", "days", "seconds"),
    ("A day has twenty-four", "hours", "minutes", "weeks", "years"),
    ("An hour has sixty", "minutes", "days", "hours", "weeks"),
    ("A triangle has three", "sides", "wheels", "legs", "colours"),
    ("Two plus two equals", "four", "five", "three", "six"),
    ("Ten times ten equals", "one hundred", "twenty", "one thousand", "eleven"),
    ("On a clear day the sky is", "blue", "green", "red", "black"),
    ("Fresh grass is", "green", "purple", "white", "orange"),
    ("Bees make", "honey", "milk", "silk", "wool"),
    ("Cows give us", "milk", "honey", "silk", "oil"),
    ("The animal called the king of the jungle is the", "lion", "mouse", "rabbit", "sheep"),
    ("The largest animal on Earth is the blue", "whale", "bird", "jay", "cheese"),
    ("A young cat is called a", "kitten", "puppy", "calf", "foal"),
    ("A young dog is called a", "puppy", "kitten", "lamb", "chick"),
    ("Ice is water in its", "solid", "gas", "liquid", "plasma"),
    ("The Earth travels around the", "Sun", "Moon", "Mars", "Pole"),
    ("The Moon travels around the", "Earth", "Venus", "Jupiter", "Saturn"),
    ("The organ that pumps blood through the body is the", "heart", "lung", "liver", "stomach"),
    ("People use their eyes to", "see", "hear", "smell", "taste"),
    ("People use their ears to", "hear", "see", "walk", "taste"),
    ("The main language spoken in Brazil is", "Portuguese", "Spanish", "French", "German"),
    ("The Great Wall is in", "China", "Brazil", "Canada", "Egypt"),
    ("The Statue of Liberty stands in", "New York", "Chicago", "Los Angeles", "Boston"),
    ("The pyramids of Giza are in", "Egypt", "Mexico", "Peru", "India"),
    ("Python is a", "programming language", "kind of cheese", "musical instrument", "planet"),
    ("The telephone is usually credited to Alexander Graham", "Bell", "Watt", "Ford", "Edison"),
)


def everyday_facts() -> list[dict]:
    """The rows, in the ``query``/``choices``/``gold`` format of ``hf_minitron.evaluation.tasks``."""
    rows = []
    for index, (query, right, *wrong) in enumerate(_FACTS):
        gold = index % 4
        rows.append({"query": query, "choices": [*wrong[:gold], right, *wrong[gold:]], "gold": gold})
    return rows
