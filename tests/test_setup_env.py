"""tools/setup_env.sh pieces, run through bash (fast, no network, nothing installed).

The whole set-up from nothing is checked on fresh machines by `make check-fresh`
(tools/check_fresh_machines.sh, root only, slow); these tests pin the parts that
decide where it goes.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "setup_env.sh")
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def run_bash(code, env=None, cwd=None):
    """Source setup_env.sh (functions only) and run `code`; return the CompletedProcess."""
    return subprocess.run([BASH, "-c", f'source "{SCRIPT}"\n{code}'], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def mirror(apt_dir):
    r = run_bash(f'debian_mirror "{apt_dir}"')
    return r.stdout.strip() if r.returncode == 0 else None


def test_mirror_from_classic_sources_list(tmp_path):
    # debootstrap writes one classic line and no sources.list.d (issue 14)
    write(tmp_path / "sources.list", "deb http://ftp.de.debian.org/debian bookworm main\n")
    assert mirror(tmp_path) == "http://ftp.de.debian.org/debian"


def test_mirror_from_classic_line_with_options(tmp_path):
    write(tmp_path / "sources.list",
          "# deb http://commented.example/debian bookworm main\n"
          "deb-src http://src.example/debian bookworm main\n"
          "deb http://security.debian.org/debian-security bookworm-security main\n"
          "deb [ arch=amd64 signed-by=/usr/share/keyrings/k.gpg ] http://mirror.example/debian/ bookworm main\n")
    assert mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_deb822_sources(tmp_path):
    # the debian:bookworm image: deb822 only, security stanza listed too
    write(tmp_path / "sources.list.d" / "debian.sources",
          "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
          "Components: main\n\n"
          "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
          "Enabled: no\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n\n"
          "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
          "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    write(tmp_path / "sources.list.d" / "nodesource.sources",
          "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n")
    assert mirror(tmp_path) == "http://deb.debian.org/debian"


def test_no_mirror_is_status_1_not_a_crash(tmp_path):
    write(tmp_path / "sources.list", "deb http://archive.ubuntu.com/ubuntu jammy main\n")
    assert mirror(tmp_path) is None
    assert mirror(tmp_path / "missing") is None


def link_python(path):
    """`path` -> this test run's interpreter (a CPython 3.8-3.10: the .venv's)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(sys.executable, path)


def tool_path(tmp_path, *tools):
    """A PATH holding only the named system tools (so no python3.X of this machine is seen)."""
    d = tmp_path / "tools"
    d.mkdir()
    for t in tools:
        os.symlink(shutil.which(t), d / t)
    return str(d)


def test_python3_10_on_path_is_found_first(tmp_path):
    # Ubuntu 22.04: python3.10 on PATH; it is used as it is (nothing from apt)
    link_python(str(tmp_path / "bin" / "python3.10"))
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{tool_path(tmp_path, 'sort')}",
               PYENV_ROOT=str(tmp_path / "no-pyenv"))
    r = run_bash("find_python", env=env)
    assert (r.returncode, r.stdout.strip()) == (0, str(tmp_path / "bin" / "python3.10"))


def test_failing_pyenv_shim_is_skipped_for_pyenv_versions(tmp_path):
    # pyenv with global "system": the python3.10 shim exits 127; versions/3.10.x is used
    shims = tmp_path / "shims"
    write(shims / "python3.10", "#!/bin/sh\necho 'pyenv: python3.10: command not found' >&2\nexit 127\n")
    os.chmod(shims / "python3.10", 0o755)
    py = tmp_path / "pyenv" / "versions" / "3.10.13" / "bin" / "python3.10"
    link_python(str(py))
    env = dict(os.environ, PATH=f"{shims}:{tool_path(tmp_path, 'sort')}", PYENV_ROOT=str(tmp_path / "pyenv"))
    r = run_bash("find_python", env=env)
    assert (r.returncode, r.stdout.strip()) == (0, str(py))


def run_main(tmp_path, code):
    """main() on an empty copy of the project (requirements only), after `code` (stubs)."""
    for f in ("requirements.txt", "requirements-test.txt"):
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    return run_bash(f'ROOT="{tmp_path}"; VENV="$ROOT/.venv"; STAMP="$VENV/.requirements.sha256"\n'
                    f"{code}\nmain", env=dict(os.environ, PATH=os.environ["PATH"]))


def test_no_python_and_not_root_says_what_to_do_in_one_line(tmp_path):
    r = run_main(tmp_path, "unset PYTHON; find_python() { return 1; }; id() { echo 1000; }")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "setup_env: error: no Python 3.8-3.10 found and not root to install one with apt; "
        "set PYTHON=/path/to/python3.X (e.g. from pyenv or python.org), or rerun as root"]
    assert not (tmp_path / ".venv").exists()


def test_bad_python_variable_says_so_in_one_line(tmp_path):
    r = run_main(tmp_path, "export PYTHON=/bin/false")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "setup_env: error: PYTHON=/bin/false is not a working CPython 3.8-3.10 (nnabla 1.39.0 needs one); "
        "point PYTHON at one or unset it"]


def test_unexpected_failure_is_not_silent(tmp_path):
    # any command that ends the script without its own message is named by the ERR trap
    r = run_main(tmp_path, "unset PYTHON; find_python() { echo /bin/true; }; "
                           "make_venv() { false; }")
    assert r.returncode != 0
    assert r.stderr.splitlines()[-1].startswith('setup_env: error: "false" failed (line ')


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CHECK_FRESH") != "1" or os.geteuid() != 0
                    or shutil.which("debootstrap") is None,
                    reason="opt-in (CHECK_FRESH=1; about 45 minutes): builds machines with "
                           "debootstrap + chroot, needs root and debootstrap; or run make check-fresh")
def test_make_test_passes_on_fresh_machines():
    # About 10 minutes per machine on 2 cores, network to the apt mirrors and PyPI; the same as
    # `make check-fresh`. Checks the committed HEAD (a clone), not uncommitted changes.
    r = subprocess.run([BASH, os.path.join(ROOT, "tools", "check_fresh_machines.sh")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
