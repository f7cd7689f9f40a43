"""The workbook in Japanese (xlcnn build --lang ja): the same keys and placeholders as the English
texts, Japanese titles in a real build, the language recorded in the about sheet, and no leak of the
language into the next build of the same process."""

from __future__ import annotations

import string
import tomllib

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
