"""TinyGPT: a GPT-2 in miniature that the course trains itself and releases fully open.

* ``corpus``: the deterministic generator of its training data, with the planted
  pronoun skew and the member / held-out sentences (see DATASHEET.md);
* ``train``: the complete training code (``python -m glassbox.tinygpt.train``);
* ``weights/``: config.json, model.safetensors and training_log.json (see MODEL_CARD.md).

Load the model with ``glassbox.load_model("tinygpt")``.
"""
