"""Signal inputs for 1-D models (issue #11): .csv, .wav and .npy files written here, each prepared for
a (steps, channels) channels_last and a (channels, steps) channels_first model input with exact values
and the preprocessing said in words; every bad signal is one line, exit code 2, before TensorFlow."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import wave

import numpy as np
import pytest

from conftest import cli, one_line_error, ROOT, SAMPLES, keras

from xlcnn.errors import XlcnnError
from xlcnn.image import prepare, spatial_shape

DIGIT = SAMPLES / "digits" / "digit_7.png"
LAYOUTS = ["channels_last", "channels_first"]


def model_shape(steps, channels, layout):
    return (channels, steps) if layout == "channels_first" else (steps, channels)


def on_axes(values, layout):
    """(steps, channels) values as the model wants them."""
    values = np.asarray(values, dtype=np.float32)
    return values.T if layout == "channels_first" else values


def write_wav(path, samples, width, channels=1, rate=8000):
    """samples: (frames, channels) integers as stored (8-bit: unsigned 0..255)."""
    dtype = {1: "u1", 2: "<i2", 4: "<i4"}[width]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype=dtype).tobytes())
    return path


def write_riff(path, tag, bits, channels=1, data=b"\0" * 16):
    """A WAV header wave cannot read: float (3), A-law (6), ... as other programs write them."""
    fmt = struct.pack("<HHIIHH", tag, channels, 8000, 8000 * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


# -- CSV --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_csv_with_header(tmp_path, layout):
    path = tmp_path / "gesture.csv"
    path.write_text("ax,ay\n0.5,-1.25\n3,.125\n-2e-1,4.\n")
    got = prepare(path, model_shape(3, 2, layout), layout)
    assert got.tensor.dtype == np.float32
    np.testing.assert_array_equal(got.tensor, on_axes([[0.5, -1.25], [3, 0.125], [-0.2, 4]], layout))
    assert got.channel_names == ["ax", "ay"]
    assert got.kind == "csv" and got.scale == 1.0 and got.preview is None and not got.inverted
    assert got.steps == ["read gesture.csv: 3 rows × 2 columns, comma-separated, header row (ax, ay)",
                         "values used as is (no scaling)"] + (
        ["channels first: (channels, steps)"] if layout == "channels_first" else [])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_csv_without_header_semicolon_and_decimal_commas(tmp_path, layout):
    path = tmp_path / "ecg.csv"
    path.write_text("1;-0.5\n0,25;2\n-3;0\n\n")   # European Excel: ';' between cells, ',' in numbers
    got = prepare(path, model_shape(3, 2, layout), layout)
    np.testing.assert_array_equal(got.tensor, on_axes([[1, -0.5], [0.25, 2], [-3, 0]], layout))
    assert got.channel_names is None
    assert got.steps[:3] == ["read ecg.csv: 3 rows × 2 columns, semicolon-separated, no header row",
                             "read decimal commas as decimal points", "values used as is (no scaling)"]


def test_csv_tab_separated_quoted_header_and_scale(tmp_path):
    path = tmp_path / "vib.csv"
    path.write_text('"x axis"\t"y"\n1\t2\n3\t4\n')
    got = prepare(path, (2, 2), "channels_last", scale=0.5)
    np.testing.assert_array_equal(got.tensor, [[0.5, 1], [1.5, 2]])
    assert got.channel_names == ["x axis", "y"] and got.scale == 0.5
    assert got.steps == ['read vib.csv: 2 rows × 2 columns, tab-separated, header row (x axis, y)',
                         "scaled by 1/2 (--scale; values 0.5..2)"]


def test_csv_one_column_for_a_model_without_channel_axis(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("level\n1\n2\n3\n")
    got = prepare(path, (3,), "channels_last")
    np.testing.assert_array_equal(got.tensor, [1, 2, 3])
    assert got.steps[-1] == "the model's input (3,) has no channel axis: the one channel gives its 3 values"


@pytest.mark.parametrize("text, shape, needle", [
    ("a,b\n1,2\n3,4\n", (3, 2), "holds 2 rows of numbers; the model wants 3 steps (input shape (3, 2)): "
                                "give exactly 3 rows of numbers"),
    ("t,a,b\n0,1,2\n1,3,4\n", (2, 2), "has 3 columns (t, a, b); the model wants 2 channels (one column per "
                                      "channel): remove the extra columns"),
    ("1,2,3\n4,5,6\n", (3, 2), "has 3 columns; the model wants 2 channels (one column per channel): the file "
                               "looks transposed"),
    ("1\n2\n", (2, 2), "has 1 column; the model wants 2 channels"),
])
def test_csv_of_the_wrong_shape_is_refused_saying_both(tmp_path, text, shape, needle):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(XlcnnError) as info:
        prepare(path, shape, "channels_last")
    assert str(info.value).startswith(f"{path} {needle}"), str(info.value)


def test_csv_for_an_image_model_or_inverted_is_refused(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("1,2\n")
    with pytest.raises(XlcnnError, match=r"not a signal \(steps, channels\); a CSV gives a signal: give an image"):
        prepare(path, (28, 28, 1), "channels_last")
    with pytest.raises(XlcnnError, match="--invert yes applies to images"):
        prepare(path, (1, 2), "channels_last", invert="yes")


# -- WAV --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_wav_16_bit_mono(tmp_path, layout):
    path = write_wav(tmp_path / "word.wav", [16384, -32768, 0, 32767, -8192], 2, rate=16000)
    got = prepare(path, model_shape(5, 1, layout), layout)
    want = np.array([0.5, -1.0, 0.0, 32767 / 32768, -0.25], np.float32)
    np.testing.assert_array_equal(got.tensor, want[None, :] if layout == "channels_first" else want[:, None])
    assert got.sample_rate == 16000 and got.kind == "wav" and got.channel_names is None
    assert got.steps == ["read word.wav: 16-bit PCM mono, 5 samples at 16,000 Hz (0.312 ms)",
                         "16-bit PCM scaled by 1/32768 (values -1..0.999969)"] + (
        ["channels first: (channels, steps)"] if layout == "channels_first" else [])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wav_8_bit_stereo(tmp_path, layout):
    path = write_wav(tmp_path / "st.wav", [[0, 128], [255, 192], [64, 160]], 1, channels=2, rate=8000)
    got = prepare(path, model_shape(3, 2, layout), layout)
    np.testing.assert_array_equal(got.tensor, on_axes([[-1, 0], [127 / 128, 0.5], [-0.5, 0.25]], layout))
    assert got.channel_names == ["left", "right"]
    assert got.steps[:3] == ["read st.wav: 8-bit PCM stereo, 3 samples at 8,000 Hz (0.375 ms)",
                             "8-bit unsigned PCM: (v − 128) × 1/128 (values -1..0.992188)",
                             "stereo: left and right are channels 0 and 1"]


def test_wav_24_and_32_bit(tmp_path):
    path = tmp_path / "24.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(bytes([0, 0, 0x40, 0, 0, 0x80, 0xFF, 0xFF, 0xFF]))   # 2**22, -2**23, -1
    got = prepare(path, (3,), "channels_last")
    np.testing.assert_array_equal(got.tensor, np.array([0.5, -1, -2.0 ** -23], np.float32))
    assert got.steps[1] == "24-bit PCM scaled by 1/8388608 (values -1..0.5)"
    path = write_wav(tmp_path / "32.wav", [1 << 30, -(1 << 31)], 4)
    got = prepare(path, (2, 1), "channels_last")
    np.testing.assert_array_equal(got.tensor, [[0.5], [-1]])
    assert got.steps[1].startswith("32-bit PCM scaled by 1/2147483648")


def test_wav_of_the_wrong_length_or_channels_is_refused_saying_both(tmp_path):
    path = write_wav(tmp_path / "w.wav", [1, 2, 3, 4], 2, rate=44100)
    with pytest.raises(XlcnnError) as info:
        prepare(path, (16, 1), "channels_last")
    assert str(info.value) == (f"{path} holds 4 samples at 44,100 Hz; the model wants 16 steps (input shape "
                               "(16, 1)): record or cut it to that many samples at the rate the model was "
                               "trained on (xlcnn does not resample)")
    with pytest.raises(XlcnnError) as info:
        prepare(path, (4, 2), "channels_last")
    assert str(info.value) == f"{path} is mono (1 channel); the model wants 2 channels: give a WAV with 2 channels"
    stereo = write_wav(tmp_path / "s.wav", [[1, 2]], 2, channels=2)
    with pytest.raises(XlcnnError) as info:
        prepare(stereo, (1, 1), "channels_first")
    assert str(info.value) == f"{stereo} is stereo (2 channels); the model wants 1 channel: mix it down to mono"


# -- .npy and 2-D images ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_npy_without_the_channel_axis_is_one_channel(tmp_path, layout):
    np.save(tmp_path / "x.npy", np.array([1.5, -2, 0.25], np.float32))
    got = prepare(tmp_path / "x.npy", model_shape(3, 1, layout), layout)
    np.testing.assert_array_equal(got.tensor, on_axes([[1.5], [-2], [0.25]], layout))
    want = (1, 3) if layout == "channels_first" else (3, 1)
    assert got.steps == ["read x.npy: array (3,) float32, used as is (no resizing, inversion or scaling)",
                         f"one channel: added the channel axis, {want}"]


def test_npy_rank_2_as_is_and_transposed_refused(tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.save(tmp_path / "x.npy", x)
    got = prepare(tmp_path / "x.npy", (4, 2), "channels_last")
    np.testing.assert_array_equal(got.tensor, x)
    assert got.steps == ["read x.npy: array (4, 2) float32, used as is (no resizing, inversion or scaling)"]
    with pytest.raises(XlcnnError, match=r"the model expects \(2, 4\) .*; it looks transposed: the model "
                                         r"\(channels_first\) wants \(channels, steps\)"):
        prepare(tmp_path / "x.npy", (2, 4), "channels_first")


def test_two_dimensional_image_model_gets_one_grayscale_plane():
    plane = prepare(DIGIT, (28, 28), "channels_last")
    with_axis = prepare(DIGIT, (28, 28, 1), "channels_last")
    assert plane.tensor.shape == (28, 28)
    np.testing.assert_array_equal(plane.tensor, with_axis.tensor[:, :, 0])
    assert plane.inverted and plane.steps[:-1] == with_axis.steps
    assert plane.steps[-1] == "the model's input (28, 28) has no channel axis: one grayscale plane (height, width)"
    assert spatial_shape((28, 28), "channels_first") == (28, 28, 1)
    assert spatial_shape((28, 28, 1), "channels_last") == (28, 28, 1)
    assert spatial_shape((3, 32, 24), "channels_first") == (32, 24, 3)
    with pytest.raises(XlcnnError, match=r"shape \(16,\), not an image"):
        spatial_shape((16,), "channels_last")


# -- refusals through the command line: one line, exit code 2 ----------------------------------------

@pytest.fixture(scope="module")
def conv1d_model(tmp_path_factory):
    k = keras()
    path = tmp_path_factory.mktemp("conv1d") / "conv1d.keras"
    k.Sequential([k.Input((16, 2)), k.layers.Conv1D(3, 3)]).save(str(path))
    return path




def _bad_inputs(tmp_path):
    """(file, what the one line must say) for every refusal made before the model is read."""
    (tmp_path / "word.csv").write_text("ax,ay\n0.5,1\n0.25,high\n")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4\n5,6,7\n")
    (tmp_path / "blank.csv").write_text("1,2\n\n3,4\n")
    (tmp_path / "gap.csv").write_text("ax,ay\n1,\n")
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_text("ax,ay\n")
    (tmp_path / "noise.wav").write_bytes(os.urandom(256).replace(b"RIFF", b"RIFX"))
    write_riff(tmp_path / "float.wav", 3, 32)
    write_riff(tmp_path / "alaw.wav", 6, 8)
    good = write_wav(tmp_path / "good.wav", np.zeros((16, 2)), 2, channels=2).read_bytes()
    (tmp_path / "cut.wav").write_bytes(good[:-10])
    return [
        ("word.csv", "word.csv row 3, column 2 (B, 'ay'): 'high' is not a number"),
        ("ragged.csv", "ragged.csv row 3 has 3 values, the first row (row 1) 2: give every row one value per channel"),
        ("blank.csv", "blank.csv row 2 is empty; remove the blank line"),
        ("gap.csv", "gap.csv row 2, column 2 (B, 'ay') is empty"),
        ("empty.csv", "empty.csv is empty"),
        ("header.csv", "header.csv holds only a header row (ax, ay) and no numbers"),
        ("noise.wav", "noise.wav as a WAV file (file does not start with RIFF id)"),
        ("float.wav", "float.wav holds 32-bit floating-point samples, which Python's wave module does not read; "
                      "save it as 16-bit PCM"),
        ("alaw.wav", "alaw.wav is compressed (A-law); xlcnn reads uncompressed PCM WAVs"),
        ("cut.wav", "cut.wav is truncated: its header promises 16 samples per channel, the file holds 13"),
        ("missing.csv", "input file not found"),
    ]


def test_bad_signal_files_are_refused_in_one_line(tmp_path, capsys, conv1d_model):
    for name, needle in _bad_inputs(tmp_path):
        one_line_error(capsys, cli("build", conv1d_model, tmp_path / name, "-o", tmp_path / "o.xlsx"), needle)
        assert not (tmp_path / "o.xlsx").exists()


def test_bad_csv_is_refused_before_tensorflow_is_imported(tmp_path, conv1d_model):
    (tmp_path / "word.csv").write_text("ax,ay\n0.5,1\n0.25,high\n")
    code = ("import sys; from xlcnn.cli import main; "
            f"rc = main(['build', {str(conv1d_model)!r}, {str(tmp_path / 'word.csv')!r}, '-o', "
            f"{str(tmp_path / 'o.xlsx')!r}]); "
            "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["2", "False", "False"], (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"xlcnn: error: {tmp_path / 'word.csv'} row 3, column 2 (B, 'ay'): 'high' is not a number; every cell "
        "below the header must be a number written with a decimal point (e.g. -0.25)"]


@pytest.mark.parametrize("rows, needle", [
    (12, "holds 12 rows of numbers; the model wants 16 steps (input shape (16, 2)): give exactly 16 rows"),
    (16, "has 3 columns; the model wants 2 channels (one column per channel): remove the extra columns"),
])
def test_csv_of_the_wrong_shape_through_the_cli(tmp_path, capsys, conv1d_model, rows, needle):
    columns = 2 if rows != 16 else 3
    np.savetxt(tmp_path / "s.csv", np.zeros((rows, columns)), delimiter=",")
    code = cli("build", conv1d_model, tmp_path / "s.csv", "-o", tmp_path / "o.xlsx")
    err = capsys.readouterr().err
    if "rank-2 input" in err:   # build reads rank-2 models once issue #11's rank-2 tensors land
        pytest.skip("build refuses rank-2 models before it prepares the input")
    assert code == 2, err
    assert err.startswith(f"xlcnn: error: {tmp_path / 's.csv'} {needle}") and len(err.strip().splitlines()) == 1, err


def test_wav_of_the_wrong_length_through_the_cli_for_a_rank_1_model(tmp_path, capsys):
    """A model reading 16 samples as a vector: a WAV of another length is refused, saying both lengths."""
    k = keras()
    k.Sequential([k.Input((16,)), k.layers.Dense(2)]).save(str(tmp_path / "dense.keras"))
    write_wav(tmp_path / "short.wav", np.arange(10), 2, rate=16000)
    one_line_error(capsys, cli("build", tmp_path / "dense.keras", tmp_path / "short.wav", "-o", tmp_path / "o.xlsx"),
                   "short.wav holds 10 samples at 16,000 Hz; the model wants 16 steps (input shape (16,))")
    assert not (tmp_path / "o.xlsx").exists()
