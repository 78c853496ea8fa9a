"""Structural check of .github/workflows/{ci,release}.yml (run by
scripts/check-workflows).

The workflows cannot run outside GitHub, so this checks what can go wrong
before a tag is pushed: the files parse, the jobs the release relies on are
there with the permissions publishing needs, and every `scripts/dist` call
names artifacts and targets that scripts/dist accepts. The accepted lists
are read from scripts/dist's usage text; FALLBACK_* below are used only
while scripts/dist does not exist.
"""

from __future__ import annotations

import itertools
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
DIST = ROOT / "scripts" / "dist"

# The scripts/dist interface as agreed, kept in this one place; only used
# when scripts/dist is absent.
FALLBACK_ARTIFACTS = ["wheels", "sdist", "node", "c", "bin"]
FALLBACK_TARGETS = [
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "x86_64-unknown-linux-musl",
    "aarch64-unknown-linux-musl",
    "aarch64-apple-darwin",
    "x86_64-apple-darwin",
    "x86_64-pc-windows-msvc",
]

LINUX_TARGETS = {t for t in FALLBACK_TARGETS if "-linux-" in t}
MACOS_TARGETS = {"aarch64-apple-darwin", "x86_64-apple-darwin"}
WINDOWS_TARGET = "x86_64-pc-windows-msvc"
PLATFORM_ARTIFACTS = ["wheels", "node", "c"]  # macOS / Windows jobs
BUILD_JOBS = ["linux", "macos", "windows"]

TRIPLE_RE = re.compile(
    r"\b(?:x86_64|aarch64|i686|armv7|riscv64gc|powerpc64le|s390x)"
    r"-[a-z0-9_]+-[a-z0-9_]+(?:-[a-z0-9_]+)?\b"
)
ARTIFACT_LINE_RE = re.compile(
    r"ARTIFACTS?\b[^:\n]*:[ \t]*([a-z][a-z0-9_-]*(?:[ \t]*[|,][ \t]*[a-z][a-z0-9_-]*)+)"
)
EXPR_RE = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
SHELL_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# A major-version pin: @v4, or @release/v1 (the ref pypa/gh-action-pypi-publish
# documents as its major pin).
PIN_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@(?:v\d+|release/v\d+)$")

errors: list[str] = []


def fail(where: str, msg: str) -> None:
    e = f"{where}: {msg}"
    if e not in errors:
        errors.append(e)


# --- scripts/dist's accepted lists ---------------------------------------


def usage_text(src: str) -> str:
    """The usage text of a bash script: its leading comment block (what
    scripts/dist --help prints) and the bodies of any here-documents (where
    a usage() function may print it instead)."""
    lines = src.splitlines()
    out = []
    i = 1 if lines and lines[0].startswith("#!") else 0
    while i < len(lines) and lines[i].startswith("#"):
        out.append(re.sub(r"^# ?", "", lines[i]))
        i += 1
    heredoc = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
    j = 0
    while j < len(lines):
        m = heredoc.search(lines[j])
        if m:
            end = m.group(2)
            j += 1
            while j < len(lines) and lines[j].strip() != end:
                out.append(lines[j])
                j += 1
        j += 1
    return "\n".join(out)


def section(text: str, heading: str) -> str | None:
    """The paragraph of `text` that starts with a line beginning with
    `heading` (up to the next blank line)."""
    m = re.search(rf"^[ \t]*{heading}\b.*?(?=\n[ \t]*\n|\Z)", text, re.M | re.S)
    return m.group(0) if m else None


def parse_artifacts(text: str) -> list[str]:
    """Either `ARTIFACT: a | b | c` or an ARTIFACT paragraph listing one
    artifact per indented line (`  wheels   description`)."""
    m = ARTIFACT_LINE_RE.search(text)
    if m:
        return re.split(r"\s*[|,]\s*", m.group(1).strip())
    para = section(text, "ARTIFACTS?")
    if not para:
        return []
    names, indent = [], None
    for line in para.splitlines()[1:]:
        m = re.match(r"^([ \t]+)([a-z][a-z0-9_-]*)(?:[ \t]{2,}|[ \t]*$)", line)
        if not m:
            continue
        # Entries share the first entry's indentation; deeper lines continue
        # an entry's description.
        if indent is None:
            indent = m.group(1)
        if m.group(1) == indent:
            names.append(m.group(2))
    return names


def accepted_lists() -> tuple[list[str], list[str], str]:
    if not DIST.exists():
        return FALLBACK_ARTIFACTS, FALLBACK_TARGETS, (
            "scripts/dist not found: using the lists kept in scripts/lib/check_workflows.py"
        )
    text = usage_text(DIST.read_text(encoding="utf-8"))
    artifacts = parse_artifacts(text)
    triples = section(text, "TRIPLES?") or text
    targets = list(dict.fromkeys(TRIPLE_RE.findall(triples)))
    if not artifacts:
        fail("scripts/dist", "its usage text has no ARTIFACT list to read the accepted artifacts from "
             "(update the parser in scripts/lib/check_workflows.py)")
    if not targets:
        fail("scripts/dist", "its usage text names no target triple to read the accepted targets from "
             "(update the parser in scripts/lib/check_workflows.py)")
    return artifacts, targets, "read from the usage text of scripts/dist"


# --- workflow helpers -----------------------------------------------------


def load(name: str) -> dict:
    path = WORKFLOWS / name
    if not path.exists():
        fail(name, f"{path.relative_to(ROOT)} does not exist")
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        fail(name, f"does not parse as YAML: {e}")
        return {}
    if not isinstance(doc, dict):
        fail(name, "is not a YAML mapping")
        return {}
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true.
    if "on" not in doc and True in doc:
        doc["on"] = doc.pop(True)
    return doc


def triggers(doc: dict) -> dict:
    on = doc.get("on")
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {k: None for k in on}
    return on if isinstance(on, dict) else {}


def as_list(v) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def steps(job: dict) -> list[dict]:
    return [s for s in as_list(job.get("steps")) if isinstance(s, dict)]


def uses_of(job: dict, action: str) -> list[dict]:
    return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def matrix_combos(job: dict) -> list[dict]:
    matrix = (job.get("strategy") or {}).get("matrix")
    if not isinstance(matrix, dict):
        return [{}]
    axes = {k: as_list(v) for k, v in matrix.items() if k not in ("include", "exclude")}
    combos = [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())] if axes else []
    for excl in as_list(matrix.get("exclude")):
        combos = [c for c in combos if not all(c.get(k) == v for k, v in excl.items())]
    for inc in as_list(matrix.get("include")):
        matched = [c for c in combos if all(c.get(k) == v for k, v in inc.items() if k in axes)]
        if axes and matched:
            for c in matched:
                c.update(inc)
        else:
            combos.append(dict(inc))
    return combos or [{}]


def expand_exprs(s: str, combo: dict) -> str:
    def sub(m: re.Match) -> str:
        expr = m.group(1)
        mm = re.fullmatch(r"matrix\.([A-Za-z0-9_-]+)", expr)
        if mm and mm.group(1) in combo:
            return str(combo[mm.group(1)])
        return m.group(0)

    return EXPR_RE.sub(sub, s)


def expand_shell(s: str, env: dict) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return str(env[name]) if name in env else m.group(0)

    return SHELL_VAR_RE.sub(sub, s)


def commands(script: str) -> list[list[str]]:
    """Simple commands of a run script, as argument lists (enough for the
    one-line commands the workflows use)."""
    script = script.replace("\\\n", " ")
    out = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for seg in re.split(r"&&|\|\||;|\|", line):
            try:
                toks = shlex.split(seg, comments=True)
            except ValueError:
                toks = seg.split()
            if toks:
                out.append(toks)
    return out


def calls(job: dict, doc: dict, program: str) -> list[tuple[dict, list[str]]]:
    """Every call of `program` in the job's run steps, once per matrix
    combination, with ${{ matrix.* }} and shell variables from `env:`
    substituted: [(combo, args)]."""
    found = []
    for combo in matrix_combos(job):
        for st in steps(job):
            run = st.get("run")
            if not isinstance(run, str):
                continue
            env = {}
            for scope in (doc.get("env"), job.get("env"), st.get("env")):
                if isinstance(scope, dict):
                    env.update({k: expand_exprs(str(v), combo) for k, v in scope.items()})
            for toks in commands(expand_exprs(run, combo)):
                toks = [expand_shell(t, env) for t in toks]
                for i, t in enumerate(toks):
                    if t == program or t.endswith("/" + program) and t.lstrip("./") == program:
                        found.append((combo, toks[i + 1:]))
                        break
    return found


def parse_dist_args(args: list[str], where: str) -> tuple[list[str], list[str]]:
    targets, artifacts = [], []
    it = iter(args)
    for a in it:
        if a == "--target":
            v = next(it, None)
            if v is None:
                fail(where, "`scripts/dist --target` without a value")
            else:
                targets.append(v)
        elif a.startswith("--target="):
            targets.append(a.split("=", 1)[1])
        elif a.startswith("-"):
            fail(where, f"scripts/dist option {a!r} is not part of its interface (only --target TRIPLE)")
        else:
            artifacts.append(a)
    return targets, artifacts


def has_permission(job: dict, perm: str, level: str) -> bool:
    p = job.get("permissions")
    return isinstance(p, dict) and p.get(perm) == level


def needs(job: dict) -> set:
    return set(as_list(job.get("needs")))


def run_texts(job: dict) -> list[str]:
    return [st["run"] for st in steps(job) if isinstance(st.get("run"), str)]


def check_pins(name: str, doc: dict) -> None:
    for jname, job in (doc.get("jobs") or {}).items():
        for st in steps(job):
            u = st.get("uses")
            if u is None or str(u).startswith("./") or str(u).startswith("docker://"):
                continue
            if not PIN_RE.match(str(u)):
                fail(f"{name}: job {jname}", f"action {u!r} is not pinned to a major version (@vN)")


# --- ci.yml ---------------------------------------------------------------


def check_ci() -> None:
    name = "ci.yml"
    doc = load(name)
    if not doc:
        return
    on = triggers(doc)
    for t in ("push", "pull_request"):
        if t not in on:
            fail(name, f"does not run on {t}")
    jobs = doc.get("jobs") or {}
    if not jobs:
        fail(name, "has no jobs")
        return
    testers = [j for j, job in jobs.items() if calls(job, doc, "scripts/test")]
    if not testers:
        fail(name, "no job runs scripts/test")
    for j in testers:
        job = jobs[j]
        where = f"{name}: job {j}"
        if "ubuntu" not in str(job.get("runs-on", "")):
            fail(where, f"runs on {job.get('runs-on')!r}, not an ubuntu runner")
        versions = set()
        for st in uses_of(job, "actions/setup-python"):
            pv = (st.get("with") or {}).get("python-version", "")
            versions.update(str(v).strip() for v in (pv if isinstance(pv, list) else str(pv).split()))
        for want in ("3.11", "3.13"):
            if want not in versions:
                fail(where, f"actions/setup-python does not install Python {want}")
        if not uses_of(job, "actions/setup-node"):
            fail(where, "does not install Node (actions/setup-node)")
        rust = uses_of(job, "dtolnay/rust-toolchain") or [r for r in run_texts(job) if "rustup" in r]
        if not rust:
            fail(where, "does not install Rust (dtolnay/rust-toolchain or rustup)")
    check_pins(name, doc)


# --- release.yml ----------------------------------------------------------



def publish_job_basics(job, where, why):
    """A publish job waits for every build and may mint an OIDC token."""
    if not set(BUILD_JOBS) <= needs(job):
        fail(where, f"needs {sorted(needs(job))}, not all of {BUILD_JOBS}")
    if not has_permission(job, "id-token", "write"):
        fail(where, f"lacks `permissions: id-token: write` ({why})")

def check_release(artifacts_ok: list[str], targets_ok: list[str]) -> list[str]:
    name = "release.yml"
    summary = []
    doc = load(name)
    if not doc:
        return summary
    on = triggers(doc)
    push = on.get("push") if isinstance(on.get("push"), dict) else {}
    if "v*" not in as_list(push.get("tags")):
        fail(name, "does not run on push of tags 'v*'")
    if set(on) - {"push", "workflow_dispatch"} or push.get("branches"):
        fail(name, f"runs on more than tag pushes: {sorted(map(str, on))}")
    top = doc.get("permissions")
    if top == "write-all" or (isinstance(top, dict) and "write" in top.values()):
        fail(name, "grants write permissions to every job; grant them per job")

    jobs = doc.get("jobs") or {}
    for j in BUILD_JOBS + ["publish-pypi", "publish-npm", "github-release"]:
        if j not in jobs:
            fail(name, f"job {j!r} is missing")

    # Every scripts/dist call, in any job: only accepted artifacts and targets.
    for jname, job in jobs.items():
        for combo, args in calls(job, doc, "scripts/dist"):
            where = f"{name}: job {jname}" + (f" ({combo})" if combo else "")
            targets, artifacts = parse_dist_args(args, where)
            for t in targets if targets_ok else []:
                if t not in targets_ok:
                    fail(where, f"scripts/dist --target {t!r} is not a target scripts/dist accepts ({', '.join(targets_ok)})")
            for a in artifacts if artifacts_ok else []:
                if a not in artifacts_ok:
                    fail(where, f"scripts/dist artifact {a!r} is not one scripts/dist accepts ({' | '.join(artifacts_ok)})")
            summary.append(f"  {jname}: scripts/dist {' '.join(args)}".rstrip())

    def build_job(jname: str, runner: str):
        job = jobs.get(jname)
        if not job:
            return None, []
        where = f"{name}: job {jname}"
        dist = calls(job, doc, "scripts/dist")
        if not dist:
            fail(where, "does not call scripts/dist")
        for combo in matrix_combos(job):
            ro = expand_exprs(str(job.get("runs-on", "")), combo)
            if runner not in ro:
                fail(where, f"runs on {ro!r}, not a {runner} runner")
        if not uses_of(job, "actions/upload-artifact"):
            fail(where, "uploads no artifacts (actions/upload-artifact)")
        return job, dist

    job, dist = build_job("linux", "ubuntu")
    for _, args in dist:
        targets, artifacts = parse_dist_args(args, f"{name}: job linux")
        if artifacts and set(artifacts) != set(artifacts_ok):
            fail(f"{name}: job linux", f"builds only {artifacts}; the Linux job builds every artifact")
        if targets and set(targets) != LINUX_TARGETS:
            fail(f"{name}: job linux", f"builds targets {targets}; it builds the four Linux triples")

    job, dist = build_job("macos", "macos")
    if job:
        built = set()
        for combo, args in dist:
            where = f"{name}: job macos ({combo})"
            targets, artifacts = parse_dist_args(args, where)
            if len(targets) != 1 or targets[0] not in MACOS_TARGETS:
                fail(where, f"scripts/dist --target must be one macOS triple, got {targets}")
            built.update(targets)
            if set(artifacts) != set(PLATFORM_ARTIFACTS):
                fail(where, f"scripts/dist builds {artifacts}, expected {' '.join(PLATFORM_ARTIFACTS)}")
        if built != MACOS_TARGETS:
            fail(f"{name}: job macos", f"builds {sorted(built)}, expected {sorted(MACOS_TARGETS)}")

    job, dist = build_job("windows", "windows")
    if job:
        shell = ((job.get("defaults") or {}).get("run") or {}).get("shell")
        for st in steps(job):
            if isinstance(st.get("run"), str) and "scripts/dist" in st["run"] and st.get("shell", shell) != "bash":
                fail(f"{name}: job windows", "the scripts/dist step does not run under `shell: bash`")
        for combo, args in dist:
            targets, artifacts = parse_dist_args(args, f"{name}: job windows")
            if targets != [WINDOWS_TARGET]:
                fail(f"{name}: job windows", f"scripts/dist --target must be {WINDOWS_TARGET}, got {targets}")
            if set(artifacts) != set(PLATFORM_ARTIFACTS):
                fail(f"{name}: job windows", f"scripts/dist builds {artifacts}, expected {' '.join(PLATFORM_ARTIFACTS)}")

    job = jobs.get("publish-pypi")
    if job:
        where = f"{name}: job publish-pypi"
        publish_job_basics(job, where, "trusted publishing")
        env = job.get("environment")
        env_name = env.get("name") if isinstance(env, dict) else env
        if env_name != "pypi":
            fail(where, f"environment is {env_name!r}, not 'pypi'")
        pub = uses_of(job, "pypa/gh-action-pypi-publish")
        if not pub:
            fail(where, "does not use pypa/gh-action-pypi-publish")
        for st in pub:
            if {"password", "user"} & set(st.get("with") or {}):
                fail(where, "passes a user/password (API token) to the publish action; trusted publishing needs none")
        if not uses_of(job, "actions/download-artifact"):
            fail(where, "downloads no artifacts")

    job = jobs.get("publish-npm")
    if job:
        where = f"{name}: job publish-npm"
        publish_job_basics(job, where, "npm provenance")
        if not any((st.get("with") or {}).get("registry-url") for st in uses_of(job, "actions/setup-node")):
            fail(where, "actions/setup-node has no registry-url")
        tokens = [str((st.get("env") or {}).get("NODE_AUTH_TOKEN", "")) for st in steps(job)]
        tokens.append(str((job.get("env") or {}).get("NODE_AUTH_TOKEN", "")))
        if not any(re.search(r"secrets\.NPM_TOKEN\b", t) for t in tokens):
            fail(where, "NODE_AUTH_TOKEN is not taken from secrets.NPM_TOKEN")
        pubs = [c for r in run_texts(job) for c in commands(r) if c[:2] == ["npm", "publish"]]
        if not pubs:
            fail(where, "runs no `npm publish`")
        for c in pubs:
            if "--provenance" not in c or "--access" not in c or "public" not in c:
                fail(where, f"`{' '.join(c)}` lacks --provenance --access public")
        if not uses_of(job, "actions/download-artifact"):
            fail(where, "downloads no artifacts")

    job = jobs.get("github-release")
    if job:
        where = f"{name}: job github-release"
        if "linux" not in needs(job):
            fail(where, "does not need the linux job (the static binaries come from it)")
        if not has_permission(job, "contents", "write"):
            fail(where, "lacks `permissions: contents: write`")
        if not uses_of(job, "softprops/action-gh-release") and not any(
            "gh release create" in r for r in run_texts(job)
        ):
            fail(where, "creates no release (softprops/action-gh-release or gh release create)")

    check_pins(name, doc)
    return summary


def main() -> int:
    artifacts_ok, targets_ok, source = accepted_lists()
    check_ci()
    summary = check_release(artifacts_ok, targets_ok)
    if errors:
        for e in errors:
            print(f"check-workflows: {e}", file=sys.stderr)
        print(f"check-workflows: FAILED ({len(errors)} problem{'s' if len(errors) > 1 else ''})", file=sys.stderr)
        return 1
    print(f"accepted scripts/dist lists ({source}):")
    print(f"  artifacts: {' '.join(artifacts_ok)}")
    print(f"  targets:   {' '.join(targets_ok)}")
    print("scripts/dist calls in release.yml (per matrix entry):")
    print("\n".join(summary))
    print("check-workflows: ci.yml and release.yml OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
