"""Stage 3: a tensor index read as a decoder-only LLM (layers, projections, heads, norms), from the
shapes alone, with the families' descriptions in `prunescope.families` telling which tensor is what.

`structure` holds the records this stage hands on; `interpret` the generic interpreter; `slicing`
what SliceGPT's slicing configuration adds.
"""

from .interpret import interpret
from .structure import ModelStructure

__all__ = ["ModelStructure", "interpret"]  # `slicing` is imported where a SliceGPT checkpoint is read
