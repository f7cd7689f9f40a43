"""Activation, Flatten, Dense, and the layers that are the identity at inference (Dropout & co.)."""

from __future__ import annotations

from ..layout import FIRST_COL, FIRST_ROW, Tensor, rng, text
from . import functions as act
from .base import (LayerWriter, activation_option, handles, ok, one_of, sumproduct, write_1d_activation,
                   write_weight_matrix)


@handles("Flatten")
class FlattenWriter(LayerWriter):
    options = {"data_format": one_of("channels_last", "channels_first")}

    def describe(self):
        return text("describe.flatten", data_format=self.config["data_format"])

    def order(self, x):
        """Keras's Flatten: with data_format='channels_first' the first axis is moved last first."""
        refs, vals, origin = x.ref_array(), x.values, x.origin_array()
        if self.config["data_format"] == "channels_first" and x.rank > 1:
            perm = list(range(1, x.rank)) + [0]
            refs, vals = refs.transpose(perm), vals.transpose(perm)
            origin = origin.transpose(perm + [x.rank]) if origin is not None else None
        return (refs.reshape(-1), vals.reshape(-1),
                (origin.reshape(-1, origin.shape[-1]) if origin is not None else None))

    def order_text(self, x):
        """One sentence: which index varies fastest in the flat order, and why (the tensor's layout
        and Flatten's own data_format)."""
        names = text("stage.flatten_axis_names")
        axes = (["row", "col", "ch"] if x.rank == 3 else ["t", "ch"]) if x.channel_axis == x.rank - 1 else \
            (["ch", "row", "col"] if x.rank == 3 else ["ch", "t"])
        shape = list(x.values.shape)
        moved = ""
        if self.config["data_format"] == "channels_first":
            axes, shape = axes[1:] + axes[:1], shape[1:] + shape[:1]
            moved = text("stage.flatten_moved", shape="(" + ", ".join(map(str, shape)) + ")")
        fast = [names[a] for a in reversed(axes)]
        sequence = (text("stage.flatten_sequence_3", a=fast[0], b=fast[1], c=fast[2]) if len(fast) == 3 else
                    text("stage.flatten_sequence_2", a=fast[0], b=fast[1]))
        layout = "channels_last" if x.channel_axis == x.rank - 1 else "channels_first"
        return text("stage.flatten_order", sequence=sequence, layout=layout, moved=moved,
                    shape="(" + ", ".join(map(str, x.values.shape)) + ")")

    def write(self, ctx, x):
        refs, values, origin = self.order(x)
        name = ctx.sheet_name(self.name)
        book = ctx.book
        fmt = self.config["data_format"]
        order = self.order_text(x) if x.rank > 1 else ""
        sheet = book.add_sheet(name, text("stage.flatten", step=ctx.step, name=self.name, n=len(values),
                                          data_format=fmt),
                               text("stage.flatten_explain", order=order))
        sheet.label(FIRST_ROW - 1, FIRST_COL, text("stage.flatten_value"), book.fmt_header)
        sheet.label(FIRST_ROW - 1, FIRST_COL + 1, text("stage.flatten_from"), book.fmt_header)
        for i, (r, v) in enumerate(zip(refs, values)):
            sheet.formula(FIRST_ROW + i, FIRST_COL, r, v)
            sheet.ws.write_number(FIRST_ROW + i, 0, i, book.fmt_axis)
            if origin is not None:
                sheet.label(FIRST_ROW + i, FIRST_COL + 1, x.origin_text(origin[i]))
        sheet.ws.set_column(FIRST_COL + 1, FIRST_COL + 1, 22)
        return Tensor(self.name, values, None, [(name, FIRST_ROW, FIRST_COL)])


@handles("Dense")
class DenseWriter(LayerWriter):
    options = {
        "units": ok, "activation": activation_option, "use_bias": ok,
        "lora_rank": lambda v, c: None if not v else f"lora_rank={v} is not supported",
        "lora_alpha": ok,
        "quantization_config": lambda v, c: None if v is None else "quantized Dense layers are not supported",
    }

    def describe(self):
        fn = act.activation_name(self.config["activation"])
        return text("describe.dense", units=self.config["units"],
                    then=text("describe.then", fn=fn) if fn != "linear" else "")

    def write(self, ctx, x):
        if x.rank != 1:
            self.refuse(f"Dense on a {x.rank}-D input (shape {x.values.shape}) is not supported; "
                        "add a Flatten layer before it")
        weights = self.weights()
        kernel = weights[0]
        bias = weights[1] if self.config["use_bias"] else None
        n_in, units = kernel.shape
        book = ctx.book
        wname = write_weight_matrix(ctx, self.name, " w", kernel, bias,
                                    text("weights.dense_title", name=self.name, n_in=n_in, units=units),
                                    lambda j: text("weights.unit_label", j=j))

        z = x.values @ kernel + (bias if bias is not None else 0.0)
        fn = act.activation_name(self.config["activation"])
        name = ctx.sheet_name(self.name)
        sheet = book.add_sheet(name, text("stage.dense", step=ctx.step, name=self.name, units=units, fn=fn),
                               text("stage.dense_explain", n_in=n_in, wsheet=wname))
        sheet.label(FIRST_ROW - 1, FIRST_COL, "z", book.fmt_header)
        xs = x.column(absolute=True)
        for j in range(units):
            col = FIRST_COL + j
            wcol = rng(wname, FIRST_ROW + 1, col, FIRST_ROW + n_in, col, abs_row=True, abs_col=False)
            formula = sumproduct(xs, wcol)
            if bias is not None:
                formula += "+" + rng(wname, FIRST_ROW, col, FIRST_ROW, col, abs_row=True, abs_col=False)
            sheet.formula(FIRST_ROW + j, FIRST_COL, formula, z[j])
            sheet.ws.write_number(FIRST_ROW + j, 0, j, book.fmt_axis)
        if fn == "linear":
            return Tensor(self.name, z, None, [(name, FIRST_ROW, FIRST_COL)])
        values, col = write_1d_activation(sheet, FIRST_COL + 1, FIRST_ROW, z, fn, FIRST_COL, name)
        return Tensor(self.name, values, None, [(name, FIRST_ROW, col)])


@handles("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
         "ActivityRegularization")
class PassThroughWriter(LayerWriter):
    """Identity at inference: no sheet of its own; the manifest points at its input's cells."""
    passthrough = True
    reuses_input_cells = True
    options = {"rate": ok, "noise_shape": ok, "stddev": ok, "l1": ok, "l2": ok,
               "data_format": one_of("channels_last", "channels_first")}

    def describe(self):
        return text("passthrough.identity")

    def write(self, ctx, x):
        return Tensor(self.name, x.values, x.channel_axis, x.places, x.border)
