"""The stages of a study, each in its own module, declaring what it reads and writes:

    analyze: benchmark -> scores.csv (dev; scores_test.csv where the benchmark evaluates)
             -> analysis.json, correlation.png, entry_tau.png
    select:  scores.csv + analysis.json -> selection.json
    sweep:   selection.json + the experts -> sweep.jsonl (one line per weight point)
    soup:    the search's soups -> results.json (the rows on dev and test), soup/ (a model directory)
    report:  all of the above -> report.md with shapley.png, consistency.png, landscape.png (3 experts)

and the tools (soce.stages.tools): merge, zoo, plan. soce.stages.runner runs the stages asked
for in order (`asked_for`, `run_stage`), making first whatever a stage reads that is missing or
stale.
"""
