"""toy_fc: a small function-calling benchmark in the style of BFCL, generated from a seed.

Each example offers function signatures and a user request; the answer is a list of calls,
Python-style `[f(a=1, b='x')]` or, in the `json` category, JSON-style
`[{"name": "f", "arguments": {"a": 1}}]`; `[]` is the explicit "no call". Scoring parses the
output and compares calls by name and arguments (an AST check, as BFCL does), never as text.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import Literal
from soce.errors import ConfigError

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "json")
ORDER_FREE = {"parallel", "parallel_multiple"}  # the order of the calls does not matter there

CITIES = ["paris", "rome", "tokyo", "lima", "oslo", "cairo", "delhi", "austin", "berlin", "madrid"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
WORDS = ["house", "river", "apple", "music", "light", "stone", "cloud", "bread"]
LANGS = ["french", "german", "spanish", "italian", "japanese"]
ARTISTS = ["queen", "adele", "drake", "shakira", "coldplay", "beyonce"]
CURRENCIES = ["usd", "eur", "gbp", "yen", "inr"]

# name -> (parameters with their values, request template)
FUNCTIONS: dict[str, tuple[dict[str, list], str]] = {
    "get_weather": ({"city": CITIES, "unit": ["celsius", "fahrenheit"]}, "weather in {city} in {unit}"),
    "set_alarm": ({"hour": list(range(1, 13)), "minute": [0, 15, 30, 45]}, "wake me at {hour} {minute}"),
    "send_email": ({"to": NAMES, "topic": ["lunch", "report", "party", "meeting"]}, "email {to} about the {topic}"),
    "convert": ({"amount": list(range(1, 100)), "source": CURRENCIES, "target": CURRENCIES}, "convert {amount} {source} to {target}"),
    "play_song": ({"artist": ARTISTS, "volume": list(range(1, 11))}, "play {artist} at volume {volume}"),
    "book_table": ({"name": NAMES, "people": list(range(1, 9))}, "book a table for {name} for {people} people"),
    "translate": ({"word": WORDS, "language": LANGS}, "translate {word} into {language}"),
    "find_route": ({"start": CITIES, "end": CITIES}, "route from {start} to {end}"),
}


# near namesakes: the same parameters, asked for in other words (levels 2 and 3)
TWINS = {
    "get_weather": ("get_forecast", ("forecast for {city} in {unit}",)),
    "send_email": ("send_text", ("text {to} about the {topic}",)),
    "book_table": ("book_taxi", ("book a taxi for {name} for {people} people",)),
    "find_route": ("find_flight", ("flight from {start} to {end}",)),
}


@dataclass(frozen=True)
class Level:
    """How hard toy_fc is: the functions (parameters with their values, and the request's
    phrasings), each function's near namesake (the same parameters, asked for in other words),
    how many functions multiple and parallel_multiple offer, and how often irrelevance offers
    the function asked for."""

    functions: dict[str, tuple[dict[str, list], tuple[str, ...]]]
    namesakes: dict[str, str]
    offered: int
    relevant: float = 0.0  # irrelevance: the share of its requests whose function is offered (answer: the call)
    twisted: float = 0.0  # level 3: the share of each category's examples that ask for the category's own skill
    words: str = ""  # words a request may hold beyond its functions' names, parameters and values (for the tokenizer)
    rare: tuple[str, ...] = ()  # functions offered only where a category's own skill asks for them (level 3)

    @property
    def names(self) -> list[str]:
        """The functions an example draws, but where its category's own skill asks for a rare one."""
        return [n for n in self.functions if n not in self.rare]


def _level_2() -> Level:
    """Level 1's functions, with:
    - a near namesake for half of them (the same arguments asked for in other words), offered
      half the time beside the function asked for, or in its place;
    - requests phrased in two orders where two arguments share their values (source and
      target, start and end: the model must read which is which);
    - amounts with decimals (12.5: three tokens);
    - four functions offered in multiple and parallel_multiple;
    - irrelevance as BFCL's relevance detection both ways: half its requests are for an
      offered function (the answer is its call), half for none (no call)."""
    functions = {name: (params, (template,)) for name, (params, template) in FUNCTIONS.items()}
    amounts = [n + f for n in range(1, 50) for f in (0.5, 0.25)]
    functions["convert"] = ({**FUNCTIONS["convert"][0], "amount": amounts},
                            ("convert {amount} {source} to {target}", "how many {target} for {amount} {source}"))
    functions["find_route"] = (FUNCTIONS["find_route"][0], ("route from {start} to {end}", "route to {end} from {start}"))
    twins = {**TWINS, "find_route": ("find_flight", ("flight from {start} to {end}", "flight to {end} from {start}"))}
    namesakes = {}
    for name, (twin, templates) in twins.items():
        functions[twin] = (functions[name][0], templates)
        namesakes |= {name: twin, twin: name}
    return Level(functions, namesakes, offered=4, relevant=0.5)


# --- level 3: a skill of each category's own ----------------------------------------------------
# Level 1's functions and their near namesakes (TWINS), and in each category the share `twisted`
# of the requests asking for a skill no other category needs, as BFCL's categories are distinct
# skills (languages, formats, relevance, multi-turn):
#   simple             numbers in words ("convert forty usd to eur", "wake me at seven sharp");
#   multiple           a function offered beside its near namesake, either asked for ("text bob
#                      about the lunch" with send_email and send_text offered);
#   parallel           one request naming two values of the first argument ("email bob and carol
#                      about the lunch": two calls);
#   parallel_multiple  the second request refers back to the first ("email bob about the lunch and
#                      book a table for them for 3 people");
#   irrelevance        a request for a namesake ("book a taxi for bob for 2 people"), offered
#                      (its call) or with its namesake offered in its place (book_table: no call);
#                      the other requests ask for an offered function half the time, or for none;
#   json               its format, the skill no other category needs: no more.
# The namesakes are offered nowhere else, and multiple's pairs are not irrelevance's.
_ONES = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
# the numbers simple writes in words, a word each but an alarm's minutes (0 only as a minute)
NUMBER_WORDS = {0: "sharp", **dict(enumerate(_ONES, start=1)), **dict(zip(range(20, 100, 10), _TENS)), 45: "forty five"}
IN_WORDS = ("set_alarm", "convert", "play_song", "book_table")  # the functions whose arguments hold whole numbers
TWINS_MULTIPLE = ("get_weather", "send_email")
TWINS_IRRELEVANCE = ("book_table", "find_route")
# (first function, second function, the request, the second call's arguments from the first's and
# its own): the second request names the first's value by "them" or "there"
REFERENCES = (
    ("send_email", "book_table", "email {to} about the {topic} and book a table for them for {people} people",
     lambda a, b: {"name": a["to"], "people": b["people"]}),
    ("book_table", "send_email", "book a table for {name} for {people} people and email them about the {topic}",
     lambda a, b: {"to": a["name"], "topic": b["topic"]}),
    ("get_weather", "find_route", "weather in {city} in {unit} and route from there to {end}",
     lambda a, b: {"start": a["city"], "end": b["end"]}),
    ("find_route", "get_weather", "route from {start} to {end} and weather there in {unit}",
     lambda a, b: {"city": a["end"], "unit": b["unit"]}),
)


def _level_3() -> Level:
    functions = {n: (p, (t,)) for n, (p, t) in FUNCTIONS.items()}
    functions |= {twin: (FUNCTIONS[name][0], templates) for name, (twin, templates) in TWINS.items()}
    words = [*NUMBER_WORDS.values(), *(r for _, _, r, _ in REFERENCES)]
    return Level(functions, {}, offered=3, relevant=0.5, twisted=0.4, words=" ".join(words),
                 rare=tuple(twin for twin, _ in TWINS.values()))


LEVEL_3 = _level_3()
LEVELS = {1: Level({n: (p, (t,)) for n, (p, t) in FUNCTIONS.items()}, {}, offered=3), 2: _level_2(), 3: LEVEL_3}


def level_of(level: int) -> Level:
    if level not in LEVELS:
        raise ConfigError(f"benchmark.level={level}: toy_fc has levels {', '.join(map(str, LEVELS))}")
    return LEVELS[level]


@dataclass(frozen=True)
class Example:
    id: str
    category: str
    prompt: str
    answer: str  # the reference output
    calls: str  # the reference calls as JSON: [[name, {arg: value}], ...]

    def to_dict(self) -> dict:
        return asdict(self)


def signature(name: str, level: int = 1) -> str:
    return f"{name}({', '.join(level_of(level).functions[name][0])})"


def python_call(name: str, args: dict) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def render(calls: list[tuple[str, dict]], syntax: str) -> str:
    if syntax == "json":
        return json.dumps([{"name": n, "arguments": a} for n, a in calls])
    return "[" + ", ".join(python_call(n, a) for n, a in calls) + "]"


def _draw_call(rng: random.Random, level: Level, name: str) -> tuple[tuple[str, dict], str]:
    params, templates = level.functions[name]
    args = {p: rng.choice(values) for p, values in params.items()}
    template = templates[0] if len(templates) == 1 else rng.choice(templates)
    return (name, args), template.format(**args)


def _offer(rng: random.Random, lv: Level, wanted: int) -> tuple[list[str], list[str]]:
    """(offered, wanted) for multiple and parallel_multiple: `lv.offered` functions in random
    order, the `wanted` ones among them and, at level 2, half the time the first's namesake."""
    names = lv.names
    if not lv.namesakes:  # level 1, drawn as it always was
        offered = rng.sample(names, lv.offered)
        return offered, [rng.choice(offered)] if wanted == 1 else rng.sample(offered, wanted)
    chosen = [rng.choice(names)] if wanted == 1 else rng.sample(names, wanted)
    offered = list(chosen)
    twin = lv.namesakes[chosen[0]] if chosen[0] in lv.namesakes else None
    if twin and twin not in offered and rng.random() < 0.5:
        offered.append(twin)
    offered += rng.sample([n for n in names if n not in offered], lv.offered - len(offered))
    rng.shuffle(offered)
    return offered, chosen


def _offer_irrelevant(rng: random.Random, lv: Level) -> tuple[list[str], str]:
    """(offered, asked) for irrelevance: two functions, the one asked for among them in the share
    `lv.relevant` of the requests (the answer is then its call, else no call), and at level 2
    half the time its namesake."""
    names = lv.names
    if not lv.relevant:  # level 1, drawn as it always was
        *offered, asked = rng.sample(names, 3)
        return offered, asked
    asked = rng.choice(names)
    twin = lv.namesakes.get(asked)
    offered = [twin] if twin and rng.random() < 0.5 else []
    offered += [asked] if rng.random() < lv.relevant else []
    offered += rng.sample([n for n in names if n not in (asked, *offered)], 2 - len(offered))
    rng.shuffle(offered)
    return offered, asked


def make_example(rng: random.Random, category: str, level: int = 1,
                 twisted: float | None = None) -> tuple[str, list[tuple[str, dict]], str]:
    """(prompt, reference calls, syntax) for one random example of `category`; at level 3, one
    that asks for the category's own skill with probability `twisted` (None: the level's share)."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown category {category!r}")
    lv = level_of(level)
    syntax = "json" if category == "json" else "python"
    if lv.twisted and category in TWISTS and rng.random() < (lv.twisted if twisted is None else twisted):
        offered, calls, request = TWISTS[category](rng, lv)
        return _prompt(level, offered, syntax, request), calls, syntax
    if category in ("simple", "json"):
        offered = wanted = [rng.choice(lv.names)]
    elif category == "parallel":
        offered = [rng.choice(lv.names)]
        wanted = offered * 2
    elif category == "irrelevance":
        offered, asked = _offer_irrelevant(rng, lv)
        call, request = _draw_call(rng, lv, asked)
        return _prompt(level, offered, syntax, request), [call] if asked in offered else [], syntax
    else:
        offered, wanted = _offer(rng, lv, 1 if category == "multiple" else 2)
    drawn = [_draw_call(rng, lv, n) for n in wanted]
    request = " and ".join(r for _, r in drawn)
    return _prompt(level, offered, syntax, request), [c for c, _ in drawn], syntax


def _in_words(rng: random.Random, lv: Level) -> tuple[list[str], list, str]:
    name = rng.choice(IN_WORDS)
    params, (template,) = lv.functions[name]
    args = {p: rng.choice([v for v in values if v in NUMBER_WORDS] if isinstance(values[0], int) else values)
            for p, values in params.items()}
    return [name], [(name, args)], template.format(**{p: NUMBER_WORDS.get(v, v) for p, v in args.items()})


def _beside_namesake(rng: random.Random, lv: Level) -> tuple[list[str], list, str]:
    name = rng.choice(TWINS_MULTIPLE)
    asked, twin = rng.sample([name, TWINS[name][0]], 2)
    offered = [asked, twin, rng.choice([n for n in lv.names if n != name])]
    rng.shuffle(offered)
    call, request = _draw_call(rng, lv, asked)
    return offered, [call], request


def _two_values(rng: random.Random, lv: Level) -> tuple[list[str], list, str]:
    name = rng.choice(lv.names)
    params, (template,) = lv.functions[name]
    first, values = next(iter(params.items()))
    args = {p: rng.choice(v) for p, v in params.items()}
    other = rng.choice([v for v in values if v != args[first]])
    return [name], [(name, args), (name, {**args, first: other})], template.format(**{**args, first: f"{args[first]} and {other}"})


def _referring(rng: random.Random, lv: Level) -> tuple[list[str], list, str]:
    first, second, request, bind = rng.choice(REFERENCES)
    a, b = ({p: rng.choice(values) for p, values in lv.functions[n][0].items()} for n in (first, second))
    offered = [first, second, rng.choice([n for n in lv.names if n not in (first, second)])]
    rng.shuffle(offered)
    return offered, [(first, a), (second, bind(a, b))], request.format(**a, **b)


def _namesake_or_not(rng: random.Random, lv: Level) -> tuple[list[str], list, str]:
    name = rng.choice(TWINS_IRRELEVANCE)
    asked = TWINS[name][0]
    offered = [rng.choice([asked, name]), rng.choice([n for n in lv.names if n != name])]
    rng.shuffle(offered)
    call, request = _draw_call(rng, lv, asked)
    return offered, [call] if asked in offered else [], request


# json's own skill is its format, which the other categories do not use
TWISTS = {"simple": _in_words, "multiple": _beside_namesake, "parallel": _two_values, "parallel_multiple": _referring,
          "irrelevance": _namesake_or_not}


def _prompt(level: int, offered: list[str], syntax: str, request: str) -> str:
    return f"functions: {' ; '.join(signature(n, level) for n in offered)} | format: {syntax} | request: {request} | calls:"


Side = Literal["train", "dev", "test"]


def side_of(prompt: str) -> Side:
    """Which part of the prompt space a prompt belongs to, fixed by its hash: an eighth of all
    prompts to dev, an eighth to test, the rest to training. Whatever the seed or size, a dev or
    test split and the training data never share a prompt, and dev and test are drawn alike."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 8
    return "dev" if bucket == 0 else "test" if bucket == 1 else "train"


def generate_examples(seed: int, per_category: int, side: Side, exclude: set[str] = frozenset(), tag: str = "",
                      level: int = 1, twisted: float | None = None) -> list[Example]:
    """`per_category` distinct examples of each category from `side` of the prompt space, none
    whose prompt is in `exclude` (at level 3, the share `twisted` of them asking for their
    category's own skill; None: the level's)."""
    rng = random.Random(seed)
    out = []
    for category in CATEGORIES:
        seen: set[str] = set()
        attempts = 0
        while len(seen) < per_category:
            attempts += 1
            if attempts > 200 * per_category:
                raise ConfigError(f"per_category={per_category}: toy_fc cannot draw that many distinct {category} "
                                  f"examples for {side} (it has {len(seen)} after {attempts - 1} draws)")
            prompt, calls, syntax = make_example(rng, category, level, twisted)
            if prompt in seen or prompt in exclude or side_of(prompt) != side:
                continue
            seen.add(prompt)
            out.append(Example(f"{tag}{category}-{len(seen) - 1}", category, prompt, render(calls, syntax), json.dumps(calls)))
    return out


def splits(seed: int = 0, per_category: int = 100, level: int = 1) -> dict[str, list[Example]]:
    """dev and test: `per_category` examples of each category each, from the dev and the test part
    of the prompt space (fc.side_of)."""
    dev = generate_examples(seed, per_category, "dev", tag="dev-", level=level)
    test = generate_examples(seed + 1, per_category, "test", tag="test-", level=level)
    return {"dev": dev, "test": test}


# --- scoring: parse, then compare calls ----------------------------------------------------------
def parse_calls(text: str, syntax: str) -> list[tuple[str, dict]] | None:
    """The calls in a model's output, or None when it does not parse as a list of calls."""
    text = text.strip()
    try:
        if syntax == "json":
            data = json.loads(text)
            if not isinstance(data, list):
                return None
            calls = []
            for item in data:
                if not (isinstance(item, dict) and set(item) == {"name", "arguments"} and isinstance(item["name"], str)
                        and isinstance(item["arguments"], dict)):
                    return None
                calls.append((item["name"], item["arguments"]))
            return calls
        tree = ast.parse(text, mode="eval").body
        if not isinstance(tree, ast.List):
            return None
        calls = []
        for node in tree.elts:
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
                return None
            args = {}
            for kw in node.keywords:
                if kw.arg is None or kw.arg in args:
                    return None
                args[kw.arg] = ast.literal_eval(kw.value)
            calls.append((node.func.id, args))
        return calls
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _key(call: tuple[str, dict]) -> str:
    return json.dumps(call, sort_keys=True)


def is_correct(output: str, example: Example) -> bool:
    """Right function names and arguments (values and types), no extra or missing calls."""
    syntax = "json" if example.category == "json" else "python"
    got = parse_calls(output, syntax)
    if got is None:
        return False
    want = [(n, a) for n, a in json.loads(example.calls)]
    if example.category in ORDER_FREE:
        return sorted(map(_key, got)) == sorted(map(_key, want))
    return list(map(_key, got)) == list(map(_key, want))
