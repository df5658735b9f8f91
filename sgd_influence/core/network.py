"""The network influence is estimated on (--net): the paper's six-conv network (`cnn`, the
default for images), a multilayer perceptron (`mlp`, the default for vectors), a Python
function, or a network saved by Neural Network Console / nnabla (`.nnp`).

A `Network` is what graphs.py builds its graphs from: called as `net(x, n_classes, test, ops)`
it returns the logits (B, n_classes) of the images x; the tool adds the loss. `ops` is the
`models.Ops` the graph's ReLUs, max-pools and batch norms go through: the plain ones for
training and the exact retrace, the fd retrace's branch recorder/replayer
(`graphs.BranchRecorder`, `graphs.BranchReplayer`) and the batch-norm coupling's weighted
batch norm (`batch_norm.WeightedBatchNormOps`). For a user's network these are put in by
rebuilding its graph function by function (`_Rebuild`):

- ReLU goes through ops.relu; LeakyReLU(h) = relu(h) - alpha relu(-h), ReLU6(h) =
  relu(h) - relu(h - 6) and Abs(h) = relu(h) + relu(-h) through two ops.relu each when the
  ops pin branches (else nnabla's own function);
- MaxPooling with stride = kernel (2-D, no padding) goes through ops.max_pool;
- BatchNormalization over the channels with PF.batch_normalization's parameter names
  (<name>/bn/beta, gamma, mean, var), eps 1e-5 and decay 0.9 goes through ops.batch_norm,
  its batch statistics used in training mode and the running ones in test mode;
- `SMOOTH` functions (linear, or twice differentiable) are nnabla's own;
- any other function is nnabla's own unless the ops pin branches (--retrace fd): then it is
  one error line naming it (--retrace exact works). Random functions (Dropout, ...) are
  always an error: every phase replays the recorded training exactly.

Parameters live in nnabla's global parameter scope under the file's names. A `.nnp` network
starts from a fresh initialisation seeded like the built-in network (`train.init_model` sets
nn.random.prng): convolution and affine weights from PF's Glorot-uniform, biases 0, batch
norm 0/1/0/1, in the order of the graph, so a `.nnp` saved from the six-conv network
reproduces it bit for bit; with `--net-init file` it starts from the file's values instead.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import sys
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import nnabla as nn
import nnabla.function as FN
import nnabla.functions as F
from nnabla.initializer import ConstantInitializer, UniformInitializer, calc_uniform_lim_glorot
from nnabla.parameter import get_parameter_or_create

from models import Ops, cnn, dense
from .batch_norm import WeightedBatchNormOps
from ..base.errors import UserError
from ..base.layout import file_digest
from .graphs import BranchRecorder
from ..base.methods import METHODS

DEFAULT = "cnn"  # for images; a run that predates --net used it
VECTOR_DEFAULT = "mlp"  # for every other input (vectors of a tabular CSV, arrays)
BUILTIN = {"cnn": cnn, "mlp": dense}  # --net name -> models function f(x, n_classes, test, ops=...)
INITS = ("seed", "file")
# The network settings of a run (run.json); a run that predates them used these values.
SETTING_DEFAULTS = {"net": DEFAULT, "net_init": "seed", "net_sha256": None}

# Functions nnabla computes that are linear or twice differentiable: fd needs no pinning there.
SMOOTH = frozenset("""
Affine Convolution Deconvolution DepthwiseConvolution DepthwiseDeconvolution AveragePooling
GlobalAveragePooling SumPooling Unpooling Add2 AddN Sub2 Mul2 MulN Div2 AddScalar MulScalar
RSubScalar RDivScalar PowScalar Sum Mean Reshape Transpose Concatenate Split Slice Stack
Broadcast BroadcastTo Pad Identity Tanh Sigmoid Swish GELU SoftPlus Exp Log Sin Cos Softmax
LogSoftmax Interpolate Flip
""".split())
RELU_FAMILY = frozenset(("ReLU", "LeakyReLU", "ReLU6", "Abs"))
RANDOM = frozenset(("Dropout", "RandomCrop", "RandomFlip", "RandomShift", "RandomErase", "ImageAugmentation",
                    "Rand", "Randint", "Randn", "RandomChoice"))


# --------------------------------------------------------------------------- options
def net_spec(text: str) -> str:
    """--net: `cnn`, `mlp`, `package.module:function`, or `FILE.nnp[:NETWORK]` (the file made absolute)."""
    path, sep, name = _split_nnp(text)
    return os.path.abspath(path) + sep + name if path else text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--net and --net-init, for both drivers and validate_influence.py."""
    p.add_argument("--net", type=net_spec, default=None, metavar="NET",
                   help="network: cnn (the paper's six-conv network; the default for images), mlp (two ReLU layers "
                        "of 64 units, batch norm on the first; the default for vectors), package.module:function "
                        "(f(x, test) -> logits, nnabla, importable from the current folder) or FILE.nnp[:NETWORK] "
                        "(Neural Network Console / nnabla.utils.save; input the data, output the class scores); "
                        "docs/own_network.md")
    p.add_argument("--net-init", choices=INITS, default="seed",
                   help="a .nnp network's starting parameters: a fresh initialisation seeded by the trial (seed) "
                        "or the file's values (file)")
    p.set_defaults(net_sha256=None)  # set from the network when a command resolves it (from_args)


def default_for(images: bool) -> str:
    """The --net of a command that gives none: `cnn` for images, `mlp` for any other input."""
    return DEFAULT if images else VECTOR_DEFAULT


def _split_nnp(text: str) -> Tuple[str, str, str]:
    """(file, ':', network) of `FILE.nnp:NETWORK`, (file, '', '') of `FILE.nnp`, ('', '', '') otherwise."""
    if text.lower().endswith(".nnp"):
        return text, "", ""
    head, sep, name = text.rpartition(":")
    if sep and head.lower().endswith(".nnp"):
        return head, sep, name
    return "", "", ""


# --------------------------------------------------------------------------- networks
class Network:
    """Logits of a network: `net(x, n_classes, test, ops)` -> (B, n_classes).

    `spec` is --net as given (files absolute); `sha256` the hash of the file that defines it
    (the .nnp, or the Python function's module; None for the built-in network).
    """

    spec: str = DEFAULT
    sha256: Optional[str] = None

    def __call__(self, x: nn.Variable, n_classes: int, test: bool = False, ops: Optional[Ops] = None) -> nn.Variable:
        raise NotImplementedError

    def check(self, image_shape: tuple, n_classes: int, fd: bool, coupling: bool) -> None:
        """Build the network once on a throwaway parameter scope, as the run will use it (pinned
        for fd, with the weighted batch norm for the coupling), and stop with one error line if
        it cannot be: a function fd cannot pin, a random function, logits of the wrong shape."""
        x = nn.Variable((2,) + tuple(image_shape))
        with nn.parameter_scope("", OrderedDict()):
            rng, nn.random.prng = nn.random.prng, np.random.RandomState(0)
            try:
                for test in (False, True):
                    ops = BranchRecorder() if fd and not test else Ops()
                    if coupling and not test:
                        ops = WeightedBatchNormOps(nn.Variable((2,)), ops)
                    out = self._build(x, n_classes, test, ops)
                    if tuple(out.shape) != (2, n_classes):
                        raise UserError(f"--net {self.spec}: the network's output has shape {tuple(out.shape)} for "
                                        f"2 inputs of shape {tuple(image_shape)}; expected (2, {n_classes}), "
                                        f"the scores of the dataset's {n_classes} classes")
                    bad = [t for t in function_types(out) if t in RANDOM]
                    if bad:
                        raise _random_function(self.spec, bad[0], bad[0])
            finally:
                nn.random.prng = rng

    def lone_batch_norms(self, image_shape: tuple, n_classes: int) -> List[tuple]:
        """The input shapes of the batch norms that, on a sample forwarded alone in training mode (batch size 1),
        take their statistics over one value per channel (vectors: no positions to average over): x - mean is 0
        there, so they output their beta whatever the sample and nothing after them sees it. A batch norm over
        the positions of an image (the six-conv network's) is not one of them."""
        found: List[tuple] = []

        def visit(f) -> None:
            if f.info.type_name == "BatchNormalization" and f.info.args.get("batch_stat", True):
                shape, axes = tuple(f.inputs[0].shape), f.info.args.get("axes", [1])
                if int(np.prod([d for i, d in enumerate(shape) if i not in axes])) == 1:
                    found.append(shape)
        with nn.parameter_scope("", OrderedDict()):
            rng, nn.random.prng = nn.random.prng, np.random.RandomState(0)
            try:
                self._build(nn.Variable((1,) + tuple(image_shape)), n_classes, False, Ops()).visit(visit)
            finally:
                nn.random.prng = rng
        return found

    def _build(self, x: nn.Variable, n_classes: int, test: bool, ops: Ops) -> nn.Variable:
        """The network on x; an error while building it (inputs of a shape it cannot take) is one line."""
        try:
            return self(x, n_classes, test=test, ops=ops)
        except UserError:
            raise
        except Exception as e:  # nnabla's (and the user's) errors for inputs the network cannot take
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = (f"; the data is not images (C, H, W): use --net {VECTOR_DEFAULT}, the default for it"
                    if self.spec == DEFAULT and len(x.shape) != 4 else "")
            raise UserError(f"--net {self.spec}: cannot be built on inputs of shape {tuple(x.shape[1:])} "
                            f"({type(e).__name__}: {why}){hint}") from None


class Builtin(Network):
    """A network of models/: the paper's six-conv network (`cnn`, models/cnn.py) or the multilayer
    perceptron (`mlp`, models/dense.py)."""

    def __init__(self, spec: str = DEFAULT):
        self.spec, self.fn = spec, BUILTIN[spec]

    def __call__(self, x, n_classes, test=False, ops=None):
        return self.fn(x, n_classes, test=test, ops=ops if ops is not None else Ops())


class PythonFunction(Network):
    """`f(x, test) -> logits` written with nnabla (PF creates its parameters in the global scope)."""

    def __init__(self, spec: str, fn: Callable, sha256: Optional[str]):
        self.spec, self.fn, self.sha256 = spec, fn, sha256

    def __call__(self, x, n_classes, test=False, ops=None):
        out = self.fn(x, test)
        if not isinstance(out, nn.Variable):
            raise UserError(f"--net {self.spec}: the function returned {type(out).__name__}, not an nnabla Variable")
        if ops is None or type(ops) is Ops:
            return out
        return _Rebuild(self.spec, ops, test, _parameter_names()).graph(out, x)


class NnpFile(Network):
    """A network of a `.nnp` file, rebuilt function by function on the given input."""

    def __init__(self, spec: str, network, values: Dict[str, np.ndarray], sha256: str, init: str):
        self.spec, self.network, self.values, self.sha256, self.init = spec, network, values, sha256, init
        self.functions = list(network.forward_sequence())
        self.input = network.inputs[0]
        self.output = network.outputs[0]
        # A trailing Softmax (NNC's runtime networks end with one) is dropped: the scores are its input.
        last = self.functions[-1] if self.functions else None
        if last is not None and last.type == "Softmax" and last.outputs == [self.output]:
            self.functions, self.output = self.functions[:-1], last.inputs[0]

    def __call__(self, x, n_classes, test=False, ops=None):
        rebuild = _Rebuild(self.spec, ops if ops is not None else Ops(), test, {})
        env = {self.input: x}
        for pf in self.functions:
            inputs = []
            for i, name in enumerate(pf.inputs):
                if name in env:
                    inputs.append(env[name])
                else:
                    inputs.append(self._parameter(pf, i, name))
                    rebuild.names[inputs[-1]] = name
            for name, v in zip(pf.outputs, rebuild.apply(pf.type, pf.args, pf.name, inputs, len(pf.outputs))):
                env[name] = v
        return env[self.output]

    def _parameter(self, pf, i: int, name: str) -> nn.Variable:
        """Input i of function pf, a parameter: the existing one, else created (seeded, or the file's values)."""
        pv = self.network.parameters[name]
        shape = tuple(pv.shape)
        need_grad = not (pf.type == "BatchNormalization" and i >= 3)  # running mean and variance
        if self.init == "file":
            if name not in self.values:
                raise UserError(f"--net {self.spec}: the file holds no values of parameter {name}; "
                                f"use --net-init seed")
            init = self.values[name]
        else:
            init = _seeded_initializer(pf, i, shape)
            if init is None:
                raise UserError(f"--net {self.spec}: no default initialisation is known for {name} (input {i} of "
                                f"{pf.type}); use --net-init file to start from the file's values")
        return get_parameter_or_create(name, shape, init, need_grad)


def _seeded_initializer(pf, i: int, shape: tuple):
    """The initializer PF would use for input i of function pf (None: not known). Weights draw
    from nn.random.prng when created, so the order of creation is the order of the draws."""
    args = pf.args or {}
    if i == 2 and pf.type in ("Convolution", "Deconvolution", "Affine"):
        return ConstantInitializer(0)
    if i == 1 and pf.type == "Affine":
        return UniformInitializer(calc_uniform_lim_glorot(shape[0], int(np.prod(shape[1:]))))
    if i == 1 and pf.type == "Convolution" and not args.get("channel_last", False):
        return UniformInitializer(calc_uniform_lim_glorot(shape[1] * args.get("group", 1), shape[0], shape[2:]))
    if pf.type == "BatchNormalization" and 1 <= i <= 4:
        return ConstantInitializer((0, 1, 0, 1)[i - 1])  # beta, gamma, mean, var
    return None


def _random_function(spec: str, name: str, kind: str) -> UserError:
    return UserError(f"--net {spec}: the network uses {name} ({kind}), a random function; every phase replays "
                     f"the recorded training exactly, so remove it")


def _parameter_names() -> Dict[nn.Variable, str]:
    return {v: k for k, v in nn.get_parameters(grad_only=False).items()}


def function_types(out: nn.Variable) -> List[str]:
    """The type names of the functions of the graph that computes `out`, in forward order."""
    types = []
    out.visit(lambda f: types.append(f.info.type_name))
    return types


def _pins(ops: Ops) -> bool:
    """Whether `ops` pins ReLU / max-pool branches (the fd retrace's recorder or replayer)."""
    while isinstance(ops, WeightedBatchNormOps):
        ops = ops.base
    return type(ops).relu is not Ops.relu or type(ops).max_pool is not Ops.max_pool


class _Rebuild:
    """Recreates a network's functions one by one, routing ReLUs, max-pools and batch norms
    through `ops` (module docstring). `names` maps parameter variables to their names."""

    def __init__(self, spec: str, ops: Ops, test: bool, names: Dict[nn.Variable, str]):
        self.spec, self.ops, self.test, self.names = spec, ops, test, names
        self.pins, self.coupling = _pins(ops), isinstance(ops, WeightedBatchNormOps)

    def graph(self, out: nn.Variable, x: nn.Variable) -> nn.Variable:
        """The graph of `out` (built from `x`) recreated; parameters and `x` are kept."""
        env: Dict[nn.Variable, nn.Variable] = {}
        functions = []
        out.visit(lambda f: functions.append(f))
        for f in functions:
            inputs = [env.get(v, v) for v in f.inputs]
            outs = self.apply(f.info.type_name, f.info.args, f.info.type_name, inputs, len(f.outputs))
            env.update(zip(f.outputs, outs))
        return env[out]

    def _unpinnable(self, name: str, kind: str, why: str = "") -> UserError:
        return UserError(f"--net {self.spec}: --retrace fd cannot pin the network's function {name} ({kind}{why}); "
                         f"--retrace exact works on any differentiable network")

    def apply(self, kind: str, args: dict, name: str, inputs: List[nn.Variable], n_outputs: int) -> List[nn.Variable]:
        """The outputs of function `kind` with `args` on `inputs`."""
        ops, args = self.ops, dict(args or {})
        if kind in RANDOM:
            raise _random_function(self.spec, name, kind)
        h = inputs[0] if inputs else None
        if kind == "ReLU":
            return [ops.relu(h)]
        if kind in RELU_FAMILY and self.pins:
            if kind == "LeakyReLU":
                return [F.sub2(ops.relu(h), F.mul_scalar(ops.relu(F.mul_scalar(h, -1.0)), args["alpha"]))]
            if kind == "ReLU6":
                return [F.sub2(ops.relu(h), ops.relu(F.add_scalar(h, -6.0)))]
            return [F.add2(ops.relu(h), ops.relu(F.mul_scalar(h, -1.0)))]  # Abs
        if kind == "MaxPooling":
            kernel = tuple(args["kernel"])
            if (len(kernel) == 2 and len(h.shape) == 4 and tuple(args["stride"]) == kernel and not any(args["pad"])
                    and args.get("ignore_border", True) and not args.get("channel_last", False)):
                return [ops.max_pool(h, kernel)]
            if self.pins:
                raise self._unpinnable(name, kind, ": pinned only with stride = kernel, 2-D, no padding")
        if kind == "BatchNormalization":
            prefix = self._bn_prefix(inputs, args)
            if prefix is not None:
                return [ops.batch_norm(h, self.test, prefix)]
            if self.coupling:
                raise UserError(f"--net {self.spec}: the batch-norm coupling needs batch normalization over the "
                                f"channels with parameters named <name>/bn/beta, gamma, mean, var, eps 1e-5 and "
                                f"decay 0.9; {name} is not; --bn-coupling off works")
            args["batch_stat"] = not self.test
        elif kind not in SMOOTH and kind not in RELU_FAMILY and kind != "MaxPooling" and self.pins:
            raise self._unpinnable(name, kind)
        if kind == "Reshape" and args.get("shape") and args["shape"][0] == -1:  # saved with a variable batch size
            args["shape"] = [h.shape[0]] + list(args["shape"][1:])
        out = getattr(FN, kind)(nn.get_current_context(), **args)(*inputs, n_outputs=n_outputs, auto_forward=False)
        return list(out) if isinstance(out, tuple) else [out]

    def _bn_prefix(self, inputs: List[nn.Variable], args: dict) -> Optional[str]:
        """<name> of PF.batch_normalization(name=<name>) when this batch norm is one (else None)."""
        if len(inputs) != 5 or list(args.get("axes", [])) != [1] or args.get("no_scale") or args.get("no_bias"):
            return None
        if np.float32(args.get("eps")) != np.float32(1e-5) or np.float32(args.get("decay_rate")) != np.float32(0.9):
            return None
        names = [self.names.get(v, "") for v in inputs[1:]]
        prefix = names[0][:-len("/bn/beta")]
        if names != [f"{prefix}/bn/{p}" for p in ("beta", "gamma", "mean", "var")] or not prefix:
            return None
        return prefix


# --------------------------------------------------------------------------- resolution
def resolve(spec: str, init: str = "seed") -> Network:
    """The network of --net `spec` (and --net-init `init`); every problem is one UserError.
    Loaded once per process and file version (a file rewritten in place is loaded anew)."""
    path = _split_nnp(spec)[0]
    stamp = None
    if path and os.path.isfile(path):
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
    return _resolve(spec, init, stamp)


@functools.lru_cache(maxsize=4)
def _resolve(spec: str, init: str, stamp: Optional[tuple]) -> Network:
    path, _, name = _split_nnp(spec)
    if path:
        return _load_nnp(spec, path, name, init)
    if init != "seed":
        raise UserError(f"--net-init {init} applies to .nnp networks only; --net {spec} creates its own parameters")
    if spec in BUILTIN:
        return Builtin(spec)
    if ":" in spec:
        return _load_function(spec)
    raise UserError(f"--net {spec}: unknown network; give {', '.join(BUILTIN)}, package.module:function or "
                    f"FILE.nnp[:NETWORK]")


def _load_function(spec: str) -> PythonFunction:
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # "importable from the current folder"
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any error while importing it
        raise UserError(f"--net {spec}: cannot import {module_name} ({type(e).__name__}: {e}); the module must be "
                        f"importable from the current folder") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"--net {spec}: {module_name} has no function {attr!r}")
    try:
        source = inspect.getsourcefile(module)
    except TypeError:
        source = None
    return PythonFunction(spec, fn, file_digest(source) if source and os.path.isfile(source) else None)


def _load_nnp(spec: str, path: str, name: str, init: str) -> NnpFile:
    if not os.path.isfile(path):
        raise UserError(f"--net {spec}: no such file {path}")
    values: "OrderedDict" = OrderedDict()
    try:
        graph = nn.graph_def.load(path, parameter_scope=values)
    except Exception as e:  # nnabla's loader raises many types for a broken file
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--net {spec}: cannot read {path} as a .nnp file ({why})") from None
    names = list(graph.networks)
    if not names:
        raise UserError(f"--net {spec}: {path} holds no network")
    if not name:
        if len(names) > 1:
            raise UserError(f"--net {spec}: {path} holds the networks {', '.join(names)}; pick one with "
                            f"{path}:NETWORK")
        name = names[0]
    if name not in graph.networks:
        raise UserError(f"--net {spec}: {path} has no network {name!r} (it has {', '.join(names)})")
    network = graph.networks[name]
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        raise UserError(f"--net {spec}: network {name} has inputs {network.inputs} and outputs {network.outputs}; "
                        f"expected one input (the images) and one output (the class scores), without the loss")
    with nn.parameter_scope("", values):
        flat = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    return NnpFile(spec, network, flat, file_digest(path), init)


def from_args(args) -> Network:
    """The network of a command's arguments; records its hash in args.net_sha256, and refuses a
    file that changed since the hash was recorded (a worker process, a resumed run)."""
    net = resolve(args.net, args.net_init)
    recorded = getattr(args, "net_sha256", None)
    if recorded is not None and recorded != net.sha256:
        raise UserError(f"--net {args.net}: the file changed since this run recorded it (sha256 {recorded[:12]}... "
                        f"-> {str(net.sha256)[:12]}...); use another -o, or --overwrite to start afresh")
    args.net_sha256 = net.sha256
    return net


def checked(args, image_shape: tuple, n_classes: int) -> Network:
    """The network of a command's arguments, built once the way its methods will use it
    (`Network.check`: pinned for an fd retrace, weighted batch norm for the coupling); methods that
    forward each sample alone (methods.Method.samples_alone) refuse a network with `lone_batch_norms`."""
    net = from_args(args)
    retraces = any(METHODS[m].retrace for m in args.methods)
    net.check(image_shape, n_classes, fd=retraces and args.retrace == "fd",
              coupling=retraces and args.bn_coupling == "on")
    alone = [m for m in args.methods if METHODS[m].samples_alone]
    lone = net.lone_batch_norms(image_shape, n_classes) if alone else []
    if lone:
        raise UserError(f"{', '.join(alone)} take each sample's gradient alone (batch size 1, batch norm in training "
                        f"mode, as the published code), but --net {args.net} has a batch norm on inputs of shape "
                        f"{lone[0][1:]}, whose statistics over one sample are that sample: its output is then the "
                        f"same for every input and the scores would see only the labels; drop "
                        f"{'it' if len(alone) == 1 else 'them'}, or use a network without batch norm on vectors")
    return net
