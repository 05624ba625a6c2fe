"""Rubrics: what a judge looks for, on which scale, as a small YAML file.

    name: helpfulness                 # recorded with every verdict
    description: one line             # shown by `prefsmith judge --help`
    scale: [1, 10]                    # pointwise: the score is a number in this closed range
    ties: true                        # pairwise: whether "tie" is an allowed verdict
    reference: false                  # true: the prompt shows a gold answer (reference-guided judging)
    criteria: |                       # the instructions, in the judge's prompt as written
      ...

Built-ins live in `data/rubrics/` (helpfulness, harmlessness, correctness); `load_rubric` takes a built-in
name or a path to your own file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "data" / "rubrics"


class RubricError(ValueError):
    """A rubric that cannot be used: unknown name, unreadable file, a missing or malformed field."""


@dataclass(frozen=True)
class Rubric:
    name: str
    criteria: str
    scale: tuple[float, float] = (1.0, 10.0)
    ties: bool = True
    reference: bool = False
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Everything that changes a verdict (a stage's fingerprint holds it)."""
        return {**asdict(self), "scale": list(self.scale)}


def builtin_rubrics() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_rubric(name_or_path: str) -> Rubric:
    """A built-in rubric by name (`helpfulness`), or a YAML file (`path/to/rubric.yaml`)."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
            raise RubricError(f"rubric file {path} does not exist")
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise RubricError(f"unknown rubric {name_or_path!r}: use one of {', '.join(builtin_rubrics())} "
                              "or a path to a YAML rubric file")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RubricError(f"rubric {path}: cannot read it as YAML ({' '.join(str(err).split())})") from None
    return rubric_from_dict(data, str(path))


def rubric_from_dict(data: Any, source: str = "rubric") -> Rubric:
    if not isinstance(data, dict):
        raise RubricError(f"{source}: expected a mapping with name, criteria, scale")
    unknown = set(data) - {"name", "criteria", "scale", "ties", "reference", "description"}
    if unknown:
        raise RubricError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}; the fields are name, "
                          "description, criteria, scale, ties, reference")
    criteria = data.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise RubricError(f"{source}: `criteria` must be non-empty text (what the judge should look for)")
    scale = data.get("scale", [1, 10])
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scale)
            or not scale[0] < scale[1]):
        raise RubricError(f"{source}: `scale` must be two numbers [LOW, HIGH] with LOW < HIGH, got {scale!r}")
    for flag in ("ties", "reference"):
        if not isinstance(data.get(flag, False), bool):
            raise RubricError(f"{source}: `{flag}` must be true or false")
    name = data.get("name") or Path(source).stem
    return Rubric(name=str(name), criteria=criteria.strip(), scale=(float(scale[0]), float(scale[1])),
                  ties=bool(data.get("ties", True)), reference=bool(data.get("reference", False)),
                  description=str(data.get("description") or ""))
