"""The one exception type users see: a problem with their input, told in one line (exit code 2)."""


class XlcnnError(Exception):
    """Bad input or an unsupported model: the message says what, where, and what to do."""


class Refusal(XlcnnError):
    """A layer or option xlcnn cannot reproduce exactly; raised before anything is written."""

    def __init__(self, layer, message):
        """layer: a LayerSpec (or anything with a name, and a kind or a class)."""
        name = getattr(layer, "name", str(layer))
        kind = getattr(layer, "kind", None) or (type(layer).__name__ if not isinstance(layer, str) else "")
        where = f"layer '{name}' ({kind})" if kind else f"layer '{name}'"
        super().__init__(f"{where}: {message}")
