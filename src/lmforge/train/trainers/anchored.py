"""SFT with ASFT's loss (losses/anchored.py): each batch runs through the reference first, whose
outputs the loss reads next to the model's."""

from __future__ import annotations

from torch import nn

from lmforge.train.trainers.base import AtomicCheckpointTrainer
from lmforge.train.trainers.reference import ReferenceMixin, prepared_reference


class AnchoredSFTTrainer(ReferenceMixin, AtomicCheckpointTrainer):
    """`compute_loss_func` is an AnchoredLinearLoss or AnchoredLogitsLoss; `ref_model` as
    load_reference_model gives it (None with LoRA: the base, adapters disabled)."""

    def __init__(self, *args, ref_model: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_model = prepared_reference(self, ref_model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The reference reads the batch as the model does (packed rows' positions and
        # sequence boundaries included); only the labels are the loss's.
        batch = {k: v for k, v in inputs.items() if k != "labels"}
        loss = self.compute_loss_func
        if loss.chunked:
            loss.reference = self.reference_hidden(model, batch)
        else:
            loss.reference = self.reference_logits(model, batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
