"""Exercise checks: one module per chapter, named after its notebook, on one shared layer.

``notebooks/05_changing_the_model.ipynb``'s exercises are checked by
``glassbox.exercise_checks.changing_the_model``, and so on (chapter 02's by ``anatomy``).
A notebook's check cell calls e.g.
``glassbox.exercise_checks.anatomy.check_count_parameters(count_parameters, model)``.
Success prints one line starting with ✓; a wrong answer raises
:class:`~glassbox.exercise_checks.feedback.ExerciseFailed` whose message names what is
wrong and gives a hint. Every module calls the learner's code and compares through
:mod:`glassbox.exercise_checks.feedback`; chapters 08 and 09 share the interval helpers of
:mod:`glassbox.exercise_checks.intervals`; the measurements they share with training live in
:mod:`glassbox.measure`.
"""

from glassbox.exercise_checks.feedback import ExerciseFailed

__all__ = ["ExerciseFailed"]
