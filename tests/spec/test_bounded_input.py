"""Bounded input: every hostile or careless spec in hostile_corpus.py ends in exit 2 with a located
message (or exit 0 when it is valid), in a child process held to 3 s of CPU and 500 MB more memory,
never with a traceback or a hang. The classes are tested here too, one by one, in process."""

from __future__ import annotations

import os
import re
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.errors import SpecError
from ablate.spec.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, MAX_TOKENS
from ablate.spec.load import load_document
from ablate.spec.validate import load_spec

from .conftest import BASE
from .hostile_corpus import CORPUS

# The heaviest case (largest-grid-allowed) takes 1.5-1.6 s of CPU alone; on a 2-core machine busy with Ray
# processes its CPU time passed the old 3 s kill limit once (SIGXCPU, 2026-11-30). 3 s keeps a 2x margin
# and still catches a blow-up, which costs tens of seconds.
CPU_SECONDS = 3.0
EXTRA_MEMORY = 500 * 2**20
WALL_SECONDS = 30.0  # a hang guard only: the machine running the tests may be busy
LOCATED = re.compile(r"^(error: )?\S.*?(:\d+)?: ")
MEASURED: dict[str, tuple[float, int]] = {}  # case -> (CPU seconds, peak RSS growth), for the report


def _status(field: str) -> int:
    """A size from /proc/self/status (VmSize, VmRSS, VmHWM: the peak RSS), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def run_validate(path: Path, out: Path) -> tuple[int, str, float, int]:
    """`ablate validate PATH` in a forked child (imports already paid) under RLIMIT_AS and RLIMIT_CPU:
    (exit status, stderr and stdout, CPU seconds, peak RSS growth in bytes). RLIMIT_AS is the child's
    address space at the fork plus EXTRA_MEMORY: more would be a MemoryError, a traceback, exit 1."""
    limit = _status("VmSize") + EXTRA_MEMORY
    memory = out.with_suffix(".memory")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            with open(out, "w") as sink:
                rss_start = _status("VmRSS")  # the child's peak starts at the RSS it was forked with
                sys.stdout = sys.stderr = sink
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                resource.setrlimit(resource.RLIMIT_CPU, (int(CPU_SECONDS) + 1, int(CPU_SECONDS) + 2))
                try:
                    main(["validate", str(path)], prog_name="ablate")
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc(file=sink)
                    code = 1
                sink.flush()
                memory.write_text(str(_status("VmHWM") - rss_start))
        finally:
            os._exit(code)
    start = time.monotonic()
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > WALL_SECONDS:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            return -9, f"hung for {WALL_SECONDS} s", WALL_SECONDS, 0
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    growth = int(memory.read_text()) if memory.exists() else EXTRA_MEMORY
    return code, out.read_text(errors="replace"), cpu, growth


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Pay imports and the teacher config once, in the parent, so the children measure validation."""
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"ablate-warm-{os.getpid()}.yaml"
    path.write_text(BASE)
    try:
        load_spec(path)
        from transformers import AutoConfig

        import ablate.commands.plan  # noqa: F401 - the command module the CLI imports on first use

        AutoConfig.for_model("llama")  # transformers imports each family's module on first use
    finally:
        path.unlink()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, /proc and RLIMIT_AS: Linux")
@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_input_ends_cleanly_fast_and_small(name: str, tmp_path: Path) -> None:
    setup, outcome, says = CORPUS[name]
    path = setup(tmp_path)
    code, output, cpu, growth = run_validate(path, tmp_path.parent / f"{tmp_path.name}.out")
    MEASURED[name] = (cpu, growth)
    assert "Traceback" not in output, output[-2000:]
    assert code in (0, 2), f"exit {code}: {output[-2000:]}"
    assert cpu < CPU_SECONDS, f"{cpu:.2f} s of CPU"
    assert growth < EXTRA_MEMORY
    if outcome == "valid":
        assert code == 0, output[-2000:]
    if outcome == "refused":
        assert code == 2, output[-2000:]
        first = output.splitlines()[0]
        assert LOCATED.match(first), first
        assert says in output, output[-2000:]
        assert len(first) < 1000, "a message must not echo a huge input"


def test_report_the_worst_case(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the worst CPU time and memory over the corpus (run with -s to see it)."""
    if not MEASURED:
        pytest.skip("run with the corpus")
    slowest = max(MEASURED, key=lambda n: MEASURED[n][0])
    largest = max(MEASURED, key=lambda n: MEASURED[n][1])
    with capsys.disabled():
        print(
            f"\nworst CPU: {MEASURED[slowest][0]:.2f} s ({slowest}); "
            f"worst memory growth: {MEASURED[largest][1] / 2**20:.0f} MB ({largest})"
        )


# --- the classes, in process ---------------------------------------------------------------------
# CPU time of this thread only (time.thread_time): the session's Ray and MLflow threads in this process
# must not count against validation's bound.


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.problems


def test_alias_expansion_is_refused_while_composing(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"b{i}: &b{i} [{', '.join(['*b' + str(i - 1) if i else '*a'] * 10)}]\n" for i in range(12))
    )
    start = time.thread_time()
    [problem] = problems_of(path)
    assert time.thread_time() - start < 0.5
    assert (
        problem.startswith(f"{path}:")
        and f"more than {MAX_NODES} values once aliases are expanded" in problem
    )


def test_depth_limit_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        BASE + "description:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(MAX_DEPTH + 5))
    )
    [problem] = problems_of(path)
    assert f"nested too deeply (got more than {MAX_DEPTH} levels" in problem
    assert int(problem.split(":")[1]) > 16


def test_merge_keys_merge_and_the_mapping_wins(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        BASE.replace(
            "  depth: {num_hidden_layers: 2}\n",
            "  depth: &d {num_hidden_layers: 2, hidden_size: 48}\n  both: {<<: *d, hidden_size: 32}\n",
        ).replace("target: [width, depth]", "target: [width, depth, both]")
    )
    loaded = load_spec(path)
    assert loaded.spec.targets["both"].axes() == {"num_hidden_layers": 2, "hidden_size": 32}
    _, source, _ = load_document(path)
    assert source.locate(("targets", "both", "num_hidden_layers"))[1] == 7  # where the anchor wrote it


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        ((BASE + "description: caf\xe9\n").encode("latin-1"), 17, "not UTF-8 text (got byte 0xE9"),
        (BASE.encode() + b"x: \0\n", 17, "binary content"),
        (BASE.encode("utf-16"), 1, "UTF-16"),
    ],
)
def test_text_that_is_not_utf8(tmp_path: Path, content: bytes, line: int, says: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:{line}: ") and says in problem


def test_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(BASE + "#" * (MAX_FILE_BYTES - len(BASE)))
    load_spec(path)  # exactly at the limit
    path.write_text(BASE + "#" * (MAX_FILE_BYTES - len(BASE) + 1))
    [problem] = problems_of(path)
    assert (
        f"file too large (got {MAX_FILE_BYTES + 1} bytes; expected at most {MAX_FILE_BYTES} bytes)" in problem
    )


@pytest.mark.parametrize(
    "field",
    [
        "distill.lr",
        "distill.min_lr",
        "distill.temperature",
        "distill.weight_decay",
        "distill.grad_clip",
        "resources.trial.cpu",
        "resources.trial.gpu",
        "resources.shared.cpu",
        "teacher.correction.lr",
    ],
)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e309"])
def test_every_float_is_finite(tmp_path: Path, field: str, value: str) -> None:
    section, *rest = field.split(".")
    text = BASE + "resources: {trial: {}, shared: {}}\n"
    text = text.replace(
        "  model: builtin:tiny-mistral\n", "  model: builtin:tiny-mistral\n  correction: {tokens: 2k}\n"
    )
    if section == "distill":
        text = text.replace("  loss: kld\n", f"  loss: kld\n  {rest[0]}: {value}\n")
    elif section == "teacher":
        text = text.replace("correction: {tokens: 2k}", f"correction: {{tokens: 2k, lr: {value}}}")
    else:
        text = text.replace(f"{rest[0]}: {{}}", f"{rest[0]}: {{{rest[1]}: {value}}}")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    found = problems_of(path)
    assert any(f": {field}: " in p and "finite" in p for p in found), found


@pytest.mark.parametrize("value", ["1e999999999", "1e309", "1e16", "10000T", str(MAX_TOKENS + 1)])
def test_token_counts_past_the_bound_are_refused_at_once(tmp_path: Path, value: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(BASE.replace("\n  tokens: 2k", f"\n  tokens: {value}"))
    start = time.thread_time()
    [problem] = problems_of(path)
    assert time.thread_time() - start < 0.5
    assert "distill.tokens: token count too large" in problem and "1000T" in problem


def test_grid_size_is_known_before_any_point_is_built(tmp_path: Path) -> None:
    values = "[" + ", ".join(str(i) for i in range(1, 1001)) + "]"
    axes = "".join(
        f"    distill.{a}: {values}\n"
        for a in ("warmup_steps", "checkpoint_every", "eval_every", "micro_batch")
    )
    path = tmp_path / "spec.yaml"
    path.write_text(BASE.replace("    distill.loss: [kld, ce]\n", axes))
    start = time.thread_time()
    [problem] = problems_of(path)
    assert time.thread_time() - start < 1.0
    assert (
        "sweep.grid: the grid makes about 10^12 trials (expected at most sweep.max_trials = 1000" in problem
    )


def test_extends_chain_of_any_depth(tmp_path: Path) -> None:
    (tmp_path / "b0.yaml").write_text(BASE)
    for i in range(1, 6):
        (tmp_path / f"b{i}.yaml").write_text(
            f"extends: b{i - 1}.yaml\nname: b{i}\ndistill: {{warmup_steps: {i}}}\n"
        )
    loaded = load_spec(tmp_path / "b5.yaml")
    assert loaded.spec.name == "b5" and loaded.spec.distill.warmup_steps == 5
    assert loaded.source.locate(("distill", "warmup_steps")) == (str(tmp_path / "b5.yaml"), 3)
    assert loaded.source.locate(("distill", "tokens")) == (str(tmp_path / "b0.yaml"), 10)


def test_extends_reports_what_the_path_is(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nextends: folder\n")
    [problem] = problems_of(path)
    assert problem.startswith(
        f"{path}:2: extends: 'folder' (resolved to {tmp_path / 'folder'}): is a directory"
    )
    path.write_text(f"extends: {tmp_path / 'gone.yaml'}\n")
    [problem] = problems_of(path)
    assert f"file '{tmp_path / 'gone.yaml'}' not found" in problem and "relative to" not in problem


def test_the_cli_exits_2_without_a_traceback_on_dev_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", "/dev/zero"], prog_name="ablate")
    assert info.value.code == 2
    assert "/dev/zero: not a regular file (got a character device" in capsys.readouterr().err


def test_runner_catches_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus runner itself: a crash in validate is seen as exit 1 with its traceback."""
    import ablate.spec.validate as validate

    monkeypatch.setattr(validate, "load_document", lambda path: 1 / 0)
    path = tmp_path / "spec.yaml"
    path.write_text(BASE)
    code, output, _, _ = run_validate(path, tmp_path / "out")
    assert code == 1 and "ZeroDivisionError" in output
