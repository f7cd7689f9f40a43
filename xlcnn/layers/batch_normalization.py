"""BatchNormalization at inference: gamma × (x − moving mean) / √(moving variance + ε) + beta, each
parameter on the layer's parameter sheet, ε in a cell."""

from __future__ import annotations

import numpy as np

from ..layout import text
from .base import LayerWriter, handles, ok
from .elementwise import ParamSheet, along_channels, real_number, single_axis, write_elementwise_stage


@handles("BatchNormalization")
class BatchNormalizationWriter(LayerWriter):
    options = {
        "axis": lambda v, c: None if isinstance(single_axis(v), int) else
            f"axis={v!r} is not supported (one axis, the channel axis)",
        "epsilon": real_number, "center": ok, "scale": ok,
        # training only: how the moving statistics are updated, regularized or constrained
        "momentum": ok, "synchronized": ok, "beta_regularizer": ok, "gamma_regularizer": ok,
        "beta_constraint": ok, "gamma_constraint": ok, "fused": ok,
        # batch renormalization corrects the *batch* statistics during training; at inference Keras
        # uses moving_mean and moving_variance exactly as without it (tested)
        "renorm": ok, "renorm_clipping": ok, "renorm_momentum": ok,
        "virtual_batch_size": lambda v, c: None if v is None else
            f"virtual_batch_size={v!r} (ghost batch normalization) is not supported",
        "adjustment": lambda v, c: None if v is None else f"adjustment={v!r} is not supported",
    }

    def describe(self):
        return text("describe.batch_norm", epsilon=f"{self.config['epsilon']:g}")

    def check(self):
        """Also refuse, before anything is written, an axis that is no tensor's channel axis
        (height or width of an image); whether it is *this* tensor's is checked when writing."""
        super().check()
        try:
            rank = len(self.spec.input_shapes[0]) + 1
        except IndexError:  # a standalone layer without a traced input: checked when writing
            return
        axis = single_axis(self.config["axis"])
        if -rank <= axis < rank and rank == 4 and axis % rank not in (1, 3):
            what = "height" if axis % rank == 2 else "batch"
            self.refuse(f"axis={self.config['axis']} normalizes the image's {what} axis, not a channel axis; "
                        "xlcnn supports BatchNormalization over channels only")

    def check_axis(self, x):
        axis = single_axis(self.config["axis"])
        rank = x.rank + 1
        if not -rank <= axis < rank:
            self.refuse(f"axis={axis} does not exist for an input of shape {x.values.shape}")
        axis = axis % rank - 1
        want = 0 if x.rank == 1 else x.channel_axis
        if x.rank not in (1, 2, 3) or axis != want:
            self.refuse(f"axis={self.config['axis']} normalizes axis {axis} of the {x.values.shape} input, "
                        "which is not its channel axis; xlcnn supports BatchNormalization over channels only")

    def write(self, ctx, x):
        self.check_axis(x)
        c = self.config
        spec = self.spec
        mean, var = spec.weight("moving_mean"), spec.weight("moving_variance")
        gamma = spec.weight("gamma") if c["scale"] else None
        beta = spec.weight("beta") if c["center"] else None
        eps = float(c["epsilon"])
        arrays = []
        if gamma is not None:
            arrays.append((text("elementwise.bn_gamma"), along_channels(gamma, x)))
        if beta is not None:
            arrays.append((text("elementwise.bn_beta"), along_channels(beta, x)))
        arrays += [(text("elementwise.bn_mean"), along_channels(mean, x)),
                   (text("elementwise.bn_variance"), along_channels(var, x)),
                   (text("elementwise.bn_epsilon"), along_channels(np.full_like(mean, eps), x))]
        params = ParamSheet(ctx, self.name, self.kind, x, arrays)
        k_mean = len(arrays) - 3

        def formula(src, idx):
            f = (f"({src}-{params.ref(k_mean, idx)})/SQRT({params.ref(k_mean + 1, idx)}"
                 f"+{params.ref(k_mean + 2, idx)})")
            if gamma is not None:
                f = f"{params.ref(0, idx)}*{f}"
            if beta is not None:
                f += f"+{params.ref(1 if gamma is not None else 0, idx)}"
            return f

        out = (x.values - along_channels(mean, x)) / np.sqrt(along_channels(var, x) + eps)
        if gamma is not None:
            out = along_channels(gamma, x) * out
        if beta is not None:
            out = out + along_channels(beta, x)
        return write_elementwise_stage(ctx, self, x, out, formula, text("elementwise.bn_what"),
                                       text("elementwise.bn_explain", psheet=params.name))
