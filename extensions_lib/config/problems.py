"""How a config is refused: every problem by field, with the value and what is allowed, so a user
fixes a config in one go."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ConfigProblem:
    field: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value!r}: {self.allowed}"


class ConfigError(ValueError):
    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid training configuration ({len(problems)} problem(s)):\n{lines}")
