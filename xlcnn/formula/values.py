"""The evaluator's values: numbers and per-cell arrays (batch, cells), ranges (batch, cells,
h, w) with a mask of which cells hold numbers, text constants; errors are IEEE values (#DIV/0!
inf or NaN, #N/A and #VALUE! NaN).
"""

import numpy as np


class Rng:
    """A range's values (batch, cells, h, w) and which of them are numbers (None: all are)."""
    __slots__ = ("vals", "mask")

    def __init__(self, vals, mask):
        self.vals, self.mask = vals, mask

    def zeroed(self):
        """Values with non-numbers as 0 (how SUMPRODUCT sees text and empty cells)."""
        return self.vals if self.mask is None else np.where(self.mask, self.vals, 0.0)


NAN = np.float64(np.nan)


def num(x):
    """Numeric view of a value: np.float64 or an array (batch, cells)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Rng):
        if x.vals.shape[-2:] == (1, 1):
            return x.vals[..., 0, 0]
        return np.full(x.vals.shape[:2], np.nan)  # a multi-cell range as one value: #VALUE!
    if isinstance(x, str):
        try:
            return np.float64(x)
        except ValueError:
            return NAN
    return np.float64(x)



def is_array(x):
    """A multi-cell range or the result of arithmetic on one, e.g. (A1:A3>0)*B1:B3."""
    return isinstance(x, Rng) and x.vals.shape[-2:] != (1, 1)



def as_range(x):
    if isinstance(x, Rng):
        return x
    x = num(x)
    return Rng(np.reshape(x, np.shape(x) + (1, 1)) if np.ndim(x) == 2 else np.reshape(x, (1, 1, 1, 1)), None)
