"""junit.xml: one test case per gate rule, so CI systems show the gate like tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def write_junit(results: dict[str, Any], path: Path) -> None:
    suite_name = f"qeval.{results['suite']['name']}"
    rules = [(d, r) for d in results["decisions"] for r in d["rules"]]
    not_run = results.get("not_run") or []
    failures = sum(1 for _, r in rules if r["passed"] is False)
    skipped = sum(1 for _, r in rules if r["passed"] is None) + len(not_run)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(rules) + len(not_run)),
                       failures=str(failures), skipped=str(skipped), errors="0")
    for decision, rule in rules:
        case = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{decision['cell_id']}", name=rule["rule_id"])
        if rule["passed"] is False:
            ET.SubElement(case, "failure", message=rule["message"][:200], type="GateFailure").text = rule["message"]
        elif rule["passed"] is None:
            ET.SubElement(case, "skipped", message=f"INCONCLUSIVE: {rule['message']}"[:200])
        ET.SubElement(case, "system-out").text = rule["message"]
    for cell in not_run:  # an engine that cannot run here: skipped with the reason, never a pass
        case = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{cell['id']}", name="not_run")
        ET.SubElement(case, "skipped", message=f"NOT RUN: {cell['reason']}"[:200])
        ET.SubElement(case, "system-out").text = f"NOT RUN: {cell['reason']}"
    from qeval.store import write_bytes_atomic

    write_bytes_atomic(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
