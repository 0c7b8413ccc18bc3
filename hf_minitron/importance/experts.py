"""Expert importance of mixture-of-experts layers, recorded during the calibration pass.

For every sparse layer and expert, over the (unpadded) tokens the router sends to that expert:

- saliency   mean of gate weight × ||expert output||, the REAP criterion: an expert matters when it
             is chosen with a large weight *and* what it then writes into the residual stream is large
- frequency  the share of tokens routed to it (the plain baseline: often chosen ≠ useful)
- neurons    mean |activation| of each of its intermediate channels (after act(gate) · up), which
             ranks the channels when each expert is made narrower

transformers 5 computes all experts at once from fused 3-D weights (and may dispatch to grouped
kernels), so no per-expert activation is visible to a hook. The hook on the experts module
therefore re-runs each routed expert on its tokens from the same weights: calibration costs one
more expert pass per sparse layer, and the numbers do not depend on the kernel chosen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..moe import expert_count, expert_width, sparse_layers


class ExpertRecorder:
    """Forward hooks on every sparse layer's experts module; sums stay on the device until the end."""

    def __init__(self, model):
        self.model = model
        self.layers = sparse_layers(model)
        self.num_layers = model.config.num_hidden_layers
        self._mask: torch.Tensor | None = None
        self._sums: dict[int, dict[str, torch.Tensor]] = {}
        self._tokens: dict[int, torch.Tensor] = {}
        self._handles = []

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def set_mask(self, mask: torch.Tensor) -> None:
        self._mask = mask.reshape(-1)  # the sparse block flattens [batch, seq] into one token axis

    def attach(self) -> ExpertRecorder:
        for index, (_, experts) in self.layers.items():
            self._handles.append(experts.register_forward_hook(self._hook(index), with_kwargs=True))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        def hook(module, args, kwargs, output):
            values = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index", "top_k_weights") if k in kwargs]
            hidden, top_k_index, top_k_weights = values[:3]
            with torch.no_grad():
                self._record(index, module, hidden, top_k_index, top_k_weights)

        return hook

    def _record(self, index: int, experts, hidden, top_k_index, top_k_weights) -> None:
        count, width = experts.gate_up_proj.shape[0], experts.down_proj.shape[-1]
        device = hidden.device
        if index not in self._sums:
            self._sums[index] = {
                "saliency": torch.zeros(count, dtype=torch.float64, device=device),
                "routed": torch.zeros(count, dtype=torch.float64, device=device),
                "neurons": torch.zeros(count, width, dtype=torch.float64, device=device),
            }
            self._tokens[index] = torch.zeros((), dtype=torch.float64, device=device)
        sums = self._sums[index]
        real = self._mask.to(device=device, dtype=torch.bool)
        self._tokens[index] += real.sum()
        # Padding never counts: a padded position's routing says nothing about the expert.
        routed = (top_k_index < count) & real.unsqueeze(-1)
        for expert in torch.unique(top_k_index[routed]).tolist():
            token, slot = torch.nonzero(routed & (top_k_index == expert), as_tuple=True)
            x = hidden[token].float()
            gate, up = F.linear(x, experts.gate_up_proj[expert].float()).chunk(2, dim=-1)
            activation = experts.act_fn(gate) * up
            out = F.linear(activation, experts.down_proj[expert].float())
            weight = top_k_weights[token, slot].float()
            sums["saliency"][expert] += (weight * out.norm(dim=-1)).sum().double()
            sums["routed"][expert] += token.numel()
            sums["neurons"][expert] += activation.abs().sum(0).double()

    def result(self) -> dict[str, torch.Tensor]:
        """``expert_saliency`` / ``expert_frequency`` [layers, experts] and ``expert_neurons``
        [layers, experts, width]; dense layers (and experts never routed to) score zero."""
        count, width = expert_count(self.model), expert_width(self.model)
        saliency = torch.zeros(self.num_layers, count)
        frequency = torch.zeros(self.num_layers, count)
        neurons = torch.zeros(self.num_layers, count, width)
        for index, sums in self._sums.items():
            routed = sums["routed"].clamp_min(1)
            saliency[index] = (sums["saliency"] / routed).float().cpu()
            frequency[index] = (sums["routed"] / self._tokens[index].clamp_min(1)).float().cpu()
            neurons[index] = (sums["neurons"] / routed.unsqueeze(-1)).float().cpu()
        return {"expert_saliency": saliency, "expert_frequency": frequency, "expert_neurons": neurons}
