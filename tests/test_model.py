import numpy as np
import nnabla as nn

from models import cnn


def count_params(channels):
    nn.clear_parameters()
    cnn(nn.Variable((2, channels, 32, 32)), 10)
    params = nn.get_parameters(grad_only=False)
    return sum(v.size for v in params.values()), sum(v.size for v in nn.get_parameters().values())


def test_six_conv_net_has_the_papers_parameter_count():
    # 307,370 trainable + 448 batch-norm running statistics (mean and variance of the 32 + 64 + 128
    # batch-norm channels; models/cnn.py).
    assert count_params(1) == (307818, 307370)
    assert count_params(3) == (308394, 307946)
    # Paper Table 1, "Ours": 1.236 MB of float32; within 1%.
    assert abs(307818 * 4 / 1e6 - 1.236) / 1.236 < 0.01


def test_logits_shape():
    nn.clear_parameters()
    out = cnn(nn.Variable((3, 1, 32, 32)), 7, test=True)
    out.forward()
    assert out.shape == (3, 7) and np.isfinite(out.d).all()
