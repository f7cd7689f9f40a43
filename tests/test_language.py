"""The workbook in Japanese (xlcnn build --lang ja): the same keys and placeholders as the English
texts, Japanese titles in a real build, the language recorded in the about sheet, and no leak of the
language into the next build of the same process."""

from __future__ import annotations

import re
import string
import tomllib

import numpy as np
import openpyxl
import pytest

from conftest import SAMPLES
from xlcnn import cli, layout
from xlcnn.errors import XlcnnError

DIGIT = SAMPLES / "digits" / "digit_7.png"


def _texts(lang):
    name = "texts.toml" if lang == "en" else f"texts.{lang}.toml"
    with open(layout.TEMPLATES / name, "rb") as fh:
        return tomllib.load(fh)


def _leaves(node, prefix=""):
    """{dotted key: str or list} of a texts tree."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _fields(template):
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@pytest.mark.parametrize("lang", [lang for lang in layout.LANGUAGES if lang != "en"])
def test_translation_has_every_key_and_the_same_placeholders(lang):
    en, other = _leaves(_texts("en")), _leaves(_texts(lang))
    assert sorted(set(en) - set(other)) == [], f"keys of texts.toml missing in texts.{lang}.toml"
    assert sorted(set(other) - set(en)) == [], f"keys of texts.{lang}.toml that texts.toml does not have"
    for key, value in en.items():
        theirs = other[key]
        assert type(theirs) is type(value), key
        if isinstance(value, list):
            assert len(theirs) == len(value), key
            for a, b in zip(value, theirs):
                assert _fields(a) == _fields(b), key
        else:
            assert _fields(value) == _fields(theirs), key


def test_manifest_headers_stay_the_contract():
    # verify and outside tools read the manifest by these names, whatever the workbook's language
    assert _texts("ja")["manifest"]["headers"] == _texts("en")["manifest"]["headers"]


def test_language_is_scoped_and_unknown_ones_are_refused():
    assert layout.current_language() == "en"
    with pytest.raises(RuntimeError):
        with layout.language("ja"):
            assert layout.text("overview.prediction") == "予測クラス"
            raise RuntimeError("a build that fails")
    assert layout.current_language() == "en"
    assert layout.text("overview.prediction") == "predicted class"
    with pytest.raises(XlcnnError, match="unknown language"):
        layout.set_language("fr")


def test_untranslated_or_stale_keys_fall_back_to_english(monkeypatch):
    # another engineer adds a key or changes a placeholder in texts.toml: a Japanese build still
    # works (in English there) until the translation catches up, which the test above asks for
    trees = {"texts.toml": {"a": {"new": "new {x}", "changed": "now {y}", "same": "same {z}"}},
             "texts.ja.toml": {"a": {"changed": "前は {x}", "same": "同じ {z}"}}}
    monkeypatch.setattr(layout, "_load", trees.__getitem__)
    with layout.language("ja"):
        assert layout.text("a.new", x=1) == "new 1"
        assert layout.text("a.changed", y=2) == "now 2"
        assert layout.text("a.same", z=3) == "同じ 3"


def _strings(ws, rows=3):
    """The text cells of a sheet's first rows (title, explanation, block labels), in order."""
    return [v for row in ws.iter_rows(min_row=1, max_row=rows, values_only=True) for v in row
            if isinstance(v, str) and not v.startswith("=")]


def _about(wb):
    return {row[0]: row[1] for row in wb["about"].iter_rows(values_only=True) if row[0] and len(row) > 1}


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """The LeNet sample built in Japanese, then (same process) without --lang."""
    folder = tmp_path_factory.mktemp("lang")
    ja, en = folder / "ja.xlsx", folder / "en.xlsx"
    assert cli.main(["build", str(SAMPLES / "lenet.keras"), str(DIGIT), "-o", str(ja), "--lang", "ja", "-q"]) == 0
    assert cli.main(["build", str(SAMPLES / "lenet.keras"), str(DIGIT), "-o", str(en), "-q"]) == 0
    return ja, en


def test_japanese_build_writes_japanese_titles(books):
    wb = openpyxl.load_workbook(books[0])
    assert wb["overview"]["A1"].value == "xlcnn: lenet.keras に digit_7.png を入力"
    assert "予測クラス" in _strings(wb["overview"], rows=5)
    conv = " ".join(_strings(wb["02 conv1 c0"]))
    assert "02 conv1 · Conv2D（畳み込み） · 出力チャネル 0（全 6 個）" in conv
    assert "パディング 'same'（0 で埋める）: 上 2 行・下 2 行・左 2 列・右 2 列" in conv
    assert "フィルタの深さ = 入力チャネル数 = 1" in conv
    pool = " ".join(_strings(wb["03 pool1 c0"]))
    assert "MaxPooling2D（最大値プーリング）" in pool and "−∞" in pool
    assert "Dense（全結合層）" in " ".join(_strings(wb["07 fc1"]))
    assert _about(wb)["language"] == "ja"
    # sheet names come from layer names and stay as they are
    assert "02 conv1 c0" in wb.sheetnames and "manifest" in wb.sheetnames


def test_next_build_in_the_same_process_is_english_again(books):
    wb = openpyxl.load_workbook(books[1])
    assert wb["overview"]["A1"].value == "xlcnn: lenet.keras on digit_7.png"
    assert "02 conv1 · Conv2D · output channel 0 of 6" in " ".join(_strings(wb["02 conv1 c0"]))
    assert _about(wb)["language"] == "en"
    assert layout.current_language() == "en"


def test_verify_passes_the_japanese_workbook(books, capsys):
    assert cli.main(["verify", str(books[0]), "-q"]) == 0


@pytest.mark.parametrize("lang", layout.LANGUAGES)
def test_cli_accepts_every_language_with_texts(lang):
    args = cli._parser().parse_args(["build", "m.keras", "i.png", "-o", "o.xlsx", "--lang", lang])
    assert args.lang == lang
    assert _texts(lang)


def test_unknown_language_is_refused_by_argparse(tmp_path, capsys):
    out = tmp_path / "fr.xlsx"
    with pytest.raises(SystemExit) as exc:
        cli.main(["build", str(SAMPLES / "lenet.keras"), str(DIGIT), "-o", str(out), "--lang", "fr"])
    assert exc.value.code == 2
    assert "--lang" in capsys.readouterr().err
    assert not out.exists()


# -- every kind of sheet in Japanese (issue #10 item 8) ---------------------------------------------

# English that the writers used to write directly and now take from texts.toml: none of it may show
# in a Japanese workbook. Keras names (Conv2D, 'same', relu, softmax as a function), layer and sheet
# names, formulas and the about and manifest sheets (a machine-read contract) stay as they are.
ENGLISH = re.compile(r"\b(?:the|of|and|each|every|from|then|filters|kernel \d|pool \d|stride|dilation|units?|"
                     r"value|comes from|total|ch \d|row \d|col \d|channels?|per (?:channel|sample)|windows|"
                     r"multiplier|transposed|cropped|statistics|mean|variance|padding|weights|Weights|"
                     r"read \S+:|used as is|sum of the inputs)\b|exp\([xz] - max")


def _every_kind(k):
    """Two tiny models that between them write every kind of sheet; layer names that are no English
    word of ENGLISH, so a name cannot hide a leak."""
    L = k.layers
    x = k.Input((6, 6, 1), name="px")
    y = L.Conv2D(2, 3, padding="same", activation="relu", name="c2")(x)
    y = L.MaxPooling2D(2, name="mp")(y)
    a = L.DepthwiseConv2D(2, padding="same", name="dw")(y)
    b = L.BatchNormalization(name="bn")(y)
    y = L.Add(name="plus")([a, b])
    y = L.Flatten(name="fl")(y)
    first = k.Model(x, L.Dense(3, activation="softmax", name="probs")(y))
    x = k.Input((6, 2), name="sig")
    y = L.Conv1D(2, 3, padding="causal", name="c1")(x)
    y = L.LayerNormalization(name="ln")(y)
    y = L.Reshape((6, 2, 1), name="rs")(y)
    y = L.Conv2DTranspose(1, 2, strides=2, name="ct")(y)
    y = L.Flatten(name="fl2")(y)
    second = k.Model(x, L.Dense(2, name="out")(y))
    return {"first": (first, (6, 6, 1)), "second": (second, (6, 2))}


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """{model: {lang: (workbook path, BuildResult)}}, each model built in Japanese and in English."""
    from conftest import keras
    from xlcnn.build import build
    folder = tmp_path_factory.mktemp("every_kind")
    rng = np.random.default_rng(10)
    books = {}
    for name, (model, shape) in _every_kind(keras()).items():
        model.save(str(folder / f"{name}.keras"))
        np.save(folder / f"{name}.npy", rng.random(shape).astype(np.float32))
        books[name] = {lang: (folder / f"{name}_{lang}.xlsx",
                              build(folder / f"{name}.keras", folder / f"{name}.npy", folder / f"{name}_{lang}.xlsx",
                                    lang=lang))
                       for lang in ("ja", "en")}
    return books


def _texts_of(path):
    """{sheet: [text cells]} of a workbook, the about and manifest sheets left out."""
    wb = openpyxl.load_workbook(path)
    return {ws.title: [v for row in ws.iter_rows(values_only=True) for v in row
                       if isinstance(v, str) and not v.startswith("=")]
            for ws in wb.worksheets if ws.title not in ("about", "manifest")}


@pytest.mark.parametrize("model", ["first", "second"])
def test_japanese_workbook_has_no_english_left(every_kind, model):
    path, result = every_kind[model]["ja"]
    texts = _texts_of(path)
    kinds = {"Conv2D", "MaxPooling2D", "DepthwiseConv2D", "BatchNormalization", "Add", "Flatten", "Dense"} \
        if model == "first" else {"Conv1D", "LayerNormalization", "Reshape", "Conv2DTranspose", "Flatten", "Dense"}
    summary = " ".join(texts["overview"])
    assert all(kind in summary for kind in kinds)
    # names (sheets, quoted or linked) say nothing: take them out before looking for English
    names = sorted(texts, key=len, reverse=True)
    leaks = []
    for sheet, values in texts.items():
        for value in values:
            bare = value
            for name in names:
                bare = bare.replace(name, "")
            if ENGLISH.search(bare) or bare.strip() in ("softmax", "unit", "value"):
                leaks.append(f"{sheet}: {value}")
    assert leaks == []
    # the terminal stays English (the build's result is what the CLI prints)
    assert result.preprocessing[0].startswith(f"read {model}.npy: array ")


def test_japanese_words_where_english_was(every_kind):
    ja = _texts_of(every_kind["first"]["ja"][0])
    overview = ja["overview"]
    assert "フィルタ 2 個、カーネル 3×3 · ストライド 1×1 · 膨張率 1×1、パディング same、続いて relu" in overview
    assert "最大値プーリング: ウィンドウ 2×2 · ストライド 2×2、パディング valid" in overview
    assert "ユニット 3 個、続いて softmax" in overview and "入力の和" in overview and "合計" in overview
    assert any(v.startswith("1. first.npy を読み込み: 配列 (6, 6, 1) float32") for v in overview)
    assert {"値", "元の位置", "チャネル 0 · 行 0 · 列 0"} <= set(ja["07 fl"])
    assert {"exp(z − max z)", "ソフトマックス"} <= set(ja["08 probs"])
    assert "ユニット 0" in ja["08 probs w"]
    second = _texts_of(every_kind["second"]["ja"][0])
    assert "チャネル 0 · 行 0 · 列 0" in second["06 fl2"]
    assert any("の統計量" in v for v in second["03 ln stats"])
    assert any("（転置畳み込み）" in v and "切り取りなし" in v for v in second["05 ct c0"])


def test_english_workbook_reads_as_before(every_kind):
    en = _texts_of(every_kind["first"]["en"][0])
    overview = en["overview"]
    assert "2 filters, kernel 3×3 · stride 1×1 · dilation 1×1, padding same, then relu" in overview
    assert "max of windows: pool 2×2 · stride 2×2, padding valid" in overview
    assert "3 units, then softmax" in overview and "sum of the inputs" in overview and "total" in overview
    assert "1. read first.npy: array (6, 6, 1) float32, used as is (no resizing, inversion or scaling)" in overview
    assert {"value", "comes from", "ch 0 · row 0 · col 0"} <= set(en["07 fl"])
    assert {"exp(z - max z)", "softmax"} <= set(en["08 probs"])
    assert "unit 0" in en["08 probs w"]
    second = _texts_of(every_kind["second"]["en"][0])
    assert ("03 ln · LayerNormalization statistics · mean and variance of each group of 2 value(s) over channels "
            "(axis [-1]) · one row per index along steps") in second["03 ln stats"]
    assert ("05 ct · Conv2DTranspose · output channel 0 of 1 · kernel 2×2 · stride 2×2 · dilation 1×1 · "
            "padding 'valid': the full transposed output, nothing cropped") in second["05 ct c0"]
