"""Input checks shared by the writers: fail before any byte is written, naming the bad key."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch

# Storage classes that the WebUI's restricted unpickler (modules/safe.py) lets through.
# A tensor of any other dtype in a legacy .pt would make the WebUI refuse the whole file.
LEGACY_PT_DTYPES = {
    torch.float32: "FloatStorage",
    torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage",
    torch.float64: "DoubleStorage",
    torch.int32: "IntStorage",
    torch.int64: "LongStorage",
    torch.uint8: "ByteStorage",
}


def check_str_metadata(metadata: Mapping[str, Any] | None) -> None:
    """safetensors metadata is a str -> str map; anything else fails late and vaguely inside the writer."""
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of str to str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata key {key!r} is {type(key).__name__}; metadata keys must be str")
        if not isinstance(value, str):
            raise TypeError(
                f"metadata[{key!r}] is {type(value).__name__} ({value!r}); safetensors metadata values must "
                "be str: convert it with str() (json.dumps() for dicts and lists)"
            )


def check_tensor_dict(tensors: Mapping[str, Any]) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of str to torch.Tensor, got {type(tensors).__name__}")
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"tensor key {key!r} is {type(key).__name__}; tensor names must be str")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{key!r}] is {type(value).__name__}, not a torch.Tensor")


def plain_legacy_copy(obj: Any, where: str = "obj") -> Any:
    """Return a copy of `obj` that the WebUI's safe unpickler accepts, or raise TypeError naming the key path.

    Allowed: dict / OrderedDict (str or int keys), list, tuple, str, int, float, bool, None and
    tensors of the dtypes in LEGACY_PT_DTYPES. Tensors are detached and moved to the CPU so the file
    loads without a GPU and carries no autograd state (nn.Parameter would pickle differently).
    """
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.dtype not in LEGACY_PT_DTYPES:
            allowed = ", ".join(str(d).replace("torch.", "") for d in LEGACY_PT_DTYPES)
            raise TypeError(
                f"{where} is a {str(obj.dtype).replace('torch.', '')} tensor, which the WebUI refuses to load "
                f"from a .pt file; convert it to one of: {allowed}"
            )
        # .to(copy=True) gives the tensor its own storage: a view would otherwise drag its whole base along
        return obj.detach().to("cpu", copy=True)
    if type(obj) in (dict, OrderedDict):
        out = OrderedDict() if type(obj) is OrderedDict else {}
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            out[key] = plain_legacy_copy(value, f"{where}[{key!r}]")
        return out
    if type(obj) in (list, tuple):
        items = [plain_legacy_copy(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if type(obj) is list else tuple(items)
    hint = " (numpy values: convert with float()/int() or torch.from_numpy())" if type(obj).__module__.startswith("numpy") else ""
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a .pt for the WebUI may hold only tensors, "
        f"dicts, lists, tuples, str, int, float, bool and None{hint}"
    )
