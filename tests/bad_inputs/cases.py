"""The whole bad-input corpus: CASES = [(id, expected error regex, make)] (see common.py)."""

from bad_inputs import file_cases, recipe_cases  # noqa: F401  (each registers its cases)
from bad_inputs.common import CASES, TINY_TEACHER

__all__ = ["CASES", "TINY_TEACHER"]
