"""The rule kinds: each a spec (how it is written in a pack) and an evaluator.

See :mod:`rules.kinds.base` for the contract every evaluator keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from rules.kinds.base import Evaluator, PackContext, RuleSpec
from rules.kinds.threshold import ThresholdEvaluator, ThresholdSpec


@dataclass(frozen=True, slots=True)
class KindDef:
    spec: type[RuleSpec]
    evaluator: Callable[..., Evaluator]  # (spec, PackContext) -> Evaluator


# Every kind's spec, told apart by its ``kind`` field; add new kinds here and below.
AnyRule = Annotated[ThresholdSpec, Field(discriminator="kind")]

KINDS: dict[str, KindDef] = {
    "threshold": KindDef(ThresholdSpec, ThresholdEvaluator),
}


def make_evaluator(spec: RuleSpec, ctx: PackContext) -> Evaluator:
    return KINDS[spec.kind].evaluator(spec, ctx)
