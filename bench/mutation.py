"""`make mutation`: mutation testing of the arithmetic and policy modules, one line per module.

mutmut (setup.cfg's [mutmut] section) mutates the modules below in a copy of the tree (mutants/) and runs,
for each mutant, only the tests from the fast files in setup.cfg that called the mutated function. A mutant
is killed when a test fails (or times out). Survivors that behave exactly like the original (equivalent
mutants) are listed with the reason in docs/mutation-survivors.md; they leave the denominator, so a module
reads killed / (total - listed). Every listing must still name a surviving mutant whose diff adds the listed
line, or the report fails: a stale entry cannot excuse a different mutant after the code moves.

    python bench/mutation.py [--max-children N] [--only TEXT ...] [--report-only]
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SURVIVORS = ROOT / "docs" / "mutation-survivors.md"
TARGET_SHARE = 90.0
KILLED = {"killed", "timeout", "segfault"}  # a test noticed the mutant
STATUS_BY_EXIT_CODE = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
                       35: "suspicious", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
                       255: "timeout", -11: "segfault", -9: "segfault", None: "not checked"}


@dataclass(frozen=True)
class Target:
    """One reported module: its file and the mutmut names of the functions that count."""

    label: str
    path: str
    patterns: tuple[str, ...]


def _module_target(path: str) -> Target:
    return Target(path, path, (path.removesuffix(".py").replace("/", ".") + ".*",))


TARGETS = (
    _module_target("es/function_score.py"),
    _module_target("es/boosting.py"),
    # The stale-update guard's Python twin; the rest of the double's scripts module is request plumbing.
    Target("run_guard (tests/es_double/scripts.py)", "tests/es_double/scripts.py",
           ("tests.es_double.scripts.x_run_guard__mutmut_*", "tests.es_double.scripts.x__wins_tie__mutmut_*")),
    *(_module_target(str(p.relative_to(ROOT))) for p in sorted((ROOT / "ranking").glob("*.py"))
      if p.name != "__init__.py"),
    _module_target("training/metrics.py"),
    _module_target("transforms/address_policy.py"),
)

# | `mutant name` | `the line the mutant adds` | reason |
LISTING = re.compile(r"^\|\s*`(?P<name>[^`]+)`\s*\|\s*`(?P<line>.+?)`\s*\|\s*(?P<reason>.+?)\s*\|\s*$")


def read_listed(path: Path = SURVIVORS) -> dict[str, str]:
    """The equivalent mutants docs/mutation-survivors.md lists: mutant name -> the line its diff adds."""
    listed: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = LISTING.match(line)
        if not match:
            continue
        name = match["name"]
        if name in listed:
            raise SystemExit(f"{path}:{number}: {name} is listed twice; keep one row per mutant")
        if not match["reason"].strip():
            raise SystemExit(f"{path}:{number}: {name} has no reason; say why the mutant behaves like the original")
        listed[name] = match["line"].strip()
    return listed


def run_mutmut(targets: tuple[Target, ...], max_children: int, log: Path) -> None:
    """mutmut run over the targets' functions; its progress spinner goes to ``log``."""
    patterns = [p for t in targets for p in t.patterns]
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *patterns]
    log.parent.mkdir(exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut run failed (exit {code}); the end of {log}:\n{tail}")


def results(target: Target) -> dict[str, str]:
    """Mutant name -> status for ``target``, from the .meta file mutmut wrote beside the mutated copy."""
    meta = ROOT / "mutants" / (target.path + ".meta")
    if not meta.exists():
        raise SystemExit(f"{meta} is missing: mutmut did not mutate {target.path}; check setup.cfg's only_mutate")
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {name: STATUS_BY_EXIT_CODE.get(code, "suspicious") for name, code in codes.items()
            if any(fnmatch.fnmatchcase(name, p) for p in target.patterns)}


def added_lines(name: str, path: str) -> list[str]:
    """The lines mutant ``name`` adds to its function, stripped, from mutmut's own diff."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # mutmut reads setup.cfg from the working dir

    diff = get_diff_for_mutant(name, path=path)
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def report(targets: tuple[Target, ...], listed: dict[str, str]) -> int:
    """Prints one line per module (and the survivors to look at); the number of problems found."""
    problems = 0
    seen: set[str] = set()
    for target in targets:
        status = results(target)
        total = len(status)
        killed = sum(s in KILLED for s in status.values())
        equivalent = 0
        open_survivors = []
        for name, s in sorted(status.items()):
            if s in KILLED:
                continue
            if name in listed:
                seen.add(name)
                if listed[name] in added_lines(name, target.path):
                    equivalent += 1
                    continue
                print(f"  stale listing {name}: its diff no longer adds `{listed[name]}` ({SURVIVORS.name})")
                problems += 1
            open_survivors.append(f"{name} ({s})")
        for name in sorted(set(listed) & set(status) - seen):
            print(f"  stale listing {name}: it is {status[name]}, not a survivor; drop it from {SURVIVORS.name}")
            seen.add(name)
            problems += 1
        counted = total - equivalent
        share = 100.0 * killed / counted if counted else 100.0
        verdict = "ok" if share >= TARGET_SHARE else f"BELOW {TARGET_SHARE:.0f} %"
        print(f"mutation {target.label}: killed {killed} of {total} ({equivalent} listed equivalent) "
              f"= {share:.1f} % [{verdict}]", flush=True)
        problems += share < TARGET_SHARE
        for line in open_survivors:
            print(f"    survivor {line}: python -m mutmut show {line.split()[0]}")
    for name in sorted(set(listed) - seen):
        if len(targets) < len(TARGETS):
            break  # a partial run (--only) cannot tell a stale row of another module
        print(f"  stale listing {name}: no such mutant of the modules above; drop it from {SURVIVORS.name}")
        problems += 1
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutmut workers (default 2)")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the modules whose label contains one of these (e.g. ranking/ guard)")
    parser.add_argument("--report-only", action="store_true", help="read the last run's results; run nothing")
    args = parser.parse_args(argv)
    targets = tuple(t for t in TARGETS if not args.only or any(text in t.label for text in args.only))
    if not targets:
        parser.error(f"--only {' '.join(args.only)} matches none of: {', '.join(t.label for t in TARGETS)}")
    listed = read_listed()
    if not args.report_only:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # a fresh copy: no verdict left from older code
        run_mutmut(targets, args.max_children, ROOT / "mutants" / "mutmut-run.log")
    return 1 if report(targets, listed) else 0


if __name__ == "__main__":
    sys.exit(main())
