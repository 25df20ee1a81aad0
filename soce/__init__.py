"""soce: Soup Of Category Experts (Maiti et al. 2025, arXiv 2511.13254)."""

import os

# The same bits whatever the thread count (soce.threads picks it by the machine's load): MKL's
# strict conditional numerical reproducibility makes its GEMMs independent of the number of
# threads. Without it, on AVX-512 CPUs a weight gradient's reduction over the batch is split
# between threads, and a model family trained on 1 or 2 threads differs in its last bits. Read by
# MKL at its first call, so set before any torch computation; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
