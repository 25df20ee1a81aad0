"""BFCL through bfcl-eval: its data (data), the evaluator of a model in an engine (evaluator),
the completions client its handlers call (completions), and tiny stand-in models that run it
end to end on a CPU (standin)."""

from soce.bfcl.data import (CATEGORIES, INSTALL, Entry, bfcl_home, bfcl_version, check_categories, check_handler,
                            check_limit, handler_names, import_bfcl, load_entries, own_handler, read_bfcl_scores,
                            split_entries)
from soce.bfcl.evaluator import BfclEvaluator

__all__ = ["BfclEvaluator", "CATEGORIES", "INSTALL", "Entry", "bfcl_home", "bfcl_version", "check_categories",
           "check_handler", "check_limit", "handler_names", "import_bfcl", "load_entries", "own_handler",
           "read_bfcl_scores", "split_entries"]
