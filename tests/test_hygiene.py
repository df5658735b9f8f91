"""Project-wide guards."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_sources():
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("data", "__pycache__")
                   and not x.startswith("output")]
        for f in files:
            if f.endswith(".py") and f != os.path.basename(__file__):
                yield os.path.join(d, f)


def test_nothing_is_unpickled():
    pattern = re.compile(r"\bpickle\b|allow_pickle\s*=\s*True|\bdill\b|torch\.load")
    offenders = [p for p in project_sources() if pattern.search(open(p).read())]
    assert offenders == []
    assert len(list(project_sources())) > 10  # the walk really saw the project


# Build artefacts and archives that never belong in the repository, and binary content by its bytes.
ARTEFACT = re.compile(r"\.(whl|egg|tar|tgz|gz|bz2|xz|zip|7z|rar|so|dylib|dll|pyd|pyc|o|a|exe|jar|deb|rpm|"
                      r"h5|npz|npy|nnp|pkl|pickle)$", re.I)
DATA_FOLDERS = ("docs/",)  # figures of the measurement reports, on purpose
# Test fixtures that are data, not builds: the published code's oracle (tests/test_published.py) needs a tiny
# training's checkpoint, per-step store and step record as this project writes them. Only these kinds, small.
FIXTURES, FIXTURE_KINDS, FIXTURE_BYTES = "tests/data/", re.compile(r"\.(h5|npz|f32|csv|json)$"), 300_000


def tracked_files():
    import subprocess
    r = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True)
    if r.returncode != 0:
        import pytest
        pytest.skip("not a git checkout")
    return [f for f in r.stdout.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


def is_binary(path: str) -> bool:
    with open(os.path.join(ROOT, path), "rb") as f:
        return b"\0" in f.read(8192)


def test_no_build_artefact_or_binary_is_tracked_outside_the_data_folders():
    files = tracked_files()
    assert "Makefile" in files and len(files) > 50  # the listing really is this repository's
    strays = [f for f in files if not f.startswith(DATA_FOLDERS + (FIXTURES,)) and (ARTEFACT.search(f) or is_binary(f))]
    assert strays == [], f"binary or build artefacts tracked outside {DATA_FOLDERS}: {strays}"
    fixtures = [f for f in files if f.startswith(FIXTURES)]
    assert [f for f in fixtures if not FIXTURE_KINDS.search(f)] == [], "only data files under tests/data/"
    assert sum(os.path.getsize(os.path.join(ROOT, f)) for f in fixtures) <= FIXTURE_BYTES
    in_docs = [f for f in files if f.startswith(DATA_FOLDERS) and ARTEFACT.search(f)]
    assert in_docs == [], f"archives or build artefacts under docs/: {in_docs}"
