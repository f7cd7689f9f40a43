"""Signal inputs for 1-D models: a .csv (one column per channel, one row per time step) or a .wav
(PCM samples as numbers), read into (steps, channels) and placed on the axes the model expects.

Only the standard library and NumPy: a bad signal file is refused before TensorFlow is imported.
Every refusal is one line saying which file, where (row and column, or the WAV's format), and what
to do. Nothing is resampled, cut or padded: a length that differs from the model's is refused.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import wave
from dataclasses import dataclass

import numpy as np

from .errors import XlcnnError
from .layout import Said
from .manifest import column_letters

SIGNAL_SUFFIXES = {".csv", ".wav"}

# a number as people and spreadsheets write it: 12, -0.5, .25, 3., 1e-3; no nan/inf, no '1_000'
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}     # texts.toml preprocessing.csv_separators


@dataclass
class Signal:
    values: np.ndarray            # (steps, channels), float64
    names: list | None            # the header's channel names, or None
    described: str                # 'read x.csv: ...' for the steps (a layout.Said, as the notes)
    notes: list                   # further steps (decoding, scaling)
    sample_rate: int | None = None


# -- CSV -------------------------------------------------------------------------------------------

def _column_name(j):
    """0 -> A, 25 -> Z, 26 -> AA: the column as a spreadsheet shows it."""
    return column_letters(j)


def _text_of(path):
    data = path.read_bytes()
    if b"\0" in data:
        raise XlcnnError(f"{path} is not a text file (it holds NUL bytes); a .csv holds one row of numbers "
                         "per time step")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _delimiter(first_line):
    for d in ("\t", ";", ","):
        if d in first_line:
            return d
    return ","  # one column


def read_csv(path):
    """(steps, channels) numbers of a CSV: one column per channel, an optional header row (a first
    row that is not all numbers), comma, semicolon or tab separated. Refuses with row and column."""
    text = _text_of(path)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise XlcnnError(f"{path} holds no numbers; give one row per time step, one column per channel")
    delimiter = _delimiter(lines[first])
    decimal_comma = False

    def number(cell):
        nonlocal decimal_comma
        cell = cell.strip()
        if _NUMBER.fullmatch(cell):
            return float(cell)
        if delimiter != "," and _DECIMAL_COMMA.fullmatch(cell):
            decimal_comma = True
            return float(cell.replace(",", "."))
        return None

    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    names, rows, lines_of, width, width_row = None, [], [], None, None
    for cells in reader:
        line = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            if rows or names is not None:
                raise XlcnnError(f"{path} row {line} is empty; remove the blank line (one row per time step)")
            continue  # blank lines before the first row
        if width is None:
            width, width_row = len(cells), line
            parsed = [number(c) for c in cells]
            if any(v is None for v in parsed):
                names = [c.strip() or f"c{j}" for j, c in enumerate(cells)]
                continue
            rows.append(parsed)
            lines_of.append(line)
            continue
        if len(cells) != width:
            what = "the header" if names is not None else "the first row"
            raise XlcnnError(f"{path} row {line} has {len(cells)} values, {what} (row {width_row}) {width}: "
                             "give every row one value per channel")
        row = []
        for j, cell in enumerate(cells):
            v = number(cell)
            if v is None:
                column = f"column {j + 1} ({_column_name(j)}" + (f", '{names[j]}')" if names else ")")
                if not cell.strip():
                    raise XlcnnError(f"{path} row {line}, {column} is empty; every cell below the header must "
                                     "be a number")
                raise XlcnnError(f"{path} row {line}, {column}: {cell.strip()[:40]!r} is not a number; every cell "
                                 "below the header must be a number written with a decimal point (e.g. -0.25)")
            row.append(v)
        rows.append(row)
        lines_of.append(line)
    if not rows:
        raise XlcnnError(f"{path} holds only a header row ({', '.join(names)}) and no numbers; give one row "
                         "per time step below it")
    values = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        i, j = map(int, np.argwhere(~np.isfinite(values))[0])
        raise XlcnnError(f"{path} row {lines_of[i]}, column {j + 1} ({_column_name(j)}) is too large "
                         "for a float64")
    sep = Said("preprocessing.csv_separators." + (_DELIMITER_NAMES[delimiter] if width > 1 else "one"))
    header = Said("preprocessing.csv_header", names=", ".join(names)) if names else \
        Said("preprocessing.csv_no_header")
    described = Said("preprocessing.read_csv", file=path.name, rows=f"{len(rows):,}", width=width, sep=sep,
                     header=header)
    notes = [Said("preprocessing.decimal_comma")] if decimal_comma else []
    return Signal(values, names, described, notes)


# -- WAV -------------------------------------------------------------------------------------------

_COMPRESSED = {2: "MS ADPCM", 6: "A-law", 7: "µ-law", 0x11: "IMA ADPCM", 0x31: "GSM 6.10", 0x50: "MPEG",
               0x55: "MP3", 0x161: "WMA", 0x1610: "AAC"}


def _wav_format(path):
    """(format tag, bits per sample, subformat tag or None) from the fmt chunk, or None."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and size >= 16 and pos + 24 <= len(head):
            tag, _, _, _, _, bits = struct.unpack("<HHIIHH", head[pos + 8:pos + 24])
            sub = None
            if tag == 0xFFFE and size >= 40 and pos + 34 <= len(head):
                sub = int.from_bytes(head[pos + 32:pos + 34], "little")
            return tag, bits, sub
        pos += 8 + size + (size & 1)
    return None


def _wav_refusal(path, exc):
    fmt = _wav_format(path)
    if fmt is None:
        why = str(exc) or ("the file ends early" if isinstance(exc, EOFError) else type(exc).__name__)
        return (f"cannot read {path} as a WAV file ({why}); give an uncompressed PCM "
                ".wav, a .csv or a .npy")
    tag, bits, sub = fmt
    real = sub if tag == 0xFFFE and sub is not None else tag
    if real == 3:
        return (f"{path} holds {bits}-bit floating-point samples, which Python's wave module does not read; "
                "save it as 16-bit PCM, or give the samples as a .npy or .csv")
    if real in _COMPRESSED or (real != 1 and tag != 0xFFFE):
        name = _COMPRESSED.get(real, f"format {real}")
        return (f"{path} is compressed ({name}); xlcnn reads uncompressed PCM WAVs: convert it to 16-bit PCM "
                "(e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav)")
    if tag == 0xFFFE:
        return (f"{path} is a WAVE_FORMAT_EXTENSIBLE file ({bits}-bit), which this Python's wave module does "
                "not read; save it as a plain 16-bit PCM WAV, or give the samples as a .npy or .csv")
    return f"cannot read WAV {path}: {exc}; is it a valid PCM WAV?"


def read_wav(path):
    """(steps, channels) samples of a PCM WAV scaled to -1..1: 8-bit unsigned, 16-, 24- and 32-bit."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(frames)
    except (wave.Error, EOFError, struct.error) as exc:
        raise XlcnnError(_wav_refusal(path, exc)) from None
    if width not in (1, 2, 3, 4):
        raise XlcnnError(f"{path} has {8 * width}-bit samples; xlcnn reads 8-, 16-, 24- and 32-bit PCM: "
                         "save it as 16-bit PCM")
    frame_bytes = channels * width
    if len(data) < frames * frame_bytes:
        raise XlcnnError(f"{path} is truncated: its header promises {frames:,} samples per channel, the file holds "
                         f"{len(data) // frame_bytes:,}; export it again")
    if frames == 0:
        raise XlcnnError(f"{path} holds no samples")
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 1:
        ints, offset, full = raw.astype(np.float64), 128.0, 128
        decoding = Said("preprocessing.wav_unsigned")
    else:
        if width == 3:  # little-endian 24-bit: put the three bytes on top of an int32 and shift back
            b = raw.reshape(-1, 3).astype(np.int32)
            ints = ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 8
        else:
            ints = np.frombuffer(data, dtype="<i2" if width == 2 else "<i4")
        ints, offset, full = ints.astype(np.float64), 0.0, 1 << (8 * width - 1)
        decoding = Said("preprocessing.wav_scaled", bits=8 * width, full=full)
    values = ((ints - offset) / full).reshape(frames, channels)
    layout = {1: Said("preprocessing.wav_mono"), 2: Said("preprocessing.wav_stereo")}.get(
        channels) or Said("preprocessing.wav_channels", n=channels)
    seconds = frames / rate if rate else 0.0
    described = Said("preprocessing.read_wav", file=path.name, bits=8 * width, layout=layout, frames=f"{frames:,}",
                     rate=f"{rate:,}", duration=_duration(seconds))
    notes = [Said("preprocessing.wav_values", decoding=decoding, lo=f"{values.min():.6g}", hi=f"{values.max():.6g}")]
    names = ["left", "right"] if channels == 2 else None
    if channels == 2:
        notes.append(Said("preprocessing.stereo"))
    return Signal(values, names, described, notes, rate)


def _duration(seconds):
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


# -- both -------------------------------------------------------------------------------------------

def read_signal(path):
    return read_wav(path) if path.suffix.lower() == ".wav" else read_csv(path)


def signal_axes(input_shape, layout):
    """(steps, channels, has_channel_axis) of a model input that takes a signal: rank 1 (steps,) is
    one channel without a channel axis; rank 2 is (steps, channels), or (channels, steps) for
    channels_first."""
    shape = tuple(input_shape)
    if len(shape) == 1:
        return shape[0], 1, False
    if len(shape) == 2:
        channels, steps = shape if layout == "channels_first" else shape[::-1]
        return steps, channels, True
    return None


def place(signal, path, input_shape, layout, what):
    """The signal's (steps, channels) values on the model's axes, or a refusal naming both lengths."""
    axes = signal_axes(input_shape, layout)
    if axes is None:
        raise XlcnnError(f"the model's input has shape {tuple(input_shape)}, not a signal (steps, channels); "
                         f"a {what} gives a signal: give an image or a .npy of shape {tuple(input_shape)}")
    steps, channels, has_channel_axis = axes
    got_steps, got_channels = signal.values.shape
    rate = f" at {signal.sample_rate:,} Hz" if signal.sample_rate else ""
    unit = "samples" if what == "WAV" else "rows of numbers"
    if got_channels != channels:
        if what == "WAV":
            have = {1: "mono (1 channel)", 2: "stereo (2 channels)"}.get(got_channels, f"{got_channels} channels")
            fix = "mix it down to mono" if channels == 1 else f"give a WAV with {channels} channels"
            raise XlcnnError(f"{path} is {have}; the model wants {channels} channel{'s' * (channels != 1)}: {fix}")
        named = f" ({', '.join(signal.names)})" if signal.names else ""
        if got_steps == channels and got_channels == steps and steps != channels:
            fix = (f"the file looks transposed: xlcnn reads one column per channel and one row per time step, "
                   f"so give {steps} rows of {channels} values")
        elif got_channels > channels:
            fix = "remove the extra columns (e.g. a time or index column)"
        else:
            fix = f"give one column per channel, {channels} in all"
        raise XlcnnError(f"{path} has {got_channels} column{'s' * (got_channels != 1)}{named}; the model wants "
                         f"{channels} channel{'s' * (channels != 1)} (one column per channel): {fix}")
    if got_steps != steps:
        fix = ("record or cut it to that many samples at the rate the model was trained on (xlcnn does not "
               "resample)" if what == "WAV" else f"give exactly {steps:,} rows of numbers")
        raise XlcnnError(f"{path} holds {got_steps:,} {unit}{rate}; the model wants {steps:,} steps "
                         f"(input shape {tuple(input_shape)}): {fix}")
    values = signal.values
    notes = []
    if not has_channel_axis:
        values = values[:, 0]
        notes.append(Said("preprocessing.signal_plane", shape=tuple(input_shape), steps=f"{steps:,}"))
    elif layout == "channels_first":
        values = values.T
        notes.append(Said("preprocessing.channels_first_signal"))
    return values, notes
