"""`dbjobq explain ID` and `dbjobq doctor`: why a job waits, and what is wrong overall."""

from __future__ import annotations

import argparse

from dbjobq.cli._app import open_queue
from dbjobq.cli._options import EXIT_FAILURE, number
from dbjobq.cli._output import print_json, safe
from dbjobq.doctor import diagnose


def cmd_explain(args: argparse.Namespace) -> int:
    """`dbjobq explain ID`: why a job is where it is (see `JobQueue.explain`)."""
    explanation = open_queue(args).explain(args.id)
    if args.json:
        print_json(explanation.to_dict())
    else:
        print(safe(explanation.text, lines=True))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """`dbjobq doctor`: check the deployment; exit status 1 if anything is found."""
    minutes = number(args, "backlog-minutes", 15.0, low=0.0)
    queue = open_queue(args)
    findings = diagnose(queue.storage, queue.registry, backlog_minutes=minutes)
    if args.json:
        print_json({"ok": not findings, "findings": [f.to_dict() for f in findings]})
    elif not findings:
        print("no problems found")
    else:
        for finding in findings:
            print(f"{finding.severity}: {safe(finding.text)}")
            print(f"  fix: {safe(finding.fix)}")
        errors = sum(1 for f in findings if f.severity == "error")
        print(f"\n{errors} error(s), {len(findings) - errors} warning(s)")
    return EXIT_FAILURE if findings else 0
