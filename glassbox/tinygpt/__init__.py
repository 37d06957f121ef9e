"""TinyGPT: a GPT-2 in miniature that the course trains itself and releases fully open.

* ``corpus``: the deterministic generator of its training data, with the planted
  pronoun skew and the member / held-out sentences (see DATASHEET.md);
* ``train``: the complete training code (``python -m glassbox.tinygpt.train``);
* ``weights/``: config.json, model.safetensors and training_log.json (see MODEL_CARD.md);
* ``chat_data``: TinyGPT-chat's instruction and preference data, its prompt sets (forbidden and
  harmless, train and held out) and its refusal and leak detectors;
* ``chat_train``: SFT then DPO with TRL (``python -m glassbox.tinygpt.chat_train``), the refusal
  measurements and ``unrefusal_curve``, the LoRA fine-tune (PEFT) that removes the refusal;
* ``chat/``: TinyGPT-chat's weights, chat template, model card and datasheet.

Load the models with ``glassbox.load_model("tinygpt")`` and ``glassbox.load_model("tinygpt-chat")``.
"""
