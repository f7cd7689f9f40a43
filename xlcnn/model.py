"""Reading the model: load a .keras or .h5 file safely, walk its layers, run Keras for reference.

Keras 3 reads .keras and most legacy .h5 files; some Keras 2 files only load with tf_keras (the
Keras 2 API), which is tried second. Lambda layers hold arbitrary Python code, so the file's
config is scanned for them *before* any loader runs, and such a model is refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import XlcnnError
from .spec import LayerSpec

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def quiet_keras(backend="keras"):
    """Import keras (or tf_keras) without TensorFlow's start-up chatter on the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    warnings.filterwarnings("ignore", module=r"keras.*")
    warnings.filterwarnings("ignore", module=r"tf_keras.*")
    logging.getLogger("absl").setLevel(logging.ERROR)
    with _stderr_silenced():  # TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL
        if backend == "tf_keras":
            import tf_keras as module
        else:
            import keras as module
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    return module


@contextlib.contextmanager
def _stderr_silenced():
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    path: Path
    model: object
    keras: object            # the module that loaded it: keras or tf_keras
    loader: str              # "keras" or "tf_keras"
    layers: list             # the layers after the input, in a forward (topological) order
    graph: list              # (layer, [names of the layers or input it reads]) in that order
    input_name: str
    input_shape: tuple       # without the batch axis
    digest: str = ""
    notes: list = field(default_factory=list)
    weights_path: Path | None = None   # the weights file of a JSON architecture
    weights_digest: str = ""
    specs: list = field(default_factory=list)   # a LayerSpec per layer, in graph order (what writers see)

    def layer_outputs(self, x):
        """Every chain layer's output for a batch x, as float64 arrays keyed by layer name."""
        # Calling the layers one after another (eagerly) in graph order is exactly the forward
        # pass, and avoids Sequential models whose layers carry several graph nodes.
        tensors = {self.input_name: np.asarray(x, dtype=np.float32)}
        outputs = {}
        for layer, reads in self.graph:
            args = [tensors[name] for name in reads]
            try:
                t = layer(args if len(args) > 1 else args[0], training=False)
            except Exception as exc:
                if "NHWC" in str(exc):
                    raise XlcnnError(cannot_run_channels_first(layer)) from None
                raise
            tensors[layer.name] = t
            outputs[layer.name] = np.asarray(t, dtype=np.float64)
        return outputs


def cannot_run_channels_first(layer):
    """The one line for a channels_first layer this machine's TensorFlow cannot run."""
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    why = (f"TF_ENABLE_ONEDNN_OPTS={setting} in your environment turns oneDNN off"
           if setting not in (None, "1", "true", "True") else
           "TensorFlow here was started without oneDNN (imported before xlcnn, or a build without it)")
    return (f"layer '{layer.name}' ({type(layer).__name__}, channels_first) cannot run on this machine's CPU: "
            f"TensorFlow computes channels_first layers on the CPU only through oneDNN, and {why}; "
            "unset TF_ENABLE_ONEDNN_OPTS or set it to 1 (or run on a GPU)")


def _config_text(path):
    """The model's architecture JSON as text, read without building anything."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return path.read_text(encoding="utf-8", errors="replace")
    if suffix == ".keras":
        with zipfile.ZipFile(path) as zf:
            if "config.json" not in zf.namelist():
                raise XlcnnError(f"model file {path} is a zip without config.json, not a .keras model; "
                                 "is it the right file?")
            return zf.read("config.json").decode("utf-8", "replace")
    import h5py
    with h5py.File(path, "r") as fh:
        cfg = fh.attrs.get("model_config")
        if cfg is None:
            raise XlcnnError(f"model file {path} holds weights only (no architecture); give the architecture "
                             f"too: xlcnn build MODEL.json INPUT --weights {path} (MODEL.json as written by "
                             "model.to_json()), or save the whole model with model.save('model.keras')")
        return cfg.decode("utf-8") if isinstance(cfg, bytes) else str(cfg)


def _class_names(config_text):
    names = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str):
                names.add(node["class_name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(json.loads(config_text))
    return names


def _check_hdf5(path, what):
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        kind = "empty" if not head else "not an HDF5 file"
        raise XlcnnError(f"{what} {path} is {kind}; an .h5 file starts with the HDF5 signature. "
                         "Is it the right file?")


def check_file(path, weights=None):
    """Refuse what is not a model file (or JSON architecture + weights pair), before any loader runs."""
    path = Path(path)
    if not path.exists():
        raise XlcnnError(f"model file not found: {path}; check the path")
    if path.is_dir():
        raise XlcnnError(f"model path {path} is a folder (a TensorFlow SavedModel?); "
                         "xlcnn reads .keras and .h5 files: save with model.save('model.keras')")
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5", ".json"):
        raise XlcnnError(f"model file {path} has the extension '{suffix}'; xlcnn reads .keras and .h5 files, "
                         "or a .json architecture with --weights WEIGHTS.h5")
    if suffix == ".json":
        if weights is None:
            raise XlcnnError(f"model file {path} is an architecture without weights; pass its weights too: "
                             f"--weights WEIGHTS.h5 (as written by model.save_weights)")
        weights = Path(weights)
        if not weights.exists():
            raise XlcnnError(f"weights file not found: {weights}; check --weights")
        if weights.is_dir():
            raise XlcnnError(f"weights path {weights} is a folder; give the .h5 file written by save_weights")
        _check_hdf5(weights, "weights file")
        return path
    if weights is not None:
        raise XlcnnError(f"--weights is for a .json architecture file; {path} already holds its weights: "
                         "leave --weights out")
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise XlcnnError(f"model file {path} is not a .keras archive (not a zip file); "
                             "is it the right file, or was it truncated?")
    else:
        _check_hdf5(path, "model file")
    return path


def load(path: str | Path, weights: str | Path | None = None) -> LoadedModel:
    """Load a .keras/.h5 model, or a JSON architecture with its weights file, with Keras 3 and then
    (for files written by Keras 2: .h5, the Keras-2 .keras format, Keras 2 JSON) with tf_keras."""
    path = check_file(path, weights)
    try:
        text = _config_text(path)
        names = _class_names(text)
    except XlcnnError:
        raise
    except Exception as exc:  # a truncated or damaged file, or a JSON file that is not JSON
        raise XlcnnError(f"cannot read the architecture in {path}: {_first_line(exc)}; "
                         "the file may be truncated or damaged") from None
    if "Lambda" in names:
        raise XlcnnError(f"model {path} contains a Lambda layer (arbitrary Python code); xlcnn does not "
                         "run code from model files: replace the Lambda with standard layers")
    if path.suffix.lower() == ".json" and not names:
        raise XlcnnError(f"{path} is JSON but not a Keras model architecture (no class_name); give the file "
                         "written by model.to_json()")
    errors = []
    for loader in ("keras", "tf_keras"):
        try:
            module = quiet_keras(loader)
        except ImportError:
            errors.append(f"{loader} is not installed (pip install {loader})")
            continue
        try:
            if weights is None:
                model = module.models.load_model(str(path), compile=False)
            else:
                model = module.models.model_from_json(text)
                model.load_weights(str(weights))
        except Exception as exc:
            errors.append(f"{loader}: {_first_line(exc)}")
            continue
        loaded = _walk(path, model, module, loader)
        if weights is not None:
            loaded.weights_path = Path(weights)
            loaded.weights_digest = sha256(weights)
        if errors:
            first = errors[0].split(": ", 1)[-1]
            loaded.notes.append(f"loaded with {loader}, the Keras 2 API (Keras 3 could not: "
                                f"{first[:100] + '…' if len(first) > 100 else first})")
        return loaded
    raise XlcnnError(f"cannot load model {path}" + (f" with weights {weights}" if weights else "") + ": "
                     + "; ".join(errors))


def _first_line(exc):
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:300]


def _walk(path, model, module, loader):
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise XlcnnError(f"model {path} has {len(inputs)} inputs; xlcnn supports models with one input")
    if len(getattr(model, "outputs", []) or []) != 1:
        raise XlcnnError(f"model {path} has {len(model.outputs)} outputs; xlcnn supports one output")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise XlcnnError(f"model {path} has an input of unknown size {shape}; xlcnn needs a fixed input shape")
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    input_name = getattr(inputs[0], "name", "input")
    input_layers = [layer for layer in model.layers if type(layer).__name__ == "InputLayer"]
    if input_layers:
        input_name = input_layers[0].name
    input_name = str(input_name).split(":")[0]
    # Which layer reads which: a Sequential model is a chain by construction; for a Functional
    # model each layer's input tensors are matched to the layer (or model input) that made them.
    graph = []
    producer = {id(inputs[0]): input_name}
    sequential = type(model).__name__ == "Sequential"
    previous = input_name
    for layer in layers:
        kind = type(layer).__name__
        if isinstance(layer, module.Model):
            raise XlcnnError(f"layer '{layer.name}' is a nested model ({kind}); "
                             "xlcnn needs a flat model: rebuild it without nesting")
        if sequential:
            graph.append((layer, [previous]))
            previous = layer.name
            continue
        try:
            reads = layer.input
            made = layer.output
        except Exception:
            raise XlcnnError(f"layer '{layer.name}' ({kind}) is used more than once; "
                             "shared layers are not supported") from None
        reads = list(reads) if isinstance(reads, (list, tuple)) else [reads]
        names = [producer.get(id(t)) for t in reads]
        if None in names or isinstance(made, (list, tuple)):
            raise XlcnnError(f"layer '{layer.name}' ({kind}) reads a tensor xlcnn cannot trace to an earlier "
                             "layer; models with several outputs per layer are not supported")
        producer[id(made)] = layer.name
        graph.append((layer, names))
    if layers and not sequential and producer.get(id(model.outputs[0])) != layers[-1].name:
        raise XlcnnError(f"model {path}: its output is not made by its last layer; xlcnn needs the output "
                         "layer last")
    loaded = LoadedModel(path=path, model=model, keras=module, loader=loader, layers=layers, graph=graph,
                         input_name=input_name, input_shape=tuple(int(d) for d in shape), digest=sha256(path))
    loaded.specs = layer_specs(loaded)
    return loaded


# -- layers as plain data (xlcnn.spec): the writers never see a Keras object ----------------------

# layer attributes as the layer uses them (Normalization's mean is its weight reshaped to broadcast;
# Rescaling's scale and offset are no weights at all)
ATTRIBUTES = ("mean", "variance", "scale", "offset")


def layer_specs(loaded: LoadedModel) -> list[LayerSpec]:
    """A LayerSpec for every layer of the graph, with the shapes Keras computes for them."""
    shapes = _output_shapes(loaded)
    return [spec_of(layer, loaded.loader, [shapes[r] for r in reads], shapes[layer.name])
            for layer, reads in loaded.graph]


def spec_of(layer, package: str | None = None, input_shapes=(), output_shape=()) -> LayerSpec:
    """One Keras layer as a LayerSpec (tests use it for standalone layers too)."""
    from .spec import LayerSpec, as_array, short_weight_name
    package = package or type(layer).__module__.split(".")[0]
    module = quiet_keras("tf_keras" if package == "tf_keras" else "keras")
    weights = [as_array(w) for w in layer.get_weights()]
    names = [short_weight_name(getattr(w, "path", None) or w.name) for w in layer.weights]
    spec = LayerSpec(kind=type(layer).__name__, name=layer.name, config=layer.get_config(), weights=weights,
                     weight_names=names, input_shapes=list(input_shapes), output_shape=tuple(output_shape),
                     params=int(layer.count_params()) if layer.weights else 0, package=package,
                     facts={"epsilon": _backend_epsilon(module), "image_data_format": _image_data_format(module)})
    for attribute in ATTRIBUTES:
        value = getattr(layer, attribute, None)
        if value is not None and not callable(value):
            try:
                spec.facts[attribute] = as_array(value)
            except (TypeError, ValueError):
                pass
    bias = spec.weight("bias")
    if spec.config.get("data_format") == "channels_first" and bias is not None:
        rank = len(spec.output_shape) or len(spec.config.get("kernel_size", (1, 1))) + 1
        spec.facts["bias_quirk"] = package == "keras" and keras_adds_bias_along_last_axis(bias.size, rank)
    return spec


def _output_shapes(loaded):
    """Every layer's output shape (no batch axis) from Keras's compute_output_shape; a forward pass
    of zeros only where a layer cannot say."""
    shapes = {loaded.input_name: tuple(loaded.input_shape)}
    for layer, reads in loaded.graph:
        ins = [(None, *shapes[r]) for r in reads]
        try:
            out = layer.compute_output_shape(ins if len(ins) > 1 else ins[0])
            shape = tuple(int(d) for d in tuple(out)[1:])
        except Exception:  # noqa: BLE001  (some layers cannot say; Keras itself then tells below)
            outs = loaded.layer_outputs(np.zeros((1, *loaded.input_shape), np.float32))
            return {loaded.input_name: tuple(loaded.input_shape),
                    **{name: tuple(int(d) for d in v.shape[1:]) for name, v in outs.items()}}
        shapes[layer.name] = shape
    return shapes


def _backend_epsilon(module):
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "epsilon"):
        return float(config.epsilon())
    return float(module.backend.epsilon())


def _image_data_format(module):
    try:
        return module.backend.image_data_format()
    except AttributeError:
        return "channels_last"


@functools.lru_cache(maxsize=None)
def keras_adds_bias_along_last_axis(channels, rank):
    """Probe the running Keras 3: does `x + bias.reshape(1, C, 1, ...)` add bias[j] at position j of
    the last axis when that axis has length C? (keras.src.backend.tensorflow.numpy.add turns it into
    tf.nn.bias_add and guesses NHWC from the last axis.) rank: the tensor's rank without batch."""
    if channels < 2:
        return False
    import keras
    ones = (1,) * (rank - 2)
    bias = np.arange(channels, dtype=np.float32).reshape(1, channels, *ones, 1)
    got = np.asarray(keras.ops.add(np.zeros((1, channels, *ones, channels), np.float32), bias))
    got = got.reshape(channels, channels)
    return not np.array_equal(got, np.repeat(np.arange(channels, dtype=np.float32)[:, None], channels, axis=1))


def input_layout(loaded):
    """Where the model expects channels: the data_format of its first layer that has one."""
    for layer in loaded.layers:
        fmt = layer.get_config().get("data_format")
        if fmt:
            return fmt
    return "channels_last"
