"""analyze: the benchmark's scores (read from a table, or the pool evaluated) -> scores.csv
(scores_test.csv where the benchmark has a test split), analysis.json, correlation.png, entry_tau.png."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from soce import analysis as corr
from soce import artifacts
from soce.artifacts import ANALYSIS, SCORES, SCORES_TEST
from soce.scores import write_scores
from soce.stability import stability
from soce.stages import present
from soce.stages import products
from soce.stages.products import ANALYZED, Stage
from soce.stages.study import Study


def analyze(study: Study) -> corr.Analysis:
    tables = study.load_scores()
    if study.benchmark.reads_table:  # the table's file is what the scores were made from
        source = Path(tables["dev"].source).resolve()
        products.note(study, "file", str(source))
    table = tables["dev"]
    write_scores(table, study.path(SCORES))
    if "test" in tables:
        write_scores(tables["test"], study.path(SCORES_TEST))
    a = study.cfg.analysis
    pool = study.pool_candidates(table)
    population = table if a.population.value == "all" else table.subset([c.name for c in pool])
    result = corr.analyze(population, float(a.tau), a.method.value, study.benchmark.sizes_of(table), a.min_reliability)
    if result.sizes and a.resamples > 0:  # the weak set's and its experts' stability under the scores' noise
        redrawn = stability(population, result, [c.name for c in pool if c.name in population.models], a.resamples, a.seed)
        result = replace(result, stability=redrawn.to_dict())
    artifacts.write_json(study.path(ANALYSIS), result.to_dict(list(a.tau_grid)))
    corr.plot_correlation(result, study.path("correlation.png"))
    corr.plot_entry_tau(result, study.path("entry_tau.png"))
    present.print_analysis(result, a.population.value, population.values)
    present.track_analysis(study.tracker, table, result, study.path("correlation.png"), study.path("entry_tau.png"))
    return result


STAGE = Stage("analyze", analyze, writes=(ANALYZED,))
