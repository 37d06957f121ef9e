"""Glass Box: the small package behind the course notebooks.

Teaching code lives in the notebooks. This package holds only the plumbing that
several notebooks share: loading a model, the exercise checks and the course paths.
"""

from glassbox.loader import load_model

__all__ = ["load_model"]
