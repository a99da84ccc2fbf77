"""trustlora: personalized collaborative LoRA fine-tuning with learned trust.

N users share one frozen causal LM, each trains a LoRA adapter on private text, and every few steps
they exchange adapter updates and aggregate them weighted by a per-user row of a trust matrix W.
Entry points: the ``trustlora`` CLI (``trustlora run``), or :func:`trustlora.api.run`.
"""

__version__ = "0.1.0"
