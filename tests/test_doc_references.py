"""Every document the code points a reader at (docs/NAME.md, or an upper-case NAME.md at the top level) exists in the
repository."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"(?<![\w/.])(docs/[\w-]+\.md|[A-Z][A-Z_]*\.md)\b")


def test_documents_named_in_the_code_exist():
    missing = []
    for path in sorted([*(REPO / "colordiff").rglob("*.py"), *(REPO / "scripts").glob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            missing += [f"{path.relative_to(REPO)}:{number}: {name}" for name in REFERENCE.findall(line)
                        if not (REPO / name).is_file()]
    assert missing == []
