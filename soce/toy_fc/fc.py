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


@dataclass(frozen=True)
class Example:
    id: str
    category: str
    prompt: str
    answer: str  # the reference output
    calls: str  # the reference calls as JSON: [[name, {arg: value}], ...]

    def to_dict(self) -> dict:
        return asdict(self)


def signature(name: str) -> str:
    return f"{name}({', '.join(FUNCTIONS[name][0])})"


def python_call(name: str, args: dict) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def render(calls: list[tuple[str, dict]], syntax: str) -> str:
    if syntax == "json":
        return json.dumps([{"name": n, "arguments": a} for n, a in calls])
    return "[" + ", ".join(python_call(n, a) for n, a in calls) + "]"


def _draw_call(rng: random.Random, name: str) -> tuple[tuple[str, dict], str]:
    params, template = FUNCTIONS[name]
    args = {p: rng.choice(values) for p, values in params.items()}
    return (name, args), template.format(**args)


def make_example(rng: random.Random, category: str) -> tuple[str, list[tuple[str, dict]], str]:
    """(prompt, reference calls, syntax) for one random example of `category`."""
    names = list(FUNCTIONS)
    syntax = "json" if category == "json" else "python"
    if category in ("simple", "json"):
        offered = [rng.choice(names)]
        wanted = [offered[0]]
    elif category == "multiple":
        offered = rng.sample(names, 3)
        wanted = [rng.choice(offered)]
    elif category == "parallel":
        offered = [rng.choice(names)]
        wanted = [offered[0], offered[0]]
    elif category == "parallel_multiple":
        offered = rng.sample(names, 3)
        wanted = rng.sample(offered, 2)
    elif category == "irrelevance":
        pool = rng.sample(names, 3)
        offered, asked = pool[:2], pool[2]
        _, request = _draw_call(rng, asked)
        return _prompt(offered, syntax, request), [], syntax
    else:
        raise ConfigError(f"unknown category {category!r}")
    drawn = [_draw_call(rng, n) for n in wanted]
    request = " and ".join(r for _, r in drawn)
    return _prompt(offered, syntax, request), [c for c, _ in drawn], syntax


def _prompt(offered: list[str], syntax: str, request: str) -> str:
    return f"functions: {' ; '.join(signature(n) for n in offered)} | format: {syntax} | request: {request} | calls:"


Side = Literal["train", "dev", "test"]


def side_of(prompt: str) -> Side:
    """Which part of the prompt space a prompt belongs to, fixed by its hash: an eighth of all
    prompts to dev, an eighth to test, the rest to training. Whatever the seed or size, a dev or
    test split and the training data never share a prompt, and dev and test are drawn alike."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 8
    return "dev" if bucket == 0 else "test" if bucket == 1 else "train"


def generate_examples(seed: int, per_category: int, side: Side, exclude: set[str] = frozenset(), tag: str = "") -> list[Example]:
    """`per_category` distinct examples of each category from `side` of the prompt space, none
    whose prompt is in `exclude`."""
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
            prompt, calls, syntax = make_example(rng, category)
            if prompt in seen or prompt in exclude or side_of(prompt) != side:
                continue
            seen.add(prompt)
            out.append(Example(f"{tag}{category}-{len(seen) - 1}", category, prompt, render(calls, syntax), json.dumps(calls)))
    return out


def splits(seed: int = 0, per_category: int = 100) -> dict[str, list[Example]]:
    """dev and test: `per_category` examples of each category each, from the dev and the test part
    of the prompt space (fc.side_of)."""
    dev = generate_examples(seed, per_category, "dev", tag="dev-")
    test = generate_examples(seed + 1, per_category, "test", tag="test-")
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
