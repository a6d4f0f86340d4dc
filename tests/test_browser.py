"""The leaderboard page in a real headless browser (Debian's chromium): every image loads and renders.

The page itself has no script; the test copies it, with a probe script appended, to a page next to it. The probe
writes, for every image, its source, whether it loaded and its natural size into the DOM that chromium dumps.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from synthetic import synthetic_runs
from unlearnbench.leaderboard import build_leaderboard

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<pre id="probe">pending</pre><script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images), done = 0, out = [];
  imgs.forEach(function (img, k) {  // a fresh load of each source: onerror fires for a corrupt or missing file
    var probe = new Image();
    probe.onload = probe.onerror = function (ev) {
      out[k] = {src: img.getAttribute("src"), ok: ev.type === "load", w: probe.naturalWidth, h: probe.naturalHeight};
      if (++done === imgs.length) document.getElementById("probe").textContent = "RESULT" + JSON.stringify(out) + "END";
    };
    probe.src = img.src;
  });
});
</script>"""


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def test_every_image_on_the_page_renders(tmp_path):
    if _browser() is None:  # .ci/run installs chromium, so under CI a missing browser is a failure, not a skip
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(
            "no headless browser installed (apt-get install chromium)")
    out = tmp_path / "out"
    result = build_leaderboard(synthetic_runs(tmp_path), out)
    page = (out / "index.html").read_text(encoding="utf-8")
    (out / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom", (out / "probe.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"RESULT(\[.*\])END", dom)
    assert found, dom[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    expected = sum(len(t["plots"]) + len(t["samples"]) for t in result["tasks"].values())
    assert len(images) == expected > 0
    broken = [i for i in images if not (i["ok"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, broken
