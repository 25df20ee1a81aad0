"""Why a soup works: Shapley values of its ingredients, category consistency before and after
souping, win rates from per-example outcomes, and the study's report.md (stage=report).
"""
