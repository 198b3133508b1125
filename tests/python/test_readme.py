"""README.md's Python, run as a reader would run it, against a real busd."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs(busd):
    text = README.read_text()
    section = text[text.index("## Using the bus from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", code], env=busd.env, capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "b'tea' b'3.50'\n"
