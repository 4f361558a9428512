"""The op-rule registry: one rule per op type says how the op relates channel spaces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from onnxprune.analysis.relations import Relations
from onnxprune.model.view import ModelView
from onnxprune.registry import Registry

RelateFn = Callable[[Relations, onnx.NodeProto, ModelView], None]
RewriteFn = Callable[[onnx.NodeProto, "object"], None]


@dataclass(frozen=True)
class OpRule:
    """How one op type maps channels (`relate`) and fixes its size attributes after pruning."""

    ops: tuple[str, ...]
    relate: RelateFn
    mapping: str
    freezes_when: str
    rewrite: RewriteFn | None = None
    opsets: str = "11-21"


#: op type -> its rule (the built-in rule modules are listed in `onnxprune/registry.py`)
RULES: Registry[OpRule] = Registry("op rule")


def rule(*ops: str, mapping: str, freezes_when: str = "never", rewrite: RewriteFn | None = None,
         opsets: str = "11-21") -> Callable[[RelateFn], RelateFn]:
    """Register `relate` as the rule for `ops`; `mapping`/`freezes_when` document it for `ops`."""

    def register(relate: RelateFn) -> RelateFn:
        entry = OpRule(ops, relate, mapping, freezes_when, rewrite, opsets)
        for op in ops:
            RULES.add(op, entry)
        return relate

    return register


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    """The rule for a node of the default ONNX domain, or None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    return RULES.get(node.op_type)
