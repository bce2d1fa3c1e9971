#!/usr/bin/env python3
"""Self-certification: proves the harness has teeth.

Runs `mtor-cert` against the reference realm built with `--features defects`:
  * clean (no MTOR_DEFECT) N times with one seed: every case must PASS, identical verdicts;
  * once per seeded defect of `ci/defect-matrix.toml`: exactly the mapped cases must FAIL
    (cases listed under `maybe` may FAIL or be UNKNOWN), every other case must PASS.
Writes a Markdown matrix (defects x cases, kill rate, false alarms, run times) and exits 1 on any
surviving defect, false alarm, unmapped failure or differing clean verdicts.

Profiles: `full` runs the whole plan for every defect. `fast` (CI) runs, for each defect, the
cases of its own family and the cases it is mapped to (`catches`, `maybe`): that proves every
mapped case FAILs and that nothing else in the family trips. What only `full` shows is a defect
tripping a case of another family that the matrix does not map (an incomplete mapping, not a
blind harness). The clean runs run the whole plan in both profiles.

Usage: ci/self-certify.py --realm target/debug/mtor-realm-defects [--cert target/debug/mtor-cert]
       [--profile fast|full] [--clean-runs 3] [--only NAME,...] [--doc docs/self-certification.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 900  # one harness run; the harness bounds its own waits, this bounds the harness


def load_matrix(path: Path) -> dict:
    with path.open("rb") as f:
        m = tomllib.load(f)
    names = set()
    for d in m.get("defect", []):
        for key in ("name", "family", "description", "catches"):
            if key not in d:
                sys.exit(f"{path}: defect {d.get('name', '?')} lacks `{key}`")
        if d["name"] in names:
            sys.exit(f"{path}: defect {d['name']} twice")
        names.add(d["name"])
        if not d["catches"]:
            sys.exit(f"{path}: defect {d['name']} catches nothing: a defect no case catches is a gap, not a row")
    return m


# Cases that judge what the rest of the run did need that rest in the fast profile too: the audit
# cases check every critical event of the run and page through its log, which the token workload
# fills (alone, the audit family sees a few records on one page and catches nothing).
FAMILY_CONTEXT = {"audit": ["tokens.*"]}


def run_harness(cert: Path, realm: Path, out: Path, seed: int, defect: str | None,
                cases: str | None) -> tuple[dict | None, float, str]:
    """One harness run; returns (results.json or None, seconds, note)."""
    spawn = f"{shlex.quote(str(realm))} up --listen 127.0.0.1:{{port}} --data {{data_dir}} --workers 2"
    cmd = [str(cert), "run", "--spawn", spawn, "--seed", str(seed), "--out", str(out), "--mode", "ci"]
    if cases:
        cmd += ["--cases", cases]
    env = dict(os.environ)
    env.pop("MTOR_DEFECT", None)
    if defect:
        env["MTOR_DEFECT"] = defect
    log = out.with_suffix(".log")
    start = time.monotonic()
    with log.open("w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, time.monotonic() - start, f"harness run exceeded {RUN_TIMEOUT_S} s (log {log})"
    took = time.monotonic() - start
    results = out / "results.json"
    if not results.is_file():
        return None, took, f"no results.json (exit {rc}; log {log})"
    with results.open() as f:
        return json.load(f), took, f"exit {rc}"


def verdicts(results: dict) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in results["cases"]}


def judge_defect(d: dict, got: dict[str, str]) -> tuple[str, list[str]]:
    """'caught', 'survived' or 'false-alarm' with the problems found."""
    catches, maybe = set(d["catches"]), set(d.get("maybe", []))
    problems = []
    for case in sorted(catches):
        v = got.get(case)
        if v is None:
            problems.append(f"{case} did not run")
        elif v != "FAIL":
            problems.append(f"{case} is {v}, expected FAIL")
    unmapped = [f"{c} {v}" for c, v in sorted(got.items())
                if v != "PASS" and c not in catches and not (c in maybe and v in ("FAIL", "UNKNOWN"))]
    if unmapped:
        problems.append("unmapped: " + ", ".join(unmapped))
    if any("expected FAIL" in p or "did not run" in p for p in problems):
        return "survived", problems
    return ("false-alarm" if unmapped else "caught"), problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realm", type=Path, required=True, help="mtor-realm built with --features defects")
    ap.add_argument("--cert", type=Path, default=ROOT / "target/debug/mtor-cert")
    ap.add_argument("--matrix", type=Path, default=ROOT / "ci/defect-matrix.toml")
    ap.add_argument("--profile", choices=["fast", "full"], default="fast")
    ap.add_argument("--clean-runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--only", help="comma-separated defect names (default: all)")
    ap.add_argument("--doc", type=Path, help="write the Markdown matrix here")
    ap.add_argument("--keep", type=Path, help="keep the bundles here (default: a temporary directory)")
    a = ap.parse_args()

    for p in (a.realm, a.cert):
        if not p.is_file():
            sys.exit(f"{p}: not found (build it first; see the usage line)")
    matrix = load_matrix(a.matrix)
    defects = matrix["defect"]
    if a.only:
        wanted = set(a.only.split(","))
        unknown = wanted - {d["name"] for d in defects}
        if unknown:
            sys.exit(f"not in {a.matrix}: {', '.join(sorted(unknown))}")
        defects = [d for d in defects if d["name"] in wanted]
    work = a.keep or Path(tempfile.mkdtemp(prefix="mtor-self-cert-"))
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    started = time.monotonic()

    # The clean realm: every case passes, the same verdicts every run.
    clean_rows = []
    first: dict[str, str] | None = None
    all_cases: list[str] = []
    for i in range(1, a.clean_runs + 1):
        res, took, note = run_harness(a.cert, a.realm, work / f"clean-{i}", a.seed, None, None)
        if res is None:
            failures.append(f"clean run {i}: {note}")
            clean_rows.append((i, took, "no results", []))
            continue
        got = verdicts(res)
        all_cases = all_cases or [c["id"] for c in res["cases"]]
        bad = [f"{c} {v}" for c, v in got.items() if v != "PASS"]
        if bad:
            failures.append(f"clean run {i}: false alarms: {', '.join(bad)}")
        if first is None:
            first = got
        elif got != first:
            diff = sorted(c for c in set(got) | set(first) if got.get(c) != first.get(c))
            failures.append(f"clean run {i}: verdicts differ from run 1 on {', '.join(diff)}")
        clean_rows.append((i, took, f"{sum(v == 'PASS' for v in got.values())}/{len(got)} PASS", bad))
        print(f"clean {i}: {len(got) - len(bad)}/{len(got)} PASS in {took:.0f} s", flush=True)

    rows = []
    for d in defects:
        cases = None
        if a.profile == "fast":
            cases = ",".join(sorted({f"{d['family']}.*", *FAMILY_CONTEXT.get(d["family"], []),
                                     *d["catches"], *d.get("maybe", [])}))
        res, took, note = run_harness(a.cert, a.realm, work / f"defect-{d['name']}", a.seed,
                                      d["name"], cases)
        if res is None:
            status, problems, got = "error", [note], {}
        else:
            got = verdicts(res)
            all_cases = all_cases or [c["id"] for c in res["cases"]]
            status, problems = judge_defect(d, got)
        if status != "caught":
            failures.append(f"{d['name']}: {status}: {'; '.join(problems)}")
        rows.append((d, status, problems, got, took))
        print(f"{d['name']:28} {status:12} {took:5.0f} s  {'; '.join(problems)}", flush=True)

    total = time.monotonic() - started
    if a.doc:
        write_doc(a, matrix, defects, rows, clean_rows, all_cases, total, failures)
        print(f"wrote {a.doc}")
    caught = sum(1 for r in rows if r[1] == "caught")
    print(f"\n{caught}/{len(rows)} defects caught exactly; {len(failures)} problem(s); {total:.0f} s")
    for f in failures:
        print(f"PROBLEM: {f}", file=sys.stderr)
    return 1 if failures else 0


def write_doc(a, matrix, defects, rows, clean_rows, all_cases, total, failures) -> None:
    caught = sum(1 for r in rows if r[1] == "caught")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = []
    w = out.append
    w("# Self-certification: the harness against seeded defects\n")
    w("Generated by `ci/self-certify.py` (do not edit by hand). Each defect is one realistic bug")
    w("compiled into the reference realm under the cargo feature `defects` (debug builds only) and")
    w("switched on with `MTOR_DEFECT=name`; `ci/defect-matrix.toml` says which cases must FAIL.\n")
    w(f"- Generated: {now}, profile `{a.profile}`, seed {a.seed}, plan `{matrix.get('plan', '?')}`")
    w(f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    w(f"- Kill rate: **{caught}/{len(rows)}** defects caught by exactly their mapped cases")
    fa = sum(len(r[3]) for r in clean_rows)
    w(f"- Clean realm: {len(clean_rows)} runs, false alarms: **{fa}**, identical verdicts: "
      f"**{'yes' if not any('differ' in f for f in failures) else 'no'}**")
    w(f"- Total time: {total:.0f} s\n")
    if failures:
        w("## Problems\n")
        for f in failures:
            w(f"- {f}")
        w("")
    w("## Clean runs\n")
    w("| run | time (s) | verdicts |")
    w("|---|---:|---|")
    for i, took, summary, bad in clean_rows:
        w(f"| {i} | {took:.0f} | {summary}{' — ' + ', '.join(bad) if bad else ''} |")
    w("\n## Defects\n")
    w("| defect | family | what it breaks | caught by | result | time (s) |")
    w("|---|---|---|---|---|---:|")
    for d, status, problems, got, took in rows:
        by = ", ".join(f"`{c}`" for c in d["catches"])
        if d.get("maybe"):
            by += " (maybe: " + ", ".join(f"`{c}`" for c in d["maybe"]) + ")"
        res = status if not problems else f"{status}: {'; '.join(problems)}"
        w(f"| `{d['name']}` | {d['family']} | {d['description']} | {by} | {res} | {took:.0f} |")
    w("\n## Matrix\n")
    w("Rows are cases, columns defects (numbered as above). `X` mapped and failed, `x` a `maybe`")
    w("case that failed, `!` failed without being mapped (false alarm), `-` mapped but passed")
    w("(survivor), `?` unknown or error, `.` passed and not mapped, blank not run.\n")
    w("| case | " + " | ".join(str(i + 1) for i in range(len(rows))) + " |")
    w("|---|" + "---|" * len(rows))
    for case in all_cases:
        cells = []
        for d, _, _, got, _ in rows:
            v = got.get(case)
            mapped, maybe = case in d["catches"], case in d.get("maybe", [])
            if v is None:
                cells.append(" ")
            elif v == "FAIL":
                cells.append("X" if mapped else "x" if maybe else "!")
            elif v == "PASS":
                cells.append("-" if mapped else ".")
            else:
                cells.append("?")
        w(f"| `{case}` | " + " | ".join(cells) + " |")
    w("\nColumns: " + ", ".join(f"{i + 1} `{r[0]['name']}`" for i, r in enumerate(rows)) + ".")
    a.doc.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
