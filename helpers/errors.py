"""Errors the helpers raise on purpose: each says what went wrong and what to do."""


class CourseError(Exception):
    """Base class: a problem the learner can fix; the message says how."""


class CourseModelError(CourseError):
    """A course model could not be built, or failed its quality gate."""
