"""Every ``adds ...`` command shown in the README parses with the real command line (options renamed or removed
fail here, not in a new user's shell)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from adds.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#\s", line, maxsplit=1)[0].strip()
            if line.startswith("adds ") or line.startswith("torchrun "):
                words = shlex.split(line)
                if words[0] == "torchrun":  # torchrun ... -m adds ARGS
                    words = words[words.index("adds"):]
                found.append(words[1:])
    return found


def test_the_readme_shows_commands():
    assert len(_commands()) >= 8


@pytest.mark.parametrize("words", _commands(), ids=lambda words: " ".join(words)[:60])
def test_readme_command_parses(words):
    build_parser().parse_args(words)
