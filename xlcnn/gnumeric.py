"""Recalculating workbooks with Gnumeric's ssconvert: a second real spreadsheet engine.

`ssconvert --recalc IN.xlsx OUT.xlsx` loads a workbook, recomputes every formula (without --recalc
it would keep the cached values, which would prove nothing) and writes the results back. It runs
headless without a display. It is given a throwaway HOME and in-memory settings, so it leaves
nothing behind. Gnumeric reports a formula it cannot parse on stderr ("Invalid expression") and
keeps the formula's text in the cell; such a workbook is refused here, naming the first cells.
Gnumeric ignores colour-scale conditional formats (it says so): they change no value.

Debian: apt-get install --no-install-recommends gnumeric (the package that provides ssconvert).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import XlcnnError

# stderr lines that say nothing about the values: formatting Gnumeric does not support
_HARMLESS = ("Ignoring unhandled conditional format",)


def ssconvert():
    return shutil.which("ssconvert")


def recalculate(paths, outdir, timeout=600):
    """Recalculate each workbook with Gnumeric; returns the recalculated copies in outdir (same
    file names). Raises XlcnnError when Gnumeric is missing, fails, or cannot parse a formula."""
    exe = ssconvert()
    if exe is None:
        raise XlcnnError("Gnumeric is not installed (apt-get install gnumeric provides ssconvert)")
    paths = [Path(p).resolve() for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    if any(p.parent == outdir for p in paths):
        raise ValueError("outdir must differ from the folder of the input workbooks")
    outs = []
    with tempfile.TemporaryDirectory(prefix="xlcnn-gnumeric-") as home:
        env = dict(os.environ, HOME=home, GSETTINGS_BACKEND="memory", NO_AT_BRIDGE="1")
        env.pop("DISPLAY", None)
        for path in paths:   # ssconvert converts one file per run (about 0.3 s to start)
            out = outdir / path.name
            out.unlink(missing_ok=True)
            cmd = [exe, "--recalc", "--export-type=Gnumeric_Excel:xlsx2", str(path), str(out)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                raise XlcnnError(f"Gnumeric did not finish recalculating {path.name} within {timeout} s") from None
            messages = [line for line in (proc.stderr + proc.stdout).splitlines()
                        if line.strip() and not any(h in line for h in _HARMLESS)]
            unparsed = [line for line in messages if "Invalid expression" in line]
            if unparsed:
                raise XlcnnError(f"Gnumeric could not parse {len(unparsed)} formula(s) of {path.name}, "
                                 f"first: {unparsed[0].strip()[:300]}")
            if proc.returncode != 0 or not out.exists():
                raise XlcnnError(f"Gnumeric did not write {out}: {' '.join(messages)[:300]}")
            outs.append(out)
    return outs
