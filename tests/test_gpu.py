"""Device selection, and CPU-vs-cudnn agreement where a GPU exists (marked `gpu`: skipped without one)."""
import os

import numpy as np
import pytest

from conftest import TINY_BN
from sgd_influence.config import settings
from sgd_influence.base.errors import UserError
from sgd_influence.config.settings import set_context


def test_cpu_on_request_and_bad_ids_refused(capsys):
    assert set_context("cpu") == "cpu"
    assert set_context("0") in ("cpu", "cudnn")
    set_context("cpu")
    with pytest.raises(SystemExit) as e:
        settings.build_parser("", "", ()).parse_args(["-di", "gpu0"])
    assert e.value.code == 2
    assert "must be a GPU id (0, 1, ...) or cpu" in capsys.readouterr().err


def test_unusable_gpu_is_one_clear_error(monkeypatch):
    """The extension installed but no usable device: a UserError naming the id and -di cpu,
    and TF32 switched off before any CUDA context could exist."""
    import nnabla.ext_utils

    def no_device(name, **kw):
        if name == "cudnn":
            raise RuntimeError("cudaGetDeviceCount failed: no CUDA-capable device is detected\ndetails")
        return real(name, **kw)

    real = nnabla.ext_utils.get_extension_context
    monkeypatch.setattr(settings, "cuda_installed", lambda: True)
    monkeypatch.setattr(nnabla.ext_utils, "get_extension_context", no_device)
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    with pytest.raises(UserError) as e:
        set_context("3")
    msg = str(e.value)
    assert "GPU 3 cannot be used" in msg and "-di cpu" in msg and "\n" not in msg
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
    monkeypatch.setattr(nnabla.ext_utils, "get_extension_context", real)
    assert set_context("cpu") == "cpu"


def cudnn_available() -> bool:
    if not settings.cuda_installed():
        return False
    try:
        set_context("0")
        return True
    except UserError:
        return False
    finally:
        set_context("cpu")


gpu = pytest.mark.skipif(not cudnn_available(), reason="no CUDA device with nnabla-ext-cuda")


@pytest.mark.gpu
@gpu
def test_cpu_and_cudnn_agree_on_training_and_retrace(data, tmp_path):
    """One training per context, then the Ours retrace (fd and exact) of each: scores agree
    (Spearman >= 0.999) and the trained parameters to float32 tolerance."""
    import nnabla as nn
    from sgd_influence.core.infl import retrace
    from sgd_influence.base.metrics import spearman
    from sgd_influence.core.train import train
    runs, params, scores = {}, {}, {}
    for ctx in ("cpu", "0"):
        set_context(ctx)
        run = str(tmp_path / ctx)
        train(data, run, seed=0, epochs=2, batch_size=8, lr=0.05, keep_step_params=True, progress=False,
              net=TINY_BN)
        params[ctx] = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
        for mode in ("exact", "fd"):
            scores[ctx, mode] = retrace(data, run, "Ours", 8, progress=False, net=TINY_BN, mode=mode)
        runs[ctx] = run
    set_context("cpu")
    for k in params["cpu"]:
        assert np.allclose(params["cpu"][k], params["0"][k], rtol=1e-3, atol=1e-5), k
    for mode in ("exact", "fd"):
        assert spearman(scores["cpu", mode], scores["0", mode]) >= 0.999, mode


@pytest.mark.gpu
@gpu
def test_cudnn_runs_are_deterministic(data, tmp_path):
    """Two identical cudnn runs (NNABLA_CUDNN_DETERMINISTIC=1) give identical scores."""
    from sgd_influence.core.infl import retrace
    from sgd_influence.core.train import train
    set_context("0")
    out = []
    for k in range(2):
        run = str(tmp_path / str(k))
        train(data, run, seed=0, epochs=2, batch_size=8, lr=0.05, keep_step_params=True, progress=False,
              net=TINY_BN)
        out.append(retrace(data, run, "Hara", 8, progress=False, net=TINY_BN))
    set_context("cpu")
    assert np.array_equal(out[0], out[1])


@pytest.mark.gpu
@gpu
def test_resident_and_host_retrace_agree_on_cudnn(data, tmp_path):
    """On cudnn the retrace keeps its vectors and pins on the device by default; the host path
    (numpy round trips, as on the CPU) gives the same ranking."""
    from sgd_influence.core.infl import retrace
    from sgd_influence.base.metrics import spearman
    from sgd_influence.core.train import train
    set_context("0")
    run = str(tmp_path)
    train(data, run, seed=0, epochs=2, batch_size=8, lr=0.05, keep_step_params=True, progress=False, net=TINY_BN)
    for mode in ("exact", "fd"):
        resident = retrace(data, run, "Hara", 8, progress=False, net=TINY_BN, mode=mode)
        host = retrace(data, run, "Hara", 8, progress=False, net=TINY_BN, mode=mode, resident=False)
        assert spearman(resident, host) >= 0.9999, mode
    set_context("cpu")
