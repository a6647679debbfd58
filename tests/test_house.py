"""The house: rooms that import only the floors below them, no import circle, no room that is
a grab bag, every flag of today kept, every option declared once and checked."""

from __future__ import annotations

import argparse
import ast
import collections
import json
import math
import os
from pathlib import Path

import pytest

from atrous.cli import build_parser, main

PACKAGE = Path(__file__).resolve().parent.parent / "atrous"
FLAGS = Path(__file__).resolve().parent / "data" / "cli_flags.json"

# each room, and the rooms it may import (torch, timm, numpy and the like aside)
FLOORS = {
    "errors": set(),
    "registry": {"errors"},
    "trackers": {"errors", "outputs", "registry"},
    "options": {"errors"},
    "outputs": {"errors"},
    "plugins": {"errors"},
    "layers": set(),
    "crf": set(),
    "metrics": set(),
    "data": {"errors", "options", "registry"},
    "runtime": {"errors", "options"},
    "losses": {"errors", "registry"},
    "backbones": {"layers"},
    "models": {"backbones", "layers", "registry"},
    "checkpoints": {"backbones", "models", "data", "errors", "outputs"},
    "inference": {"checkpoints", "crf", "data", "errors", "metrics", "models", "options", "outputs", "runtime"},
    "deployment": {"checkpoints", "data", "errors", "models", "outputs"},
    "training": {"checkpoints", "crf", "data", "errors", "inference", "losses", "models", "options", "outputs",
                 "registry", "runtime", "trackers"},
    "serve": {"checkpoints", "data", "errors", "inference", "options", "runtime"},
}
TOP = {"commands", "cli", "__main__", "atrous", "engine"}  # may import any room
NOT_ROOM_NAMES = {"common", "utils", "misc", "files", "runs", "helpers"}


def _modules() -> dict[str, Path]:
    def name(path: Path) -> str:
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(p): p for p in PACKAGE.rglob("*.py")}


def _imports() -> dict[str, set[str]]:
    """module -> the atrous modules it imports, at any depth (a function's imports too)."""
    modules = _modules()
    return {module: _imports_in(module, path.read_text(), set(modules)) for module, path in modules.items()}


def _imports_in(module: str, source: str, modules: set[str]) -> set[str]:
    """The atrous modules (of `modules`) that `source`, module `module`'s text, imports: import
    statements, and importlib.import_module("atrous...") / __import__("atrous...") calls by a
    string literal, which import that module as surely."""

    def resolve(target: str) -> str:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target

    edges = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                       for a in node.names]
        else:
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{module}: relative import"
            targets = _imported_by_name(node)
        for target in targets:
            if target.startswith("atrous") and resolve(target) not in ("", module):
                edges.add(resolve(target))
    return edges


def _imported_by_name(node: ast.AST) -> list[str]:
    """["atrous.x"] for importlib.import_module("atrous.x") or __import__("atrous.x") (by any
    spelling of the function: importlib.import_module, import_module), else []."""
    if not isinstance(node, ast.Call) or not node.args:
        return []
    function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    name = node.args[0]
    if function in ("import_module", "__import__") and isinstance(name, ast.Constant) and isinstance(name.value, str):
        return [name.value]
    return []


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else "atrous"


def test_no_import_circle():
    edges = _imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            assert state.get(target) != 1, "import circle: " + " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(_modules()):
        if module not in state:
            visit(module, [])


def test_rooms_import_only_the_floors_below():
    rooms = {_room(m) for m in _modules()}
    assert rooms - TOP == set(FLOORS), "a room without a floor in this test"
    for module, targets in _imports().items():
        room = _room(module)
        if room in TOP:
            continue
        for target in targets:
            assert _room(target) in FLOORS[room] | {room}, f"{module} imports {target} (upward)"


def test_the_scan_sees_imports_by_name():
    """An upward reach through importlib or __import__ with a string counts as an import."""
    source = (
        "import importlib\n"
        "from importlib import import_module\n"
        "def save(model):\n"
        "    return importlib.import_module('atrous.checkpoints.pretrained').save_pretrained(model)\n"
        "def train():\n"
        "    return __import__('atrous.training'), import_module('atrous.inference')\n"
        "def fine(name):\n"
        "    return importlib.import_module(name), importlib.import_module('json')\n"
    )
    modules = set(_modules())
    assert _imports_in("atrous.models.base", source, modules) == {
        "atrous.checkpoints.pretrained", "atrous.training", "atrous.inference"}
    assert _imports_in("atrous.models.base", "import importlib\n", modules) == set()


def test_every_room_says_what_it_holds_and_none_is_a_grab_bag():
    lines = {path: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    total = sum(lines.values())
    per_room: dict[str, int] = collections.Counter()
    for path, count in lines.items():
        per_room[path.relative_to(PACKAGE).parts[0].removesuffix(".py")] += count
    for room, count in per_room.items():
        assert count <= total / 5, f"{room} holds {count} of {total} lines"
        assert room not in NOT_ROOM_NAMES
    for path in PACKAGE.rglob("*.py"):
        assert path.stem not in NOT_ROOM_NAMES, path
        if path.name != "__main__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and doc.strip(), f"{path} has no docstring saying what it holds"


def _flags_of_each_command() -> dict[str, set[str]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    result = {}
    for name, sub in commands.choices.items():
        result[name] = {s for a in sub._actions if not isinstance(a, argparse._HelpAction)
                        for s in (a.option_strings or [a.dest])}
    return result


def test_every_flag_of_today_is_kept():
    """tests/data/cli_flags.json: every command's flags as they were before the options were
    declared once (taken from the hand-written parser)."""
    today = json.loads(FLAGS.read_text())
    now = _flags_of_each_command()
    for command, flags in today.items():
        assert set(flags) <= now[command], f"atrous {command} lost {sorted(set(flags) - now[command])}"


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert text.count("(default 8)") == 1  # --batch-size, from its declaration
    assert "(default 0.7)" in text and "(default 321)" in text
    assert "{1000}" not in text


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "-1"], "--lr must be greater than 0, got -1"),
    (["--momentum", "1.5"], "--momentum must be less than 1, got 1.5"),
    (["--jitter", "nan"], "--jitter must be a finite number"),
    (["--weight-decay", "-0.1"], "--weight-decay must be at least 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--optimizer", "adam"], "--optimizer: unknown optimizer 'adam'; choose one of: sgd, adamw"),
    (["--loss", "hinge"], "--loss: unknown loss 'hinge'; choose one of: ce,"),
    (["--loss", "focal", "--loss-opt", "gamma=nan"], "--loss-opt gamma must be a finite number"),
    (["--loss", "focal", "--loss-opt", "beta=1"], "loss 'focal' has no such option (its options: gamma, alpha)"),
    (["--loss-opt", "smoothing=1.5"], "--loss-opt smoothing must be in [0, 1), got 1.5"),
])
def test_bad_numbers_and_choices_are_refused_in_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code = main(["train", "--model", "fcn32s", "--dataset", "synthetic", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before the run folder is made


def test_bad_numbers_in_a_config_file_are_refused_too(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: fcn32s\ndataset: synthetic\nlr: .nan\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "--lr must be a finite number, got nan" in capsys.readouterr().err
    config.write_text("model: fcn32s\ndataset: synthetic\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="run as root, which writes into read-only folders: the refusal of an "
                    "unwritable --out folder is not tested (an --out under a file is, below)")
def test_an_output_folder_that_cannot_be_written_is_refused_before_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["train", "--model", "fcn32s", "--dataset", "synthetic", "--out", str(locked / "run")]) == 2
        err = capsys.readouterr().err
        assert f"--out {locked / 'run'} cannot be written" in err and len(err.strip().splitlines()) == 1
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("command", [
    ["train", "--model", "fcn32s", "--dataset", "synthetic", "--iters", "1"],
    ["predict", "--checkpoint", "missing.safetensors", "image.png"],
    ["demo", "--iters", "1"],
])
def test_an_output_path_under_a_file_is_refused_in_one_line(tmp_path, capsys, command):
    """A path that cannot be a folder (a file stands in its way): refused before any work,
    naming the flag and the path, whoever runs it (root too)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = str(blocker / "out")
    assert main([*command, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and len(err.strip().splitlines()) == 1, err


def test_finite_and_range_checks_come_from_the_declaration():
    from atrous.errors import UserError
    from atrous.options import check_options
    from atrous.training import TrainConfig

    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(UserError, match="^scale_max must be a finite number") as caught:
            check_options(TrainConfig(scale_max=bad))
        assert caught.value.arguments == ("scale_max",)
    with pytest.raises(UserError, match="^crop_size must be a whole number, got 1.5"):
        check_options(TrainConfig(crop_size=1.5))
    with pytest.raises(UserError, match="^flip must be true or false"):
        check_options(TrainConfig(flip="yes"))
    with pytest.raises(UserError, match="std must be greater than 0"):
        check_options(TrainConfig(std=(0.2, 0.0, 0.2)))
    check_options(TrainConfig())  # the defaults pass


def test_other_commands_check_their_numbers_too(tmp_path, capsys):
    assert main(["eval", "--checkpoint", "x.safetensors", "--dataset", "synthetic", "--scales", "nan"]) == 2
    assert "--scales must be a finite number" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "x.safetensors", "--port", "70000"]) == 2
    assert "--port must be at most 65535, got 70000" in capsys.readouterr().err
    assert main(["fit-crf", "--checkpoint", "x.safetensors", "--dataset", "synthetic", "--lr", "inf"]) == 2
    assert "--lr must be a finite number" in capsys.readouterr().err
    assert main(["export", "--checkpoint", "x.safetensors", "--out", str(tmp_path / "m.onnx"), "--opset", "3"]) == 2
    assert "--opset must be at least 11" in capsys.readouterr().err


def test_every_config_key_of_today_is_kept():
    """tests/data/config_keys.json: TrainConfig's fields (the config-file keys) before the
    options were declared once."""
    import dataclasses

    from atrous.training import TrainConfig

    keys = set(json.loads((FLAGS.parent / "config_keys.json").read_text()))
    assert keys <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_old_engine_names_still_work_with_a_warning():
    import atrous.engine
    from atrous.training import TrainConfig

    with pytest.warns(DeprecationWarning, match="atrous.training.TrainConfig"):
        assert atrous.engine.TrainConfig is TrainConfig
    with pytest.raises(AttributeError):
        atrous.engine.nothing_here  # noqa: B018


# options whose name recurs across commands with a meaning of each command's own
MEANS_ONE_THING_PER_COMMAND = {
    "batch_size": "training's global batch; images per inference or CRF-fitting batch",
    "checkpoint": "what the command does with it differs (evaluate, predict, export, fit, serve)",
    "crf": "fit-crf fits dense or conv; eval and predict may also say none",
    "crf_params": "fit-crf's starting parameters; the parameters used at inference",
    "crop_size": "training crops with augmentation; fit-crf's plain random crops",
    "dataset": "trained on, evaluated on, fitted on",
    "flip": "training's random flips; inference's averaged mirrored view",
    "iters": "training, the demo and CRF fitting each count their own steps",
    "lr": "the network's optimiser; the CRF's Adam",
    "max_images": "evaluation's first N; fit-crf's at most N",
    "metrics": "export: a metrics file for the card; plot: the curves to draw",
    "out": "a run folder, an output folder, a file",
    "output_stride": "training builds at a stride; inference runs a trained model at another",
    "precision": "training's autocast; inference's prepared model; the frozen network of fit-crf",
    "seed": "training's data and initialisation; fit-crf's crops and order",
    "split": "evaluated; fitted on",
}


def test_each_option_is_declared_once_across_the_tool():
    """An option that several commands take comes from one declaration (a group mixed in:
    DatasetOptions, DeviceOptions, ProgressOptions, ViewOptions, ...), so its copies cannot
    drift; a name that means something else in each command is listed above, with why."""
    import dataclasses

    from atrous.commands import COMMANDS, command_module

    specs: dict[str, set] = collections.defaultdict(set)
    for name in COMMANDS:
        for spec in dataclasses.fields(command_module(name).Options):
            option = spec.metadata["option"]
            default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory
            specs[spec.name].add((repr(option), repr(default)))
    drifted = {name for name, seen in specs.items() if len(seen) > 1}
    assert drifted == set(MEANS_ONE_THING_PER_COMMAND), sorted(drifted ^ set(MEANS_ONE_THING_PER_COMMAND))
    for shared in ("device", "data_root", "num_classes", "synthetic_size", "progress"):
        assert len(specs[shared]) == 1, shared


# --- the library speaks Python, the command line speaks flags -----------------------------------

# a raise below commands/ whose message names a flag, with why (empty: none may)
FLAG_IN_LIBRARY_ERROR: dict[str, str] = {}


def _raised_texts(node: ast.Raise) -> list[str]:
    """The string pieces of a raise's exception: literals and the literal parts of f-strings."""
    return [c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def test_library_errors_name_arguments_not_flags():
    """Below commands/ and cli.py an error names the argument as Python spells it
    (`crop_size`), listed in the error's `argument=`; cli.py writes it as the flag."""
    import re

    flag = re.compile(r"(?<![\w-])--[A-Za-z]")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("commands/") or relative == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None and any(flag.search(text) for text in _raised_texts(node)):
                where = f"{relative}:{node.lineno}"
                if where not in FLAG_IN_LIBRARY_ERROR:
                    found.append(f"{where}: {ast.unparse(node.exc)[:100]}")
    assert not found, "name the argument, not its flag (UserError(..., argument=NAME)):\n" + "\n".join(found)


def test_the_scan_for_flags_in_errors_sees_f_strings():
    tree = ast.parse('raise UserError(f"--crop-size must be at least {n}")\nraise UserError("crop_size: x")')
    raises = [node for node in ast.walk(tree) if isinstance(node, ast.Raise)]
    assert [any("--crop" in text for text in _raised_texts(node)) for node in raises] == [True, False]


def test_one_user_error_type_caught_once_by_the_command_line():
    """Data errors and unknown names are UserErrors; cli.py catches UserError in one place."""
    from atrous.data import DataError
    from atrous.errors import UserError
    from atrous.registry import UnknownName

    assert issubclass(DataError, UserError) and issubclass(UnknownName, UserError)
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    caught = [ast.unparse(handler.type) for handler in ast.walk(tree)
              if isinstance(handler, ast.ExceptHandler) and handler.type is not None]
    assert caught.count("UserError") == 1 and not [c for c in caught if "DataError" in c], caught


def test_the_command_line_writes_the_arguments_an_error_names_as_flags():
    from atrous.cli import as_flags

    assert as_flags("crop_size must be at least 32, got 8", ("crop_size",), "train") == \
        "--crop-size must be at least 32, got 8"
    # the first appearance only: a choice error names the option, then the kind of thing
    assert as_flags("loss: unknown loss 'x'", ("loss",), "train") == "--loss: unknown loss 'x'"
    # a bool's value picks its flag; a path is left alone; a name the command lacks stays
    assert as_flags("export it with dynamic=False", ("dynamic",), "export") == "export it with --static"
    assert as_flags("/runs/out/model.safetensors exists; choose another out", ("out",), "train") == \
        "/runs/out/model.safetensors exists; choose another --out"
    assert as_flags("lr must be positive", ("lr",), "predict") == "lr must be positive"
    assert as_flags("loss_options alpha must be in [0, 1]", ("loss_options",), "train") == \
        "--loss-opt alpha must be in [0, 1]"


def test_a_library_error_keeps_its_arguments_through_pickle():
    import pickle

    from atrous.data import DataError

    err = pickle.loads(pickle.dumps(DataError("data_root x not found", argument="data_root")))
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    assert err.arguments == ("data_root",) and str(err) == "data_root x not found"


def test_a_library_error_read_from_python_names_the_argument(tmp_path, capsys):
    """The same mistake: from Python the argument's name, from the command line its flag."""
    from atrous.data import build_dataset
    from atrous.errors import UserError

    with pytest.raises(UserError) as caught:
        build_dataset("synthetic", "train", synthetic_size=8)
    assert str(caught.value) == "synthetic_size must be at least 32, got 8"
    assert caught.value.arguments == ("synthetic_size",)
    code = main(["train", "--model", "unet", "--dataset", "synthetic", "--synthetic-size", "8",
                 "--out", str(tmp_path / "run"), "--iters", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--synthetic-size must be at least" in err and "synthetic_size" not in err, err
