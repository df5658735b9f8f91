"""The oracle of Hara_published and Ours_published: the published code itself, run on a tiny training.

Usage:
  python tools/published_oracle.py --published DIR -o WORK [--write-test-data tests/data/published_oracle]

DIR is the published `responsible_ai/data_cleansing` folder of sony/nnabla-examples, fetched
outside this repository (it is never committed), e.g.
  git clone --depth 1 https://github.com/sony/nnabla-examples WORK/nnabla-examples
  ... --published WORK/nnabla-examples/responsible_ai/data_cleansing

1. Trains a tiny run of this project in WORK/train/seed_<seed> (Fashion-MNIST, --n-train images,
   the six-conv layout at --widths, with augmentation, Hara's per-step store kept).
2. Converts it into the published layout in WORK/published_layout: the training and validation
   CSVs with PNGs (each training image as the last epoch saw it, after this project's augmentation
   of its recorded seed), `weights/info.npy` (the published step list: per step its epoch, step,
   positions `idx` into the published seeded permutation of the CSV rows, lr and seeds), the final
   parameters `weights/epoch<K-1>/weights/final_model.h5` and the real theta[t] of every step of
   the last epoch (`theta/step<i>.h5`), all under the published parameter names.
3. Runs tools/published_runner.py with this project's interpreter: the published `save_all_params`
   writes its per-step cache from those theta[t] (with its bundle quirk, --bundle-size), and the
   published `infl_sgd` writes influence_hara.csv and influence_ours.csv.
4. Computes Hara_published and Ours_published here on the same run and compares: the same
   ascending order, and the largest difference relative to the largest |score|.
5. With --write-test-data: the inputs the methods need (images and labels, the run folder's step
   record, final checkpoint and per-step store) and the published outputs, for tests/test_published.py.

Exit status 0 when both methods reproduce the published output (--rtol), else 1; errors: 2.
The tool executes the published code found in DIR, and that code loads the `info.npy` this tool
wrote (its format is a serialised object array): give it a checkout you trust. Nothing of this
project reads that file.
"""
import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nnabla as nn  # noqa: E402
from nnabla.utils.image_utils import imsave  # noqa: E402

from datasets import Data, Split, load_dataset  # noqa: E402
from datasets.pipeline import PAD, augment  # noqa: E402
from models import cnn  # noqa: E402
from sgd_influence.base import layout  # noqa: E402
from sgd_influence.base.errors import UserError, run_command  # noqa: E402
from sgd_influence.base.argtypes import positive_int  # noqa: E402
from sgd_influence.config.settings import set_context  # noqa: E402
from sgd_influence.core.infl import retrace  # noqa: E402
from sgd_influence.core.params import StepParamsReader, load_checkpoint  # noqa: E402
from sgd_influence.core.step_record import StepRecord  # noqa: E402
from sgd_influence.core.train import init_model, train  # noqa: E402

PUBLISHED_FILES = ("sgd_influence/infl.py", "sgd_influence/train.py", "sgd_influence/model.py",
                   "sgd_influence/dataset.py", "sgd_influence/utils.py")
RUNNER = os.path.join(ROOT, "tools", "published_runner.py")
VAL_BATCH_SIZE = 64  # the published get_config's batch_size: the chunks of its validation gradient
METHODS = {"Hara_published": "hara", "Ours_published": "ours"}  # method -> published influence_<stem>.csv


def published_name(name: str) -> str:
    """This project's parameter name -> the published cifarnet's: the batch norm sits in the
    block's conv1 scope there, and the affine layer has no `fc` scope."""
    parts = name.split("/")
    if len(parts) == 4 and parts[1] == "bn1":
        return "/".join([parts[0], "conv1"] + parts[2:])
    if parts[0] == "fc":
        return "/".join(parts[1:])
    return name


def save_published(path: str) -> None:
    """The model's current parameters (every one, in creation order) under the published names."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    params = nn.get_parameters(grad_only=False)
    nn.save_parameters(path, params={published_name(k): v for k, v in params.items()}, extension=".h5")


def last_epoch_views(data: Data, record: StepRecord) -> np.ndarray:
    """Every training image as the last epoch saw it (uint8, this project's augmentation of its seed)."""
    padded = np.pad(data.train.x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    views = np.empty_like(data.train.x)
    seen = np.zeros(len(data.train), bool)
    for t in record.steps_of_epoch(record.n_epochs - 1):
        idx, seeds = record.batch(t)
        views[idx] = augment(padded, idx, seeds, data.image_shape[1:])
        seen[idx] = True
    assert seen.all(), "every instance appears once in an epoch"
    return views


def write_csv(folder: str, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    """A Neural Network Console dataset CSV (x:image,y:label) with one PNG per image, paths relative."""
    os.makedirs(os.path.join(folder, "images", name), exist_ok=True)
    rows = ["x:image,y:label"]
    for i, (img, y) in enumerate(zip(images, labels)):
        rel = f"images/{name}/{i:04d}.png"
        imsave(os.path.join(folder, rel), img, channel_first=True)
        rows.append(f"{rel},{int(y)}")
    layout.write_text(os.path.join(folder, f"{name}.csv"), "\n".join(rows) + "\n")


def convert(data: Data, run_dir: str, net, widths, seed: int, bundle_size: int, folder: str) -> None:
    """This project's run folder -> the published layout (module docstring, step 2)."""
    record = StepRecord.load(layout.step_record_path(run_dir))
    n_epochs, n = record.n_epochs, len(data.train)
    steps = [record.steps_of_epoch(e) for e in range(n_epochs)]
    if len({len(s) for s in steps}) != 1 or any(len(record.batch(t)[0]) != len(record.batch(0)[0])
                                                  for s in steps for t in s):
        raise UserError("the conversion needs equal batches (--n-train a multiple of --batch-size)")
    if len(np.unique(data.train.y)) != data.n_classes:
        raise UserError(f"the published code counts the classes of the training CSV: all {data.n_classes} must "
                        f"appear among the {n} training images; raise --n-train")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    write_csv(folder, "train", last_epoch_views(data, record), data.train.y)
    write_csv(folder, "val", data.val.x, data.val.y)
    # The published code reads instance idx_train[i] for position i of a batch, idx_train the permutation
    # of the CSV rows seeded by the trial (utils.get_indices): position = its inverse at our index.
    inverse = np.argsort(np.random.RandomState(seed).permutation(n))
    info = np.empty((n_epochs, len(steps[0])), dtype=object)
    for e in range(n_epochs):
        for j, t in enumerate(steps[e]):
            idx, seeds = record.batch(t)
            info[e, j] = {"epoch": e, "step": j, "idx": inverse[idx].astype(np.int64), "lr": float(record.lr[t]),
                          "seeds": [int(s) for s in seeds]}
    weights = os.path.join(folder, "weights")
    os.makedirs(weights, exist_ok=True)
    # The published format: an object array of dicts (np.save serialises it; only the published code reads it).
    np.save(os.path.join(weights, "info.npy"), info)
    init_model(data, 0, len(record.batch(0)[0]), net)
    load_checkpoint(layout.checkpoint_path(run_dir, n_epochs))
    save_published(os.path.join(weights, f"epoch{n_epochs - 1:02d}", "weights", "final_model.h5"))
    store = StepParamsReader(layout.step_params_path(run_dir, n_epochs - 1))
    for i in range(len(store)):
        store.load(i)
        save_published(os.path.join(folder, "theta", f"step{i:04d}.h5"))
    layout.write_json(os.path.join(folder, "conversion.json"), {
        "n_epochs": n_epochs, "steps_per_epoch": len(steps[0]), "seed": seed, "lr": float(record.lr[0]),
        "widths": list(widths), "bundle_size": bundle_size, "val_batch_size": VAL_BATCH_SIZE,
        "model_filename": "final_model.h5"})


def read_published(path: str, n: int) -> tuple:
    """(scores by training index, the CSV's order of training indices) of a published influence CSV."""
    scores, order = np.full(n, np.nan), []
    with open(path) as f:
        header = f.readline().strip().split(",")
        if header != ["x:image", "y:label", "influence", "datasource_index"]:
            raise UserError(f"{path}: unexpected header {header}")
        for line in f:
            *_, value, index = line.strip().rsplit(",", 2)
            scores[int(index)] = float(value)
            order.append(int(index))
    if np.isnan(scores).any() or len(order) != n:
        raise UserError(f"{path} does not score every one of the {n} training instances once")
    return scores, np.array(order)


def compare(ours: np.ndarray, published: np.ndarray, published_order: np.ndarray) -> dict:
    """Agreement of a method's scores with the published ones (same training indices)."""
    scale = float(np.abs(published).max())
    ours_order = np.argsort(ours, kind="stable")
    return {"max_abs_difference": float(np.abs(ours - published).max()), "max_abs_score": scale,
            "max_relative_difference": float(np.abs(ours - published).max() / scale),
            "same_order": bool(np.array_equal(ours_order, published_order)),
            "min_gap_between_neighbours": float(np.diff(np.sort(published)).min())}


def method_scores(data: Data, run_dir: str, batch_size: int, net, bundle_size: int) -> dict:
    return {m: retrace(data, run_dir, "Hara" if m.startswith("Hara") else "Ours", batch_size, progress=False,
                       net=net, as_published=True, bundle_size=bundle_size) for m in METHODS}


def file_digests(published: str) -> dict:
    out = {}
    for rel in PUBLISHED_FILES:
        with open(os.path.join(published, rel), "rb") as f:
            out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def write_test_data(dest: str, data: Data, run_dir: str, published_layout: str, report: dict) -> None:
    """The inputs of the two methods and the published outputs (tests/test_published.py reads them)."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(os.path.join(dest, "run"))
    np.savez_compressed(os.path.join(dest, "data.npz"), train_x=data.train.x, train_y=data.train.y,
                        train_ids=data.train.ids.astype(str), val_x=data.val.x, val_y=data.val.y,
                        val_ids=data.val.ids.astype(str), mean=data.mean, std=data.std,
                        n_classes=np.int64(data.n_classes))
    record = StepRecord.load(layout.step_record_path(run_dir))
    last = record.n_epochs - 1
    # The run folder, less what these methods do not read (params_epoch_0 and _<K-1>, logs).
    for path in (layout.step_record_path(run_dir), layout.checkpoint_path(run_dir, record.n_epochs),
                 layout.step_params_path(run_dir, last), layout.step_params_path(run_dir, last) + ".layout.json"):
        shutil.copy(path, os.path.join(dest, "run", os.path.basename(path)))
    for stem in METHODS.values():
        shutil.copy(os.path.join(published_layout, f"influence_{stem}.csv"), os.path.join(dest, f"influence_{stem}.csv"))
    layout.write_json(os.path.join(dest, "oracle.json"), report)


def main(argv) -> int:
    p = argparse.ArgumentParser(description="Run the published influence computation on a tiny training of this "
                                            "project and compare Hara_published and Ours_published with it.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--published", required=True,
                   help="the published responsible_ai/data_cleansing folder (sony/nnabla-examples), outside the repo")
    p.add_argument("--published-commit", default=None, help="its commit, recorded in oracle.json")
    p.add_argument("-o", "--output_dir", required=True, help="work folder (the training, the converted layout)")
    p.add_argument("--n-train", type=positive_int, default=48, help="all 10 classes must appear")
    p.add_argument("--n-val", type=positive_int, default=24)
    p.add_argument("-e", "--n_epochs", type=positive_int, default=2)
    p.add_argument("-bs", "--batch-size", type=positive_int, default=8)
    p.add_argument("--lr", type=float, default=0.05, help="the published default")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[4, 8, 8],
                   help="the six-conv network's widths (published: 32 64 128; small keeps the test data small)")
    p.add_argument("--bundle-size", type=positive_int, default=4,
                   help="save_all_params' bundle (published: 200; below the epoch's steps, so that the test "
                        "data has a full bundle and a short last one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="largest difference allowed, relative to the largest |score|")
    p.add_argument("--write-test-data", default=None, metavar="DIR", help="write the test data there")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    def body() -> int:
        published = os.path.abspath(args.published)
        missing = [f for f in PUBLISHED_FILES if not os.path.isfile(os.path.join(published, f))]
        if missing:
            raise UserError(f"{published} lacks {', '.join(missing)}; give the published "
                            f"responsible_ai/data_cleansing folder (module docstring says how to fetch it)")
        set_context("cpu")
        out = os.path.abspath(args.output_dir)
        widths = tuple(args.widths)
        net = functools.partial(cnn, widths=widths)
        data = load_dataset("fashion_mnist", args.seed, args.data_dir, args.n_train, args.n_val, 1)
        run_dir = layout.train_dir(out, args.seed)
        shutil.rmtree(run_dir, ignore_errors=True)  # a few seconds: always this command's training
        train(data, run_dir, args.seed, args.n_epochs, args.batch_size, args.lr, keep_step_params=True,
              progress=False, net=net, augment=True)
        folder = os.path.join(out, "published_layout")
        convert(data, run_dir, net, widths, args.seed, args.bundle_size, folder)
        t0 = time.time()
        subprocess.run([sys.executable, RUNNER, "--published", published, "--layout", folder], check=True)
        published_seconds = time.time() - t0
        t0 = time.time()
        scores = method_scores(data, run_dir, args.batch_size, net, args.bundle_size)
        ours_seconds = time.time() - t0
        results = {}
        for m, stem in METHODS.items():
            pub, order = read_published(os.path.join(folder, f"influence_{stem}.csv"), len(data.train))
            results[m] = compare(scores[m], pub, order)
            print(f"{m}: largest difference {results[m]['max_abs_difference']:.3e} "
                  f"({results[m]['max_relative_difference']:.2e} of the largest |score| "
                  f"{results[m]['max_abs_score']:.3e}), same order: {results[m]['same_order']}")
        ok = all(r["same_order"] and r["max_relative_difference"] <= args.rtol for r in results.values())
        report = {"command": "python tools/published_oracle.py " + " ".join(argv),
                  "settings": {"dataset": "fashion_mnist", "n_train": args.n_train, "n_val": args.n_val,
                               "n_epochs": args.n_epochs, "batch_size": args.batch_size, "lr": args.lr,
                               "widths": list(widths), "bundle_size": args.bundle_size, "seed": args.seed,
                               "augment": True},
                  "published_commit": args.published_commit, "published_sha256": file_digests(published),
                  "nnabla": nn.__version__, "numpy": np.__version__, "results": results, "rtol": args.rtol,
                  "seconds": {"published": round(published_seconds, 1), "this_project": round(ours_seconds, 1)}}
        layout.write_json(os.path.join(out, "oracle.json"), report)
        if args.write_test_data:
            write_test_data(os.path.abspath(args.write_test_data), data, run_dir, folder, report)
            print(f"wrote {args.write_test_data}")
        print("reproduced" if ok else f"NOT reproduced within rtol {args.rtol}")
        return 0 if ok else 1

    return run_command(body, args.output_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
