"""The DPT depth model: encoder -> reassemble -> fusion -> head, and `forward`, the model as a pure function.

Follows figure 1 of "Vision Transformers for Dense Prediction" (Ranftl et al., 2021) as
implemented by MiDaS v3.1 and Depth Anything. Everything is NHWC. Module and parameter names
say what a thing is; each family's key table (convert/<family>.py) maps the original PyTorch
names onto them. Every module takes `dtype_mm`, the dtype of its matrix products (layers.py).

Intermediate results are recorded with `sow` in the "intermediates" collection under the
names the reference fixtures use (hook1..4, reassemble1..4, rn1..4, fusion4..1, head_preact).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
from flax import traverse_util

from .config import DPTConfig
from .layers import COMPUTE_DTYPES, Conv, Dense, gelu
from .prompt import PromptBranch, prompt_range, to_prompt_range
from .resize import resize_bilinear
from .temporal import TemporalModule

#: Neck-and-head layouts other than the DPT paper's, by `DPTConfig.head`: a Flax module class
#: Module(config, dtype_mm, name="head")(encoder outputs, patch grid, image size) -> dict of outputs
#: with "depth". Their modules register them (dualdpt.py: Depth Anything 3's any-view head).
NECKS: dict[str, type] = {}
#: Camera encoders of those layouts (known cameras -> the encoder's camera tokens), by `DPTConfig.head`:
#: Module(config, name="camera_encoder")(world-to-camera (B, 4, 4), intrinsics (B, 3, 3), image size, views) -> (B, C)
CAMERA_ENCODERS: dict[str, type] = {}


class ConvTransposeNonOverlapping(nn.Module):
    """ConvTranspose2d with kernel == stride and no padding: every input pixel becomes a k x k block.

    Written as one einsum, which is exact and cheaper than a general transposed convolution.
    `kernel` is (k, k, in, out): PyTorch's (in, out, k, k) weight transposed.
    """

    features: int
    factor: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, h, w, C)
        k = self.factor
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.einsum("bhwc,klco->bhkwlo", x.astype(self.dtype_mm), kernel.astype(self.dtype_mm),
                       preferred_element_type=jnp.float32)
        b, h, _, w, _, o = y.shape
        return y.reshape(b, h * k, w * k, o) + bias  # (B, h*k, w*k, out)


class ReadoutProject(nn.Module):
    """Readout "project": each patch token is concatenated with the cls token, then Linear(2C -> C) + GELU."""

    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):  # (B, 1 + h*w, C)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        features = jnp.concatenate([patches, jnp.broadcast_to(cls, patches.shape)], axis=-1)  # (B, h*w, 2C)
        return gelu(Dense(tokens.shape[-1], dtype=self.dtype_mm, name="dense")(features))  # (B, h*w, C)


class Reassemble(nn.Module):
    """Turns the four encoder outputs into four image-like maps of `fusion_features` channels.

    Token encoders (`family.outputs_tokens`): readout of the cls token (`config.readout`), tokens ->
    (h, w) map, 1x1 conv, then resampling by `config.reassemble_factors` (x4, x2, x1, x1/2).
    Map encoders already give maps at four scales: nothing but the last conv is left.
    Each map ends with a 3x3 conv without bias to the shared fusion width (`scratch.layerX_rn`).
    Temporal models (`config.temporal_frames`) pass maps 3 and 4 through a `TemporalModule` first.
    """

    config: DPTConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, features, grid, frames: int = 1, context=(None, None)):
        c = self.config
        outputs = []
        for i, (x, factor) in enumerate(zip(features, c.reassemble_factors), start=1):
            if c.family.outputs_tokens:
                if c.readout == "project":
                    x = ReadoutProject(self.dtype_mm, name=f"readout_{i}")(x)  # (B, h*w, C)
                else:
                    x = x[:, 1:]  # the cls token is not used: (B, h*w, C)
                x = x.reshape(x.shape[0], *grid, x.shape[-1])  # (B, h, w, C)
                d = c.reassembly_features[i - 1]
                x = Conv(d, (1, 1), dtype=self.dtype_mm, name=f"project_{i}")(x)
                self.sow("intermediates", f"project{i}", x)
                x = Resample(d, factor, self.dtype_mm, name=f"resample_{i}")(x)  # (B, factor*h, factor*w, d)
            self.sow("intermediates", f"reassemble{i}", x)
            if c.temporal_frames and i >= 3:  # Video Depth Anything: frames attend to each other on maps 3 and 4
                x = TemporalModule(c.temporal_frames, self.dtype_mm, name=f"temporal_{i}")(x, frames, context[i - 3])
                self.sow("intermediates", f"temporal{i}", x)
            x = Conv(c.fusion_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype_mm,
                     name=f"to_fusion_{i}")(x)
            self.sow("intermediates", f"rn{i}", x)
            outputs.append(x)  # (B, h_i, w_i, F)
        return outputs


def Resample(features: int, factor: float, dtype_mm, name: str):
    """x4 / x2: transposed conv with kernel = stride; x1: nothing; x1/2: 3x3 conv with stride 2 (ceil(h/2))."""
    if factor > 1:
        return ConvTransposeNonOverlapping(features, int(factor), dtype_mm, name=name)
    if factor < 1:
        return Conv(features, (3, 3), strides=int(round(1 / factor)), padding=((1, 1), (1, 1)), dtype=dtype_mm,
                    name=name)
    return lambda x: x


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))): RefineNet's residual unit, no batch norm."""

    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        f = x.shape[-1]
        y = Conv(f, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype_mm, name="conv1")(nn.relu(x))
        y = Conv(f, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype_mm, name="conv2")(nn.relu(y))
        return x + y


class FusionBlock(nn.Module):
    """(x + RCU(skip)) -> RCU [+ prompt branch] -> bilinear resize (align_corners=True) -> 1x1 conv.

    The original resizes first. A 1x1 conv and a bilinear resize commute (one mixes channels, the
    other pixels, and the interpolation weights sum to 1, so the bias passes through unchanged),
    so the conv runs before the resize here, on 4x fewer pixels; only float rounding differs.
    """

    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skip, size, prompt=None):
        if skip is not None:
            x = x + ResidualConvUnit(self.dtype_mm, name="rcu1")(skip)
        x = ResidualConvUnit(self.dtype_mm, name="rcu2")(x)
        if prompt is not None:  # Prompt Depth Anything: the prompt's branch, at the block's input size
            self.sow("intermediates", "rcu2_out", x)
            x = x + PromptBranch(x.shape[-1], self.dtype_mm, name="prompt")(prompt, x.shape[1:3])  # (B, h, w, F)
        x = Conv(x.shape[-1], (1, 1), dtype=self.dtype_mm, name="out_conv")(x)
        return resize_bilinear(x, size, align_corners=True)


class Fusion(nn.Module):
    """Fuses the four maps from coarse to fine; each block resizes to the next finer map's exact size.

    `residual[i]`: block i+1 adds its own map through a residual unit to the previous block's
    output; a block without (the deepest) takes its own map as its input. Temporal models pass
    the outputs of blocks 4 and 3 through a `TemporalModule`.
    """

    config: DPTConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, maps, frames: int = 1, context=(None, None), prompt=None):
        """`prompt`: None, or the normalised depth prompt (B, h, w, 1) (Prompt Depth Anything)."""
        c = self.config
        x = None
        for i in (4, 3, 2, 1):
            skip = maps[i - 1]
            if not c.fusion_residual[i - 1]:
                x, skip = skip, None
            size = maps[i - 2].shape[1:3] if i > 1 else (2 * skip.shape[1], 2 * skip.shape[2])
            x = FusionBlock(self.dtype_mm, name=f"block_{i}")(x, skip, size, prompt)
            self.sow("intermediates", f"fusion{i}", x)
            if c.temporal_frames and i >= 3:
                x = TemporalModule(c.temporal_frames, self.dtype_mm, name=f"temporal_{i}")(x, frames, context[4 - i])
                self.sow("intermediates", f"temporal{i}", x)
        return x  # (B, 2 h_1, 2 w_1, F)


class DepthHead(nn.Module):
    """3x3 conv (F -> F/2) -> bilinear resize -> 3x3 conv (-> 32) -> ReLU -> 1x1 conv (-> 1) -> activation.

    The resize (align_corners=True) goes to `size`: x2 in MiDaS, the input's size in Depth Anything.
    Activation: ReLU (relative inverse depth; metres for "relu_metres"), max_depth * sigmoid (metric
    depth, metres) or exp (depth, Depth Anything 3). With `config.sky_head` it returns (depth, sky):
    see `SkyBranch`.
    """

    config: DPTConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x, size):  # (B, h, w, F)
        c, mm = self.config, self.dtype_mm
        x = Conv(c.fusion_features // 2, (3, 3), padding=((1, 1), (1, 1)), dtype=mm, name="conv1")(x)
        self.sow("intermediates", "head_conv1", x)
        features = resize_bilinear(x, size, align_corners=True)  # (B, H, W, F/2)
        x = nn.relu(Conv(c.head_features, (3, 3), padding=((1, 1), (1, 1)), dtype=mm, name="conv2")(features))
        x = Conv(1, (1, 1), dtype=mm, name="conv3")(x)  # (B, H, W, 1)
        self.sow("intermediates", "head_preact", x)
        if c.depth_activation == "sigmoid" and c.prompt:
            depth = jax.nn.sigmoid(x[..., 0])  # (B, H, W) in (0, 1): the prompt's range maps it to metres
        elif c.depth_activation == "sigmoid":
            depth = c.max_depth * jax.nn.sigmoid(x[..., 0])  # (B, H, W): metric depth
        elif c.depth_activation == "exp":
            depth = jnp.exp(x[..., 0])  # (B, H, W): depth
        else:
            depth = nn.relu(x)[..., 0]  # (B, H, W): relative inverse depth, or metres ("relu_metres")
        if c.sky_head:
            return depth, SkyBranch(c.head_features, mm, name="sky")(features)  # (B, H, W) each
        return depth


class SkyBranch(nn.Module):
    """Depth Anything 3's sky branch on the head's upsampled features: 3x3 conv -> ReLU -> 1x1 conv -> ReLU.

    The result is a score >= 0, not a probability: the original calls a pixel sky from 0.3 on
    (for the depth fill, `fill_sky`) and from 0.5 on (the sky mask it returns).
    """

    features: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, H, W, F/2)
        x = nn.relu(Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype_mm, name="conv1")(x))
        x = Conv(1, (1, 1), dtype=self.dtype_mm, name="conv2")(x)  # (B, H, W, 1)
        self.sow("intermediates", "sky_preact", x)
        return nn.relu(x[..., 0])  # (B, H, W)


#: Depth Anything 3's sky thresholds: a pixel is not sky below the first (depth fill), sky from the second (mask).
SKY_FILL_BELOW = 0.3
SKY_MASK_FROM = 0.5


def fill_sky(depth, sky):
    """Depth (B, H, W) with sky pixels set to the 0.99 quantile of the other pixels' depth, per picture.

    As Depth Anything 3's `_process_mono_sky_estimation`: not sky is sky < 0.3; only where both
    parts have more than 10 pixels; the quantile interpolates linearly (torch.quantile). The
    original pools the pixels of every picture of its batch (one picture per call in its API)
    and, above 100,000 pixels, takes the quantile of a random sample; here each picture is
    filled on its own from all of its pixels.
    """
    b = depth.shape[0]
    flat, not_sky = depth.reshape(b, -1), (sky < SKY_FILL_BELOW).reshape(b, -1)  # (B, H*W)
    n = not_sky.sum(axis=1)  # (B,)
    ordered = jnp.sort(jnp.where(not_sky, flat, jnp.inf), axis=1)  # (B, H*W): the non-sky depths first
    rank = jnp.float32(0.99) * (n - 1).astype(jnp.float32)  # (B,)
    lo = jnp.floor(rank)
    below = jnp.take_along_axis(ordered, lo.astype(jnp.int32)[:, None], axis=1)[:, 0]  # (B,)
    above = jnp.take_along_axis(ordered, jnp.ceil(rank).astype(jnp.int32)[:, None], axis=1)[:, 0]
    q = below + (rank - lo) * (above - below)  # (B,)
    fill = (n > 10) & (flat.shape[1] - n > 10)  # (B,)
    return jnp.where(fill[:, None, None] & (sky >= SKY_FILL_BELOW), q[:, None, None], depth)  # (B, H, W)


class DPT(nn.Module):
    """The whole model: normalized NHWC images (B, H, W, 3) -> depth (B, H, W): relative inverse, or metres.

    A prompted model (`config.prompt`) also takes `prompt`, metric depth (B, h, w, 1) of any size (prompt.py).
    `outputs=True`: a dict of every output instead, "depth" and, with a sky branch, "sky" (the
    score; the depth has its sky pixels filled, `fill_sky`). `views`: the batch holds scenes of
    this many consecutive pictures (encoders that attend across views: DA3 any-view).
    """

    config: DPTConfig
    dtype_mm: Any = jnp.float32
    remat: bool = False  # recompute the encoder blocks' activations in the backward pass (training memory)

    @nn.compact
    def __call__(self, images, *, frames: int = 1, context=None, prompt=None, outputs: bool = False,
                 views: int = 1, cameras=None):
        """`images` (B*T, H, W, 3), T = `frames` per clip, b-major; `context`: see `TemporalModule` (streaming);
        `prompt`: a prompted model's metric depth prompt (B, h, w, 1); `cameras`: known cameras of the views,
        (world-to-camera (B, 4, 4), intrinsics (B, 3, 3) in network pixels), for a model with a camera encoder."""
        c, mm = self.config, self.dtype_mm
        context = context or (None,) * 4  # the four temporal modules' cached states, in the original's order
        if (prompt is not None) != c.prompt:
            raise ValueError(f"{c.name} takes a depth prompt" if c.prompt else f"{c.name} takes no depth prompt")
        if prompt is not None:
            prompt, lo, hi = prompt_range(prompt)  # (B, h, w, 1), (B, 1, 1, 1), (B, 1, 1, 1)
            self.sow("intermediates", "prompt_norm", prompt)
        family = c.family
        remat = {"remat": True} if self.remat else {}  # a family registered elsewhere may not take remat
        encoder = family.encoder(c.encoder, mm, name="encoder", **remat)
        scene = {"views": views} if views > 1 else {}  # consecutive pictures of one scene (DA3 any-view)
        if cameras is not None and c.head not in CAMERA_ENCODERS:
            raise ValueError(f"{c.name} takes no cameras (Depth Anything 3 any-view models do)")
        if c.head in CAMERA_ENCODERS:  # always float32, as the original runs it
            camera_encoder = CAMERA_ENCODERS[c.head](c, name="camera_encoder")
            if cameras is not None:
                scene["camera_tokens"] = camera_encoder(*cameras, images.shape[1:3], views)  # (B, C)
            elif self.is_initializing():  # its parameters exist whether or not cameras are given
                camera_encoder(jnp.eye(4)[None], jnp.eye(3)[None], images.shape[1:3])
        features = encoder(images, **scene)  # 4 x (B, 1 + h*w, C) or (B, h_i, w_i, C_i)
        for i, f in enumerate(features, start=1):
            self.sow("intermediates", f"hook{i}", f)
        grid = None
        if family.outputs_tokens:
            p = c.encoder.patch_size
            grid = (images.shape[1] // p, images.shape[2] // p)
        if c.head in NECKS:  # a neck and head of their own (dualdpt.py)
            result = NECKS[c.head](c, mm, name="head")(features, grid, images.shape[1:3])
            return result if outputs else result["depth"]
        maps = Reassemble(c, mm, name="reassemble")(features, grid, frames, context[:2])  # 4 x (B, h_i, w_i, F)
        fused = Fusion(c, mm, name="fusion")(maps, frames, context[2:], prompt)  # (B, 2 h_1, 2 w_1, F)
        if c.head == "midas":
            size = (2 * fused.shape[1], 2 * fused.shape[2])
        else:  # Depth Anything: straight to the input's size
            size = images.shape[1:3]
        depth = DepthHead(c, mm, name="head")(fused, size)  # (B, H, W), or (depth, sky)
        if prompt is not None:
            self.sow("intermediates", "head_out", depth)
            depth = to_prompt_range(depth, lo, hi)  # (B, H, W) metres
        result = {"depth": depth}
        if c.sky_head:
            depth, sky = depth
            result = {"depth": fill_sky(depth, sky), "sky": sky}
        return result if outputs else result["depth"]


def param_shapes(config: DPTConfig) -> dict[str, tuple[int, ...]]:
    """{"/"-joined path: shape} of every parameter of the model, without allocating any (not even an input)."""
    m = config.input_multiple
    images = jax.ShapeDtypeStruct((1, 2 * m, 2 * m, 3), jnp.float32)  # parameter shapes do not depend on the size
    prompt = jax.ShapeDtypeStruct((1, 2, 2, 1), jnp.float32) if config.prompt else None
    abstract = jax.eval_shape(DPT(config).init, jax.random.PRNGKey(0), images, prompt=prompt)
    flat = traverse_util.flatten_dict(abstract["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def forward(config: DPTConfig, params, images, dtype: str = "float32", *, frames: int = 1, prompt=None,
            outputs: bool = False, views: int = 1, remat: bool = False, cameras=None):
    """Depth of normalized images (B, H, W, 3) -> (B, H, W): the whole model as a pure function.

    `prompt`: a prompted model's metric depth prompt (B, h, w, 1), any h and w; None for the others.
    `dtype` ("float32" or "bfloat16") is the dtype of the matrix products (`DPT.dtype_mm`);
    everything else runs in float32, `params` are float32. Float32 products run at full float32
    precision (no TF32/bf16 passes on accelerators: they cost ~1e-3 relative error).
    Temporal models take clips: B = clips * `frames`, each clip's frames consecutive.
    `outputs=True`: the dict of every output (`DPT`); `views`: pictures per scene, `cameras` their known cameras
    (`DPT`).
    `remat`: the encoder blocks' activations are recomputed when differentiated (training memory; same numbers).
    """
    module = DPT(config, COMPUTE_DTYPES[dtype], remat)
    with jax.default_matmul_precision("highest"):
        return module.apply({"params": params}, images.astype(jnp.float32), frames=frames, prompt=prompt,
                            outputs=outputs, views=views, cameras=cameras)


#: A temporal model's four temporal modules, in the original's order (its motion_modules.0..3)
TEMPORAL_MODULES = (("reassemble", "temporal_3"), ("reassemble", "temporal_4"), ("fusion", "temporal_4"),
                    ("fusion", "temporal_3"))


def forward_stream(config: DPTConfig, params, image, context=None, dtype: str = "float32"):
    """One frame of a stream (1, H, W, 3) -> (depth (1, H, W), its states): a temporal model as a pure function.

    `context`: the states of earlier frames, per temporal module (TEMPORAL_MODULES) a pair of
    (h_i*w_i, K, C_i) arrays, K frames along axis 1; None for the first frame. The states
    returned have the same structure with K = 1: what later frames take as context.
    """
    module = DPT(config, COMPUTE_DTYPES[dtype])
    with jax.default_matmul_precision("highest"):
        depth, state = module.apply({"params": params}, image.astype(jnp.float32), frames=1, context=context,
                                    mutable=["temporal_states"])
    states = state["temporal_states"]
    return depth, tuple(tuple(states[stage][name][f"normed_{j}"][0] for j in (0, 1))
                        for stage, name in TEMPORAL_MODULES)


@functools.lru_cache(maxsize=32)
def _read_only_as(config: DPTConfig, dtype: str) -> frozenset[str]:
    """The "/"-joined paths of the parameters that `forward(..., dtype)` only ever converts to `dtype`.

    Read off the traced program (shapes only, nothing compiled): a parameter qualifies when every use of it
    at the top level of the jaxpr is a conversion to the compute dtype (`Dense` and `Conv` kernels and biases);
    one also used otherwise (norms, position tables, SwinV2's float32 bias MLP, nested calls) stays float32.
    """
    mm = COMPUTE_DTYPES[dtype]
    abstract = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in param_shapes(config).items()}
    m = config.input_multiple
    images = jax.ShapeDtypeStruct((1, 2 * m, 2 * m, 3), jnp.float32)
    prompt = jax.ShapeDtypeStruct((1, 2, 2, 1), jnp.float32) if config.prompt else None
    jaxpr = jax.make_jaxpr(lambda p, x, q: forward(config, traverse_util.unflatten_dict(p, sep="/"), x, dtype,
                                                   prompt=q))(abstract, images, prompt).jaxpr
    leaves = dict(zip(jaxpr.invars, jax.tree_util.tree_leaves_with_path(abstract)))
    uses = {v: [] for v in leaves}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, jax.extend.core.Literal) and v in uses:
                uses[v].append(eqn.primitive.name == "convert_element_type" and eqn.params["new_dtype"] == mm)
    for v in jaxpr.outvars:
        if not isinstance(v, jax.extend.core.Literal) and v in uses:
            uses[v].append(False)
    return frozenset(path[0].key for v, (path, _) in leaves.items() if uses[v] and all(uses[v]))


def call_params(config: DPTConfig, params, dtype: str):
    """`params` as `forward(..., dtype)` reads them: float32, except those it only ever converts to bfloat16,
    converted once here (`_read_only_as`: the same numbers, without converting every weight on every call;
    a fifth of BEiT-Base's bfloat16 time on a CPU). The identity for float32."""
    if dtype == "float32":
        return params
    mm, flat = COMPUTE_DTYPES[dtype], traverse_util.flatten_dict(params, sep="/")
    once = _read_only_as(config, dtype)
    return traverse_util.unflatten_dict({k: v.astype(mm) if k in once else v for k, v in flat.items()}, sep="/")


def cast_params(params):
    """Parameters as `forward` takes them: NumPy float32 (whatever the compute dtype)."""
    import numpy as np

    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
