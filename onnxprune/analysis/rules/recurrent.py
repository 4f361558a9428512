"""Channel rules for recurrent layers (LSTM, GRU, RNN): their input features are consumer columns.

The input weight W is [directions, gates·hidden, input_size]; its last axis reads the input's
feature axis (axis 2 for both layouts: [seq, batch, input] and, with layout=1, [batch, seq,
input]). A pruned input feature's column of W is masked to 0 in the reference and removed in the
pruned model, which computes the same gates. The hidden size (R, B, the outputs and the states)
is not pruned: those axes are frozen, with the rule's reason.
"""

from __future__ import annotations

from onnxprune.analysis.rules.macs import recurrent_macs, recurrent_unscaled_macs
from onnxprune.analysis.rules.registry import WeightLayout, rule


@rule(
    "LSTM",
    "GRU",
    "RNN",
    mapping="input features (X's last axis) = W's last axis (consumer columns); the hidden size is not pruned",
    freezes_when="W is computed at run time",
    macs=recurrent_macs,
    layout=WeightLayout(out_axis=1, in_axis=2, unscaled_macs=recurrent_unscaled_macs),
)
def recurrent(rel, node, view):
    """LSTM/GRU/RNN with a constant input weight W: a consumer of its input's features."""
    x, w = node.input[0], node.input[1]
    if not view.is_const(w) or rel.rank(w) != 3 or rel.rank(x) != 3:
        return rel.freeze_node(f"{node.op_type} input weight W is computed at run time")
    rel.weight(w, 2, "in", 0.0, like=(x, 2))
    for name in [n for n in list(node.input[2:]) + list(node.output) if n]:
        for axis in range(rel.rank(name) or 0):
            rel.freeze(name, axis, f"the hidden size of {node.op_type} {rel.label} is not pruned")
