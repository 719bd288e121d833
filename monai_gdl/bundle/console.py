"""What a user of ``python -m monai.bundle run`` sees: one line per epoch, and errors they can read.

:func:`start` is the first ``initialize`` step of every config. Under MONAI's CLI it (1) refuses
command-line keys that no config defines (a typo such as ``--epoch 2`` would otherwise be ignored),
listing the close matches; (2) makes an error raised by monai_gdl the last thing printed, as one
short block, with exit code 1, however deep MONAI wraps it (``Failed to evaluate ConfigExpression``)
and without the abort that worker threads still running at interpreter exit cause; (3) keeps
library INFO chatter off unless ``--verbose true``. Imported from Python (``ConfigWorkflow``,
notebooks) only the log level is set.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import os
import sys
import traceback

from monai_gdl.bundle.atomic import disk_full, disk_full_message
from monai_gdl.bundle.checks import ArgumentError, flag

__all__ = ["UnknownKeyError", "project_error", "start", "text_booleans", "unknown_keys"]

#: Arguments of ``monai.bundle run`` / ``create_workflow`` that are not config keys.
RUN_ARGUMENTS = {
    "run_id",
    "init_id",
    "final_id",
    "meta_file",
    "config_file",
    "logging_file",
    "tracking",
    "args_file",
    "workflow_type",
    "workflow_name",
    "properties_path",
}


class UnknownKeyError(KeyError):
    """A ``--key`` on the command line that no config defines."""

    def __str__(self) -> str:
        return str(self.args[0])


def _under_bundle_cli() -> bool:
    main = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return main.endswith(os.path.join("monai", "bundle", "__main__.py"))


def project_error(exc: BaseException | None) -> BaseException | None:
    """The first exception raised by monai_gdl in ``exc``'s chain (cause and context), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.split(".")[0] == "monai_gdl":
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _rank_prefix() -> str:
    """``[rank N] `` in a multi-process run (torchrun sets RANK and WORLD_SIZE), else nothing."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '0')}] " if world.isdigit() and int(world) > 1 else ""


def _excepthook(exc_type, exc, tb, verbose: bool = False) -> None:
    # Written to the process's own stderr: torch.distributed's excepthook runs this one with sys.stderr swapped
    # for a buffer that it prints afterwards, and the os._exit below would drop that buffer (torchrun showed
    # nothing at all).
    stderr = sys.__stderr__ or sys.stderr
    ours = project_error(exc)
    full = disk_full(exc) if ours is None else None
    if (ours is None and full is None) or verbose:
        traceback.print_exception(exc_type, exc, tb, file=stderr)
    if ours is not None:
        print(f"\n{_rank_prefix()}error: {ours}", file=stderr)
    elif full is not None:  # a write of MONAI's or a library's (TensorBoard, a saver) on a full disk
        print(f"\n{_rank_prefix()}error: {disk_full_message(full.filename or 'an output file')}", file=stderr)
    sys.stdout.flush()
    stderr.flush()
    # Not sys.exit: interpreter shutdown with a CacheDataset worker thread still running aborts (exit 134).
    os._exit(1)


def _command_line() -> tuple[list[str], list[str], dict, dict]:
    """(config files, override keys, args_file content, the overrides' values as typed) of the running
    ``monai.bundle run`` command."""
    args = sys.argv[1:]
    keys, values = [], {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            keys.append(name)
            values[name] = value
        i += 1
    extra: dict = {}
    if values.get("args_file"):
        from monai.bundle import ConfigParser

        extra = dict(ConfigParser.load_config_file(values["args_file"]))
        keys += list(extra)
    files = values.get("config_file") or extra.get("config_file") or []
    if isinstance(files, str):
        files = ast.literal_eval(files) if files.strip().startswith(("[", "(")) else files.split(",")
    values.update({k: v for k, v in extra.items() if k not in values})
    return [str(f) for f in files], keys, extra, values


def command_line_keys() -> list[str]:
    """The override keys of the running ``monai.bundle`` command (none when the bundle runs from Python)."""
    return _command_line()[1] if _under_bundle_cli() else []


def _as_fire_reads(value: object) -> object:
    """A command-line value as MONAI's CLI (fire) passes it on: Python literals parsed (``True``, ``1``), the
    rest as text (``true``, ``false``)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def text_booleans(config_files: list[str], overrides: dict) -> list[str]:
    """Overrides of a boolean the configs hold as a literal (``--loss#softmax true``) whose value is not a
    boolean as it arrives (the text ``"true"``, the number 1): one line each, naming the knob and the fix.
    The top-level knobs the configs parse with :func:`~monai_gdl.bundle.checks.flag` (amp, progress, resume,
    include_background, verbose) take true/false/1/0 and are not listed."""
    from monai.bundle import ConfigParser

    if not config_files:
        return []
    parser = ConfigParser(ConfigParser.load_config_files(config_files))
    text = json.dumps(parser.config)
    lines = []
    for key, raw in overrides.items():
        if key in RUN_ARGUMENTS or key == "verbose" or f"flag('{key}'" in text:  # start() parses verbose
            continue
        try:
            current = parser.get(key.lstrip("+"))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        value = _as_fire_reads(raw)
        if isinstance(current, bool) and not isinstance(value, bool):
            lines.append(
                f"--{key} {raw}: {key} is a boolean, but MONAI's command line passes {raw!r} on as "
                f"{type(value).__name__} {value!r} (read as {bool(value)}). Write --{key} True or --{key} False."
            )
    return lines


def unknown_keys(config_files: list[str], override_keys: list[str], tracking: bool = False) -> list[str]:
    """Override keys whose top-level id no config file defines, each with its close matches."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    defined = set(ConfigParser.load_config_files(config_files)) if config_files else set()
    defined = {k.lstrip("+") for k in defined} | RUN_ARGUMENTS | {"_meta_"}
    if tracking:
        defined |= set(DEFAULT_MLFLOW_SETTINGS["configs"])
    lines = []
    parser = None
    for key in override_keys:
        path = key.lstrip("+").replace("::", "#").split("#")
        top = path[0]
        if top and top not in defined:
            close = difflib.get_close_matches(top, sorted(defined - RUN_ARGUMENTS), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join('--' + c for c in close)}?" if close else "no config key is close"
            lines.append(f"--{key} ({hint})")
        elif len(path) > 1 and top in defined - RUN_ARGUMENTS:
            if parser is None:
                parser = ConfigParser(ConfigParser.load_config_files(config_files))
            problem = _nested_key_problem(parser, path)
            if problem:
                lines.append(f"--{key} ({problem})")
    return lines


def _nested_key_problem(parser, path: list[str]) -> str | None:
    """Why an override ``a#b#c`` would fail or change nothing, with close matches; None when it is fine. A new
    key is fine inside a component whose ``_target_`` accepts it as an argument (``--network_def#dropout``)."""
    node = parser.get(path[0])
    for depth, part in enumerate(path[1:], start=1):
        where = "#".join(path[:depth])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{where} is a list of {len(node)}: use an index 0..{len(node) - 1}"
            node = node[int(part)]
        elif isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            if depth == len(path) - 1 and _accepts_argument(node, part):
                return None
            keys = [k for k in node if not k.startswith("_")]
            close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
            if close:
                return f"{where} has no key {part!r}: did you mean {' or '.join(f'--{where}#{c}' for c in close)}?"
            return f"{where} has no key {part!r}; its keys: {', '.join(keys) or 'none'}"
        else:
            return f"{where} is a value ({node!r}), not a dict or list: override --{where} itself"
    return None


def _accepts_argument(component: dict, name: str) -> bool:
    """Whether the ``_target_`` of a config component takes ``name`` as a keyword (unknown targets: assume so)."""
    import inspect
    import pydoc

    from monai.bundle.config_item import ComponentLocator, ConfigComponent

    if "_target_" not in component:
        return False
    try:
        module_name = ConfigComponent(config=component, locator=ComponentLocator()).resolve_module_name()
        target = pydoc.locate(module_name) if isinstance(module_name, str) else None
        parameters = inspect.signature(target).parameters if target is not None else None
    except (TypeError, ValueError):
        return True
    if parameters is None:
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def start(verbose=False) -> None:
    """Set the console up for this run (see the module docstring)."""
    from monai.data import set_track_meta

    verbose = flag("verbose", verbose)
    # the bundle inverts transforms with their metadata; a training draw that raised between the markers of
    # track_meta.untracked would have left tracking off in this process
    set_track_meta(True)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("ignite", "monai"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not _under_bundle_cli():
        return
    sys.excepthook = lambda *exc: _excepthook(*exc, verbose=verbose)
    files, keys, extra, values = _command_line()
    tracking = bool(extra.get("tracking")) or any(k == "tracking" for k in keys)
    unknown = unknown_keys(files, keys, tracking=tracking)
    if unknown:
        raise UnknownKeyError(
            f"unknown key(s) on the command line: {'; '.join(unknown)}. No config in {json.dumps(files)} defines "
            "them, so they would change nothing or fail deep inside MONAI; every knob is listed in the README "
            "(The bundle)."
        )
    refused = text_booleans(files, {k: v for k, v in values.items() if k in keys})
    if refused:
        raise ArgumentError(" ".join(refused))
