"""The result files copied into docs/ name no path of the machine that made them (run.json's command and
settings, inputs.json, hara71's data path): paths there are relative to the output folder the file came from."""
from __future__ import annotations

import json
import os
import re

from conftest import ROOT

ABSOLUTE = re.compile(r"(?:^|[\s=])/(?:[\w.+-]+/)+[\w.+-]*")  # /a/b or /a/b/c.ext, alone or after = or a blank


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_the_pattern_finds_absolute_paths():
    assert ABSOLUTE.search("/work/runs/x") and ABSOLUTE.search("a.py -o /tmp/out -e 1")
    assert ABSOLUTE.search("--data-dir=/home/u/data")
    assert not ABSOLUTE.search("../data/mnist5k/mnist_5k.csv.gz") and not ABSOLUTE.search("lr 0.02 / batch 16")
    assert not ABSOLUTE.search("see https://github.com/sony/nnabla-examples")


def test_docs_result_files_name_no_machine_path():
    found = []
    for folder, _, names in os.walk(os.path.join(ROOT, "docs")):
        for name in names:
            if name.endswith(".json"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    found += [f"{os.path.relpath(path, ROOT)}: {s[:80]}" for s in strings(json.load(f))
                              if ABSOLUTE.search(s)]
    assert not found, "\n".join(found)
