"""The hypernetwork's residual MLP, the pure math apart from where it is applied.

The module layout (which index of the `linear` Sequential holds a Linear, an activation, a LayerNorm
or a Dropout) follows the WebUI's HypernetworkModule exactly, because the WebUI loads the saved
state dict with strict key matching: for each pair of widths, a Linear; then the activation unless
it is "linear" or this is the last layer without activate_output; then a LayerNorm if asked; then a
Dropout when that layer's rate is above 0. Forward: x + mlp(x) * multiplier.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


def _activation_classes() -> dict[str, Optional[type]]:
    """Activation name -> module class, as the WebUI names them: its own short list, then every
    class in torch.nn.modules.activation under its lower-cased name. "swish" is Hardswish there."""
    table: dict[str, Optional[type]] = {}
    for cls_name, obj in vars(torch.nn.modules.activation).items():
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == "torch.nn.modules.activation":
            table[cls_name.lower()] = obj
    table.update({"linear": None, "swish": nn.Hardswish})
    return table


ACTIVATION_CLASSES = _activation_classes()

# Names the WebUI would list but that cannot work in this MLP (the WebUI fails on them too).
UNUSABLE_ACTIVATIONS = {
    "glu": "GLU halves the layer width, so the next layer's input no longer fits",
    "multiheadattention": "not an element-wise activation",
    "threshold": "needs arguments the hypernetwork format cannot store",
}

WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
DEFAULT_DROPOUT = 0.3   # the WebUI's rate for hidden layers when dropout is on without a structure


def dropout_rates(layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool,
                  explicit: Sequence[float] = ()) -> list[float]:
    """One dropout rate per layer_structure entry; rate[i + 1] follows the i-th Linear.

    Off -> all 0. An explicit structure wins. Otherwise the WebUI's default: 0.3 after every hidden
    layer except the one before the output layer, which gets 0.3 only with last_layer_dropout.
    """
    n = len(layer_structure)
    if not use_dropout:
        return [0.0] * n
    if explicit:
        return [float(x) for x in explicit]
    if n < 3:           # no hidden layer to drop
        return [0.0] * n
    return [0.0] + [DEFAULT_DROPOUT] * (n - 3) + [DEFAULT_DROPOUT if last_layer_dropout else 0.0] + [0.0]


def make_activation(name: str) -> Optional[nn.Module]:
    if name in UNUSABLE_ACTIVATIONS:
        raise ValueError(f"activation {name!r} cannot be used: {UNUSABLE_ACTIVATIONS[name]}")
    if name not in ACTIVATION_CLASSES:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATION_CLASSES))}")
    cls = ACTIVATION_CLASSES[name]
    return None if cls is None else cls()


def build_layers(dim: int, layer_structure: Sequence[float], activation: str, layer_norm: bool,
                 activate_output: bool, dropout: Sequence[float]) -> nn.Sequential:
    """The Sequential of one hypernetwork module (layout as the module docstring describes)."""
    if len(dropout) != len(layer_structure):
        raise ValueError("dropout needs one rate per layer_structure entry")
    modules: list[nn.Module] = []
    last = len(layer_structure) - 2
    for i in range(len(layer_structure) - 1):
        width_in, width_out = int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])
        modules.append(nn.Linear(width_in, width_out))
        if i < last or activate_output:
            act = make_activation(activation)
            if act is not None:
                modules.append(act)
        if layer_norm:
            modules.append(nn.LayerNorm(width_out))
        if dropout[i + 1] > 0:
            modules.append(nn.Dropout(p=float(dropout[i + 1])))
    return nn.Sequential(*modules)


@torch.no_grad()
def init_weights(layers: nn.Sequential, scheme: str, activation: str) -> None:
    """The WebUI's initialisation: LayerNorms always, Linears under "Normal", get N(0, 0.01)
    weights and zero biases; the Xavier/Kaiming schemes zero the biases. Other parameters
    (PReLU's slope) keep torch's defaults."""
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"unknown weight initialisation {scheme!r}; known: {', '.join(WEIGHT_INITS)}")
    nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
    for layer in layers:
        if type(layer) not in (nn.Linear, nn.LayerNorm):
            continue
        w, b = layer.weight, layer.bias
        if scheme == "Normal" or type(layer) is nn.LayerNorm:
            nn.init.normal_(w, mean=0.0, std=0.01)
        elif scheme == "XavierUniform":
            nn.init.xavier_uniform_(w)
        elif scheme == "XavierNormal":
            nn.init.xavier_normal_(w)
        elif scheme == "KaimingUniform":
            nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity)
        else:
            nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)
        nn.init.zeros_(b)


class HypernetworkMLP(nn.Module):
    """One residual MLP: the K or the V transform for contexts of width `dim`."""

    def __init__(self, dim: int, layer_structure: Sequence[float], activation: str = "linear",
                 layer_norm: bool = False, activate_output: bool = False, dropout: Sequence[float] = ()):
        super().__init__()
        self.dim = int(dim)
        self.linear = build_layers(dim, layer_structure, activation, layer_norm, activate_output,
                                   list(dropout) or [0.0] * len(layer_structure))

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier
