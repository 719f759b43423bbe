"""The TensorBoard first page in a real browser (scripts/tensorboard_screenshot.py): a tiny run trained for a
few steps, TensorBoard on 127.0.0.1 names the run after run_dir and serves the custom-scalars layout the
trainer wrote, and headless Chromium draws every chart with the series TensorBoard's API says it matches.
Skipped when Chromium is not installed (scripts/setup.sh installs the Debian package `chromium`)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.helpers.multirank import REPO


def _script():
    """scripts/ is not a package: load the script as a module for its find_chromium."""
    spec = importlib.util.spec_from_file_location("tensorboard_screenshot", REPO / "scripts/tensorboard_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


find_chromium = _script().find_chromium


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium; "
                                                    "scripts/setup.sh installs it)")
def test_custom_scalars_page_renders_every_chart_in_chromium(tmp_path):
    from PIL import Image

    out = tmp_path / "tensorboard.png"
    proc = subprocess.run([sys.executable, "scripts/tensorboard_screenshot.py", "--out", str(out), "--steps", "8"],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every custom-scalars chart drawn in Chromium" in proc.stdout
    width, height = Image.open(out).size
    assert width == 1600 and height > 2000            # the whole layout, all sections
