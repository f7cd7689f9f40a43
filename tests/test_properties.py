"""Property-based: random small chains of supported layers (kernel sizes, strides, paddings,
dilations, data formats, activations, odd input sizes) always build, and verify against Keras.
A fixed sample of such chains is also recalculated by LibreOffice."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_matches_keras, build_cases, keras, needs_libreoffice, stage_values

ACTS = ["linear", "relu", "tanh", "sigmoid", "elu", "selu", "softplus", "softsign", "swish", "relu6",
        "hard_sigmoid", "gelu", "leaky_relu"]


def _out(n, k, s, d, padding):
    return -(-n // s) if padding == "same" else (n - (k - 1) * d - 1) // s + 1


class HypothesisPick:
    """Choices drawn by hypothesis (so failures shrink to a small model)."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def boolean(self):
        return self.data.draw(st.booleans())

    def choice(self, options):
        return self.data.draw(st.sampled_from(options))


class SeededPick:
    """The same choices from a seeded random source, for a fixed batch LibreOffice recalculates."""

    def __init__(self, seed):
        self.rnd = random.Random(seed)

    def integer(self, lo, hi):
        return self.rnd.randint(lo, hi)

    def boolean(self):
        return self.rnd.random() < 0.5

    def choice(self, options):
        return self.rnd.choice(options)


def random_chain(pick):
    """A Sequential model from random choices; every layer fits the shapes it receives."""
    k = keras()
    L = k.layers
    fmt = pick.choice(["channels_last", "channels_first"])
    h, w, c = pick.integer(3, 11), pick.integer(3, 11), pick.integer(1, 3)
    shape = (h, w, c) if fmt == "channels_last" else (c, h, w)
    layers = []
    for _ in range(pick.integer(1, 4)):
        kind = pick.choice(["conv", "conv", "max", "avg", "act"])
        if kind == "act":
            layers.append(L.Activation(pick.choice(ACTS)))
            continue
        kh, kw = pick.integer(1, 4), pick.integer(1, 4)
        padding = pick.choice(["valid", "same"])
        sh, sw = pick.integer(1, 3), pick.integer(1, 3)
        dh = dw = 1
        if kind == "conv" and sh == sw == 1:
            dh, dw = pick.integer(1, 2), pick.integer(1, 2)
        oh, ow = _out(h, kh, sh, dh, padding), _out(w, kw, sw, dw, padding)
        if oh < 1 or ow < 1:
            continue
        if kind == "conv":
            layers.append(L.Conv2D(pick.integer(1, 3), (kh, kw), strides=(sh, sw), padding=padding,
                                   dilation_rate=(dh, dw), data_format=fmt, activation=pick.choice(ACTS),
                                   use_bias=pick.boolean(), bias_initializer="random_normal"))
        else:
            pool = L.MaxPooling2D if kind == "max" else L.AveragePooling2D
            layers.append(pool((kh, kw), strides=(sh, sw), padding=padding, data_format=fmt))
        h, w = oh, ow
    layers.append(L.Flatten(data_format=pick.choice(["channels_last", "channels_first"])))
    layers.append(L.Dense(pick.integer(1, 4), activation=pick.choice(ACTS + ["softmax"])))
    return k.Sequential([k.Input(shape), *layers]), shape


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_chains_build_and_verify(tmp_path_factory, data):
    from xlcnn.build import build
    from xlcnn.verify import verify
    k = keras()
    base = tmp_path_factory.mktemp("prop")
    k.utils.set_random_seed(data.draw(st.integers(0, 10_000)))
    model, shape = random_chain(HypothesisPick(data))
    model.save(str(base / "m.keras"))
    x = np.random.default_rng(0).uniform(-2, 2, size=shape).astype(np.float32)
    np.save(base / "x.npy", x)
    build(base / "m.keras", base / "x.npy", base / "m.xlsx")
    report = verify(base / "m.xlsx")
    failing = [(s.layer, s.max_abs_error, s.message) for s in report.stages if not s.passed]
    assert report.passed, (failing, report.cached_examples, report.constant_cells, report.lint,
                           [l.get_config() for l in model.layers])


def _sampled_cases(n=6):
    return {f"chain_{seed}": (lambda seed=seed: random_chain(SeededPick(seed))[0], ".keras") for seed in range(n)}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    return build_cases(_sampled_cases(), tmp_path_factory.mktemp("prop_lo"))


@needs_libreoffice
@pytest.mark.parametrize("name", [f"chain_{i}" for i in range(6)])
def test_sample_of_random_chains_recalculated_by_libreoffice(sampled, name):
    case = sampled[name]
    assert_matches_keras(stage_values(case["lo"])[0], case["model"], case["x"])
    assert_matches_keras(stage_values(case["lo2"])[0], case["model"], case["x2"])
