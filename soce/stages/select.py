"""select: scores.csv and analysis.json -> selection.json (the experts, and why every other
candidate was left out), by the registered strategy `selection` names."""

from __future__ import annotations

import logging

from soce import analysis as corr
from soce import artifacts
from soce.artifacts import ANALYSIS, SELECTION
from soce.errors import config_group
from soce.selection import Selection
from soce.stages import present, products
from soce.stages.products import ANALYZED, SELECTED, Stage
from soce.stages.study import Study

log = logging.getLogger("soce")


def select(study: Study) -> Selection:
    analysis = corr.Analysis.from_dict(products.read_json(study, ANALYSIS))
    table = products.read_scores(study)
    pool = study.pool_candidates(table)
    names = [c.name for c in pool]
    with config_group("selection"):
        selection = study.selection.choose(table, names, analysis)
    if len(selection.experts) == 1:
        log.warning("only one expert (%s): its soup is the model itself", selection.experts[0].model)
    where = {c.name: c for c in pool}
    record = selection.to_dict()
    for e in record["experts"]:  # where its weights are: a Hub id, or a local path
        e["hub_id"], e["path"] = where[e["model"]].hub_id, where[e["model"]].path
    record["weak_set"], record["tau"] = study.selection.weak_set(analysis)
    artifacts.write_json(study.path(SELECTION), record)
    present.print_selection(selection)
    present.track_selection(study.tracker, selection, where)
    return selection


def experts(study: Study) -> list[str]:
    """The experts of the current selection.json (the select stage made it current first)."""
    return [e["model"] for e in products.read_json(study, SELECTION)["experts"]]


STAGE = Stage("select", select, reads=(ANALYZED,), writes=(SELECTED,))
