"""The frozen base model's predictions on the public set X_S: the starting point that relative trust
calibration (strategy 'predictions') measures each user's movement from.

    v, i = base_topk_predictions(mm, reference_stream, k=10, space="probs", seq_len=128, batch_size=8,
                                 precision="fp32")   # [M, k] each, computed once per run

Adapters are switched off, so one copy of the text is enough (no N-fold stacked batch).
"""

from __future__ import annotations

import torch

from trustlora.train import autocast, stacked_loss, windows


@torch.no_grad()
def base_topk_predictions(
    mm, stream: torch.Tensor, k: int, space: str, seq_len: int, batch_size: int, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k next-token values ([M, k] float32, probabilities or raw logits) and ids ([M, k] int32) of the
    frozen base model on the real positions of ``stream``'s windows (the same positions as topk_predictions)."""
    w_ids, w_mask = windows(stream, seq_len)
    was_training = mm.training
    mm.eval()
    mm.adapters_enabled(False)
    vals, idxs = [], []
    try:
        for start in range(0, w_ids.shape[0], batch_size):
            ids = w_ids[start : start + batch_size].to(mm.device)
            m = w_mask[start : start + batch_size].reshape(-1).bool()
            with autocast(precision, mm.device):
                _, _, (v, i) = stacked_loss(mm, ids, 1, topk=(k, space))  # (b, T, k)
            vals.append(v.reshape(-1, k)[m.to(v.device)].cpu())
            idxs.append(i.reshape(-1, k)[m.to(i.device)].to(torch.int32).cpu())
    finally:
        mm.adapters_enabled(True)
        mm.train(was_training)
    return torch.cat(vals), torch.cat(idxs)
