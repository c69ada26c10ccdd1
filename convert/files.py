"""Any checkpoint file -> ordered key -> TensorRef, the format told by the file's bytes, not its name.

torch zip (.pt/.pth written by torch.save >= 1.6: `torch_zip`) or safetensors (`safetensors_io`);
nothing but the pickle / header is read eagerly.
"""

from __future__ import annotations

from ..errors import CheckpointError
from .safetensors_io import read_safetensors
from .tensors import TensorRef
from .torch_zip import read_torch_zip

_SNIFF_BYTES = 512


def read_state_dict(path) -> dict[str, TensorRef]:
    """Ordered dict key -> TensorRef of a torch zip or safetensors file."""
    if sniff_format(path) == "zip":
        return read_torch_zip(path)
    return read_safetensors(path)[0]


def sniff_format(path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise CheckpointError(path, f"cannot open checkpoint: {exc.strerror or exc}") from exc
    if not head:
        raise CheckpointError(path, "file is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[8:9] == b"{":  # as safetensors_io.is_safetensors
        return "safetensors"
    if head.startswith(b"\x80") or head[257:262] == b"ustar":
        raise CheckpointError(
            path,
            "legacy (pre-1.6, non-zip) torch checkpoint format is not supported: it can only be "
            "read by unpickling arbitrary objects; re-save it with a newer torch "
            "(torch.save(torch.load(old), new) with torch >= 1.6)",
        )
    raise CheckpointError(
        path, "unrecognized format: neither a torch zip checkpoint nor safetensors (its first bytes are neither's)"
    )
