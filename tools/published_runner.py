"""Run the published influence computation on a training converted by tools/published_oracle.py.

Runs in its own process with the published `responsible_ai/data_cleansing` folder first on
sys.path (its package `sgd_influence` shadows this project's, so nothing of this project is
imported here). It calls the published code as it is, with two run-time shims, nothing else:

- the converted training CSV already holds every image as the last epoch saw it (this project's
  augmentation of its recorded seed), so nnabla's `F.image_augmentation`, which the published
  `dataset.transform` applies with the seed, is made the identity;
- the network is the published `model.block` three times and an affine layer (its `cifarnet`)
  at the widths of the converted training (`cifarnet` itself at 32/64/128).

Steps: load `final_model.h5` (which creates the parameters, in the published names and order);
for every step i of the last epoch load the real theta[t] (`theta/step%04d.h5`, into the same
variables, as training updates them) and call the published `train.save_all_params`, which writes
`model_step%04d.h5` with its bundle quirk; then the published `infl.infl_sgd` twice, with the
per-step files (Hara) and with the final model (Ours). Writes influence_hara.csv and
influence_ours.csv (the published format) into the layout folder.

Usage: python tools/published_runner.py --published DIR --layout DIR (published_oracle.py runs it).
"""
import argparse
import json
import os
import sys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--published", required=True, help="the published responsible_ai/data_cleansing folder")
    p.add_argument("--layout", required=True, help="the converted training (published_oracle.py writes it)")
    a = p.parse_args()
    sys.path.insert(0, os.path.abspath(a.published))
    os.chdir(a.layout)
    with open("conversion.json") as f:
        conv = json.load(f)

    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF
    from sgd_influence import infl as pub_infl, model as pub_model, train as pub_train  # the published modules

    F.image_augmentation = lambda x, **kwargs: x  # shim 1: the CSV holds the augmented views
    widths = tuple(conv["widths"])
    if widths == (32, 64, 128):
        net_func = pub_model.cifarnet
    else:
        def net_func(x, test=False, n_classes=10):  # shim 2: the published cifarnet at other widths
            h = x
            for k, width in enumerate(widths):
                h = pub_model.block(h, f"block{k + 1}", width, (3, 3), (1, 1), test)
            return PF.affine(h, n_classes)

    epoch = conv["n_epochs"] - 1
    save_dir = os.path.abspath("weights")
    # The published per-step cache of the last epoch, written by its own save_all_params.
    nn.clear_parameters()
    nn.load_parameters(os.path.join(save_dir, f"epoch{epoch:02d}", "weights", conv["model_filename"]))
    params_dict, c, k = {}, 0, 0
    n_steps = conv["steps_per_epoch"]
    for j in range(n_steps):
        nn.load_parameters(os.path.join("theta", f"step{j:04d}.h5"))  # theta[t] into the same variables
        params_dict, c, k = pub_train.save_all_params(params_dict, c, k, j, conv["bundle_size"], n_steps,
                                                      save_dir, epoch)
    for name, use_all_params in (("hara", True), ("ours", False)):
        nn.clear_parameters()
        model_info = {"lr": conv["lr"], "seed": conv["seed"], "net_func": net_func,
                      "batch_size": conv["val_batch_size"], "end_epoch": epoch, "num_epochs": conv["n_epochs"]}
        files = {"save_dir": save_dir, "info_filename": "info.npy", "infl_filename": f"influence_{name}.csv",
                 "model_filename": conv["model_filename"], "train_csv": "train.csv",
                 "val_csv": "val.csv"}  # relative: the CSV's x:image column stays relative
        pub_infl.infl_sgd(model_info, files, use_all_params, need_evaluate=False)
        print(f"wrote {os.path.abspath(files['infl_filename'])}")


if __name__ == "__main__":
    main()
