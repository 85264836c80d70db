"""The architecture adapter: one object that knows where things live inside a Hugging Face VLM.

Everything else in analysis_lib reads the adapter and never a module path, so a new architecture
(Qwen2-VL, a SigLIP tower, ...) is one new adapter class registered in ``adapters/__init__.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ..layout import VisualLayout
from . import calls


@dataclass(frozen=True)
class AttentionGeometry:
    """Head layout of an attention block (what is needed to rebuild scores from q/k projections)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, S, H*D] or [B, S, H, D] -> [B, H, S, D]."""
    return x.reshape(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


class ModelAdapter(ABC):
    """Canonical names for the parts of a VLM that capture and pruning touch."""

    family: str = ""
    #: the chat/prompt template of the family; ``{question}`` is replaced, ``{image}`` is the image token text
    prompt_template: str = "{image}\n{question}"
    #: whether the vision tower has a [CLS] token (VisPruner falls back to mean received attention if not)
    has_cls: bool = True
    #: axes of the RoPE position ids: 1 (plain RoPE) or 3 (Qwen's M-RoPE: temporal, height, width)
    rope_axes: int = 1
    #: the forward argument (and ``get_image_features`` argument) that carries the image geometry
    geometry_argument: str = "image_sizes"

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # ---- language model (the layout every supported family shares in transformers 5.x) -------
    @property
    def _core(self) -> nn.Module:
        """The ``*Model`` inside the ``*ForConditionalGeneration`` wrapper."""
        return self.model.model

    @property
    def language_model(self) -> nn.Module:
        return self._core.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def rotary_embedding(self) -> nn.Module:
        return self.language_model.rotary_emb

    def final_normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [B, S, D] through the language model's last norm (what the LM head reads), on its device."""
        norm = self.language_model.norm
        return norm(hidden.to(norm.weight.device))

    @abstractmethod
    def apply_rotary(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q, k of shape [B, heads, S, D] as the model does with (cos, sin) of shape [B, S, D]."""

    @property
    def injection_layers(self) -> int:
        """How many first decoder layers get visual features added to their output at the visual tokens
        (Qwen3-VL's DeepStack; 0 elsewhere). The pruning engine adds them itself, at the kept tokens."""
        return 0

    def map_layer_output(self, output, fn):
        """A decoder layer's output with ``fn`` applied to its hidden states [B, S, D]."""
        return calls.map_layer_output(output, fn)

    def decoder_attention(self, layer: int) -> nn.Module:
        return self.decoder_layers[layer].self_attn

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def text_config(self):
        return self.config.text_config

    @property
    def attn_implementation(self) -> str:
        return self.text_config._attn_implementation or "eager"

    def decoder_geometry(self) -> AttentionGeometry:
        attn = self.decoder_attention(0)
        cfg = self.text_config
        return AttentionGeometry(cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim, attn.scaling)

    # ---- vision tower ---------------------------------------------------------------------
    @property
    @abstractmethod
    def vision_layers(self) -> nn.ModuleList: ...

    def vision_attention(self, layer: int) -> nn.Module:
        return self.vision_layers[layer].self_attn

    def vision_geometry(self) -> AttentionGeometry:
        attn = self.vision_attention(0)
        return AttentionGeometry(attn.num_heads, attn.num_heads, attn.head_dim, attn.scale)

    @property
    @abstractmethod
    def projector(self) -> nn.Module: ...

    @property
    @abstractmethod
    def image_feature_owner(self) -> nn.Module: ...

    @property
    def vision_feature_encoder_layer(self) -> int:
        """Index of the encoder layer whose output is the feature layer fed to the projector."""
        feature_layer = self.config.vision_feature_layer
        if not isinstance(feature_layer, int):
            raise ValueError(f"vision_feature_layer={feature_layer!r}: only a single feature layer is supported")
        n = len(self.vision_layers)
        # hidden_states[0] is the embedding output, hidden_states[i] the output of encoder layer i-1
        return (n + feature_layer) if feature_layer < 0 else feature_layer - 1

    @property
    def patches_per_crop(self) -> int:
        v = self.config.vision_config
        return (v.image_size // v.patch_size) ** 2

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    # ---- forward calls (every spelling of the supported transformers range: see calls.py) ------
    def model_call(self, args: tuple, kwargs: dict) -> calls.ModelCall:
        """The arguments of a top-level forward of the VLM (a pre-hook's view)."""
        return calls.ModelCall(args, kwargs, self.geometry_argument)

    def language_model_call(self, args: tuple, kwargs: dict) -> calls.LanguageModelCall:
        """The arguments the VLM passes to its language model."""
        return calls.LanguageModelCall(args, kwargs)

    def decoder_layer_call(self, args: tuple, kwargs: dict) -> calls.DecoderLayerCall:
        """The arguments of one decoder layer's call."""
        return calls.DecoderLayerCall(args, kwargs)

    def vision_layer_call(self, args: tuple, kwargs: dict) -> calls.VisionLayerCall:
        """The arguments of one vision-tower encoder layer's call (ToMe rewrites its rows and mask)."""
        return calls.VisionLayerCall(args, kwargs)

    def attention_call(self, args: tuple, kwargs: dict) -> calls.AttentionCall:
        """The arguments of an attention block's call (its RoPE, its attention segments)."""
        return calls.AttentionCall(args, kwargs)

    def qk_projections(self, attention: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The modules whose outputs are an attention block's raw queries and keys."""
        return attention.q_proj, attention.k_proj

    def output_cache(self, output):
        """The KV cache a forward of this model returned (None without one)."""
        return calls.output_cache(output)

    def cache_tensors(self, cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per decoder layer of this model's KV cache."""
        return calls.cache_tensors(cache)

    def watch_image_geometry(self, on_geometry) -> object:
        """Call ``on_geometry(geometry)`` whenever the model encodes images (inside forward, or before it
        when ``generate`` pre-encodes them); returns the function that removes the watch."""
        return calls.watch_argument(self.image_feature_owner, "get_image_features", self.geometry_argument,
                                    on_geometry)

    def reuse_image_features(self) -> calls.LastResult:
        """While the returned switch is active, encoding the same images again returns the previous
        encoding (``close()`` ends it): settings that leave the vision tower alone share one encoding."""
        return calls.LastResult(self.image_feature_owner, "get_image_features")

    # ---- positions: canonical [axes, B, L] tensors, converted to the model's format here -----------
    def canonical_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """A call's position ids -> [rope_axes, B, L]."""
        return position_ids[None] if position_ids.dim() == 2 else position_ids

    def argument_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """[rope_axes, B, L] -> the position ids the model's forward and language model take."""
        return positions[0]

    def prompt_positions(self, call: calls.ModelCall, mask: torch.Tensor) -> torch.Tensor:
        """[axes, B, L] positions of a prompt call; the call is made to use them (generate's padded ids)."""
        if call.positions is None:
            call.positions = calls.padded_position_ids(mask)
        return self.canonical_positions(call.positions)

    def step_positions(self, call: calls.ModelCall, start: torch.Tensor) -> torch.Tensor:
        """[axes, B, T] positions of a decoding call whose first new token has position ``start`` [B] on
        every axis (text continues after the prompt's largest position); written into the call if absent."""
        if call.positions is None:
            length = call.tokens.shape[1]
            steps = start[:, None] + torch.arange(length, device=start.device)
            call.positions = self.argument_positions(steps[None].expand(self.rope_axes, -1, -1))
        return self.canonical_positions(call.positions)

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) the decoder layers apply at [axes, B, S] positions."""
        return self.rotary_embedding(hidden, self.argument_positions(positions))

    def layer_inputs(self, layer_call: calls.DecoderLayerCall, hidden: torch.Tensor, mask: torch.Tensor | None,
                     positions: torch.Tensor) -> tuple[tuple, dict]:
        """(args, kwargs) running a decoder layer on ``hidden`` with this 4D mask at [axes, B, S] positions."""
        return layer_call.rewrite(hidden, mask, positions[0], self.rope(hidden, positions))

    def rewrite_language_model_call(self, lm_call: calls.LanguageModelCall, embeddings: torch.Tensor,
                                    mask: torch.Tensor, positions: torch.Tensor) -> None:
        """Make the language model run on ``embeddings`` with a 2D mask at [axes, B, S] positions."""
        lm_call.rewrite(embeddings, mask, self.argument_positions(positions))

    # ---- vision tower attention and features ---------------------------------------------------
    def vision_attention_maps(self, q: torch.Tensor, k: torch.Tensor, call: calls.AttentionCall,
                              geometry) -> list[torch.Tensor]:
        """Attention probabilities [H, T, T] of one vision layer per encoder crop (tokens in the crop's
        patch order, [CLS] first where the tower has one), from the raw q/k projection outputs."""
        geo = self.vision_geometry()
        qh, kh = split_heads(q, geo.head_dim).float(), split_heads(k, geo.head_dim).float()
        return list(torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * geo.scaling, dim=-1))

    def pool_patches(self, values: torch.Tensor) -> torch.Tensor:
        """Per-patch values [..., P] of one crop -> per visual token of that crop (identity: one patch a token)."""
        return values

    def vision_token_features(self, hidden: torch.Tensor, geometry) -> torch.Tensor:
        """The feature layer's output -> [crops, tokens, C]: what the projector reads for each visual token."""
        return hidden[:, 1:] if self.has_cls else hidden

    def vision_token_keys(self, k: torch.Tensor, geometry) -> torch.Tensor:
        """A vision layer's raw key projection output -> [crops, tokens, C]: each visual token's keys (all heads)."""
        return self.vision_token_features(k, geometry)

    #: whether the projector maps each visual token's features on their own (``project_tokens`` works)
    projects_per_token: bool = True

    def project_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Projector outputs [n, D] of per-token projector inputs [n, C] (a merge before the projector)."""
        weight = next(self.projector.parameters())
        return self.projector(features.to(weight.device, weight.dtype))

    def prompt_length(self, inputs) -> int:
        """Length of a processor batch's (padded) token sequence."""
        return int(inputs["input_ids"].shape[1])

    def token_counts(self, inputs) -> list[int]:
        """Real (unpadded) tokens per sample of a processor batch."""
        return inputs["attention_mask"].sum(dim=1).tolist()

    # ---- inputs ---------------------------------------------------------------------------
    def inputs_layout(self, inputs) -> VisualLayout:
        """The layout of a processor's batch (``input_ids`` and, where the family has them, image sizes)."""
        return self.layout(inputs["input_ids"].cpu(), inputs.get(self.geometry_argument))

    @abstractmethod
    def layout(self, input_ids: torch.Tensor, geometry: torch.Tensor | None = None) -> VisualLayout:
        """Where the visual tokens of each sample are, and where each lies in its image."""

    @abstractmethod
    def num_visual_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """How many image tokens the processor expands one image of this (height, width) into."""

    def format_prompt(self, question: str, image_token: str = "<image>") -> str:
        """The family's single-turn prompt with one image placeholder."""
        return self.prompt_template.format(image=image_token, question=question)

    def visual_positions(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Sequence positions of the image tokens, per sample; errors if a sample has none."""
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(dim=1)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"input_ids: samples {missing} contain no image token (image_token_id={self.image_token_id}); "
                "pruning and visual attention capture need every sample to have an image")
        return [row.nonzero().flatten() for row in is_image]
