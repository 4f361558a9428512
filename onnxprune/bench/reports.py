"""What CI systems read from a gated `bench`: a line per failing gate, JUnit XML (one testcase per
gate) and a markdown table for a job summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from onnxprune.bench.gates import Decision, model_name


def interval_text(decision: Decision, confidence: float) -> str:
    """'95% CI 3.41×–3.62×'."""
    gate, estimate = decision.gate, decision.estimate
    return f"{confidence * 100:g}% CI {gate.format(estimate.low)}–{gate.format(estimate.high)}"


def runs_text(decision: Decision) -> str:
    """'2 rounds, 200 runs per model'."""
    rounds = f"{decision.rounds} round{'s' if decision.rounds != 1 else ''}"
    return f"{rounds}, {decision.runs} runs per model"


def outcome_text(decision: Decision) -> str:
    """'pass', 'fail', or 'fail (inconclusive; point estimate)'."""
    if decision.state == "inconclusive":
        return f"{decision.verdict} (inconclusive; {decision.decided_by})"
    return decision.verdict


def gate_line(decision: Decision, confidence: float) -> str:
    """One line: model, batch, measured, required, interval, rounds, outcome."""
    gate = decision.gate
    return (
        f"{model_name(decision.model)} batch {gate.batch}: {gate.what()} {gate.format(decision.estimate.point)}, "
        f"required {gate.bar()} ({interval_text(decision, confidence)}; {runs_text(decision)}): "
        f"{outcome_text(decision)}"
    )


def summary_line(decisions: list[Decision]) -> str:
    """'gates: 3 passed, 1 failed (1 inconclusive, decided by the point estimate)'."""
    passed = sum(d.passed for d in decisions)
    unsure = [d for d in decisions if d.state == "inconclusive"]
    how = sorted({d.decided_by for d in unsure})
    extra = f" ({len(unsure)} inconclusive after every round, decided by the {', '.join(how)})" if unsure else ""
    return f"gates: {passed} passed, {len(decisions) - passed} failed{extra}"


def junit_xml(decisions: list[Decision], confidence: float, properties: dict | None = None) -> str:
    """A JUnit XML document: one testsuite, one testcase per gate, a `<failure>` for each failed one."""
    failures = sum(not d.passed for d in decisions)
    suites = ET.Element("testsuites", name="onnxprune bench", tests=str(len(decisions)), failures=str(failures))
    suite = ET.SubElement(
        suites, "testsuite", name="onnxprune bench gates", tests=str(len(decisions)), failures=str(failures)
    )
    suite.set("errors", "0")
    suite.set("skipped", "0")
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", name=str(key), value=str(value))
    for decision in decisions:
        gate = decision.gate
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"onnxprune.bench.{gate.kind}",
            name=f"{model_name(decision.model)} batch {gate.batch} {gate.what()} {gate.bar()}",
        )
        line = gate_line(decision, confidence)
        if not decision.passed:
            failure = ET.SubElement(case, "failure", message=line, type=gate.kind)
            failure.text = line
        ET.SubElement(case, "system-out").text = line
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def markdown(doc: dict, decisions: list[Decision], confidence: float, notes: list[str]) -> str:
    """A job summary: the latency table of the --json document `doc`, then one row per gate."""
    lines = [
        f"### onnxprune bench: ONNX Runtime {doc['onnxruntime']} {doc['provider']} on {doc['device']}",
        "",
        "| model | batch | median ms | p90 ms | samples/s | speedup | runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["results"]:
        speedup = f"{row['speedup']:.2f}×" if row.get("speedup") else "-"
        lines.append(
            f"| {model_name(row['model'])} | {row['batch']} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} | "
            f"{row['throughput']:.1f} | {speedup} | {row['runs']} |"
        )
    if decisions:
        lines += [
            "",
            f"**{summary_line(decisions)}**",
            "",
            f"| gate | model | batch | measured | required | {confidence * 100:g}% CI | rounds | runs | result |",
            "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for d in decisions:
            gate, est = d.gate, d.estimate
            mark = "✅" if d.passed else "❌"
            lines.append(
                f"| {gate.what()} | {model_name(d.model)} | {gate.batch} | {gate.format(est.point)} | {gate.bar()} | "
                f"{gate.format(est.low)} – {gate.format(est.high)} | {d.rounds} | {d.runs} | "
                f"{mark} {outcome_text(d)} |"
            )
    lines += [""] + [f"* {note}" for note in notes] if notes else []
    return "\n".join(lines) + "\n"
