"""Keras's side of verify: the model, loaded and checked against the workbook's manifest, and
every layer's output for the input the workbook holds.

Importing TensorFlow is most of what verify waits for (3-5 s), and reading and evaluating the
workbook needs none of it.  So when this process has not imported TensorFlow yet and the machine
gives it a second core, :class:`Reference` starts a helper process at once that imports Keras
while this process reads and evaluates the workbook; the helper then loads the model and
computes the layer outputs, and sends the arrays back.  The comparison stays in this process.
The helper runs the very same code as the in-process way (:meth:`Reference.load` and
:meth:`Reference.outputs` of a Reference without a helper), so both give the same numbers.

Where the helper cannot help or cannot be had (one core, TensorFlow already imported, a verify
that needs the model here: ``--image``, ``--images``; or XLCNN_KERAS_HELPER=0), everything runs
in this process, one step after the other.  A helper that dies without an answer (killed, out of
memory) is not an error: the work is done here instead.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading

import numpy as np

from ..errors import XlcnnError


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def helper_helps():
    """True when a helper process would import Keras alongside this one's work."""
    if os.environ.get("XLCNN_KERAS_HELPER", "1") == "0":
        return False
    return usable_cores() > 1 and "tensorflow" not in sys.modules and "keras" not in sys.modules


class Reference:
    """Keras's answers for one verify: ``load`` (the model, checked against the manifest's
    layers), then ``outputs`` (every layer's output for one input).  With ``helper=True`` the
    work is done by a helper process started right away."""

    def __init__(self, helper=False):
        self.loaded = None    # the LoadedModel, when loaded in this process
        self._request = None
        self._conn = self._process = None
        if helper:
            self._start()

    @property
    def in_helper(self):
        return self._process is not None

    def _start(self):
        # fork is quick and safe here: no thread of ours is running and TensorFlow is not imported
        # (helper_helps); otherwise spawn, the way every platform has
        method = "fork" if (sys.platform == "linux" and threading.active_count() == 1) else "spawn"
        ctx = multiprocessing.get_context(method)
        self._conn, theirs = ctx.Pipe()
        self._process = ctx.Process(target=_helper_main, args=(theirs,), daemon=True,
                                    name="xlcnn-keras")
        try:
            self._process.start()
        except OSError:  # no processes to be had: do it here
            self._conn.close()
            self._conn = self._process = None
        finally:
            theirs.close()

    def load(self, model_path, weights_path, manifest_layers, workbook):
        """Load the model (in the helper: ask for it; an error surfaces at ``outputs``)."""
        self._request = (model_path, weights_path, list(manifest_layers), str(workbook))
        if self._process is not None:
            if self._send(("load", self._request)):
                return
        self._load_here()

    def _load_here(self):
        from ..model import load
        model_path, weights_path, manifest_layers, workbook = self._request
        loaded = load(model_path, weights_path)
        missing = [l.name for l in loaded.layers if l.name not in manifest_layers]
        if missing:
            raise XlcnnError(f"the manifest of {workbook} has no rows for layer(s) {', '.join(missing)} of "
                             f"{model_path}; is this the model the workbook was built from? (pass --model)")
        self.loaded = loaded

    def outputs(self, x):
        """{layer name: output} for the input ``x`` (no batch axis), float64, every layer after the
        input in the model's forward order."""
        if self._process is not None:
            if self._send(("outputs", np.asarray(x))):
                answer = self._receive()
                if answer is not None:
                    return answer
            self._load_here()  # the helper went away without an answer: do it here
        outs = self.loaded.layer_outputs(np.asarray(x)[None])
        return {layer.name: np.asarray(outs[layer.name][0], np.float64) for layer in self.loaded.layers}

    def _send(self, message):
        try:
            self._conn.send(message)
            return True
        except (OSError, EOFError):
            self.close()
            return False

    def _receive(self):
        try:
            kind, payload = self._conn.recv()
        except (OSError, EOFError):
            self.close()
            return None
        if kind == "error":
            self.close()
            raise payload
        return payload

    def close(self):
        """Stop the helper (at once: it may still be importing TensorFlow)."""
        if self._process is not None:
            self._conn.close()
            if self._process.is_alive():
                self._process.terminate()
            self._process.join()
            self._conn = self._process = None


def _helper_main(conn):
    """The helper process: import Keras straight away, then answer ``load`` and ``outputs``."""
    reference = Reference()
    try:
        from ..model import quiet_keras
        quiet_keras()
        while True:
            try:
                kind, payload = conn.recv()
            except EOFError:  # verify is done with us (or stopped)
                return
            if kind == "load":
                reference.load(*payload)
            else:
                conn.send(("outputs", reference.outputs(payload)))
    except BaseException as exc:  # noqa: BLE001 - handed to verify's process, which raises it
        try:
            conn.send(("error", _sendable(exc)))
        except (OSError, EOFError):
            pass
    finally:
        conn.close()


def _sendable(exc):
    """``exc`` as an exception that crosses a pipe and reads the same on the other side."""
    if isinstance(exc, XlcnnError):  # subclasses (Refusal) take other arguments: keep the line
        return XlcnnError(str(exc))
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything that does not pickle goes as its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")
