"""What the results' differences are worth: each row's objective with its paired-bootstrap
interval, each row's difference to the best single candidate, and the searched soup's paired
difference and McNemar test against every other row and each of its ingredients, on every
split; and the sentences that say which differences the data supports, all by one rule
(`verdict`: better or worse only where the interval is clear of 0).
"""

from __future__ import annotations

from soce.objective import Objective
from soce.stats import Bootstrap, mcnemar


def verdict(low: float, high: float) -> str:
    """The one rule for every claim soce makes about a difference (the log's summary, report.md,
    the model card): better or worse only where the paired interval is clear of 0."""
    if low > 0:
        return "better than"
    if high < 0:
        return "worse than"
    return "not distinguishable from"


def add_statistics(results: dict, objective: Objective, correct: dict[str, dict[str, dict[str, bool]]],
                   categories: dict[str, dict[str, str]], ingredients: dict[str, dict[str, dict[str, bool]]], samples: int,
                   confidence: float, seed: int) -> None:
    """Adds the statistics to `results` (results.json's dict) in place: each row's interval and its
    difference to the best single candidate; the searched soup's paired difference and McNemar
    test against every other row and each of its ingredients (`versus`), on every split.
    correct: split -> row role -> example id -> solved; categories: split -> example id -> its
    category; ingredients: split -> expert -> example id -> solved."""
    rows = {r["role"]: r for r in results["rows"]}
    for split, by_role in correct.items():
        ids = sorted(categories[split])
        boot = Bootstrap([(i, categories[split][i]) for i in ids], objective, samples, seed, confidence)
        vector = {role: [by_id[i] for i in ids] for role, by_id in by_role.items()}
        for role, values in vector.items():
            row = rows[role][split]
            row["ci"] = boot.interval(values).to_dict()["ci"]
            if role != "single":
                row["vs_single"] = boot.difference(values, vector["single"]).to_dict()
        searched = vector["searched"]
        others = [(rows[role]["name"], role, values) for role, values in vector.items() if role != "searched"]
        others += [(name, "expert", [by_id[i] for i in ids]) for name, by_id in ingredients[split].items()]
        rows["searched"][split]["versus"] = [
            {"against": name, "role": role, **boot.difference(searched, values).to_dict(),
             **_renamed(mcnemar(searched, values).to_dict())} for name, role, values in others]
    results["statistics"] = {"bootstrap": samples, "confidence": confidence, "seed": seed,
                             "resampled": f"examples, within each {objective.group} (paired: the same resamples for every row)",
                             "within": objective.group}


def _renamed(d: dict) -> dict:
    return {"only_soup": d["only_a"], "only_other": d["only_b"], "p": d["p"]}


def claims(results: dict, split: str) -> list[str]:
    """The searched soup against every other row and each ingredient, one clause each, by the
    rule (`verdict`): "better than the best single candidate (+0.0283, 95 % CI [...])"."""
    searched = results["rows"][-1].get(split, {})
    if "versus" not in searched:
        return []
    level = results["statistics"]["confidence"]
    return [f"{verdict(*v['ci'])} the {_named(v)} {difference_text(v, level)}" for v in searched["versus"]]


def difference_text(d: dict, level: float) -> str:
    """A paired difference as every claim gives it: '(+0.0283, 95% CI [+0.0117, +0.0450])'."""
    return f"({d['estimate']:+.4f}, {level:.0%} CI [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}])"


def _named(v: dict) -> str:
    return f"expert {v['against']}" if v["role"] == "expert" else v["against"]


def supported(results: dict, split: str) -> list[str]:
    """What the data supports on `split`, one sentence each: the searched soup against every other
    row and each ingredient (its paired interval and McNemar's test), each other row against the
    best single candidate, and whether the candidate chosen on dev is the best on this split."""
    if "statistics" not in results:
        return []
    level = results["statistics"]["confidence"]
    rows = results["rows"]
    searched = rows[-1]
    out = []
    for clause, v in zip(claims(results, split), searched[split]["versus"]):
        significant = "a significant difference" if v["p"] < 1 - level else "no significant difference"
        out.append(f"The {searched['name']} is {clause}: it alone solves {v['only_soup']} examples, the {_named(v)} alone "
                   f"{v['only_other']} (McNemar p = {v['p']:.3g}, {significant}).")
    for row in rows[:-1]:
        vs = row.get(split, {}).get("vs_single")
        if vs is not None:
            out.append(f"The {row['name']} is {verdict(*vs['ci'])} the best single candidate {difference_text(vs, level)}.")
    return out + best_on(results, split)


def best_on(results: dict, split: str) -> list[str]:
    """A sentence where the best single candidate, chosen on the weights' split, is not the best
    candidate on `split` (results' `candidates`: each candidate's objective per split)."""
    scores = results.get("candidates", {}).get(split)
    single = next(r for r in results["rows"] if r["role"] == "single")
    if not scores or split == results.get("select_on"):
        return []
    chosen = single["models"][0]
    best = max(scores, key=lambda m: scores[m])
    if scores[best] <= scores[chosen]:
        return []
    return [f"On {split} the best candidate is {best} ({scores[best]:.4f}), not {chosen} ({scores[chosen]:.4f}), the best "
            f"on {results['select_on']} and the best single candidate above: the {split} scores were not used for any choice."]


def score_text(cell: dict | None) -> str:
    """A row's score on a split, with its interval where the results have one."""
    if cell is None:
        return "n/a"
    ci = cell.get("ci")
    return f"{cell['objective']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
