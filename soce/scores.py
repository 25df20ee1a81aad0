"""The score table: models x categories, read from CSV files (plain or BFCL leaderboard)."""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from soce.errors import DataError

log = logging.getLogger("soce")

MISSING_CELLS = {"", "n/a", "na", "nan", "none", "-", "—"}

# BFCL leaderboard files (data_overall.csv, data_live.csv, ...): columns that are not scores,
# and aggregate columns that summarise the leaf categories.
BFCL_METADATA = {"Rank", "Model", "Model Link", "Organization", "License"}
BFCL_METADATA_PREFIXES = ("Cost", "Latency")
BFCL_AGGREGATES = {"Overall Acc", "Non-Live AST Acc", "Live Acc", "Multi Turn Acc", "AST Summary", "Simple AST",
                   "Live Overall Acc", "Non_Live Overall Acc", "Multi Turn Overall Acc"}
# The leaf columns of data_overall.csv (soce.bfcl.data.CATEGORIES: the test files each pools)
BFCL_LEAVES = ("Non-Live Simple AST", "Non-Live Multiple AST", "Non-Live Parallel AST", "Non-Live Parallel Multiple AST",
               "Live Simple AST", "Live Multiple AST", "Live Parallel AST", "Live Parallel Multiple AST",
               "Multi Turn Base", "Multi Turn Miss Func", "Multi Turn Miss Param", "Multi Turn Long Context",
               "Relevance Detection", "Irrelevance Detection")
# and of the v3 section files (data_live.csv, data_non_live.csv, data_multi_turn.csv)
BFCL_SECTION_LEAVES = {"Python Simple AST", "Python Multiple AST", "Python Parallel AST", "Python Parallel Multiple AST",
                       "Java Simple AST", "JavaScript Simple AST", "Multiple AST", "Parallel AST", "Parallel Multiple AST",
                       "Irrelevance Detection", "Relevance Detection", "Base", "Miss Func", "Miss Param", "Long Context"}
OVERALL = "overall"  # the column soce writes the overall score to in scores.csv
OVERALL_NAMES = ("overall", "overall score", "overall acc", "overall accuracy", "average", "mean")


@dataclass(frozen=True)
class Outcome:
    """One model's result on one benchmark example."""

    model: str
    example_id: str
    category: str
    correct: bool
    output: str = ""


@dataclass(frozen=True)
class ScoreTable:
    """Scores of models (rows) on categories (columns); NaN marks a missing score.

    `overall` is the source's aggregate score per model where it has one (BFCL's Overall Acc),
    otherwise the mean over the categories (NaN where any is missing).
    """

    models: tuple[str, ...]
    categories: tuple[str, ...]
    values: np.ndarray
    overall: np.ndarray
    source: str = ""
    outcomes: tuple[Outcome, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.models), len(self.categories)):
            raise DataError(f"values has shape {self.values.shape}, expected {(len(self.models), len(self.categories))}")
        if self.overall.shape != (len(self.models),):
            raise DataError(f"overall has shape {self.overall.shape}, expected {(len(self.models),)}")
        for kind, names in (("model", self.models), ("category", self.categories)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise DataError(f"{self.source or 'score table'}: duplicate {kind} names: {', '.join(dupes)}")

    def score(self, model: str, category: str) -> float:
        return float(self.values[self.models.index(model), self.categories.index(category)])

    def row(self, model: str) -> dict[str, float]:
        i = self.models.index(model)
        return {c: float(v) for c, v in zip(self.categories, self.values[i])}

    def overall_of(self, model: str) -> float:
        return float(self.overall[self.models.index(model)])

    def subset(self, models: Sequence[str]) -> "ScoreTable":
        """The rows of `models`, in that order."""
        rows = [self.models.index(m) for m in models]
        keep = set(models)
        return ScoreTable(
            tuple(models), self.categories, self.values[rows], self.overall[rows], self.source,
            tuple(o for o in self.outcomes if o.model in keep),
        )


def mean_overall(values: np.ndarray) -> np.ndarray:
    """Mean over categories per model; NaN where any category is missing (never a silent zero)."""
    return values.mean(axis=1) if values.size else np.full(values.shape[0], np.nan)


def parse_score(cell: str) -> float | None:
    """'88.44%' -> 88.44, 'N/A' or '' -> NaN; None when the cell is not a number at all."""
    text = cell.strip()
    if text.lower() in MISSING_CELLS:
        return math.nan
    text = text.removesuffix("%").strip()
    try:
        return float(text)
    except ValueError:
        return None


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """'; closest: a, b' for an error message, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)
    return f"; closest: {', '.join(repr(m) for m in matches)}" if matches else ""


def read_table(
    path: str | Path,
    *,
    format: str = "csv",
    model_column: str | None = None,
    overall_column: str | None = None,
    categories: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> ScoreTable:
    """Read a score table from a CSV file.

    format="csv": the model column (default: the first column) and one numeric column per
    category; a column named like an overall score ('overall', 'average', ...) is the overall
    score unless `categories` names it. format="bfcl": a BFCL leaderboard file; metadata and aggregate columns are left
    out unless named in `categories`, and the '... Overall Acc' column is the overall score.
    Cells may be percentages ('88.44%'); 'N/A' and empty cells are missing.
    """
    path = Path(path)
    header, rows = _read_csv(path)
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: duplicate column names: {', '.join(map(repr, repeated))}; name each column once")
    if format == "bfcl":
        model_column = model_column or "Model"
        overall_column = overall_column or next((c for c in header if c.endswith("Overall Acc")), None)
        skip = {c for c in header if c in BFCL_METADATA or c in BFCL_AGGREGATES or c.startswith(BFCL_METADATA_PREFIXES)}
        if overall_column is None:
            raise DataError(f"{path}: no 'Overall Acc' column, by which a BFCL leaderboard ranks its models (a renamed one?): "
                            f"name it (benchmark.overall_column=...), or read the file as a plain table (benchmark.format=csv); "
                            f"columns: {', '.join(header)}")
    elif format == "csv":
        model_column = model_column or header[0]
        # a column named like the overall score is the overall score, unless named a category
        overall_column = overall_column or next((c for c in header if c.lower() in OVERALL_NAMES and c not in (categories or ())), None)
        skip = set()
    else:
        raise DataError(f"benchmark.format={format!r}: expected 'csv' or 'bfcl'")

    for key, col in (("model_column", model_column), ("overall_column", overall_column)):
        if col is not None and col not in header:
            raise DataError(f"{path}: no column {col!r} (benchmark.{key}){closest(col, header)}; columns: {', '.join(header)}")
    for col in exclude:
        if col not in header:
            raise DataError(f"{path}: benchmark.exclude names {col!r}, which is not a column{closest(col, header)}")

    columns = {c: [r[header.index(c)] for r in rows] for c in header}
    models = [m.strip() for m in columns[model_column]]
    for i, m in enumerate(models):
        if not m:
            raise DataError(f"{path}: row {i + 2} has an empty model name in column {model_column!r}")
    dupes = sorted({m for m in models if models.count(m) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate model names in column {model_column!r}: {', '.join(dupes)}")

    if categories:
        for c in categories:
            if c not in header:
                raise DataError(f"{path}: category {c!r} (benchmark.categories) is not a column{closest(c, header)}")
        chosen = list(categories)
    else:
        chosen = [c for c in header if c not in skip and c not in exclude and c not in (model_column, overall_column)]

    values, kept = [], []
    for c in chosen:
        parsed = [parse_score(cell) for cell in columns[c]]
        bad = [(i, columns[c][i]) for i, v in enumerate(parsed) if v is None]
        if bad and (categories or len(bad) < len(parsed)):
            i, cell = bad[0]
            raise DataError(f"{path}: column {c!r}, row {i + 2} ({models[i]}): {cell!r} is not a number")
        if not bad:  # a column of text (links, licences) is not a category
            if format == "bfcl" and not categories:
                _check_bfcl_column(path, c)
            _check_range(path, c, models, parsed, format)
            values.append(parsed)
            kept.append(c)
    if not kept:
        raise DataError(f"{path}: no numeric category columns (columns: {', '.join(header)})")

    matrix = np.array(values, dtype=np.float64).T
    if overall_column is not None:
        overall = np.array([_as_number(path, overall_column, m, cell) for m, cell in zip(models, columns[overall_column])])
        unranked = [m for m, o in zip(models, overall) if math.isnan(o)]
        if unranked:
            log.warning("%s: %s no %r (an empty or N/A cell): %s in the correlations and can lead a category, but "
                        "cannot be ranked by overall score: wherever soce ranks by it (selection=topk, ties, "
                        "keep_best_overall, the best single candidate) %s after every model that has one. Fill in the "
                        "cell to rank %s", path, f"{', '.join(unranked)} {'have' if len(unranked) > 1 else 'has'}",
                        overall_column, "they stay" if len(unranked) > 1 else "it stays",
                        "they come" if len(unranked) > 1 else "it comes", "them" if len(unranked) > 1 else "it")
    else:
        overall = mean_overall(matrix)
    return ScoreTable(tuple(models), tuple(kept), matrix, overall, source=str(path))


def _check_bfcl_column(path: Path, column: str) -> None:
    """A BFCL leaderboard's score column is one of its leaf columns (an aggregate is left out by
    name): a column of another name, such as a renamed aggregate, would enter the analysis as a
    category."""
    if column not in BFCL_LEAVES and column not in BFCL_SECTION_LEAVES:
        raise DataError(
            f"{path}: column {column!r} is not a column of the BFCL v3 leaderboard (a renamed aggregate would be analysed "
            f"as a category{closest(column, [*BFCL_LEAVES, *BFCL_AGGREGATES])}). Its leaf columns: {', '.join(BFCL_LEAVES)}; "
            f"its aggregates (left out): {', '.join(sorted(BFCL_AGGREGATES))}. Rename the column, leave it out "
            f"(benchmark.exclude=['{column}']), or name the categories (benchmark.categories=[...])")


def _as_number(path: Path, column: str, model: str, cell: str) -> float:
    value = parse_score(cell)
    if value is None:
        raise DataError(f"{path}: column {column!r} ({model}): {cell!r} is not a number")
    return value


def _check_range(path: Path, column: str, models: Sequence[str], values: Sequence[float], format: str) -> None:
    """Scores are finite; a BFCL leaderboard's are percentages, within [0, 100]."""
    for model, v in zip(models, values):
        if math.isinf(v) or (format == "bfcl" and not math.isnan(v) and not 0 <= v <= 100):
            what = "a BFCL score is a percentage, from 0 to 100" if format == "bfcl" else "a score is a finite number"
            raise DataError(f"{path}: column {column!r}, model {model!r}: {v:g} is not a score ({what}): fix the table")


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise DataError(f"score file {path}: not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"score file {path}: cannot be read ({err})") from None
    if len(lines) < 2:
        raise DataError(f"score file {path}: needs a header and at least one row")
    header = [h.strip() for h in lines[0]]
    while header and not header[-1]:  # BFCL files end every line with a comma
        header.pop()
    rows = []
    for n, row in enumerate(lines[1:], start=2):
        row = row + [""] * (len(header) - len(row))
        if any(cell.strip() for cell in row[len(header):]):
            raise DataError(f"score file {path}: row {n} has {len(row)} cells, the header {len(header)}")
        rows.append(row[: len(header)])
    return header, rows


def outcomes_path(scores_path: Path) -> Path:
    """scores.csv -> outcomes.jsonl, scores_test.csv -> outcomes_test.jsonl."""
    return scores_path.with_name(scores_path.stem.replace("scores", "outcomes", 1) + ".jsonl")


def write_scores(table: ScoreTable, path: Path) -> None:
    """scores.csv: the model name, one column per category, then the overall score."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *table.categories, OVERALL])
        for m, row, o in zip(table.models, table.values, table.overall):
            w.writerow([m, *(_cell(v) for v in row), _cell(o)])
    if table.outcomes:
        with outcomes_path(path).open("w") as f:
            for o in table.outcomes:
                f.write(json.dumps(o.__dict__) + "\n")


def read_scores(path: Path) -> ScoreTable:
    """Read back what write_scores wrote (with its outcomes file beside it, if any)."""
    table = read_table(path, model_column="model", overall_column=OVERALL)
    if outcomes_path(path).exists():
        outcomes = []
        with outcomes_path(path).open() as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    outcomes.append(Outcome(**json.loads(line)))
                except (ValueError, TypeError) as err:
                    raise DataError(f"{outcomes_path(path)} line {number} is not an outcome ({type(err).__name__}: cut short?): "
                                    f"delete it and {path.name}, and stage=analyze writes them again") from None
        table = ScoreTable(table.models, table.categories, table.values, table.overall, table.source, tuple(outcomes))
    return table


def _cell(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))
