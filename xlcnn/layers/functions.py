"""Keras activation functions as one-cell Excel formulas, each with its float64 NumPy twin.

Each formula is written so Excel cannot overflow where Keras does not: sigmoid and swish branch on
the sign (EXP of a large number is #NUM! in Excel), softplus uses max(x,0) + ln(1 + e^-|x|).
softmax is not elementwise and is written by the stage writers (see write_softmax in base.py).
"""

from __future__ import annotations

import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _num(v):
    return repr(float(v))


# name -> (formula builder taking the input cell reference, float64 function)
ELEMENTWISE = {
    "linear": (lambda x: f"{x}", lambda x: x),
    "relu": (lambda x: f"MAX(0,{x})", lambda x: np.maximum(0.0, x)),
    "relu6": (lambda x: f"MIN(MAX(0,{x}),6)", lambda x: np.minimum(np.maximum(0.0, x), 6.0)),
    "tanh": (lambda x: f"TANH({x})", np.tanh),
    "sigmoid": (lambda x: f"IF({x}>=0,1/(1+EXP(-{x})),EXP({x})/(1+EXP({x})))", _sigmoid),
    # Keras 3: hard_sigmoid(x) = relu6(x + 3) / 6
    "hard_sigmoid": (lambda x: f"MIN(MAX(0,{x}+3),6)/6",
                     lambda x: np.minimum(np.maximum(0.0, x + 3.0), 6.0) / 6.0),
    "softplus": (lambda x: f"MAX({x},0)+LN(1+EXP(-ABS({x})))",
                 lambda x: np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))),
    "softsign": (lambda x: f"{x}/(ABS({x})+1)", lambda x: x / (np.abs(x) + 1.0)),
    "elu": (lambda x: f"IF({x}>0,{x},EXP({x})-1)", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
    "selu": (lambda x: f"{_num(SELU_SCALE)}*IF({x}>0,{x},{_num(SELU_ALPHA)}*(EXP({x})-1))",
             lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))),
    "swish": (lambda x: f"IF({x}>=0,{x}/(1+EXP(-{x})),{x}*EXP({x})/(1+EXP({x})))", lambda x: x * _sigmoid(x)),
    "exponential": (lambda x: f"EXP({x})", np.exp),
    # approximate=False, the Keras default for the 'gelu' activation: x/2 * (1 + erf(x/sqrt 2))
    "gelu": (lambda x: f"0.5*{x}*(1+ERF({x}/SQRT(2)))", lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))),
    # the function's default slope (0.2), not the LeakyReLU layer's (0.3)
    "leaky_relu": (lambda x: f"IF({x}>=0,{x},0.2*{x})", lambda x: np.where(x >= 0, x, 0.2 * x)),
    # x * tanh(softplus(x)), with the overflow-free softplus above (EXP only of -|x|)
    "mish": (lambda x: f"{x}*TANH(MAX({x},0)+LN(1+EXP(-ABS({x}))))",
             lambda x: x * np.tanh(np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x))))),
}
ALIASES = {"silu": "swish"}

SUPPORTED = sorted(set(ELEMENTWISE) | set(ALIASES) | {"softmax", "log_softmax"})
NOT_ELEMENTWISE = ("softmax", "log_softmax")  # they need the whole 1-D column


def activation_name(value):
    """The canonical name of a config's 'activation' entry, or None when it is not a plain name."""
    if isinstance(value, dict):  # Keras 3 may serialise {"class_name": "function", "config": "relu"}
        cfg = value.get("config")
        value = cfg if isinstance(cfg, str) else None
    if not isinstance(value, str):
        return None
    value = value.lower()
    return ALIASES.get(value, value)


def check(value):
    """None when supported, else the reason."""
    name = activation_name(value)
    if name in ELEMENTWISE or name in NOT_ELEMENTWISE:
        return None
    return f"activation {value!r} is not supported (supported: {', '.join(SUPPORTED)})"


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / np.sum(e)


def log_softmax(x):
    """log_softmax over a 1-D vector: x - max - ln(sum(exp(x - max))). Not elementwise: it needs the
    whole column, so it is written by a column writer (base.write_log_softmax_column)."""
    shifted = x - np.max(x)
    return shifted - np.log(np.sum(np.exp(shifted)))

