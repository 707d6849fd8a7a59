"""Every install instruction installs this dbjobq, not the package index's namesake.

`pip install dbjobq` (with or without extras) fetches an unrelated project of the same
name. The README, the documentation and the error messages say `pip install -e .`
(in a checkout) or `pip install "dbjobq[...] @ git+<repository URL>"`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbjobq.errors import ConfigurationError
from dbjobq.periodic import _cron

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FILES = sorted(
    [ROOT / "README.md", *DOCS.rglob("*.md"), *DOCS.rglob("*.py"), *(ROOT / "dbjobq").rglob("*.py")]
)
# "pip install dbjobq", quoted or not, with or without extras, and what follows it.
INSTALL = re.compile(
    r"""pip install\s+["']?dbjobq\b(\[[^\]]*\])?["']?(?P<rest>[^\n]*(\n[^\n]*)?)"""
)


# The warning itself names the wrong command, on purpose.
ALLOWED = (" @ git+", "` installs an unrelated project")


def wrong_instructions(text: str) -> list[str]:
    return [
        m.group(0)
        for m in INSTALL.finditer(text)
        if not re.sub(r"\s+", " ", m["rest"]).startswith(ALLOWED)
    ]


def test_the_check_tells_right_from_wrong() -> None:
    assert wrong_instructions("run pip install dbjobq[postgres] now") != []
    assert wrong_instructions('pip install "dbjobq[mysql]"') != []
    assert wrong_instructions("pip install dbjobq") != []
    assert wrong_instructions('pip install "dbjobq[postgres] @ git+<repository URL>"') == []
    assert wrong_instructions('pip install -e ".[postgres]"') == []


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_no_instruction_installs_the_namesake(path: Path) -> None:
    assert wrong_instructions(path.read_text(encoding="utf-8")) == []


def test_the_readme_gives_both_ways_and_warns() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'python -m pip install -e ".[postgres]"' in readme
    assert 'python -m pip install "dbjobq[postgres] @ git+<repository URL>"' in readme
    assert "installs an unrelated project" in readme


def test_the_missing_cron_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "cronsim", None)
    with pytest.raises(ConfigurationError, match=r'pip install -e "\.\[cron\]" in a dbjobq'):
        _cron("0 3 * * *", __import__("datetime").datetime.now(), reverse=False)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = 'python -m pip install -e ".[test]" && python -m pytest'
    assert f"```console\n{command}\n```" in readme
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in lines
    assert 'python -m pytest -m "slow or heavy"' in lines
