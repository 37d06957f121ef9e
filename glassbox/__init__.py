"""Glass Box: the small package behind the course notebooks.

Teaching code lives in the notebooks. This package holds only the plumbing that
several notebooks share: loading a model, the exercise checks and the course paths.
``load_model`` is imported on first use, so ``glassbox.setup_check`` still runs (and
can say what is wrong) when torch or transformers are missing.
"""

__all__ = ["load_model"]


def __getattr__(name: str):
    if name == "load_model":
        from glassbox.loader import load_model

        return load_model
    raise AttributeError(f"module 'glassbox' has no attribute {name!r}")
