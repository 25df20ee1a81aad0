"""The merge engine: checkpoint inspection, streaming merge to disk, in-place souping."""

from soce.merge.checkpoint import Checkpoint, check_compatible, open_checkpoint
from soce.merge.disk import merge_to_disk
from soce.merge.inplace import InPlaceSoup
from soce.merge.linear import check_weights, mergekit_yaml

__all__ = ["Checkpoint", "InPlaceSoup", "check_compatible", "check_weights", "merge_to_disk", "mergekit_yaml", "open_checkpoint"]
