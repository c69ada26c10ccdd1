"""The memory a model call needs at least, known from the config alone, and the budget it must fit in.

    activation_bytes(config, batch, size)   a lower bound of the bytes a forward's activations hold at once
    budget()                                 (bytes, where the number comes from)
    over_budget(config, batch, size)         None, or why a call at that batch and size cannot run here
    largest_batch(config, size)              the most pictures a call at that size may take within the budget

The bound is the larger of two sets of tensors every forward must hold at the same time, in
float32: the encoder's largest (its family's `encoder_peak_bytes`, e.g. an MLP's input and
hidden layer, or a table gathered per block), and the head's last convolution at the network
size, whose input and output are both alive (B x H x W x (fusion_features / 2 + head_features)).
Attention logits are not counted: XLA fuses the softmax with its products and need not hold
them. Measured against XLA's own count of temporary memory on CPU (`memory_analysis()`), the
bound is exact where the head dominates (every model tried from 128 to 2072 px but BEiT) and
4-8x under it for BEiT at 768-2048 px. XLA holds more (parameters, other intermediates), so a
call refused here could never run; one allowed may still not fit.

The budget is DPT_JAX_MEMORY_BUDGET (bytes, or with a K, M, G or T suffix: "24G") when set,
else the memory of the first local device (on CPU, the machine's physical memory). Everything
is checked before anything is traced or allocated.
"""

from __future__ import annotations

import os

ENV = "DPT_JAX_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def activation_bytes(config, batch: int, size: tuple[int, int]) -> int:
    """A lower bound of the activation bytes of one forward of `batch` images of `size` (H, W)."""
    h, w = size
    encoder = config.family.encoder_peak_bytes(config.encoder, h, w, batch)
    head = 4 * batch * h * w * (config.fusion_features // 2 + config.head_features)
    return max(encoder, head)


def budget() -> tuple[int, str]:
    """(bytes a model call may use, where that number comes from)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        number, unit = text.upper().rstrip("IB"), ""
        if number and number[-1] in _UNITS:
            number, unit = number[:-1], number[-1]
        try:
            value = float(number) * _UNITS[unit]
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{ENV} must be a number of bytes, optionally with K, M, G or T (e.g. 24G); "
                             f"got {text[:40]!r}")
        return int(value), ENV
    import jax

    device = jax.local_devices()[0]
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # backends without memory statistics (the CPU)
        limit = None
    if limit:
        return int(limit), f"the memory of {device.device_kind}; {ENV} sets another"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), f"this machine's memory; {ENV} sets another"


def human_bytes(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def over_budget(config, batch: int, size: tuple[int, int]) -> str | None:
    """None when a call of `batch` images of `size` may fit in the budget; else a sentence saying why not."""
    need = activation_bytes(config, batch, size)
    limit, source = budget()
    if need <= limit:
        return None
    return (f"{'a batch of ' + str(batch) if batch > 1 else 'one picture'} at {size[0]}x{size[1]} needs at least "
            f"{human_bytes(need)} of memory for the model's activations, over the budget of {human_bytes(limit)} "
            f"({source})")


def largest_batch(config, size: tuple[int, int]) -> int:
    """The most images of `size` (H, W) one call may take within the budget (0: not even one)."""
    return budget()[0] // max(1, activation_bytes(config, 1, size))
