"""The rule kinds: each a spec (how it is written in a pack) and an evaluator.

See :mod:`rules.kinds.base` for the contract every evaluator keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from rules.kinds.base import Evaluator, PackContext, RuleSpec
from rules.kinds.duration import DurationEvaluator, DurationSpec
from rules.kinds.missing import MissingDataEvaluator, MissingDataSpec
from rules.kinds.quota import QuotaEvaluator, QuotaSpec
from rules.kinds.rate import RateEvaluator, RateSpec
from rules.kinds.ratio import RatioEvaluator, RatioSpec
from rules.kinds.threshold import ThresholdEvaluator, ThresholdSpec
from rules.kinds.window import WindowEvaluator, WindowSpec


@dataclass(frozen=True, slots=True)
class KindDef:
    spec: type[RuleSpec]
    evaluator: Callable[..., Evaluator]  # (spec, PackContext) -> Evaluator


# Every kind's spec, told apart by its ``kind`` field; add new kinds here and below.
AnyRule = Annotated[
    ThresholdSpec
    | WindowSpec
    | DurationSpec
    | RateSpec
    | MissingDataSpec
    | RatioSpec
    | QuotaSpec,
    Field(discriminator="kind"),
]

KINDS: dict[str, KindDef] = {
    "threshold": KindDef(ThresholdSpec, ThresholdEvaluator),
    "window": KindDef(WindowSpec, WindowEvaluator),
    "duration": KindDef(DurationSpec, DurationEvaluator),
    "rate_of_change": KindDef(RateSpec, RateEvaluator),
    "missing_data": KindDef(MissingDataSpec, MissingDataEvaluator),
    "ratio": KindDef(RatioSpec, RatioEvaluator),
    "quota": KindDef(QuotaSpec, QuotaEvaluator),
}


def make_evaluator(spec: RuleSpec, ctx: PackContext) -> Evaluator:
    return KINDS[spec.kind].evaluator(spec, ctx)
