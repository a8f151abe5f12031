"""What every test of a report checks: the report exists, every page and file it links
exists, and every figure it shows is a legible PNG -- a real picture (not a blank or
single-colour canvas), at 150 dpi or more, big enough to read."""
import re

import numpy as np


def check_png(path):
    """A PNG of reasonable size, written at >= 150 dpi, with real content."""
    from PIL import Image

    assert path.exists(), path
    assert path.stat().st_size > 2000, f"{path}: {path.stat().st_size} bytes"
    with Image.open(path) as im:
        assert im.format == "PNG", path
        dpi = im.info.get("dpi", (0, 0))
        assert min(dpi) >= 149, f"{path}: {dpi} dpi"
        assert min(im.size) >= 150, f"{path}: {im.size} pixels"
        a = np.asarray(im.convert("L"), dtype=float)
    assert a.std() > 5, f"{path}: a single colour (std {a.std():.2f})"
    assert np.unique(a).size >= 8, f"{path}: only {np.unique(a).size} grey levels"


def check_report(folder, min_figures=1):
    """-> the report's text, after checking every link and figure in it."""
    text = (folder / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= min_figures, images
    for rel in images:
        check_png(folder / rel)
    for rel in re.findall(r"\]\(([^)]+\.(?:md|csv|json))\)", text):
        assert (folder / rel).exists(), rel
    assert not re.search(r"\|\s*(nan|inf)\s*\|", text.lower())
    return text
