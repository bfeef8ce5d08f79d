"""Mutation testing of the core decisions with cosmic-ray: killed/survived per module.

For each target (a module, optionally only some of its functions, and the tests that cover
it) this runs cosmic-ray (`init`, a filter that skips mutants outside the chosen functions,
`exec`) in a scratch copy of the committed tree, so the working copy is never mutated and an
interrupted run leaves nothing behind. The tests run with this checkout's virtualenv; the copy
comes first on `sys.path` (`python -m pytest` from the copy's root).

Prints one row per module (mutants, killed, survived, incompetent, timed out, skipped by the
function filter, score = killed / (killed + survived)) and writes every survivor's diff to
`<workdir>/survivors.txt` for review. Each run is bounded: `--budget-s` stops `exec` (the
mutants not run are reported as pending), and each mutant's tests by cosmic-ray's `timeout`.

    uv run python bench/mutation.py                       # every target
    uv run python bench/mutation.py --only manifest       # targets whose name contains it
    uv run python bench/mutation.py --budget-s 900 --workdir build/mutation
    uv run python bench/mutation.py --workdir build/mutation --resume   # after adding tests

Not run in CI: a run takes minutes per module (one target at a time under `nice -n 19` on a
shared 2-core machine). Measured (2026-12-07, load 7-22): plain-test targets 1-7 s per
mutant; the mirror targets, which start with tests/mirror/test_*_checks.py (the sandbox OSS
alone, a few seconds) before the whole-mirror tests, 2-13 s (transfer verification 81 mutants
in 141 s, resume 139 in 777 s, manifest 105 in 1360 s at load 20); the Secret-block target
(the Prefect server per mutant) 6 in 85 s; the error-message targets (a stand-in HTTP
server, the sandbox OSS) 46 mutants in 168 s and 10 in 44 s. The "lease compare-and-swap"
target needs the real API server: run it inside ./scripts/in-netns; one lean cluster is
started for the run (17-23 s) and each mutant's session attaches to it. Give long targets a
--budget-s and --resume later. The scratch copy holds files git knows: `git add` a new test
file before a run. The score counts every survivor, equivalent ones included.

Survivors judged equivalent, with the reason (earlier runs: the commit messages that last
changed each target, e.g. 72cce75 and 7466ba8):
- locking.py _lease_body ("locking" target), L220 try_acquire, L308 renew and L320 release
  keyword-only `*` -> positional-only `/`: every caller passes the keyword-only parameters by
  keyword and the rest positionally.
- locking.py L250 try_acquire `expires_in_s(now) > 0` -> `>= 0`: differs only at the exact
  microsecond a hold lapses (renewTime is a MicroTime; `now` is read once per attempt).
- locking.py L258 try_acquire `if state.holder:` -> `if not ...`: decides only whether the
  takeover is logged as a warning.
- locking.py L431 check_lease `not lock.lost and lock.api is not None` -> `or`: a lock already
  lost is read once more, and `mark_lost` keeps the first loss, so the same error is raised;
  `api` is None only for a ServiceLock made outside `service_lock`.
- mirror/manifest.py L45 read_manifest `code == "NoSuchBucket"` -> `<=`, `>=`, `is not`: the
  `except NotFound` branch sees what oss2 makes a NotFound (oss2/exceptions.py
  make_exception: only a (status, code) pair of a NotFound subclass, else ServerError):
  NoSuchBucket, the codes of other APIs (NoSuchUpload, NoSuchWebsiteConfiguration, ...) and
  "" (a 404 without an error body, which OSS gives a HEAD, not a GET). The mutants differ
  only for "" and those other APIs' codes, which a GetObject does not answer.
- mirror/manifest.py L76 write_manifest `sort_keys=True` -> `False`: the manifest is read
  back only by `Manifest.model_validate_json`, for which member order carries no meaning;
  its bytes are compared only with their own CRC64.
- mirror/transfer.py L605 _resume_hash `count > 0` -> `!= 0`: `count` is the checkpoint's
  `hashed_parts`, validated `ge=0` (UploadState) and written only as 0 or a part count.
- kube/errors.py L107 translate keyword-only `*` -> positional-only `/`: every caller passes
  `verb`, `target` and `ref` by keyword and the exception positionally.
- kube/errors.py L118 translate `status == 0` -> `<= 0`: `int(exc.status or 0)` is never
  negative: the client's status is urllib3's parsed HTTP status or 0 for a failure before any
  answer (kubernetes/stream/ws_client.py), and portforward.py's from a three-digit match.
Lease compare-and-swap, second run (2026-12-07, after df4ed47): 129 mutants, 123 killed, the
6 survivors the equivalents above. Killed since the first run: try_acquire `state.owner ==
owner` -> `>=` (a live hold of an owner sorting after ours read as re-entrant;
test_lease.py, owners on both sides of the holder's), release's final `return False` ->
`True` (test_lease_race.py, three real 409s in a row) and the refused take's re-entrant
flag `False` -> `True`, which the first run judged equivalent (the same test asserts it).
Found not equivalent, and fixed (OSS error messages run, 2026-12-07): oss.py translate_oss_error
`status in _TRANSIENT_STATUSES or status < 0` -> `... or status == 0` survived, because the
only negative status reaching that line was oss2's ClientError (-1; RequestError and
InconsistentError have their own branches), which oss2 raises for its arguments before
sending: it was retried as transient. ClientError is permanent since a75e96c (the clause
is gone, so are its mutants; `<= 0` was the equivalent one, no OssError has status 0).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import toml  # type: ignore[import-untyped]
from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-untyped]
from cosmic_ray.work_item import (  # type: ignore[import-untyped]
    TestOutcome,
    WorkerOutcome,
    WorkResult,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)

# Operators whose mutants are noise for decision logic here: rewriting a number inside a
# message or a log call tells nothing, and dropping decorators changes pydantic validators'
# registration, which the import already fails on.
EXCLUDED_OPERATORS = ("core/NumberReplacer", "core/RemoveDecorator")
# Also skipped: mutants inside annotations (see `_annotation_spans`) and inside decorator
# arguments (`@dataclass(frozen=True)` -> `frozen=False`): freezing guards against our own code
# assigning a field, which mypy already rejects; no behaviour a test could observe follows
# from it unless an instance is hashed, and then the mutant fails on its own.


@dataclass(frozen=True)
class Target:
    """A module, the functions of it to mutate (None: all), and the tests that cover it."""

    name: str
    module: str
    functions: tuple[str, ...] | None
    tests: tuple[str, ...]
    timeout_s: float = 180.0
    # False for tests that use no fixture of a conftest.py: pytest then skips importing them
    # (tests/conftest.py and tests/deploy/conftest.py pull in Prefect, the CLI and the
    # sandbox), which takes a plain test run from about 6 s to 2 s per mutant here.
    conftest: bool = True
    # Plugins loaded with -p when conftest is False: the mirror tests need only
    # tests/mirror/conftest.py's sandbox hub and OSS, not tests/conftest.py's Prefect and CLI.
    plugins: tuple[str, ...] = ()
    # True for tests on the real cluster: one lean cluster (API server, etcd, controllers; no
    # operators, DNS or kube-proxy) is started for the run, and each mutant's pytest session
    # attaches to it (tests/real_cluster.py ATTACH_ENV). The run must be inside
    # ./scripts/in-netns.
    cluster: bool = False


# The kinds' rules are read by readiness (ready_missing, pod_selector), strategy (pod_demands)
# and redeploy (pod_roll).
KINDS_TESTS = (
    "tests/kube_edge/test_status_rules.py",
    "tests/kube_edge/test_status_rules_edges.py",
    "tests/kube_edge/test_kind_decisions.py",
    "tests/deploy/test_strategy.py",
    "tests/deploy/test_strategy_edges.py",
    "tests/deploy/test_demands_from_examples.py",
    "tests/deploy/test_redeploy_effect.py",
)

MIRROR_PLUGINS = ("tests.mirror.conftest",)

TARGETS = (
    Target(
        "mirror verification (manifest)",
        "llm_rollout/mirror/manifest.py",
        (
            "_record_problem",
            "check_mirror",
            "read_manifest",
            "check_manifest_names",
            "write_manifest",
        ),
        (
            "tests/mirror/test_manifest_checks.py",
            "tests/mirror/test_mirror_status.py",
            "tests/mirror/test_corruption.py",
        ),
        conftest=False,
        plugins=MIRROR_PLUGINS,
    ),
    Target(
        "mirror verification (transfer)",
        "llm_rollout/mirror/transfer.py",
        ("verified_in_place", "_verify_head", "_check_wire_crc", "head_object"),
        (
            "tests/mirror/test_transfer_checks.py",
            "tests/mirror/test_corruption.py",
            "tests/mirror/test_mirror_status.py",
        ),
        timeout_s=240.0,
        conftest=False,
        plugins=MIRROR_PLUGINS,
    ),
    Target(
        "mirror resume (transfer)",
        "llm_rollout/mirror/transfer.py",
        ("_open_upload", "_resume_hash", "_list_parts", "_run_part"),
        (
            "tests/mirror/test_resume_checks.py",
            "tests/mirror/test_resume_edges.py",
            "tests/mirror/test_resumable_hash.py",
            "tests/mirror/test_mirror.py",
            "tests/mirror/test_corruption.py",
        ),
        timeout_s=240.0,
        conftest=False,
        plugins=MIRROR_PLUGINS,
    ),
    Target(
        "mirror resume (checkpoint)",
        "llm_rollout/mirror/checkpoint.py",
        None,
        (
            "tests/mirror/test_checkpoint_store.py",
            "tests/mirror/test_resumable_hash.py",
            "tests/mirror/test_transfer_paths.py",
        ),
    ),
    Target(
        "readiness rules",
        "llm_rollout/readiness_rules.py",
        None,
        (
            "tests/kube_edge/test_readiness_rules.py",
            "tests/kube_edge/test_readiness_rules_edges.py",
        ),
        conftest=False,
    ),
    Target(
        "readiness classification",
        "llm_rollout/readiness.py",
        # Each kind's own rule (ready_missing, pod_selector) is in its llm_rollout/kinds module:
        # the "kinds" targets below.
        ("workload_missing", "pod_selector_for", "_kind", "_pod_ready_missing", "select_log_lines"),
        ("tests/kube_edge/test_status_rules.py", "tests/kube_edge/test_status_rules_edges.py"),
        conftest=False,
    ),
    *(
        Target(
            f"kinds ({name}): readiness, pod selector, pod demands, pod roll",
            f"llm_rollout/kinds/{name}.py",
            functions,
            KINDS_TESTS,
            conftest=False,
        )
        for name, functions in (
            (
                "base",
                (
                    "as_int",
                    "quantity_int",
                    "container_demand",
                    "template_demand",
                    "replicas_of",
                    "conditions",
                    "generation_missing",
                    "replicas_missing",
                    "condition_missing",
                ),
            ),
            ("deployment", ("_selector_string", "pod_selector", "ready_missing")),
            ("lws", ("group_demands", "pod_selector", "ready_missing", "pod_demands")),
            (
                "rbg",
                (
                    "_is_v1alpha2",
                    "pod_selector",
                    "either_label",
                    "ready_missing",
                    "pod_demands",
                    "pod_roll",
                ),
            ),
            ("raycluster", ("pod_selector", "ready_missing", "pod_demands", "pod_roll")),
        )
    ),
    Target(
        "strategy",
        "llm_rollout/strategy.py",
        None,
        (
            "tests/deploy/test_strategy.py",
            "tests/deploy/test_strategy_edges.py",
            "tests/deploy/test_preflight_plain.py",
            "tests/deploy/test_demands_from_examples.py",
        ),
        conftest=False,
    ),
    Target(
        "release selectors",
        "llm_rollout/vocabulary.py",
        ("release_selector",),
        ("tests/deploy/test_release_plain.py",),
        conftest=False,
    ),
    Target(
        "release services",
        "llm_rollout/release/services.py",
        ("_applyable",),
        ("tests/deploy/test_release_plain.py",),
        conftest=False,
    ),
    Target(
        "release inventory",
        "llm_rollout/release/inventory.py",
        ("ordered_refs",),
        ("tests/deploy/test_release_plain.py",),
        conftest=False,
    ),
    Target(
        "release writes",
        "llm_rollout/release/writing.py",
        (
            "namespace_object",
            "with_annotations",
        ),
        ("tests/deploy/test_release_plain.py",),
        conftest=False,
    ),
    Target(
        "bake decisions",
        "llm_rollout/release/bake.py",
        (
            "_pod_name",
            "_restarts",
            "pod_degradation",
            "_bake_problem",
        ),
        ("tests/deploy/test_release_plain.py",),
        conftest=False,
    ),
    Target(
        "locking",
        "llm_rollout/locking.py",
        (
            "lease_name",
            "lease_ref",
            "_parse_micro",
            "of",
            "expires_in_s",
            "describe",
            "_lease_body",
            "_not_ours",
            "mark_lost",
            "lost_error",
        ),
        # The compare-and-swap steps (try_acquire, renew, release...) are the "lease
        # compare-and-swap" target: they run only against the real API server.
        (
            "tests/deploy/test_locking.py",
            "tests/deploy/test_locking_decisions.py",
            "tests/deploy/test_locking_loss.py",
        ),
        conftest=False,
    ),
    Target(
        "lease compare-and-swap",
        "llm_rollout/locking.py",
        # The compare-and-swap steps themselves; acquire's wait, the renewer thread and the
        # context manager around them are left out (their tests wait out lease durations).
        ("try_acquire", "renew", "release", "check_lease"),
        # On the real API server (one lean cluster for the run, see `Target.cluster`); the
        # tests that wait for nothing first.
        (
            "tests/cluster/test_lease.py::test_renew_and_release_act_only_on_our_own_hold",
            "tests/cluster/test_lease.py::"
            "test_a_live_hold_is_refused_to_every_other_owner_whichever_way_it_sorts",
            "tests/cluster/test_lease.py::"
            "test_the_first_take_creates_the_namespace_and_the_owner_reenters_without_writing",
            "tests/cluster/test_lease_race.py",
            "tests/cluster/test_lease.py",
        ),
        cluster=True,
    ),
    Target(
        "redeploy",
        "llm_rollout/redeploy.py",
        # Not serving_workload / release_service: they read the cluster (the redeploy flow's
        # tests against the sandbox and the real cluster run them).
        (
            "_safe_args",
            "_fits_action",
            "restarts_pods",
            "applyable",
            "pod_templates",
            "walk",
            "_set_flags",
            "changed_workload",
            "_flag_value",
            "served_model",
            "template_change",
            "_kind",
            "expected_roll",
            "_live",
            "incarnations",
            "not_rolled",
        ),
        (
            "tests/deploy/test_redeploy_plain.py",
            "tests/deploy/test_redeploy_effect.py",
            "tests/deploy/test_redeploy_decisions.py",
        ),
        conftest=False,
    ),
    Target(
        "secret redaction (credentials)",
        "llm_rollout/credentials.py",
        (
            "OssCredentials",
            "csi_secret_data",
            "CredentialsRef",
            "_exactly_one_source",
            "_pick",
            "credentials_from_mapping",
            "_from_env",
            "resolve_oss_credentials",
        ),
        # The tests that need no server: the Secret-block ones start the session's Prefect
        # server (about 45 s under load), the STS one a mirror run (about 20 s).
        tuple(
            f"tests/mirror/test_credentials.py::{test}"
            for test in (
                "test_env_credentials_resolve_and_stay_masked",
                "test_missing_variable_is_named_not_valued",
                "test_a_reference_needs_exactly_one_source",
                "test_a_reference_takes_one_source_only_and_both_env_names",
                "test_env_sts_token_is_resolved_or_named_when_missing",
                "test_first_non_empty_spelling_wins_and_empty_values_do_not_count",
                "test_resolved_credentials_and_references_cannot_be_changed",
            )
        ),
        conftest=False,
    ),
    Target(
        "secret redaction (Kubernetes error messages)",
        "llm_rollout/kube/errors.py",
        ("server_status_message", "_retry_after_s", "translate"),
        # Answers of a stand-in HTTP server to the real kubernetes client: no cluster.
        ("tests/kube_edge/test_error_messages.py",),
        conftest=False,
    ),
    Target(
        "secret redaction (OSS error messages)",
        "llm_rollout/oss.py",
        ("translate_oss_error",),
        ("tests/mirror/test_oss_errors.py",),
        conftest=False,
    ),
    Target(
        "secret redaction (credentials, Secret block)",
        "llm_rollout/credentials.py",
        ("_from_secret_block",),
        tuple(
            f"tests/mirror/test_credentials.py::{test}"
            for test in (
                "test_secret_block_credentials_resolve_and_stay_masked",
                "test_secret_block_problems_name_the_block_never_a_value",
            )
        ),
    ),
)


@dataclass
class Row:
    name: str
    module: str
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    incompetent: int = 0
    timed_out: int = 0
    filtered: int = 0
    pending: int = 0
    seconds: float = 0.0

    @property
    def score(self) -> float | None:
        judged = self.killed + self.survived
        return self.killed / judged if judged else None


def _scratch_tree(dest: Path) -> None:
    """The committed tree (HEAD) plus the working copy's changes to tracked files."""
    archive = dest.parent / "head.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), "HEAD"],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--name-only", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for rel in changed:
        src = ROOT / rel
        if src.is_file():
            shutil.copy2(src, dest / rel)


Span = tuple[tuple[int, int], tuple[int, int]]


def _annotation_spans(source: str) -> list[Span]:
    """Where the module's annotations are: with `from __future__ import annotations` they are
    never evaluated, so a mutant inside one is equivalent by construction."""
    spans: list[Span] = []
    for node in ast.walk(ast.parse(source)):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for ann in annotations:
            if ann is not None and ann.end_lineno is not None and ann.end_col_offset is not None:
                spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno, ann.end_col_offset)))
    return spans


def _decorator_spans(source: str) -> list[Span]:
    spans: list[Span] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for dec in node.decorator_list:
                if dec.end_lineno is not None and dec.end_col_offset is not None:
                    spans.append(
                        ((dec.lineno, dec.col_offset), (dec.end_lineno, dec.end_col_offset))
                    )
    return spans


def _filter(db: WorkDB, functions: tuple[str, ...] | None, source: str) -> None:
    postponed = "from __future__ import annotations" in source
    spans = (_annotation_spans(source) if postponed else []) + _decorator_spans(source)
    for item in list(db.pending_work_items):
        for mutation in item.mutations:
            outside = functions is not None and mutation.definition_name not in functions
            noise = mutation.operator_name.startswith(EXCLUDED_OPERATORS)
            start = tuple(mutation.start_pos)
            annotation = any(lo <= start < hi for lo, hi in spans)
            if outside or noise or annotation:
                db.set_result(
                    item.job_id,
                    WorkResult(output="filtered", worker_outcome=WorkerOutcome.SKIPPED),
                )
                break


@contextmanager
def _lean_cluster(workdir: Path) -> Iterator[Path]:
    """A cluster for the whole run; yields the file each mutant's session attaches to."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script: bench/ is sys.path[0]
    from bench.cluster_attach import dump_cluster
    from sandbox.cluster.control_plane import ClusterConfig, start_cluster, stop_cluster
    from tests.real_cluster import NODES

    config = ClusterConfig(
        nodes=NODES,
        with_kuberay=False,
        with_lws=False,
        rbg_crd=None,
        with_dns=False,
        with_kube_proxy=False,
    )
    cluster = start_cluster(config)
    try:
        attach = workdir / "cluster.pickle"
        dump_cluster(cluster, attach)
        print(f"cluster ready in {sum(cluster.ready_s.values()):.0f} s", flush=True)
        yield attach
    finally:
        stop_cluster(cluster)


def _run_target(
    target: Target,
    tree: Path,
    workdir: Path,
    budget_s: float,
    resume: bool,
    attach: Path | None = None,
) -> tuple[Row, str]:
    slug = target.module.replace("/", "_").removesuffix(".py")
    if target.functions is not None:
        slug += "-" + "-".join(f.strip("_") for f in target.functions[:2])
    config = workdir / f"{slug}.toml"
    session = workdir / f"{slug}.sqlite"
    if resume and session.exists():
        # Survivors are judged again by the current tests; pending mutants run as usual.
        with sqlite3.connect(session) as db:
            db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    else:
        session.unlink(missing_ok=True)
    tests = " ".join(target.tests)
    config.write_text(
        toml.dumps(
            {
                "cosmic-ray": {
                    "module-path": target.module,
                    "timeout": target.timeout_s,
                    "excluded-modules": [],
                    "test-command": (
                        f"{PYTHON} -m pytest -x -q -p no:cacheprovider -o addopts= "
                        + ("" if target.conftest else "--noconftest ")
                        + "".join(f"-p {plugin} " for plugin in target.plugins)
                        + tests
                    ),
                    "distributor": {"name": "local"},
                }
            }
        )
    )
    cosmic = [str(PYTHON), "-m", "cosmic_ray.cli"]
    if not session.exists():
        subprocess.run([*cosmic, "init", str(config), str(session)], cwd=tree, check=True)
    with use_db(str(session)) as db:
        _filter(db, target.functions, (tree / target.module).read_text())
        filtered = sum(1 for _, r in db.results if r.worker_outcome == WorkerOutcome.SKIPPED)
    started = time.monotonic()
    env = dict(os.environ)
    if attach is not None:
        from tests.real_cluster import ATTACH_ENV

        env[ATTACH_ENV] = str(attach)
    proc = subprocess.Popen([*cosmic, "exec", str(config), str(session)], cwd=tree, env=env)
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        # cosmic-ray starts each test run in a session of its own: stop the whole tree.
        tree_procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree_procs:
            p.terminate()
        psutil.wait_procs(tree_procs, timeout=30)
        proc.wait()
    row = Row(target.name, target.module, filtered=filtered)
    row.seconds = time.monotonic() - started
    survivors: list[str] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        results = dict(db.results)
        for item in db.work_items:
            result = results.get(item.job_id)
            if result is not None and result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            row.mutants += 1
            if result is None:
                row.pending += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                row.survived += 1
                mutation = item.mutations[0]
                survivors.append(
                    f"## {target.module} {mutation.definition_name} {mutation.operator_name} "
                    f"line {mutation.start_pos[0]}\n{result.diff}\n"
                )
            elif result.worker_outcome == WorkerOutcome.ABNORMAL:
                row.timed_out += 1  # cosmic-ray's timeout: counted apart, not as killed
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                row.incompetent += 1
            else:
                row.killed += 1
    return row, "".join(survivors)


def _print(rows: list[Row]) -> None:
    print(
        "| module | mutants | killed | survived | incompetent | timed out | pending | score | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        score = "-" if r.score is None else f"{r.score:.0%}"
        print(
            f"| {r.module} | {r.mutants} | {r.killed} | {r.survived} | {r.incompetent} | "
            f"{r.timed_out} | {r.pending} | {score} | {r.seconds:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the targets whose name contains this")
    parser.add_argument("--budget-s", type=float, default=1200.0, help="exec budget per target")
    parser.add_argument("--workdir", type=Path, help="keep sessions and survivors here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sessions in --workdir: run pending mutants, re-judge survivors",
    )
    args = parser.parse_args()
    targets = [t for t in TARGETS if args.only is None or args.only in t.name]
    if not targets:
        parser.error(f"no target matches {args.only!r}")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llm-rollout-mutation-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=workdir))
    rows: list[Row] = []
    survivors = []
    try:
        with ExitStack() as stack:
            _scratch_tree(tree)
            attach = None
            if any(t.cluster for t in targets):
                attach = stack.enter_context(_lean_cluster(workdir))
            for target in targets:
                row, text = _run_target(
                    target,
                    tree,
                    workdir,
                    args.budget_s,
                    args.resume,
                    attach if target.cluster else None,
                )
                rows.append(row)
                survivors.append(text)
                _print([row])
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    (workdir / "survivors.txt").write_text("\n".join(survivors))
    print()
    _print(rows)
    print(f"\nsurvivors: {workdir / 'survivors.txt'}" + ("" if keep else " (temporary)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
