"""Branching Functional graphs: merges and concatenations, proven against Keras through LibreOffice."""

from __future__ import annotations

import pytest

from conftest import assert_matches_keras, build_cases, keras, needs_libreoffice, stage_values


def _cases():
    k = keras()
    L = k.layers

    def residual():
        i = k.Input((7, 8, 2), name="pixels")
        a = L.Conv2D(3, 3, padding="same", activation="relu", name="branch_a")(i)
        b = L.Conv2D(3, 1, name="shortcut")(i)
        s = L.Add(name="add")([a, b])
        d = L.Subtract(name="sub")([s, a])
        m = L.Multiply(name="mul")([d, b])
        return k.Model(i, L.Flatten()(m))

    def inception():
        i = k.Input((6, 6, 2))
        a = L.Conv2D(2, 1, name="one")(i)
        b = L.Conv2D(3, 3, padding="same", name="three")(i)
        c = L.MaxPooling2D(3, strides=1, padding="same", name="pool")(i)
        cat = L.Concatenate(name="channels")([a, b, c])
        avg = L.Average(name="avg")([L.Conv2D(2, 1)(cat), L.Conv2D(2, 1, activation="tanh")(cat)])
        return k.Model(i, L.Dense(3, activation="softmax")(L.Flatten()(avg)))

    def spatial_and_vectors():
        i = k.Input((4, 5, 2))
        rows = L.Concatenate(axis=1, name="rows")([i, i])
        cols = L.Concatenate(axis=-2, name="cols")([i, L.Conv2D(2, 1)(i)])
        f1, f2 = L.Flatten()(rows), L.Flatten()(cols)
        v = L.Concatenate(name="vectors")([f1, f2])
        hi = L.Maximum(name="hi")([L.Dense(4)(v), L.Dense(4)(f1)])
        lo = L.Minimum(name="lo")([hi, L.Dense(4)(f2)])
        return k.Model(i, lo)

    def channels_first_merge():
        i = k.Input((2, 5, 6))
        a = L.Conv2D(3, 3, padding="same", data_format="channels_first")(i)
        b = L.Conv2D(3, 1, data_format="channels_first")(i)
        cat = L.Concatenate(axis=1, name="cf_channels")([a, b])
        return k.Model(i, L.Flatten()(L.Add()([cat, cat])))

    return {"residual": (residual, ".keras"), "inception": (inception, ".keras"),
            "spatial_and_vectors": (spatial_and_vectors, ".keras"),
            "channels_first_merge": (channels_first_merge, ".h5")}


CASES = list(_cases())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_cases(_cases(), tmp_path_factory.mktemp("graphs"))


@pytest.mark.parametrize("name", CASES)
def test_cached_values_equal_keras(built, name):
    values, _ = stage_values(built[name]["book"])
    assert_matches_keras(values, built[name]["model"], built[name]["x"])


@needs_libreoffice
@pytest.mark.parametrize("name", CASES)
def test_libreoffice_recalculation_equals_keras_twice(built, name):
    case = built[name]
    assert_matches_keras(stage_values(case["lo"])[0], case["model"], case["x"])
    assert_matches_keras(stage_values(case["lo2"])[0], case["model"], case["x2"])


def test_overview_shows_which_stage_reads_which(built):
    import openpyxl
    ws = openpyxl.load_workbook(built["residual"]["book"], read_only=True)["overview"]
    rows = {r[1]: r for r in ws.iter_rows(values_only=True) if r and r[1]}
    reads = rows["layer"].index("reads")          # the summary's header row names its columns
    assert rows["add"][reads] == "02 branch_a, 03 shortcut"
    assert rows["sub"][reads] == "04 add, 02 branch_a"
    assert rows["branch_a"][reads] == "01 pixels"


def test_channel_concatenation_points_at_its_inputs_sheets(built):
    _, entries = stage_values(built["inception"]["book"])
    cat = [e for e in entries if e.layer == "channels"]
    one = [e for e in entries if e.layer == "one"]
    assert [e.channel for e in cat] == list(range(2 + 3 + 2))
    assert (cat[0].sheet, cat[0].range) == (one[0].sheet, one[0].range)
