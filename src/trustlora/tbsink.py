"""TensorBoard sink: the run's records (the same dicts that go to metrics.jsonl) as TensorBoard event files.

    sink = TensorBoardSink(run_dir / "tensorboard")   # log.tensorboard=true does this in every run
    sink(record)                                      # any metrics.jsonl record; unknown kinds are ignored
    sink.close()

What it shows, per global step: ``ppl/<split>/user_<u>`` and ``ppl/<split>/mean`` for every evaluation (``<split>`` is
``val``/``test`` for full evaluations and ``val_sub``/``test_sub`` for the per-round subsamples; the frozen base model
at step 0 as ``base_ppl/...``), ``loss/train/user_<u>`` per round, and per trust round the matrix W as an image
(``W``, rows = receivers, white = 1), ``trust/self_weight/user_<u>``, ``trust/seconds`` and trust quality scalars
when the run knows the data mixture. It is a second reader of the record contract (:mod:`trustlora.rundir`): it reads
only documented keys (kind, step, users, split, full, model, ppl, loss, W, quality, seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trustlora.config import UserError


class TensorBoardSink:
    """Writes records to TensorBoard event files under ``log_dir`` (created)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise UserError(
                "log.tensorboard=true needs the 'tensorboard' package: pip install -e '.[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def __call__(self, rec: dict) -> None:
        kind, step = rec.get("kind"), int(rec.get("step", 0))
        users = list(rec.get("users", []))
        if kind == "eval":
            split = rec["split"] + ("" if rec.get("full") else "_sub")
            tag = "base_ppl" if rec.get("model") == "base" else "ppl"
            self._per_user(f"{tag}/{split}", users, rec["ppl"], step)
        elif kind == "train":
            self._per_user("loss/train", users, rec["loss"], step)
        elif kind == "trust":
            w = np.asarray(rec["W"], dtype=np.float64)
            self.writer.add_image("W", np.clip(w, 0.0, 1.0).astype(np.float32), step, dataformats="HW")
            rows = users if len(users) == w.shape[0] else list(range(w.shape[0]))
            for a, u in enumerate(rows):
                self.writer.add_scalar(f"trust/self_weight/user_{u}", float(w[a, u]), step)
            if rec.get("seconds") is not None:
                self.writer.add_scalar("trust/seconds", float(rec["seconds"]), step)
            for key, value in (rec.get("quality") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"trust/quality/{key}", float(value), step)
        self.writer.flush()

    def _per_user(self, tag: str, users: list[int], values: list[float], step: int) -> None:
        for u, v in zip(users, values, strict=False):
            self.writer.add_scalar(f"{tag}/user_{u}", float(v), step)
        if values:
            self.writer.add_scalar(f"{tag}/mean", float(np.mean(values)), step)

    def close(self) -> None:
        self.writer.close()
