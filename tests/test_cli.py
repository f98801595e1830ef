"""nldsl/cli.py: exit statuses, where messages go, and no traceback for a user's mistake."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import nldsl
from nldsl.errors import NLDSLCompileError
from nldsl.optim.demo import RUNS
from nldsl.cli import COMMANDS, main
from nldsl.library import description, stdlib_names, stdlib_text
from nldsl.language.parser import parse
from nldsl.language.printer import format_spec
from nldsl.testing import EXAMPLE_SPECS

BROKEN = "optimizer broken(lr = 0.1) {\n  level a every 1 step {\n    W <- W - lr *\n  }\n}\n"


def error_head(path) -> str:
    """`file:line:col: error:` as the library itself locates the spec's first problem."""
    with pytest.raises(nldsl.NLDSLError) as caught:
        nldsl.load(str(path))
    return f"{path}:{caught.value.line}:{caught.value.column}: error:"


def loads(name_or_path: str) -> bool:
    try:
        nldsl.load(name_or_path)
    except nldsl.NLDSLError:
        return False
    return True


def compiles_before_hparams(name: str) -> bool:
    """What `nldsl check` asks of a valid spec: the compilers' refusals that need no
    hyper-parameter (the module compiler's table, the optimizer plan's)."""
    from nldsl.lower.unsupported import check_supported
    from nldsl.optim.plan import lower
    spec = nldsl.load(name)
    try:
        check_supported(spec) if spec.kind == "module" else lower(spec)
    except NLDSLCompileError:
        return False
    return True


@pytest.fixture
def spec_files(tmp_path):
    """Every example spec as a file, plus one with a syntax error."""
    files = {}
    for name, text in {**EXAMPLE_SPECS, "broken": BROKEN}.items():
        files[name] = tmp_path / f"{name}.nl"
        files[name].write_text(text)
    return files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


@pytest.mark.parametrize("name", list(EXAMPLE_SPECS))
def test_check_valid_file(capsys, spec_files, name):
    status, out, err = run(capsys, "check", str(spec_files[name]))
    assert (status, err) == (0, "")
    assert out.startswith(f"ok  {spec_files[name]}: ")


def test_check_reports_location_of_syntax_error(capsys, spec_files):
    status, out, err = run(capsys, "check", str(spec_files["broken"]))
    assert status == 1 and out == ""
    assert err.startswith(error_head(spec_files["broken"]))
    # The error sits at the dangling `*` (line 3) or where its operand should start (line 4).
    assert error_head(spec_files["broken"]).split(":")[-4] in {"3", "4"}
    assert "1 of 1 specs have problems" in err


def test_check_reports_every_failing_target(capsys, spec_files, tmp_path):
    missing = tmp_path / "missing.nl"
    binary = tmp_path / "binary.nl"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    targets = [spec_files["heavy_ball"], spec_files["broken"], missing, binary]
    status, out, err = run(capsys, "check", *map(str, targets))
    assert status == 1
    assert out.startswith(f"ok  {spec_files['heavy_ball']}")
    assert error_head(spec_files["broken"]) in err
    assert f"{missing}: error: no spec file" in err
    assert f"{binary}: error: not a text file" in err
    assert "3 of 4 specs have problems" in err


def test_check_reports_what_the_module_compiler_refuses(capsys):
    """A valid spec whose construct the module compiler does not support yet fails `nldsl
    check` with the same located error as `nldsl.compile` (check accepts => compiles)."""
    text = ("module m(dim: int >= 1) {\n"
            "  level mem every 1 token {\n"
            "    state M : [dim, dim] = zeros()\n"
            "    key k = x\n"
            "    minimize task by ema(beta = 0.9)\n"
            "    read y = M @ k\n"
            "  }\n"
            "  out = y\n"
            "}\n")
    assert loads(text)
    status, out, err = run(capsys, "check", text)
    assert (status, out) == (1, "")
    assert "<string>:5:22: error: `minimize task by ema` is not compiled yet" in err
    with pytest.raises(NLDSLCompileError) as compiled:
        nldsl.compile(text, dim=4)
    assert str(compiled.value).splitlines()[0] in err


@pytest.mark.parametrize("command", ["check", "compile"])
def test_an_unreadable_file_says_cannot_read(capsys, spec_files, monkeypatch, command):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pathlib.Path, "read_text", refuse)
    target = str(spec_files["heavy_ball"])
    status, out, err = run(capsys, command, target)
    assert (status, out) == (1, "")
    assert f"{target}: error: cannot read {target}: Permission denied\n" in err
    if command == "compile":
        assert err == f"{target}: error: cannot read {target}: Permission denied\n"


def test_check_stdlib_names(capsys):
    names = stdlib_names()
    valid = [name for name in names if loads(name) and compiles_before_hparams(name)]
    status, out, err = run(capsys, "check", *names, "no_such_spec")
    assert status == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [f"ok  {n}" for n in valid]
    for name in set(names) - set(valid):
        assert f"{name}.nl:" in err
    assert "no_such_spec: error: no standard-library spec named 'no_such_spec'" in err


@pytest.mark.parametrize("name", stdlib_names()[:3])
def test_show_prints_the_source(capsys, name):
    status, out, err = run(capsys, "show", name)
    assert (status, out, err) == (0, stdlib_text(name), "")


def test_show_canonical(capsys, spec_files):
    status, out, err = run(capsys, "show", str(spec_files["delta_memory"]), "--canonical")
    assert (status, err) == (0, "")
    assert out == format_spec(parse(EXAMPLE_SPECS["delta_memory"]))


def test_show_unknown_name(capsys):
    status, out, err = run(capsys, "show", "no_such_spec")
    assert (status, out) == (1, "")
    assert "no standard-library spec named 'no_such_spec'" in err


def test_list_names_every_stdlib_spec_with_its_description(capsys):
    status, out, err = run(capsys, "list")
    assert (status, err) == (0, "")
    rows = [line.split(maxsplit=1) for line in out.splitlines()]
    assert [row[0] for row in rows] == stdlib_names()
    for row in rows:
        assert row[1:] == ([description(stdlib_text(row[0]))] if len(row) > 1 else [])


def test_demo_tabulates_every_valid_stdlib_spec_and_trains_one(capsys, tmp_path):
    names = stdlib_names()
    valid = [name for name in names if loads(name)]
    status, out, err = run(capsys, "demo", "--out", str(tmp_path))
    assert status == (0 if len(valid) == len(names) else 1)
    table = out.splitlines()
    if valid:
        assert table[0].split() == ["name", "kind", "levels", "description"]
        assert [line.split()[0] for line in table[2:2 + len(valid)]] == valid
        for line, name in zip(table[2:], valid):
            assert line.split()[1] == nldsl.load(name).kind
    assert f"{len(valid)} of {len(names)} standard-library specs are valid" in table
    if len(valid) == len(names):
        start = table.index(next(t for t in table if t.startswith("spec "))) + 2
        trained = table[start:table.index("", start)]
        assert {line.split()[0] for line in trained} == set(RUNS)
        assert f"trained 150 steps; report: {tmp_path / 'report.md'}" in out
        assert {"report.md", "loss.png", "metrics.jsonl", "spec.svg"} <= \
            {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize("argv, status", [
    pytest.param([], 2, id="no-command"),
    pytest.param(["frobnicate"], 2, id="unknown-command"),
    pytest.param(["check"], 2, id="check-without-targets"),
    pytest.param(["--help"], 0, id="help"),
])
def test_command_line_errors_are_argparse_statuses(capsys, argv, status):
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err


def test_help_lists_every_registered_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command.name in out and command.help in out


def test_installed_console_script(spec_files):
    script = pathlib.Path(sys.executable).parent / "nldsl"
    assert script.is_file(), "the `nldsl` console script is not installed in this environment"
    ok = subprocess.run([str(script), "check", str(spec_files["heavy_ball"])],
                        capture_output=True, text=True, timeout=120)
    bad = subprocess.run([str(script), "check", str(spec_files["broken"])],
                         capture_output=True, text=True, timeout=120)
    assert (ok.returncode, bad.returncode) == (0, 1)
    assert bad.stderr.startswith(error_head(spec_files["broken"]))
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------- issue 8 §6

def test_check_reads_an_existing_file_whose_name_looks_like_text(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weird{1}.nl").write_text(stdlib_text("sgd"))
    status, out, err = run(capsys, "check", "weird{1}.nl")
    assert (status, err) == (0, "")
    assert out == "ok  weird{1}.nl: optimizer sgd, 2 levels\n"


@pytest.mark.parametrize("command", ["check", "compile", "show"])
def test_a_directory_is_not_looked_up_as_a_stdlib_name(capsys, tmp_path, command):
    status, out, err = run(capsys, command, str(tmp_path))
    assert (status, out) == (1, "")
    assert err.startswith(f"{tmp_path}: error: {str(tmp_path)!r} is a directory, not a spec file")
    assert "standard-library spec named" not in err


@pytest.mark.parametrize("text, head", [
    pytest.param("", "<string>:1:1: error: a spec starts with", id="empty"),
    pytest.param("# a comment", "<string>:1:12: error: a spec starts with", id="comment-only"),
    pytest.param("optimizer o(lr = 0.1)", "<string>:1:22: error: unexpected end of the text",
                 id="one-line-spec"),
])
def test_check_of_text_gives_a_located_error(capsys, text, head):
    status, out, err = run(capsys, "check", text)
    assert (status, out) == (1, "")
    assert err.startswith(head)


def test_compile_errors_name_the_file(capsys, spec_files, tmp_path):
    missing = tmp_path / "missing.nl"
    status, out, err = run(capsys, "compile", str(missing))
    assert (status, out) == (1, "")
    assert err == f"{missing}: error: no spec file at {str(missing)!r}\n"
    status, out, err = run(capsys, "compile", str(spec_files["broken"]))
    assert (status, out) == (1, "")
    assert err.startswith(error_head(spec_files["broken"]))


@pytest.mark.parametrize("output", ["missing_folder/out.dot", "missing_folder/deeper/out.svg"])
def test_render_write_failure_says_cannot_write(capsys, tmp_path, output):
    target = tmp_path / output
    status, out, err = run(capsys, "render", "sgd", "-o", str(target))
    assert (status, out) == (1, "")
    assert err.startswith(f"sgd: error: cannot write {target}: ")
    assert "cannot read" not in err


@pytest.mark.parametrize("window", ["0", "-3"])
def test_window_must_be_a_positive_integer(capsys, tmp_path, window):
    status = main(["render", "sgd", "--timeline", "--window", window, "-o", str(tmp_path / "t.svg")])
    out, err = capsys.readouterr()
    assert status == 2
    assert f"--window: must be a positive integer, got {window}" in err


def test_check_of_spec_text_names_it_string(capsys):
    text = "optimizer o(lr = 0.1) {\n  level w every 1 step { W <- W - lr * grad(W) }\n}"
    status, out, err = run(capsys, "check", text)
    assert (status, out, err) == (0, "ok  <string>: optimizer o, 1 level\n", "")
