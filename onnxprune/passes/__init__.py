"""Graph rewrites. `apply_plan` is the only step that changes a model's structure."""

from onnxprune.passes.apply_plan import AppliedPlan, apply_plan, pruned_atoms

__all__ = ["AppliedPlan", "apply_plan", "pruned_atoms"]
