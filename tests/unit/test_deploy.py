"""The shipped systemd unit is one systemd accepts (``systemd-analyze verify``).

The unit names the installed command, ``/opt/staybook/bin/staybook``; here it is
checked with this checkout's, which exists, so only the unit itself is judged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "deploy" / "staybook.service"
INSTALLED = "/opt/staybook/bin/staybook"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    here = Path(sys.executable).parent / "staybook"
    assert here.exists()
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} serve --no-local-broker" in text
    unit = tmp_path / "staybook.service"
    unit.write_text(text.replace(INSTALLED, str(here)))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    # Unknown keys and bad values are warnings with status 0: any output is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
