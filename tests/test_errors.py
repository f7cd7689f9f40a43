"""Bad input, limits and faults: one clear line and exit code 2, never a traceback, nothing lost."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from conftest import cli, one_line_error, ROOT, SAMPLES, keras

DIGIT = SAMPLES / "digits" / "digit_7.png"
LENET = SAMPLES / "lenet.keras"




# -- build: the model --------------------------------------------------------------------------

def test_model_missing(tmp_path, capsys):
    one_line_error(capsys, cli("build", tmp_path / "nope.h5", DIGIT, "-o", tmp_path / "o.xlsx"), "not found")


def test_text_file_named_h5(tmp_path, capsys):
    (tmp_path / "m.h5").write_text("hello, I am not a model\n")
    one_line_error(capsys, cli("build", tmp_path / "m.h5", DIGIT, "-o", tmp_path / "o.xlsx"), "not an HDF5 file")


def test_truncated_h5(tmp_path, capsys):
    data = (SAMPLES / "padding_cf.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    one_line_error(capsys, cli("build", tmp_path / "cut.h5", DIGIT, "-o", tmp_path / "o.xlsx"), "truncated")


def test_image_given_as_model(tmp_path, capsys):
    one_line_error(capsys, cli("build", DIGIT, DIGIT, "-o", tmp_path / "o.xlsx"), "extension '.png'")


def test_two_inputs_refused(tmp_path, capsys):
    k = keras()
    a, b = k.Input((4, 4, 1)), k.Input((4, 4, 1))
    model = k.Model([a, b], k.layers.Add()([a, b]))
    model.save(str(tmp_path / "two.keras"))
    one_line_error(capsys, cli("build", tmp_path / "two.keras", DIGIT, "-o", tmp_path / "o.xlsx"), "2 inputs")


def test_lambda_refused_without_running_its_code(tmp_path, capsys):
    k = keras()
    marker = tmp_path / "the_lambda_ran"

    def touch_marker(x):
        marker.touch()
        return x * 2
    model = k.Sequential([k.Input((28, 28, 1)), k.layers.Lambda(touch_marker)])
    model.save(str(tmp_path / "lam.keras"))
    assert marker.exists()      # building the model ran it once, here ...
    marker.unlink()
    one_line_error(capsys, cli("build", tmp_path / "lam.keras", DIGIT, "-o", tmp_path / "o.xlsx"), "Lambda")
    assert not marker.exists()  # ... and xlcnn never did


def test_lstm_named(tmp_path, capsys):
    k = keras()
    model = k.Sequential([k.Input((28, 28)), k.layers.LSTM(4, name="memory")])
    model.save(str(tmp_path / "rnn.keras"))
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.float32))
    one_line_error(capsys, cli("build", tmp_path / "rnn.keras", tmp_path / "x.npy", "-o", tmp_path / "o.xlsx"),
                   "layer 'memory' (LSTM) is not supported")


# -- build: the image --------------------------------------------------------------------------

def test_image_missing(tmp_path, capsys):
    one_line_error(capsys, cli("build", LENET, tmp_path / "none.png", "-o", tmp_path / "o.xlsx"), "not found")


def test_random_bytes_named_png(tmp_path, capsys):
    (tmp_path / "r.png").write_bytes(os.urandom(2048))
    one_line_error(capsys, cli("build", LENET, tmp_path / "r.png", "-o", tmp_path / "o.xlsx"), "cannot read image")


def test_empty_image(tmp_path, capsys):
    (tmp_path / "e.png").write_bytes(b"")
    one_line_error(capsys, cli("build", LENET, tmp_path / "e.png", "-o", tmp_path / "o.xlsx"), "is empty")


def _png_header_only(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_its_header(tmp_path, capsys):
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    one_line_error(capsys, cli("build", LENET, tmp_path / "bomb.png", "-o", tmp_path / "o.xlsx"), "too many pixels")


def test_npy_of_wrong_shape(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((27, 28, 1), np.float32))
    one_line_error(capsys, cli("build", LENET, tmp_path / "x.npy", "-o", tmp_path / "o.xlsx"), "(27, 28, 1)")


def test_rgb_image_for_two_channel_model(tmp_path, capsys):
    k = keras()
    model = k.Sequential([k.Input((8, 8, 2)), k.layers.Conv2D(1, 3)])
    model.save(str(tmp_path / "two.keras"))
    one_line_error(capsys, cli("build", tmp_path / "two.keras", DIGIT, "-o", tmp_path / "o.xlsx"), "2 input channels")


# -- build: the output -------------------------------------------------------------------------

def test_output_folder_missing(tmp_path, capsys):
    one_line_error(capsys, cli("build", LENET, DIGIT, "-o", tmp_path / "no" / "o.xlsx"), "does not exist")


def test_disk_full_while_writing_keeps_old_file_and_leaves_no_temp(tmp_path, capsys, monkeypatch):
    out = tmp_path / "book.xlsx"
    out.write_bytes(b"old")
    from xlcnn import workbook

    def full(self):
        with open(self.wb.filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.wb.filename))
    monkeypatch.setattr(workbook.Book, "close", full)
    one_line_error(capsys, cli("build", LENET, DIGIT, "-o", out, "--force"), "No space left on device")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_build_stopped_half_way_keeps_old_file(tmp_path, sig):
    """A LeNet-size build takes seconds; stop it while it writes, as a user's Ctrl-C or a CI timeout does."""
    k = keras()
    L = k.layers
    model = k.Sequential([k.Input((28, 28, 1)), L.Conv2D(20, 5, padding="same"), L.MaxPooling2D(2),
                          L.Conv2D(50, 5, padding="same"), L.Flatten(), L.Dense(300), L.Dense(10)])
    model.save(str(tmp_path / "big.keras"))
    out = tmp_path / "book.xlsx"
    out.write_bytes(b"old")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # SIGINT at its default in the build, as a terminal gives it: a suite run as a background job
    # (`make test &`) inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "xlcnn.cli", "build", str(tmp_path / "big.keras"), str(DIGIT),
                             "-o", str(out), "--force"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.suffix == ".tmp" for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.suffix == ".tmp" for p in tmp_path.iterdir()), "the build never started writing"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.keras", "book.xlsx"]


def test_progress_on_a_terminal_and_quiet_in_a_pipe(tmp_path):
    """Stage-by-stage progress appears on a terminal (a pseudo-terminal here), never in a pipe."""
    import pty
    out = tmp_path / "p.xlsx"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "xlcnn.cli", "build", str(LENET), str(DIGIT), "-o", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(primary)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, shown
    for stage in ("reading the model", "02 conv1 (Conv2D)", "09 predictions (Dense)", "saving"):
        assert stage in shown, shown


# -- limits ------------------------------------------------------------------------------------

def test_model_beyond_sheet_limits_is_refused_with_the_estimate(tmp_path, capsys):
    k = keras()
    model = k.Sequential([k.Input((2, 2, 1)), k.layers.Conv2D(10_001, 1)])
    model.save(str(tmp_path / "wide.keras"))
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 1), np.float32))
    err = one_line_error(capsys, cli("build", tmp_path / "wide.keras", tmp_path / "x.npy", "-o", tmp_path / "o.xlsx"),
                         "too big for a workbook")
    assert "10,008 sheets" in err and "estimate:" in err  # 3 + gallery + input + 10,001 channels + weights + trace
    assert not (tmp_path / "o.xlsx").exists()


def test_dense_beyond_column_limit_is_refused(tmp_path, capsys):
    k = keras()
    model = k.Sequential([k.Input((2, 2, 1)), k.layers.Flatten(), k.layers.Dense(20_000)])
    model.save(str(tmp_path / "d.keras"))
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 1), np.float32))
    err = one_line_error(capsys, cli("build", tmp_path / "d.keras", tmp_path / "x.npy", "-o", tmp_path / "o.xlsx"),
                         "columns")
    assert "16,384" in err
