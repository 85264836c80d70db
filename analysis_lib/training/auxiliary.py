"""Auxiliary training signals that are not part of the saved model: read-outs of the vision tower
(stage "tower") and optional extra losses on the language model (stages "language")."""

from __future__ import annotations

import torch
from torch import nn

from ..scenes.attributes import BACKGROUND_NAME
from .data import COLOUR_CLASSES, IGNORE, SHAPE_CLASSES, Batch


class PatchHeads(nn.Module):
    """Linear read-outs of the tower's feature layer, per patch: colour, shape, box bins, centre."""

    def __init__(self, hidden: int, box_bins: int):
        super().__init__()
        self.box_bins = box_bins
        self.colour = nn.Linear(hidden, len(COLOUR_CLASSES))
        self.shape = nn.Linear(hidden, len(SHAPE_CLASSES))
        self.box = nn.Linear(hidden, 4 * box_bins)
        self.centre = nn.Linear(hidden, 1)

    def losses(self, features: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        box_logits = self.box(features).reshape(*features.shape[:2], 4, self.box_bins)
        return {
            "colour": nn.functional.cross_entropy(self.colour(features).flatten(0, 1), batch.patch_colour.flatten()),
            "shape": nn.functional.cross_entropy(self.shape(features).flatten(0, 1), batch.patch_shape.flatten()),
            "box": nn.functional.cross_entropy(box_logits.flatten(0, 2), batch.patch_box.flatten(), ignore_index=IGNORE),
            "centre": nn.functional.binary_cross_entropy_with_logits(self.centre(features).squeeze(-1), batch.patch_centre),
        }

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Per-patch accuracy on object patches (colour, shape, all four box bins right)."""
        on_object = batch.patch_colour > 0
        box = self.box(features).reshape(*features.shape[:2], 4, self.box_bins).argmax(-1)
        return {
            "patch_colour": (self.colour(features).argmax(-1) == batch.patch_colour)[on_object].float().mean().item(),
            "patch_shape": (self.shape(features).argmax(-1) == batch.patch_shape)[on_object].float().mean().item(),
            "patch_box": (box == batch.patch_box).all(-1)[on_object].float().mean().item(),
        }


class RelevancePointer(nn.Module):
    """An auxiliary read-out, never part of the saved model: a bilinear score between the language
    model's hidden state at a position that predicts an answer token and at each image token (after
    `layer` decoder layers), trained so that its softmax over the image tokens puts its mass on the
    ground-truth relevant patches of the first question. It teaches the language model to represent
    what to look for and where, without touching the attention weights the pruning methods read.
    tokens="first": only where the first answer token is predicted (the last prompt token);
    "answer": at every token of the first answer (a box is four numbers, each read off its object)."""

    def __init__(self, hidden: int, layer: int, dim: int = 64):
        super().__init__()
        self.layer = layer
        self.query = nn.Linear(hidden, dim)
        self.key = nn.Linear(hidden, dim)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], batch: Batch, image_token_id: int,
             tokens: str = "first") -> torch.Tensor:
        hidden = hidden_states[self.layer]
        answer = batch.labels != IGNORE
        start = answer.int().argmax(1, keepdim=True)
        index = torch.arange(answer.shape[1]).expand_as(answer)
        if tokens == "first":
            first_answer = index == start
        else:  # the first run of answer labels
            first_answer = answer & ((~answer & (index > start)).cumsum(1) == 0)
        # the hidden state one position earlier predicts each answer token
        rows, positions = first_answer[:, 1:].nonzero(as_tuple=True)
        query = self.query(hidden[rows, positions])
        image = hidden[batch.input_ids == image_token_id].reshape(hidden.shape[0], -1, hidden.shape[-1])
        scores = torch.einsum("qd,qnd->qn", query, self.key(image)[rows]) / self.query.out_features**0.5
        relevance = batch.relevance[rows]
        log_p = scores.float().log_softmax(-1).masked_fill(~relevance, float("-inf"))
        has_target = relevance.any(-1)
        return -log_p.logsumexp(-1)[has_target].mean()


def image_word_loss(logits: torch.Tensor, batch: Batch, image_token_id: int, tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    """An auxiliary loss on the language model's output at every image token: predict the words of
    the patch's object, sharing the probability equally among them: its colour and shape names and
    (with "box") the four bins of its box, the words a box answer is made of. Background patches name
    the background ("black") for colour and shape, and nothing for "box" (patches with no word are
left out). The answers' words thus become readable from the image tokens' last
    hidden states, so attending to the right token is enough to answer (the copy path)."""
    names = {"colour": COLOUR_CLASSES, "shape": SHAPE_CLASSES}
    targets = []  # (B, N) token ids per word, -1 where a patch has no such word
    for word in words:
        if word == "box":
            bins = [tokenizer.convert_tokens_to_ids(str(b)) for b in range(int(batch.patch_box.max()) + 1)]
            lookup = torch.tensor(bins + [-1])  # IGNORE (-100) indexes the final -1
            targets += [lookup[batch.patch_box[..., k].clamp(min=-1)] for k in range(4)]
        else:
            ids = [tokenizer.convert_tokens_to_ids(w) for w in (BACKGROUND_NAME, *names[word][1:])]
            classes = batch.patch_colour if word == "colour" else batch.patch_shape
            targets.append(torch.tensor(ids)[classes])
    targets = torch.stack(targets, -1).reshape(-1, len(targets))
    log_p = logits[batch.input_ids == image_token_id].float().log_softmax(-1)
    present = targets >= 0
    named = present.any(1)
    picked = log_p.gather(1, targets.clamp(min=0)) * present
    return -(picked.sum(1)[named] / present.sum(1)[named]).mean()


def tower_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch features LLaVA feeds its projector: the feature layer's output without [CLS]."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_feature_layer][:, 1:]
