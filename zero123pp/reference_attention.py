"""Reference attention: the UNet's self-attention also looks at the condition image's tokens.

Every denoising step of Zero123++ runs the UNet twice with the same weights and timestep:
first on the condition latent noised to that step (the "write" pass, whose output is
discarded), then on the current latents (the "read" pass). Each self-attention layer of the
read pass takes as keys and values its own tokens followed by the tokens the same layer saw
in the write pass.

The two passes cannot share one batched call: the condition latent (64x64 for the real
model) and the view latents (80x120) differ in size, so they are separate UNet calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

Phase = Literal["off", "write", "read"]


@dataclass
class ReferenceState:
    """What every self-attention processor of one UNet shares: the phase of the current
    forward pass and the tokens stored by the write pass, keyed by layer name."""

    phase: Phase = "off"
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)


class ReferenceAttnProcessor:
    """Self-attention that stores its input tokens (write) or also attends to them (read)."""

    def __init__(self, name: str, state: ReferenceState) -> None:
        self.name = name
        self.state = state
        self.attend = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.state.phase == "write":
            self.state.tokens[self.name] = hidden_states
        elif self.state.phase == "read":
            encoder_hidden_states = torch.cat([hidden_states, self.state.tokens.pop(self.name)], dim=1)
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_reference_attention(unet: torch.nn.Module) -> ReferenceState:
    """Give every self-attention layer (``attn1``) of ``unet`` a reference processor.

    Cross-attention keeps the standard scaled-dot-product processor. Returns the state that
    the caller switches between phases.
    """
    state = ReferenceState()
    processors = {
        name: ReferenceAttnProcessor(name, state) if name.endswith("attn1.processor") else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
    return state
