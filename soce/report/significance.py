"""What the results' differences are worth: each row's objective with its paired-bootstrap
interval, each row's difference to the best single candidate with its interval, and McNemar's
test of the searched soup against each of its ingredients, on every split; and the sentences
that say which differences the data supports.
"""

from __future__ import annotations

from soce.objective import Objective
from soce.stats import Bootstrap, mcnemar


def add_statistics(results: dict, objective: Objective, correct: dict[str, dict[str, dict[str, bool]]],
                   categories: dict[str, dict[str, str]], ingredients: dict[str, dict[str, dict[str, bool]]], samples: int,
                   confidence: float, seed: int) -> None:
    """Adds the statistics to `results` (results.json's dict) in place.
    correct: split -> row role -> example id -> solved; categories: split -> example id -> its
    category; ingredients: split -> expert -> example id -> solved (for McNemar)."""
    rows = {r["role"]: r for r in results["rows"]}
    tests = {}
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
        tests[split] = [{"ingredient": name, **_renamed(mcnemar(searched, [by_id[i] for i in ids]).to_dict())}
                        for name, by_id in ingredients[split].items()]
    results["statistics"] = {"bootstrap": samples, "confidence": confidence, "seed": seed,
                             "resampled": f"examples, within each {objective.group} (paired: the same resamples for every row)",
                             "within": objective.group}
    results["mcnemar"] = tests


def _renamed(d: dict) -> dict:
    return {"only_soup": d["only_a"], "only_ingredient": d["only_b"], "p": d["p"]}


def supported(results: dict, split: str) -> list[str]:
    """One sentence per row compared with the best single candidate, and one per ingredient the
    searched soup was tested against, saying what the data supports."""
    if "statistics" not in results:
        return []
    level = results["statistics"]["confidence"]
    out = []
    for row in results["rows"]:
        vs = row.get(split, {}).get("vs_single")
        if vs is None:
            continue
        d, (low, high) = vs["estimate"], vs["ci"]
        if low > 0:
            verdict = "better than the best single candidate: the data supports it"
        elif high < 0:
            verdict = "worse than the best single candidate: the data supports it"
        else:
            verdict = "not distinguishable from the best single candidate: the interval contains 0"
        out.append(f"The {row['name']} is {verdict} ({d:+.4f}, {level:.0%} CI [{low:+.4f}, {high:+.4f}]).")
    for t in results["mcnemar"].get(split, []):
        significant = t["p"] < 1 - level
        out.append(f"Against {t['ingredient']}, the searched soup alone solves {t['only_soup']} examples and "
                   f"{t['ingredient']} alone {t['only_ingredient']}: McNemar p = {t['p']:.3g}, "
                   + ("a significant difference." if significant else "no significant difference."))
    return out


def score_text(cell: dict | None) -> str:
    """A row's score on a split, with its interval where the results have one."""
    if cell is None:
        return "n/a"
    ci = cell.get("ci")
    return f"{cell['objective']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
