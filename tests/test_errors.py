"""Bad input: one clear error, exit code 2, no traceback, earlier results untouched."""
import os
import shutil
import subprocess

import pytest

from test_end_to_end import run

SIZES = ["--n-train", "48", "--n-val", "16", "--n-test", "16", "-e", "1", "-bs", "16", "-nt", "1", "-r", "0"]


@pytest.fixture
def out_with_result(tmp_path):
    """An output folder holding an earlier result file."""
    out = tmp_path / "out"
    f = out / "influence" / "Hara" / "influence_hara_0.csv"
    f.parent.mkdir(parents=True)
    f.write_text("earlier result\n")
    return str(out), f


def check_refused(r, out_with_result, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert out_with_result[1].read_text() == "earlier result\n"


@pytest.mark.parametrize("args,needle", [
    (["-ds", "foo"], "invalid choice: 'foo'"),
    (["-r", "-1"], "non-negative integer"),
    (["-r", "1.5"], "must be a non-negative integer, got 1.5"),
    (["-nt", "0"], "positive integer"),
    (["--lr", "0"], "positive number"),
    (["--lr", "-0.1"], "positive number"),
    (["-bs", "0"], "positive integer"),
])
def test_bad_options_are_refused_by_the_parser(args, needle, out_with_result, idx_dir):
    r = run(["-o", out_with_result[0]] + SIZES + args, idx_dir)
    check_refused(r, out_with_result, needle)


def test_batch_larger_than_training_set(out_with_result, idx_dir):
    r = run(["-o", out_with_result[0]] + SIZES + ["-bs", "64"], idx_dir)
    check_refused(r, out_with_result, "error: batch size 64 is larger than the training set (48)")


def test_more_training_instances_than_available(out_with_result, idx_dir):
    r = run(["-o", out_with_result[0], "--n-train", "999999", "-nt", "1"], idx_dir)
    check_refused(r, out_with_result, "error: --n-train=999999 is larger than the 80 instances available")


def test_output_folder_that_cannot_be_created(tmp_path, idx_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run(["-o", str(blocker / "out")] + SIZES, idx_dir)
    assert r.returncode == 2 and "error: cannot create output folder" in r.stderr
    assert "Traceback" not in r.stderr


def test_non_finite_loss_names_the_step_and_the_fix(tmp_path, idx_dir):
    r = run(["-o", str(tmp_path / "o")] + SIZES + ["--lr", "1e30"], idx_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "non-finite training loss at epoch 1, step" in r.stderr and "--lr" in r.stderr


def test_corrupt_data_file(tmp_path, idx_dir):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for f in os.listdir(os.path.join(idx_dir, "fashion-mnist")):
        data = open(os.path.join(idx_dir, "fashion-mnist", f), "rb").read()
        (d / f).write_bytes(data[:-100] if f.startswith("train-images") else data)
    r = run(["-o", str(tmp_path / "o")] + SIZES, str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "train-images-idx3-ubyte is truncated" in r.stderr


def test_disk_full_is_one_line_and_keeps_results(out_with_result, idx_dir, monkeypatch, capsys):
    import errno
    from sgd_influence.pipeline import experiment
    from sgd_influence.base import layout

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(layout, "write_text", full)
    rc = experiment.main(["-o", out_with_result[0], "-ds", "fashion_mnist", "--data-dir", idx_dir] + SIZES,
                         "test", "out", ("Random",))
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "re-run" in err
    assert out_with_result[1].read_text() == "earlier result\n"


@pytest.mark.parametrize("command", [["eval_sgd_influence.py"], ["eval_influence_functions.py"],
                                     ["validate_influence.py"], ["validate_influence.py", "hara71"],
                                     ["-m", "sgd_influence.analyze"]])
def test_every_command_prints_its_help(command):
    """--help of every command a user types: exit 0 and the usage (argparse formats each help
    string with %, so a bare '25%' in one once made all three scripts' --help a traceback)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable] + command + ["--help"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-500:]
    assert r.stdout.startswith("usage:") and "--help" in r.stdout


@pytest.mark.parametrize("target", ["demo", "demo-trials", "noise-trials", "lds", "lds-small", "lds-all",
                                    "lds-momentum", "cleanse-all", "campaign-fashion", "campaign-mnist",
                                    "demo-tabular", "lds-tabular"])
def test_make_targets_pass_options_the_commands_accept(target):
    """Every measuring make target's command line parses with its script's own parser (a typo in the
    Makefile would otherwise show only after the set-up); the whole-training targets pick their window."""
    if not shutil.which("make"):
        pytest.skip("no make")
    import shlex
    from sgd_influence.checks.validate import build_parser as validate_parser
    from sgd_influence.config.settings import build_parser as driver_parser
    r = subprocess.run(["make", "-n", target], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in r.stdout.splitlines() if ".py " in line]
    assert r.returncode == 0 and len(lines) == 1, r.stdout + r.stderr
    words = shlex.split(lines[0])
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    parser = validate_parser() if words[script] == "validate_influence.py" else driver_parser("", "", [])
    args = parser.parse_args(words[script + 1:])
    if target == "lds-all":
        assert args.lds and args.lds_window == "all" and "Replay_all" in args.methods and args.n_epochs == 3
    if target == "lds-momentum":
        assert args.lds and (args.momentum, args.weight_decay, args.lr_schedule) == (0.9, 5e-4, "cosine")
        assert args.n_train == 2000 and args.n_epochs == 10 and args.trials == 3 and args.lds_fraction == [0.05, 0.5]
    if target == "lds-small":  # the demo's settings (the trainings of make lds), the small fractions and 50%
        assert args.lds and args.lds_fraction == [0.01, 0.02, 0.05, 0.5] and args.lds_subsets == 50
        assert args.noise_replays == 2 and (args.n_train, args.n_epochs, args.lr) == (2000, 10, 0.02)
    if target == "cleanse-all":
        assert args.retrain_all and "Replay_all" in args.methods and args.n_epochs == 3
    if target.startswith("campaign"):  # the verdict's protocol: every test image, Random over three orders
        assert args.n_test is None and args.random_orders == 3 and args.n_trials >= 10
        assert args.dataset == {"campaign-fashion": "fashion_mnist", "campaign-mnist": "mnist5k"}[target]

    if target.endswith("-tabular"):
        assert args.dataset == "csv" and args.net == "mlp" and args.train_csv.endswith("breast_cancer/train.csv")
        assert (args.lds and args.trials >= 3) if target == "lds-tabular" else args.n_trials >= 3


@pytest.mark.parametrize("check, good, bad", [
    ("positive_int", {"1": 1, "12": 12}, ["0", "-3", "1.5", "x"]),
    ("nonneg_int", {"0": 0, "7": 7}, ["-1", "2.0", ""]),
    ("positive_float", {"1e-8": 1e-8, "3": 3.0}, ["0", "-1", "nan", "inf", "x"]),
    ("nonneg_float", {"0": 0.0, "5e-4": 5e-4}, ["-1e-9", "nan", "inf"]),
    ("fraction", {"0": 0.0, "0.9": 0.9}, ["1", "-0.1", "nan"]),
    ("open_fraction", {"0.05": 0.05, "0.5": 0.5}, ["0", "1", "nan"]),
])
def test_argument_types_accept_their_range_and_name_the_rule(check, good, bad):
    """base/argtypes: the one home of every option's number check; NaN and infinities never pass."""
    import argparse
    from sgd_influence.base import argtypes
    fn = getattr(argtypes, check)
    for text, value in good.items():
        assert fn(text) == value and type(fn(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^must be .*, got {text}$"):
            fn(text)
