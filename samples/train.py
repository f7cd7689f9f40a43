#!/usr/bin/env python
"""Train the bundled sample models for xlcnn and write the sample digit images.

Usage:  python samples/train.py [--out samples]

Data: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten
Digits" test set (``sklearn.datasets.load_digits``): 1,797 real handwritten
digits, 8x8, values 0..16, ink = high values (light digit on dark ground, like
MNIST).  Each digit is upscaled to 28x28 with Pillow BILINEAR and scaled to
0..1 float32.  Fixed stratified 80/20 split (random_state=0).

Writes (under --out):
  lenet.keras      LeNet-style channels_last CNN (relu)
  padding_cf.h5    650-parameter channels_first CNN (tanh), legacy HDF5
  accuracy.json    test accuracy per model file
  digits/          a few test-split digits drawn dark-on-light (PNG/JPG/BMP/GIF)
                   and one already-preprocessed .npy, each checked against both
                   models with xlcnn's image preprocessing.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SEED = 0
# name -> (epochs, batch size, peak learning rate); Adam with cosine decay to 0.
TRAINING = {"lenet": (20, 32, 1e-3), "padding_cf": (40, 64, 1e-2)}
N_SHIFTED_COPIES = 2          # augmented copies per training image (±2 px shifts)
MAX_SHIFT = 2

# Which test digit goes into which file.
PNG_CLASSES = (0, 3, 5, 7, 9)
OTHER_FILES = {"jpg": 1, "bmp": 2, "gif": 4}   # extension -> class
NPY_CLASS = 8
DRAWN_SIZE = 140
SAVE_KW = {"jpg": {"quality": 90}}


# --------------------------------------------------------------------------- data
def to_28(img8: np.ndarray) -> np.ndarray:
    """8x8 sklearn digit (0..16) -> 28x28 float32 0..1, light-on-dark."""
    u8 = np.clip(np.round(img8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    im = Image.fromarray(u8).resize((28, 28), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def drawn_image(img8: np.ndarray) -> Image.Image:
    """8x8 digit -> 140x140 'as people draw it': dark digit on a light ground."""
    u8 = np.clip(np.round(img8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = Image.fromarray(u8).resize((DRAWN_SIZE, DRAWN_SIZE), Image.Resampling.BICUBIC)
    return Image.fromarray(255 - np.asarray(big, dtype=np.uint8))


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=0.2, random_state=SEED, stratify=d.target)
    x = np.stack([to_28(im) for im in d.images])[..., None]     # (N,28,28,1)
    return d, x, d.target.astype(np.int64), tr, te


def shift_augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    """Original images plus N_SHIFTED_COPIES copies shifted by up to ±MAX_SHIFT px."""
    xs, ys = [x], [y]
    p = MAX_SHIFT
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    for _ in range(N_SHIFTED_COPIES):
        dy = rng.integers(-p, p + 1, size=len(x))
        dx = rng.integers(-p, p + 1, size=len(x))
        out = np.empty_like(x)
        for i in range(len(x)):
            out[i] = padded[i, p + dy[i]:p + dy[i] + 28, p + dx[i]:p + dx[i] + 28]
        xs.append(out)
        ys.append(y)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    perm = rng.permutation(len(x_all))
    return x_all[perm], y_all[perm]


# ------------------------------------------------------------------------ xlcnn preprocessing
def xlcnn_preprocess(path_or_file) -> np.ndarray:
    """What xlcnn does to an input image: Pillow load, grayscale 'L' (transparency
    flattened onto white), BILINEAR resize to 28x28, invert when the ground is
    light, scale /255.  Returns (28,28,1) float32, light-on-dark."""
    im = Image.open(path_or_file)
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127.5:            # light ground -> invert to light-on-dark
        a = 255.0 - a
    return (a / 255.0)[..., None].astype(np.float32)


def _png(img: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return buf


def load_input(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path).astype(np.float32)
    return xlcnn_preprocess(path)


# --------------------------------------------------------------------------- models
def build_lenet(keras):
    L = keras.layers
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        L.Conv2D(6, 5, padding="same", activation="relu", name="conv1"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(16, 5, activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(32, activation="relu", name="fc1"),
        L.Dropout(0.25, name="dropout"),
        L.Dense(10, activation="softmax", name="predictions"),
    ], name="lenet")


def build_padding_cf(keras):
    L = keras.layers
    cf = "channels_first"
    ones = "ones"
    return keras.Sequential([
        keras.Input(shape=(1, 28, 28)),
        L.Conv2D(5, (4, 4), padding="valid", data_format=cf, bias_initializer=ones, name="conv1"),
        L.MaxPooling2D((2, 2), padding="same", data_format=cf, name="pool1"),
        L.Activation("tanh", name="tanh1"),
        L.Conv2D(3, (3, 3), data_format=cf, bias_initializer=ones, name="conv2"),
        L.MaxPooling2D((2, 2), padding="same", data_format=cf, name="pool2"),
        L.Activation("tanh", name="tanh2"),
        L.Conv2D(3, (4, 4), data_format=cf, bias_initializer=ones, name="conv3"),
        L.Activation("tanh", name="tanh3"),
        L.Flatten(name="flatten"),
        L.Dense(10, bias_initializer=ones, name="dense"),
        L.Activation("softmax", name="softmax"),
    ], name="padding_cf")


def as_cf(x: np.ndarray) -> np.ndarray:
    """(...,28,28,1) channels_last -> (...,1,28,28) channels_first."""
    return np.moveaxis(x, -1, -3)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output folder (default: the samples/ folder)")
    args = ap.parse_args(argv)
    out = args.out
    digits_dir = os.path.join(out, "digits")
    os.makedirs(digits_dir, exist_ok=True)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older/odd TF builds
        pass
    gpus = tf.config.list_physical_devices("GPU")
    print(f"Keras {keras.__version__}, TensorFlow {tf.__version__}, backend {keras.backend.backend()}")
    print("Training device:", f"GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU")

    d, x, y, tr, te = load_data()
    print(f"Data: {len(y)} digits, train {len(tr)}, test {len(te)}")
    rng = np.random.default_rng(SEED)
    x_aug, y_aug = shift_augment(x[tr], y[tr], rng)
    x_test, y_test = x[te], y[te]

    t_all = time.perf_counter()
    models, acc = {}, {}
    for name, builder, fname, fmt in (
        ("lenet", build_lenet, "lenet.keras", lambda a: a),
        ("padding_cf", build_padding_cf, "padding_cf.h5", as_cf),
    ):
        keras.utils.set_random_seed(SEED)
        m = builder(keras)
        m.summary()
        n = m.count_params()
        print(f"{name}: {n} parameters")
        if name == "padding_cf":
            assert n == 650, f"padding_cf must have 650 parameters, has {n}"
        epochs, batch, lr = TRAINING[name]
        steps = epochs * int(np.ceil(len(x_aug) / batch))
        sched = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
        m.compile(optimizer=keras.optimizers.Adam(sched),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        t0 = time.perf_counter()
        m.fit(fmt(x_aug), y_aug, epochs=epochs, batch_size=batch, shuffle=True, verbose=2)
        dt = time.perf_counter() - t0
        _, a = m.evaluate(fmt(x_test), y_test, verbose=0)
        print(f"{name}: test accuracy {a:.4f} ({len(te)} digits), trained in {dt:.1f} s")
        # Same test digits drawn dark-on-light at 140x140 and read back the way xlcnn does.
        x_drawn = np.stack([xlcnn_preprocess(_png(drawn_image(d.images[i]))) for i in te])
        a_drawn = float(np.mean(np.argmax(m.predict(fmt(x_drawn), verbose=0), 1) == y_test))
        print(f"{name}: test accuracy {a_drawn:.4f} on the test digits drawn dark-on-light "
              f"at {DRAWN_SIZE}x{DRAWN_SIZE} and preprocessed like xlcnn")
        path = os.path.join(out, fname)
        m.save(path)
        models[name] = (m, fmt)
        acc[fname] = round(float(a), 4)
    print(f"Total training time: {time.perf_counter() - t_all:.1f} s")

    with open(os.path.join(out, "accuracy.json"), "w") as f:
        json.dump(acc, f, indent=2)
        f.write("\n")

    # ---------------------------------------------------------------- sample digits
    def probs(arr):  # arr: (28,28,1) light-on-dark -> {name: prob vector}
        return {k: m.predict(fmt(arr[None]), verbose=0)[0] for k, (m, fmt) in models.items()}

    def encoded(img: Image.Image, ext: str) -> io.BytesIO:
        buf = io.BytesIO()
        img.save(buf, format={"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF"}[ext],
                 **SAVE_KW.get(ext, {}))
        buf.seek(0)
        return buf

    def pick(cls: int, ext: str):
        """First test-split digit of class cls that both models get right with a
        comfortable margin (prob >= 0.9) after the round trip through the file
        format and xlcnn's preprocessing; fall back to the best one."""
        best, best_p = None, -1.0
        for i in te:
            if y[i] != cls:
                continue
            img = drawn_image(d.images[i])
            arr = xlcnn_preprocess(encoded(img, "png" if ext == "npy" else ext))
            p = probs(arr)
            if all(int(np.argmax(v)) == cls for v in p.values()):
                low = min(float(v[cls]) for v in p.values())
                if low >= 0.9:
                    return i, img, arr
                if low > best_p:
                    best, best_p = (i, img, arr), low
        if best is None:
            raise SystemExit(f"no test digit of class {cls} is classified correctly by both models")
        return best

    for fn in os.listdir(digits_dir):                    # drop stale samples
        if fn.startswith("digit_"):
            os.remove(os.path.join(digits_dir, fn))
    shipped = []                                          # (file, true class, sklearn index)
    for cls in PNG_CLASSES:
        i, img, _ = pick(cls, "png")
        fn = f"digit_{cls}.png"
        img.save(os.path.join(digits_dir, fn), optimize=True)
        shipped.append((fn, cls, int(i)))
    for ext, cls in OTHER_FILES.items():
        i, img, _ = pick(cls, ext)
        fn = f"digit_{cls}.{ext}"
        img.save(os.path.join(digits_dir, fn), **SAVE_KW.get(ext, {}))
        shipped.append((fn, cls, int(i)))
    i, _, arr = pick(NPY_CLASS, "npy")
    fn = f"digit_{NPY_CLASS}.npy"
    np.save(os.path.join(digits_dir, fn), arr.astype(np.float32))
    shipped.append((fn, NPY_CLASS, int(i)))

    # ---------------------------------------------------------------- verification
    # Re-load the saved models and the files from disk and check every prediction.
    print("\nPredictions for the shipped images (reloaded models, files read from disk):")
    reloaded = {
        "lenet": (keras.models.load_model(os.path.join(out, "lenet.keras"), compile=False), lambda a: a),
        "padding_cf": (keras.models.load_model(os.path.join(out, "padding_cf.h5"), compile=False), as_cf),
    }
    ok = True
    print(f"  {'file':<14} {'true':>4} {'sklearn#':>8}   {'lenet':>12}   {'padding_cf':>12}")
    for fn, cls, i in shipped:
        arr = load_input(os.path.join(digits_dir, fn))
        assert arr.shape == (28, 28, 1) and arr.dtype == np.float32, (fn, arr.shape, arr.dtype)
        cells = []
        for k, (m, fmt) in reloaded.items():
            p = m.predict(fmt(arr[None]), verbose=0)[0]
            k_pred = int(np.argmax(p))
            ok &= k_pred == cls
            cells.append(f"{k_pred} ({p[k_pred]:.3f}){'' if k_pred == cls else ' WRONG'}")
        print(f"  {fn:<14} {cls:>4} {i:>8}   {cells[0]:>12}   {cells[1]:>12}")
    print("\nTest accuracy:", json.dumps(acc))
    if not ok:
        print("ERROR: a shipped image is misclassified", file=sys.stderr)
        return 1
    print("All shipped images are classified correctly by both models.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
