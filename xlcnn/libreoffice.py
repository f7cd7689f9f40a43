"""Recalculating workbooks with LibreOffice headless: the check by a real spreadsheet program.

LibreOffice keeps the cached values of an .xlsx by default (OOXMLRecalcMode = 1, "never
recalculate"), which would prove nothing. A throwaway profile sets OOXMLRecalcMode = 0 so every
formula is computed afresh on load; converting xlsx -> xlsx then writes the new values out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import XlcnnError

_XCU = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load">
 <prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Formula/Load">
 <prop oor:name="ODFRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""


def soffice():
    for name in ("soffice", "libreoffice"):
        found = shutil.which(name)
        if found:
            return found
    return None


def recalculate(paths, outdir, timeout=600):
    """Hard-recalculate each workbook with LibreOffice; returns the recalculated copies in outdir.

    Several files go through one LibreOffice start (about 1.5 s saved per file)."""
    if not paths:           # soffice given no file waits for one until the timeout
        return []
    exe = soffice()
    if exe is None:
        raise XlcnnError("LibreOffice is not installed (apt-get install libreoffice-calc-nogui); "
                         "use --engine numpy instead")
    paths = [Path(p).resolve() for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    if any(p.parent == outdir for p in paths):
        raise ValueError("outdir must differ from the folder of the input workbooks")
    with tempfile.TemporaryDirectory(prefix="xlcnn-lo-") as profile:
        user = Path(profile) / "user"
        user.mkdir()
        (user / "registrymodifications.xcu").write_text(_XCU)
        cmd = [exe, f"-env:UserInstallation={Path(profile).as_uri()}", "--headless", "--norestore",
               "--nologo", "--convert-to", "xlsx:Calc MS Excel 2007 XML", "--outdir", str(outdir),
               *map(str, paths)]
        env = dict(os.environ, SAL_USE_VCLPLUGIN="svp")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise XlcnnError(f"LibreOffice did not finish recalculating within {timeout} s") from None
    outs = [outdir / p.name for p in paths]
    missing = [str(o) for o in outs if not o.exists()]
    if missing:
        raise XlcnnError(f"LibreOffice did not write {', '.join(missing)}: "
                         f"{(proc.stderr or proc.stdout).strip()[:300]}")
    return outs
