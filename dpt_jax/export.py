"""Export a model for deployment without dpt-jax: StableHLO (`jax.export`) and ONNX (jax2onnx).

One exported program per input size, with the parameters baked in:

    network program:  images (B, H, W, 3) float32, normalized as model.apply takes them
                      ((rgb in [0, 1] - mean) / std, NHWC; MiDaS 0.5 / 0.5, Depth Anything
                      ImageNet's)   ->  depth (B, H, W) float32
    --with-preprocessing:
                      pictures (B, h, w, 3) uint8 RGB of one fixed picture size
                      -> the original's resize (cv2 INTER_CUBIC) to (H, W) and normalisation
                      -> network -> the original's resize back  ->  depth (B, h, w) float32

B is symbolic (any batch) unless a fixed batch is asked for. float32 exports pin "highest"
matmul precision on every dot and convolution inside the program, so the artifact computes in
full float32 wherever it runs (GPUs/TPUs would otherwise use TF32/bf16 passes).

A `.stablehlo` file is the bytes of `jax.export.Exported.serialize()`; run it with jax alone:

    exported = jax.export.deserialize(open("m.stablehlo", "rb").read())
    depth = exported.call(images)

A `.onnx` file is converted by jax2onnx from the same traced function (input "images" or
"pictures", output "depth"; dynamic batch "B"); run it with onnxruntime.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from .atomic import atomic_write
from .config import DPTConfig
from .dpt import cast_params, forward
from .layers import COMPUTE_DTYPES
from .preprocess import network_size, to_network, to_picture

FORMATS = (".stablehlo", ".onnx")
Batch = Union[int, str, None]  # an int fixes the batch; None or "dynamic" leaves it symbolic


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """What one exported program takes and returns (sizes are (height, width))."""

    size: tuple[int, int]  # the network input
    batch: Optional[int]  # None: symbolic
    dtype: str
    picture_size: Optional[tuple[int, int]]  # set only with preprocessing inside
    input_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the model's input normalisation (RGB in [0, 1])
    input_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def with_preprocessing(self) -> bool:
        return self.picture_size is not None

    @property
    def input_name(self) -> str:
        return "pictures" if self.with_preprocessing else "images"

    def input_shape(self, batch) -> tuple:
        h, w = self.picture_size or self.size
        return (batch, h, w, 3)

    @property
    def input_dtype(self):
        return np.uint8 if self.with_preprocessing else np.float32

    def describe(self) -> str:
        b = "B" if self.batch is None else str(self.batch)
        if self.with_preprocessing:
            (h, w), (H, W) = self.picture_size, self.size
            return (f"pictures ({b}, {h}, {w}, 3) uint8 RGB -> resize to {H}x{W}, normalize -> "
                    f"depth resized back: ({b}, {h}, {w}) float32 [{self.dtype}]")
        H, W = self.size
        mean, std = (", ".join(f"{v:g}" for v in t) for t in (self.input_mean, self.input_std))
        return (f"images ({b}, {H}, {W}, 3) float32, (rgb - ({mean})) / ({std}) -> "
                f"depth ({b}, {H}, {W}) float32 [{self.dtype}]")


def make_spec(config: DPTConfig, *, size=None, batch: Batch = None, dtype: str = "float32",
              picture_size=None, with_preprocessing: bool = False) -> ExportSpec:
    """Checks what an export asks for against what the model can take, before anything is traced.

    `size`: the network input (H, W). With preprocessing, `picture_size` (h, w) is the uint8
    picture size the program takes; `size` then defaults to MiDaS's processed size of it
    (the model's native size and aspect rule), and `picture_size` defaults to `size`.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {dtype!r}")
    if config.prompt:
        raise ValueError(f"{config.name} takes a depth prompt besides the images: exports take images only")
    if batch is None or batch == "dynamic":
        batch = None
    elif isinstance(batch, str) and batch.isdigit():
        batch = int(batch)
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ValueError(f"batch must be a positive integer or 'dynamic'; got {batch!r}")
    size = _pair(size, "size") if size is not None else None
    picture_size = _pair(picture_size, "picture size") if picture_size is not None else None
    if picture_size is not None and not with_preprocessing:
        raise ValueError("a picture size only applies with preprocessing inside the export")
    if with_preprocessing:
        if picture_size is None:
            if size is None:
                raise ValueError("give the network size or the picture size to export with preprocessing")
            picture_size = size
        if size is None:
            size = network_size(config, picture_size)
    elif size is None:
        raise ValueError("give the network input size (H, W) to export")
    config.check_input_size(*size)  # before tracing: a clear error, not a shape error deep in the model
    from .memory import over_budget

    if (reason := over_budget(config, batch or 1, size)) is not None:  # tracing alone would build its tables
        raise ValueError(f"the exported program: {reason}; choose a smaller size or batch")
    return ExportSpec(tuple(size), None if batch is None else int(batch), dtype, picture_size,
                      tuple(config.input_mean), tuple(config.input_std))


def _pair(value, what) -> tuple[int, int]:
    if isinstance(value, str):
        parts = value.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{what} must be HxW, e.g. 384x512; got {value!r}")
        value = tuple(int(p) for p in parts)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{what} must be two positive integers (height, width); got {value}")
    return value


def program(config: DPTConfig, params, spec: ExportSpec) -> Callable:
    """The function that gets exported: one array in, depth out, parameters closed over as constants."""
    params = cast_params(params)
    # The parameters become constants of the program. Behind the barrier, XLA computes what
    # depends on them alone (position biases, ...) at run time with its run-time kernels, as
    # dpt-jax does, instead of folding them at compile time with other rounding.
    barrier = jax.lax.optimization_barrier

    if not spec.with_preprocessing:
        return lambda images: forward(config, barrier(params), images, spec.dtype)

    def with_preprocessing(pictures):  # (B, h, w, 3) uint8
        images = to_network(config, pictures, spec.size)  # (B, H, W, 3)
        depth = forward(config, barrier(params), images, spec.dtype)  # (B, H, W)
        return to_picture(config, depth, spec.picture_size)  # (B, h, w)

    return with_preprocessing


# ---------------------------------------------------------------------------------------------
# StableHLO


def to_stablehlo(config: DPTConfig, params, spec: ExportSpec) -> bytes:
    """The serialized `jax.export` program (CPU, CUDA and TPU lowerings) with a symbolic batch "B"."""
    batch = jax.export.symbolic_shape("B", constraints=["B >= 1"])[0] if spec.batch is None else spec.batch
    arg = jax.ShapeDtypeStruct(spec.input_shape(batch), spec.input_dtype)
    exported = jax.export.export(jax.jit(program(config, params, spec)), platforms=("cpu", "cuda", "tpu"))(arg)
    return bytes(exported.serialize())


def run_stablehlo(path, inputs) -> np.ndarray:
    """Runs a `.stablehlo` file on `inputs` (what a user does, with jax alone)."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return np.asarray(exported.call(inputs))


# ---------------------------------------------------------------------------------------------
# ONNX


def to_onnx(config: DPTConfig, params, spec: ExportSpec, *, name: str = "dpt"):
    """The ONNX model (an onnx.ModelProto) converted by jax2onnx, batch "B" dynamic unless fixed."""
    if spec.dtype != "float32":
        raise ValueError("ONNX export is float32 only: jax2onnx converts the bfloat16 program, but "
                         "onnxruntime rejects its bfloat16 Einsum nodes (export bfloat16 as .stablehlo)")
    try:
        from jax2onnx import to_onnx as jax2onnx_convert
    except ImportError as e:
        raise RuntimeError("ONNX export needs jax2onnx and onnx: pip install 'dpt-jax[export]'") from e
    logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)  # per-constant warnings, not errors
    batch = "B" if spec.batch is None else spec.batch
    arg = jax.ShapeDtypeStruct(spec.input_shape(batch), spec.input_dtype)
    # jax2onnx traces with its own primitives in place of some of jax.numpy's (take, ...): traced through a
    # jitted function (the preprocessing's), that trace would stay in its cache, and dpt-jax's own later
    # calls at the same shape would fail to compile. Without jit the functions are traced inline.
    with jax.disable_jit():
        model = jax2onnx_convert(program(config, params, spec), [arg], model_name=name,
                                 input_names=[spec.input_name], output_names=["depth"], return_mode="proto")
    model.doc_string = f"dpt-jax {config.name}: {spec.describe()}"
    _drop_unused_initializers(model.graph)
    return model


def _drop_unused_initializers(graph) -> None:
    """Remove the constants no node reads (jax2onnx leaves some shape constants behind; onnxruntime warns
    about each when it loads the file)."""
    used = {o.name for o in graph.output}

    def reads(g):
        for node in g.node:
            used.update(node.input)
            for attribute in node.attribute:  # control-flow bodies may read the outer graph's constants
                for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    reads(body)
                    used.update(o.name for o in body.output)

    reads(graph)
    unused = {i.name for i in graph.initializer if i.name not in used}
    if unused:
        kept = [i for i in graph.initializer if i.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        inputs = [i for i in graph.input if i.name not in unused]
        del graph.input[:]
        graph.input.extend(inputs)


def run_onnx(path, inputs) -> np.ndarray:
    """Runs a `.onnx` file in onnxruntime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.asarray(inputs)})[0]


# ---------------------------------------------------------------------------------------------
# Files


def export(model, path, *, size=None, batch: Batch = None, dtype: Optional[str] = None,
           with_preprocessing: bool = False, picture_size=None) -> ExportSpec:
    """Write `model` (a DepthModel) as `path`: `.stablehlo` or `.onnx`, by the suffix. Returns the spec.

    `size` (H, W) or "HxW": the network input size, multiples of the model's input multiple.
    `batch`: an int, or None / "dynamic" (default) for any batch. `dtype`: default the model's.
    `with_preprocessing`: take uint8 pictures of `picture_size` (see `make_spec`).
    The file is written atomically; sizes are checked before anything is traced.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: the output must end in {' or '.join(FORMATS)}")
    spec = make_spec(model.config, size=size, batch=batch, dtype=dtype or model.dtype,
                     picture_size=picture_size, with_preprocessing=with_preprocessing)
    if suffix == ".stablehlo":
        data = to_stablehlo(model.config, model.params, spec)
    else:
        data = to_onnx(model.config, model.params, spec, name=model.config.name).SerializeToString()
    with atomic_write(path, suffix=suffix) as f:
        f.write(data)
    return spec


def run(path, inputs) -> np.ndarray:
    """Runs an exported file (either format) on `inputs`."""
    return run_onnx(path, inputs) if os.fspath(path).lower().endswith(".onnx") else run_stablehlo(path, inputs)


def verify(model, path, spec: ExportSpec, *, batch: int = 1, seed: int = 0) -> float:
    """max|exported - dpt-jax| / max|dpt-jax| on a random input of the exported shape."""
    rng = np.random.default_rng(seed)
    n = spec.batch or batch
    if spec.with_preprocessing:
        inputs = rng.integers(0, 256, spec.input_shape(n), dtype=np.uint8)
        ref = to_picture(model.config, model.apply(to_network(model.config, jnp.asarray(inputs), spec.size)),
                         spec.picture_size)
    else:
        inputs = rng.uniform(-1, 1, spec.input_shape(n)).astype(np.float32)
        ref = model.apply(inputs)
    ref = np.asarray(ref, np.float64)
    got = np.asarray(run(path, inputs), np.float64)
    if got.shape != ref.shape:
        raise RuntimeError(f"{path}: the exported program returned shape {got.shape}, expected {ref.shape}")
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), np.finfo(np.float32).tiny))
