"""The README's quick start runs as written and matches the documentation's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start() -> str:
    section = README.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the quick start"
    return match.group(1)


def test_quick_start_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quick_start())
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "completed 1 {'sent': True, 'to': 'a@example.com'}"


def test_quick_start_is_the_documentations() -> None:
    assert quick_start() == (ROOT / "docs" / "examples" / "quickstart.py").read_text()


def test_readme_links_point_at_existing_pages() -> None:
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / target).exists(), target
