"""The models people really have on disk, on every machine: each loading path with a real file, the
channels_first sample with TensorFlow's oneDNN on or off, and arguments checked cheapest first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli, one_line_error, ROOT, SAMPLES, SHARED_MODELS, assert_matches_keras, keras, stage_values

DIGIT = SAMPLES / "digits" / "digit_7.png"
CHANNELS_FIRST = SAMPLES / "padding_cf.h5"



def tf_keras():
    from xlcnn.model import quiet_keras
    return quiet_keras("tf_keras")


def _tiny(module):
    """A small CNN in either Keras API: conv, pool, dense softmax."""
    L = module.layers
    return module.Sequential([L.Conv2D(3, 3, activation="relu", padding="same", input_shape=(8, 8, 1),
                                       bias_initializer="random_normal"),
                              L.MaxPooling2D(2), L.Flatten(), L.Dense(4, activation="softmax")])


def _built_and_verified(model_path, tmp_path, weights=None):
    """Build from a random .npy input, check every stage against Keras and run xlcnn verify."""
    from xlcnn.build import build
    from xlcnn.verify import verify
    x = np.random.default_rng(3).uniform(0, 1, (8, 8, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = build(model_path, tmp_path / "x.npy", tmp_path / "book.xlsx", weights=weights)
    values, _ = stage_values(result.path)
    assert_matches_keras(values, model_path, x, weights=weights)
    report = verify(result.path)   # finds the model (and the weights) through the about sheet
    assert report.passed, report.first_failure
    assert [s.klass for s in report.stages][-1] == "Dense"
    return result


# -- loading paths ------------------------------------------------------------------------------

def test_keras3_keras_and_h5_files(tmp_path):
    k = keras()
    model = k.Sequential([k.Input((8, 8, 1)), k.layers.Conv2D(2, 3, activation="tanh"), k.layers.Flatten(),
                          k.layers.Dense(3, activation="softmax", name="dense")])
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"k3{suffix}"
        model.save(str(path))
        sub = tmp_path / suffix[1:]
        sub.mkdir()
        result = _built_and_verified(path, sub)
        assert not any("tf_keras" in n for n in result.notes)


def test_keras2_format_keras_file_loads_through_tf_keras(tmp_path):
    """tf.keras 2.x wrote .keras zips that Keras 3 cannot deserialize; tf_keras reads them."""
    model = _tiny(tf_keras())
    model.save(str(tmp_path / "k2.keras"))
    with pytest.raises(Exception, match="deserialized"):
        keras().models.load_model(str(tmp_path / "k2.keras"), compile=False)
    result = _built_and_verified(tmp_path / "k2.keras", tmp_path)
    assert any(n.startswith("loaded with tf_keras") for n in result.notes)


@pytest.mark.parametrize("api", ["tf_keras", "keras"])
def test_json_architecture_with_weights_file(tmp_path, api):
    """model.to_json() + save_weights(), as 2017-2019 tutorials saved models, in both Keras APIs."""
    if api == "tf_keras":
        model = _tiny(tf_keras())
        weights = tmp_path / "model.h5"
    else:
        k = keras()
        model = k.Sequential([k.Input((8, 8, 1)), k.layers.Conv2D(2, 3, padding="same"), k.layers.Flatten(),
                              k.layers.Dense(4, activation="softmax", name="dense")])
        weights = tmp_path / "model.weights.h5"
    (tmp_path / "model.json").write_text(model.to_json())
    model.save_weights(str(weights))
    result = _built_and_verified(tmp_path / "model.json", tmp_path, weights=weights)
    import openpyxl
    about = {r[0]: r[1] for r in openpyxl.load_workbook(result.path, read_only=True)["about"].iter_rows(
        values_only=True) if r and r[0]}
    assert about["model_path"] == "model.json"
    assert about["weights_path"] == weights.name
    from xlcnn.model import sha256
    assert about["weights_sha256"] == sha256(weights)



def test_weights_only_h5_says_to_pass_the_json(tmp_path, capsys):
    model = _tiny(tf_keras())
    model.save_weights(str(tmp_path / "weights.h5"))
    err = one_line_error(capsys, cli("build", tmp_path / "weights.h5", DIGIT, "-o", tmp_path / "o.xlsx"))
    assert "weights only" in err and "--weights" in err and "to_json" in err
    assert not (tmp_path / "o.xlsx").exists()


def test_json_refusals(tmp_path, capsys):
    model = _tiny(tf_keras())
    (tmp_path / "model.json").write_text(model.to_json())
    model.save_weights(str(tmp_path / "w.h5"))
    out = tmp_path / "o.xlsx"
    err = one_line_error(capsys, cli("build", tmp_path / "model.json", DIGIT, "-o", out))
    assert "without weights" in err and "--weights" in err
    err = one_line_error(capsys, cli("build", tmp_path / "model.json", DIGIT, "-o", out, "--weights", tmp_path / "no.h5"))
    assert "weights file not found" in err
    err = one_line_error(capsys, cli("build", SAMPLES / "lenet.keras", DIGIT, "-o", out, "--weights", tmp_path / "w.h5"))
    assert "--weights is for a .json" in err
    (tmp_path / "other.json").write_text(json.dumps({"hello": [1, 2]}))
    err = one_line_error(capsys, cli("build", tmp_path / "other.json", DIGIT, "-o", out, "--weights", tmp_path / "w.h5"))
    assert "not a Keras model architecture" in err
    (tmp_path / "text.h5").write_text("not hdf5")
    err = one_line_error(capsys, cli("build", tmp_path / "model.json", DIGIT, "-o", out, "--weights",
                                  tmp_path / "text.h5"))
    assert "weights file" in err and "not an HDF5 file" in err
    assert not out.exists()


def test_an_input_of_unsupported_rank_is_named_for_its_rank_not_its_size(tmp_path, capsys):
    """Rank-2 inputs (signals, 2-D images) work (tests/test_layers_1d.py); a rank-4 one is refused
    by its rank, not as 'an input of unknown size'."""
    k = keras()
    model = k.Sequential([k.Input((4, 4, 4, 1)), k.layers.Flatten(), k.layers.Dense(2)])
    model.save(str(tmp_path / "r4.keras"))
    np.save(tmp_path / "x.npy", np.zeros((4, 4, 4, 1), np.float32))
    err = one_line_error(capsys, cli("build", tmp_path / "r4.keras", tmp_path / "x.npy", "-o", tmp_path / "o.xlsx"))
    assert "rank-4 input of shape (4, 4, 4, 1)" in err and "unknown size" not in err


@pytest.mark.parametrize("activation, word", [("softmax", "probability"), ("sigmoid", "probability"),
                                              ("linear", "score"), ("log_softmax", "score")])
def test_probability_printed_only_for_probability_outputs(tmp_path, capsys, activation, word):
    k = keras()
    model = k.Sequential([k.Input((8, 8, 1)), k.layers.Flatten(), k.layers.Dense(3, activation=activation)])
    model.save(str(tmp_path / "m.keras"))
    assert cli("build", tmp_path / "m.keras", DIGIT, "-o", tmp_path / "o.xlsx") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("predicted class"))
    assert f"({word} " in line, line


# -- real models published by other people (../shared/models/README.md gives their sources) -------

SHARED = {
    # file: (input, --scale, the class the model must predict, or None to only agree with Keras)
    "fashion_aman21k.keras": (SAMPLES / "digits" / "digit_1.jpg", None, None),
    "signmnist_venkatnikhilm.h5": (SAMPLES / "digits" / "digit_3.png", None, None),
    # the GTSRB repository feeds raw 0..255 pixels; its Test.csv says this image is class 1
    "gtsrb_tovborg.h5": (SHARED_MODELS / "gtsrb_test_00001.png", "1", 1),
    "cifar10_resnet8_mlcommons_tiny.h5": (SHARED_MODELS / "gtsrb_test_00001.png", None, None),
}


@pytest.mark.parametrize("model_file", sorted(SHARED))
def test_shared_real_models_build_and_verify(tmp_path, model_file):
    from xlcnn.build import build
    from xlcnn.image import parse_scale
    from xlcnn.verify import verify
    model_path = SHARED_MODELS / model_file
    if not model_path.exists():
        pytest.skip("../shared/models is not present")
    image, scale, expected = SHARED[model_file]
    result = build(model_path, image, tmp_path / "book.xlsx", scale=parse_scale(scale) if scale else None)
    report = verify(result.path)
    assert report.passed, report.first_failure
    assert report.predicted_workbook == report.predicted_keras == result.predicted
    if expected is not None:
        assert result.predicted == expected


# -- every machine: TensorFlow's oneDNN, cheapest checks first -------------------------------------

def _run(code, env_change):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(env_change)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_channels_first_sample_runs_without_any_setting(tmp_path):
    """No TF_ENABLE_ONEDNN_OPTS in the environment: xlcnn asks for oneDNN itself, on any CPU."""
    out = tmp_path / "cf.xlsx"
    code = ("import sys; from xlcnn.cli import main; "
            f"rc = main(['build', {str(CHANNELS_FIRST)!r}, {str(DIGIT)!r}, '-o', {str(out)!r}, '-q']); "
            f"sys.exit(rc or main(['verify', {str(out)!r}, '-q']))")
    done = _run(code, {})
    assert done.returncode == 0, done.stderr
    assert out.exists()


def test_channels_first_with_onednn_forced_off_passes_or_says_what_to_do(tmp_path):
    """A user who turned oneDNN off gets either a working build (a platform that runs NCHW anyway)
    or one line naming the setting, exit 2, and no file: never an internal error."""
    out = tmp_path / "cf.xlsx"
    code = ("import sys; from xlcnn.cli import main; "
            f"sys.exit(main(['build', {str(CHANNELS_FIRST)!r}, {str(DIGIT)!r}, '-o', {str(out)!r}, '-q']))")
    done = _run(code, {"TF_ENABLE_ONEDNN_OPTS": "0"})
    if done.returncode == 0:
        assert out.exists()
        return
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert "layer 'conv1' (Conv2D, channels_first)" in err and "TF_ENABLE_ONEDNN_OPTS=0" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("image", ["missing.png", "garbage.png", "empty.png"])
def test_bad_image_refused_before_tensorflow_is_imported(tmp_path, image):
    (tmp_path / "garbage.png").write_bytes(os.urandom(4096))
    (tmp_path / "empty.png").write_bytes(b"")
    code = ("import sys; from xlcnn.cli import main; "
            f"rc = main(['build', {str(CHANNELS_FIRST)!r}, {str(tmp_path / image)!r}, '-o', "
            f"{str(tmp_path / 'o.xlsx')!r}]); "
            "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = _run(code, {"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert done.stdout.split() == ["2", "False", "False"], (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1
    assert "xlcnn: error: " in done.stderr and "internal error" not in done.stderr
