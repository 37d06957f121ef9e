"""Exercise checks: one module per chapter, plus generic feedback helpers.

A notebook's check cell calls e.g.
``glassbox.exercise_checks.anatomy.check_count_parameters(count_parameters, model)``.
Success prints one line starting with ✓; a wrong answer raises
:class:`~glassbox.exercise_checks.feedback.ExerciseFailed` whose message names what is
wrong and gives a hint.
"""

from glassbox.exercise_checks.feedback import ExerciseFailed

__all__ = ["ExerciseFailed"]
