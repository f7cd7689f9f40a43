"""The command line: the build contract, refusals by name, and files that are never half-written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, keras

DIGIT = SAMPLES / "digits" / "digit_7.png"


def run(*args):
    """xlcnn in a real subprocess, as a user runs it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLCNN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "xlcnn.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_build_sample_predicts_the_digit_and_says_what_it_did(tmp_path):
    out = tmp_path / "seven.xlsx"
    proc = run("build", SAMPLES / "lenet.keras", DIGIT, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "predicted class 7" in proc.stdout
    assert "inverted" in proc.stdout          # dark on light was inverted for an MNIST-style model
    assert proc.stderr == ""                  # TensorFlow's start-up chatter is kept off the terminal
    assert out.exists() and out.stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_existing_output_is_kept_without_force(tmp_path):
    out = tmp_path / "book.xlsx"
    out.write_bytes(b"precious")
    proc = run("build", SAMPLES / "lenet.keras", DIGIT, "-o", out)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"precious"
    proc = run("build", SAMPLES / "lenet.keras", DIGIT, "-o", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:2] == b"PK"


def _model_file(tmp_path, layers, shape=(6, 6, 1), name="m.keras"):
    k = keras()
    model = k.Sequential([k.Input(shape), *layers])
    path = tmp_path / name
    model.save(str(path))
    return path


@pytest.mark.parametrize("layers,needle", [
    (lambda L: [L.Conv2D(2, 3), L.UnitNormalization(name="unit")], "layer 'unit' (UnitNormalization) is not supported"),
    (lambda L: [L.Conv2D(2, 3), L.UpSampling2D(interpolation="bilinear")], "interpolation='bilinear'"),
    (lambda L: [L.Conv2D(2, 3), L.GroupNormalization(groups=1, name="gn")],
     "layer 'gn' (GroupNormalization) is not supported"),
    (lambda L: [L.Conv2D(2, 3), L.Reshape((2, 2, 4, 2))], "target_shape=(2, 2, 4, 2)"),
    (lambda L: [L.Conv2D(2, 3, activation="celu")], "activation 'celu'"),
    (lambda L: [L.Conv2D(2, 3, activation="softmax")], "softmax"),
    (lambda L: [L.Flatten(), L.Dense(3, dtype="float16")], "dtype policy 'float16'"),
])
def test_unsupported_layers_and_options_are_refused_by_name_before_writing(tmp_path, layers, needle):
    shape = (6, 6, 2)
    path = _model_file(tmp_path, layers(keras().layers), shape)
    out = tmp_path / "never.xlsx"
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    proc = run("build", path, tmp_path / "x.npy", "-o", out)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and needle in line, line
    assert "Traceback" not in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_config_option_is_refused_not_ignored():
    """A future Keras option xlcnn does not know must stop the build, never be skipped."""
    from xlcnn.errors import Refusal
    from xlcnn.layers import writer_for
    from xlcnn.model import spec_of
    writer = writer_for(spec_of(keras().layers.MaxPooling2D(2)))
    writer.config["some_new_option"] = True
    with pytest.raises(Refusal, match="some_new_option"):
        writer.check()


def test_channels_first_sample_with_every_image_format(tmp_path):
    for image, label in [("digit_1.jpg", 1), ("digit_2.bmp", 2), ("digit_4.gif", 4), ("digit_9.png", 9)]:
        out = tmp_path / f"{label}.xlsx"
        proc = run("build", SAMPLES / "padding_cf.h5", SAMPLES / "digits" / image, "-o", out)
        assert proc.returncode == 0, proc.stderr
        assert f"predicted class {label}" in proc.stdout


def test_npy_input_used_as_is(tmp_path):
    out = tmp_path / "eight.xlsx"
    proc = run("build", SAMPLES / "lenet.keras", SAMPLES / "digits" / "digit_8.npy", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "predicted class 8" in proc.stdout
    assert "used as is" in proc.stdout


def test_invert_and_scale_options(tmp_path):
    from xlcnn.image import prepare
    auto = prepare(DIGIT, (28, 28, 1), "channels_last")
    assert auto.inverted and 0.0 <= auto.tensor.min() and auto.tensor.max() <= 1.0
    keep = prepare(DIGIT, (28, 28, 1), "channels_last", invert="no", scale=1.0)
    assert not keep.inverted
    np.testing.assert_allclose(keep.tensor, 255.0 - auto.tensor * 255.0, atol=1e-3)
    first = prepare(DIGIT, (1, 28, 28), "channels_first")
    np.testing.assert_array_equal(first.tensor[0], auto.tensor[:, :, 0])


def test_transparent_png_is_flattened_onto_white(tmp_path):
    from PIL import Image
    from xlcnn.image import prepare
    rgba = np.zeros((28, 28, 4), np.uint8)      # fully transparent black everywhere ...
    rgba[10:18, 12:16] = (0, 0, 0, 255)        # ... but an opaque black stroke
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    p = prepare(tmp_path / "t.png", (28, 28, 1), "channels_last")
    assert p.inverted                           # the ground became white, so it was inverted
    assert p.tensor[0, 0, 0] == 0.0 and p.tensor[12, 13, 0] == pytest.approx(1.0)


_FAULTS = """
import ctypes, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: one fault per 4 KB page, any THP mode
import numpy as np
from xlcnn.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(2):  # sixteen 4 MB arrays written and freed, twice
    f0 = faults()
    arrays = [np.ones(4 << 17) for _ in range(16)]
    del arrays
print(kept, (faults() - f0) * resource.getpagesize() >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_the_command_keeps_freed_memory_for_its_next_arrays():
    """xlcnn/memory.py, as the command line sets it: a second round of arrays reuses the first
    round's freed memory (no fresh pages); glibc's own settings hand it back and fault it in
    again; a user's MALLOC_* or GLIBC_TUNABLES setting is left alone."""
    def second_round(mode, **env):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, **env), check=True).stdout.split()
        return out[0] == "True", int(out[1])
    kept, fresh_mb = second_round("keep")
    if not kept:
        pytest.skip("not glibc")
    assert fresh_mb < 4
    assert second_round("default")[1] >= 16
    kept, fresh_mb = second_round("keep", GLIBC_TUNABLES="glibc.malloc.check=0")
    assert not kept and fresh_mb >= 16


def test_the_command_line_sets_the_allocator_before_its_work(monkeypatch, tmp_path, capsys):
    from xlcnn import cli
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    assert cli.main(["verify", str(tmp_path / "missing.xlsx")]) == 2
    assert calls == [1] and "missing.xlsx" in capsys.readouterr().err
