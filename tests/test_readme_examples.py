# Runs the python code blocks of README.md and docs/*.md, so every documented example stays runnable.
#
# Trade-off: the blocks of one document run in order in one namespace (a document reads top to bottom); a
# block fenced as anything other than ```python (e.g. ```sh, ```text) is not run.
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def _blocks(path):
    return _BLOCK.findall(path.read_text()) if path.is_file() else []


@pytest.mark.parametrize("document", [p for p in DOCUMENTS if p.is_file()], ids=lambda p: p.name)
def test_python_blocks_run(document, monkeypatch, tmp_path):
    blocks = _blocks(document)
    if not blocks:
        pytest.skip(f"{document.name} has no python blocks")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"readme_{document.stem}"}
    for index, block in enumerate(blocks):
        code = compile(block, f"{document.name}[python block {index}]", "exec")
        exec(code, namespace)
