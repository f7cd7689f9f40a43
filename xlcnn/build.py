"""The build pipeline: read the model, check every layer (refusing before anything is written),
prepare the input, write every stage, the overview, the manifest and the build record, then move the
finished file into place atomically.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from . import image as image_mod
from . import limits
from . import manifest
from . import model as model_mod
from .errors import XlcnnError
from .gallery import write_gallery
from .layers import Context, writer_for
from .layers.base import HANDLERS, shade_border
from .layers.placement import square_cells
from .layout import (FIRST_COL, FIRST_ROW, SheetNames, Tensor, current_language, reset_language, set_language, style,
                     text)
from .navigation import write_navigation
from .trace import write_traces
from .overview import write_overview
from .workbook import Book


@dataclass
class Stage:
    step: str
    writer: object            # LayerWriter, or None for the input
    tensor: Tensor
    first_sheet: str
    reads: list = field(default_factory=list)   # the stages this one reads
    sheets: list = field(default_factory=list)  # the sheets this stage added (none for a pass-through)


@dataclass
class BuildResult:
    path: Path
    seconds: float
    sheets: int
    formulas: int
    constants: int
    longest_formula: int
    bytes: int
    predicted: int | None
    probability: float | None      # the winner's output value: a probability when output_is_probability
    output_is_probability: bool = False
    preprocessing: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    estimate: object = None


def check_output(out, force):
    out = Path(out)
    if out.suffix.lower() != ".xlsx":
        raise XlcnnError(f"output {out} must end in .xlsx")
    if not out.parent.exists():
        raise XlcnnError(f"output folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise XlcnnError(f"output {out} is a folder")
    if out.exists() and not force:
        raise XlcnnError(f"{out} already exists; pass --force to replace it (the file was left unchanged)")
    return out


def writers_for(loaded):
    writers = []
    for spec, (_layer, reads) in zip(loaded.specs, loaded.graph):
        writer = writer_for(spec)
        if writer is None:
            raise XlcnnError(f"layer '{spec.name}' ({spec.kind}) is not supported; "
                             f"xlcnn supports: {', '.join(sorted(HANDLERS))}")
        writer.check()
        if len(reads) > 1 and not writer.multi_input:
            raise XlcnnError(f"layer '{spec.name}' ({spec.kind}) reads {len(reads)} tensors; "
                             "only merge layers may")
        writers.append((writer, reads))
    return writers


def default_scale(loaded):
    """Models that start with Rescaling expect raw 0..255 pixels; others 0..1."""
    first = loaded.layers[0] if loaded.layers else None
    return 1.0 if first is not None and type(first).__name__ == "Rescaling" else 1 / 255


def build(model_path, image_path, out_path, force=False, invert="auto", scale=None, progress=None,
          weights=None, lang="en", trace=True):
    started = time.perf_counter()
    say = progress or (lambda *_: None)
    # cheapest checks first: a wrong output path or a bad image is refused in a fraction of a
    # second, before the model is read and TensorFlow is imported
    out = check_output(out_path, force)
    image_mod.check_input(image_path)
    model_mod.check_file(model_path, weights)
    say("reading the model")
    loaded = model_mod.load(model_path, weights)
    if len(loaded.input_shape) not in (1, 2, 3):
        raise XlcnnError(f"model {loaded.path} takes a rank-{len(loaded.input_shape)} input of shape "
                         f"{_shape_text(loaded.input_shape)}; xlcnn writes vectors, signals (steps, channels) "
                         "and images (height, width, channels)")
    layout = model_mod.input_layout(loaded)
    prepared = image_mod.prepare(image_path, loaded.input_shape, layout, invert=invert, scale=scale,
                                 default_scale=default_scale(loaded))
    writers = writers_for(loaded)          # every refusal happens here, before any file exists
    planned = limits.check(limits.estimate(loaded, writers))
    say(f"estimate: {planned.text()}")
    language = set_language(lang)  # the workbook's texts (en, ja) for this build only; reset below
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    previous_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt("terminated")

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous_term = None
    try:
        tmp.touch()  # claim the name now: an interrupted build removes it below
        book = Book(tmp)
        stages = _write_stages(book, loaded, writers, prepared, layout, say)
        loaded.notes.extend(write_traces(book, stages, trace, say))   # trace sheets (xlcnn/trace.py)
        say("writing the overview")
        is_probability = output_is_probability(stages[-1].writer)
        predicted, probability = write_overview(book, loaded, stages, prepared, Path(image_path), out,
                                                 is_probability)
        say("writing the gallery")
        write_gallery(book, stages)
        _write_manifest(book, loaded, stages)
        _write_about(book, loaded, prepared, Path(model_path), Path(image_path), out, layout, invert, stages)
        write_navigation(book, stages)
        sheets = len(book.wb.worksheets())
        formulas, constants, longest = book.formulas, book.constants, book.longest_formula
        say("saving")
        book.close()
        os.replace(tmp, out)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    finally:
        reset_language(language)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return BuildResult(out, time.perf_counter() - started, sheets, formulas, constants, longest,
                       out.stat().st_size, predicted, probability, is_probability, prepared.steps, loaded.notes,
                       planned)


def output_is_probability(writer):
    """True when the model's last layer gives probabilities (softmax or sigmoid), not raw scores."""
    if writer is None:
        return False
    if writer.kind == "Softmax":
        return True
    return str(writer.config.get("activation", "")) in ("softmax", "sigmoid")


def _step(i, total):
    return f"{i:0{max(2, len(str(total)))}d}"


def _write_stages(book, loaded, writers, prepared, layout, say):
    names = SheetNames()
    names.make("", "overview")
    names.make("", "manifest")
    names.make("", "about")
    names.make("", "gallery")
    book.add_sheet("overview", back_link=False)  # first tab; filled in at the end
    book.add_sheet("gallery", text("gallery.title"), text("gallery.explain"))   # second tab; filled in at the end
    total = len(writers) + 1
    x = prepared.tensor.astype(np.float64)
    borders = required_borders(writers)
    first = _write_input(book, names, _step(1, total), loaded, x, layout, getattr(prepared, "channel_names", None),
                         borders.get(loaded.input_name, NO_BORDER), rgb=getattr(prepared, "kind", "") == "image")
    stages = [Stage(_step(1, total), None, first, first.places[0][0], sheets=list(book.sheets)[2:])]
    tensors = {loaded.input_name: first}
    downstream = _downstream_data_formats(writers)
    for k, (writer, reads) in enumerate(writers, start=2):
        step = _step(k, total)
        say(f"{step} {writer.name} ({writer.kind})", k, total)
        inputs = [tensors[name] for name in reads]
        ctx = Context(book, names, step, downstream.get(writer.name), borders.get(writer.name, NO_BORDER))
        before = len(book.sheets)
        tensor = writer.write(ctx, inputs if writer.multi_input else inputs[0])
        tensor.layer = writer.name
        tensors[writer.name] = tensor
        stages.append(Stage(step, writer, tensor, tensor.places[0][0], list(reads), list(book.sheets)[before:]))
    return stages


def _downstream_data_formats(writers):
    """For each layer, the data_format of the nearest layer after it (following its first reader)
    that has one."""
    first_reader = {}
    for writer, reads in writers:
        for name in reads:
            first_reader.setdefault(name, writer)
    found = {}
    for writer, _ in reversed(writers):
        nxt = first_reader.get(writer.name)
        if nxt is not None:
            found[writer.name] = nxt.config.get("data_format") or found.get(nxt.name)
    return found


NO_BORDER = ((0, 0), (0, 0))


def required_borders(writers):
    """{tensor name: ((top, bottom), (left, right))}: the blank border each tensor's maps keep on
    their sheets, the largest padding any 'same' or 'causal' layer reading it adds. A layer that
    reuses its input's cells (pass-through, channel concatenation) passes its readers' need on."""
    need = {}

    def widen(name, border):
        old = need.get(name, NO_BORDER)
        need[name] = tuple(tuple(max(a, b) for a, b in zip(o, n)) for o, n in zip(old, border))

    for writer, reads in writers:
        border = writer.padding_border(writer.spec.input_shapes)
        if border != NO_BORDER:
            widen(reads[0], border)
    for writer, reads in reversed(writers):
        if writer.reuses_input_cells and writer.name in need:
            for name in reads:
                widen(name, need[writer.name])
    return need


def _input_range(x):
    """The input's colour range, fixed (so typing one bright pixel does not dim the picture): 0..1
    for scaled pixels, 0..255 for raw ones, otherwise the input's own range. Returns (lo, hi, number
    format that keeps the number readable on dark cells)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0, "[White][<0.5]0.0;[Black]0.0"
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0, "[White][<128]0;[Black]0"
    mid = (lo + hi) / 2
    return lo, hi, f"[White][<{mid:.6g}]0.00;[Black]0.00"


RGB = (("R", "#FF0000"), ("G", "#00A000"), ("B", "#0000FF"))


def _write_input(book, names, step, loaded, x, layout, channel_names=None, border=NO_BORDER, rgb=False):
    if x.ndim == 1:
        name = names.make(f"{step} ", "input")
        sheet = book.add_sheet(name, text("stage.input", step=step, channel=0, channels=1,
                                          layout=text("stage.input_1d")))
        sheet.numbers(FIRST_ROW, FIRST_COL, x[:, None])
        return Tensor(loaded.input_name, x, None, [(name, FIRST_ROW, FIRST_COL)])
    channel_axis = 0 if layout == "channels_first" else x.ndim - 1
    t = Tensor(loaded.input_name, x, channel_axis, [])
    if x.ndim == 2:
        return _write_signal_input(book, names, step, t, layout, channel_names, border)
    h, w = t.hw
    chw = t.chw()
    t.border = border
    (top, bottom), (left, right) = border
    r0, c0 = FIRST_ROW + top, FIRST_COL + left
    lo, hi, number_format = _input_range(x)
    rgb = rgb and t.channels == 3
    scale = style("input_scale")
    for c in range(t.channels):
        tag, tint = RGB[c] if rgb else (f"c{c}", None)
        name = names.make(f"{step} ", "input", f" {tag}")
        sheet = book.add_sheet(name, text("stage.input", step=step, channel=f"{c} ({tag})" if rgb else c,
                                          channels=t.channels,
                                          layout=text("stage.input_layout", layout=layout, shape=x.shape)),
                               map_width=w + left + right)
        square_cells(sheet, h, w, border)
        if border != NO_BORDER:
            shade_border(sheet, r0, c0, h, w, border)
        for j in range(w):
            sheet.ws.write_string(FIRST_ROW - 1, c0 + j, str(j), book.fmt_axis)
        for i in range(h):
            sheet.ws.write_string(r0 + i, 0, str(i), book.fmt_axis)
        fmt = book.wb.add_format({"num_format": "0.0" if hi == 1.0 else "0"}) if tint else \
            book.wb.add_format({"num_format": number_format})
        sheet.numbers(r0, c0, chw[c], fmt)
        sheet.ws.conditional_format(r0, c0, r0 + h - 1, c0 + w - 1, {
            "type": "2_color_scale", "min_type": "num", "min_value": lo, "max_type": "num", "max_value": hi,
            "min_color": "#FFFFFF" if tint else scale["min_color"], "max_color": tint or scale["max_color"]})
        sheet.label(r0 + h + bottom + 1, 0, text("stage.legend"), book.fmt_axis)
        sheet.label(r0 + h + bottom + 1, c0, text("stage.input_range", lo=f"{lo:g}", hi=f"{hi:g}"), book.fmt_explain)
        t.places.append((name, r0, c0))
    return t


def _write_signal_input(book, names, step, t, layout, channel_names=None, border=NO_BORDER):
    """A signal (a rank-2 input): one sheet, time running down, one column per channel (as a CSV
    has it), with a line chart of the channels beside it. A 2-D image without a channel axis
    (28, 28) reads as rows and columns here too."""
    steps, _ = t.hw
    name = names.make(f"{step} ", "input")
    sheet = book.add_sheet(name, text("stage.input_signal", step=step, channels=t.channels, steps=steps,
                                      layout=text("stage.input_layout", layout=layout, shape=t.values.shape)))
    block = t.chw()[:, :, 0].T                      # (steps, channels)
    labels = [f"c{c}" + (f" {channel_names[c]}" if channel_names and c < len(channel_names) and channel_names[c]
                         else "") for c in range(t.channels)]
    (top, bottom), _ = border
    t.border = ((top, bottom), (0, 0))
    r0 = FIRST_ROW + top
    for c in range(t.channels):
        sheet.ws.write_string(FIRST_ROW - 1, FIRST_COL + c, labels[c], book.fmt_axis)
        t.places.append((name, r0, FIRST_COL + c))
    if top or bottom:
        shade_border(sheet, r0, FIRST_COL, steps, t.channels, t.border)
    for i in range(steps):
        sheet.ws.write_string(r0 + i, 0, str(i), book.fmt_axis)
    sheet.ws.write_string(FIRST_ROW - 1, 0, "t", book.fmt_axis)
    sheet.numbers(r0, FIRST_COL, block)
    sheet.color_scale(r0, FIRST_COL, r0 + steps - 1, FIRST_COL + t.channels - 1, values=block)
    if t.channels <= 16:          # a chart of more lines than that reads as noise
        chart = book.wb.add_chart({"type": "line"})
        for c in range(t.channels):
            chart.add_series({"name": labels[c], "values": [name, r0, FIRST_COL + c, r0 + steps - 1,
                                                           FIRST_COL + c], "line": {"width": 1.25}})
        chart.set_title({"name": text("stage.input_chart")})
        chart.set_x_axis({"name": "t"})
        chart.set_size({"width": 560, "height": 260})
        sheet.ws.insert_chart(FIRST_ROW, FIRST_COL + t.channels + 1, chart)
    return t


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _write_manifest(book, loaded, stages):
    """The contract sheet (xlcnn/manifest.py writes and reads it): a row per tensor channel."""
    rows = []
    for stage in stages:
        t = stage.tensor
        klass = stage.writer.kind if stage.writer else "InputLayer"
        for channel, sheet_name, cells in t.manifest_rows():
            rows.append(manifest.Entry(t.layer, channel, sheet_name, manifest.parse_range(cells), klass,
                                       tuple(t.values.shape), t.channel_axis))
    manifest.write(book, rows, text("manifest.headers"))


def _write_about(book, loaded, prepared, model_path, image_path, out, layout, invert, stages):
    sheet = book.add_sheet("about", text("about.title"), back_link=True)
    ws = sheet.ws
    base = out.resolve().parent

    def rel(p):
        try:
            return os.path.relpath(Path(p).resolve(), base)
        except ValueError:  # another drive on Windows
            return str(Path(p).resolve())

    # the keys and values stay English in every language: xlcnn verify and outside tools read this
    # sheet by these names, a machine-read contract like the manifest's headers (only the title is translated)
    rows = [
        ("xlcnn_version", __version__),
        ("created_utc", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("model_path", rel(model_path)),
        ("model_sha256", loaded.digest),
        *([("weights_path", rel(loaded.weights_path)), ("weights_sha256", loaded.weights_digest)]
          if loaded.weights_path else []),
        ("model_loader", loaded.loader),
        ("keras_version", getattr(loaded.keras, "__version__", "")),
        ("image_path", rel(image_path)),
        ("image_sha256", model_mod.sha256(image_path)),
        ("input_layer", loaded.input_name),
        ("input_shape", _shape_text(loaded.input_shape)),
        ("input_layout", layout),
        ("invert", f"{invert} -> {'yes' if prepared.inverted else 'no'}"),
        ("scale", repr(prepared.scale)),
        ("preprocessing", " | ".join(prepared.steps)),
        ("output_layer", stages[-1].tensor.layer),
        ("arithmetic", "cached values computed by xlcnn in float64; Keras computes in float32"),
        ("language", current_language()),
    ]
    for i, (k, v) in enumerate(rows):
        ws.write(FIRST_ROW + i, 0, k, book.fmt_header)
        ws.write_string(FIRST_ROW + i, 1, str(v))
    ws.set_column(0, 0, 16)
    ws.set_column(1, 1, 80)
