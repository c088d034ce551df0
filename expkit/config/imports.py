"""Import paths in config: `MODULE:NAME` names the user's own code.

    model=python   model.factory=mymod:build_model  (+model.kwargs.*)  a function or nn.Module class
    data=python    data.factory=mymod:make_data     (+data.kwargs.*)   returns Datasets or tensors
    init=function  init.function=mymod:init_weights                     applied with model.apply

A path is imported with the project folder first on sys.path: the current directory (a run
folder's recorded `cwd` is never used). `validate` checks it before anything is built: the
module imports, has the name, the object is of the right kind and its parameters fit what
expkit passes; any problem is one ConfigError line. Commands that read a run folder check
first (`check_trust`, before any import) that each path names the file the run recorded,
or that the user passed --trust-code; code inside a run folder is never imported.

Only the project's own code can be named: the object must be defined (not just imported)
in a module whose file is inside the project folder, and not in the standard library, a
site-packages folder (a virtual environment inside the project included) or expkit. So a
config, even in a stranger's run folder, cannot name `os:system`, `torch.hub:load` or
expkit's own functions. A notebook's objects (config.yaml records them as `__main__:NAME`) are
never looked up by path: they must be given again to expkit.resume.

The Python API passes objects instead of paths: `using(objects={"model": Net})` makes
`resolve` return them for the duration of a run; config.yaml keeps a description.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expkit.errors import ConfigError

# group -> (the choice key, the choice that means own code, the key holding its path)
OWN = {"model": ("arch", "python", "factory"), "data": ("name", "python", "factory"),
       "init": ("name", "function", "function"), "task": ("name", "python", "factory")}
# Further keys of an own-code group that hold an import path (optional), checked alike.
MORE_PATHS = {"task": ("metrics",)}
# Installed packages whose callables build models whatever their arguments: a run folder
# may name them without --trust-code (any other installed callable could do anything).
MODEL_ZOOS = ("torchvision.models", "timm")
# What expkit passes to a model factory, by name, when it has parameters of these names.
MODEL_ARGUMENTS = ("input_shape", "num_classes")
SOURCE_CAP = 20_000  # characters of a notebook object's source kept in meta.json
GIVEN = "_expkit_given"  # on the function that returns data given to the Python API as objects


@dataclass
class _Context:
    directory: str | None = None
    objects: dict[str, Any] = field(default_factory=dict)


_context: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("expkit_imports", default=None)


@contextlib.contextmanager
def using(directory: str | os.PathLike | None = None, objects: dict[str, Any] | None = None) -> Iterator[None]:
    """Within the block, import paths resolve from `directory` (default: the current
    directory) and `objects` (group -> object) stand for the paths of those groups."""
    token = _context.set(_Context(str(directory) if directory else None, dict(objects or {})))
    try:
        yield
    finally:
        _context.reset(token)


def project_dir() -> Path:
    ctx = _context.get()
    return Path(ctx.directory if ctx and ctx.directory else os.getcwd()).resolve()


def own_groups(typed: dict[str, Any]) -> list[str]:
    """The groups of a validated config that name own code."""
    return [g for g, (choice_key, own, _) in OWN.items()
            if g in typed and getattr(typed[g], choice_key, None) == own]


def path_of(group: str, cfg: Any) -> Any:
    return getattr(cfg, OWN[group][2])


def key_of(group: str) -> str:
    return f"{group}.{OWN[group][2]}"


# ---------------------------------------------------------------------------- resolving
def resolve(group: str, path: Any, key: str | None = None) -> Any:
    """The object `path` (MODULE:NAME) names, or the object the Python API gave for `group`
    (`key`: the config key holding the path, when it is not the group's main one)."""
    ctx = _context.get()
    if ctx is not None and group in ctx.objects and key is None:
        return ctx.objects[group]
    key = key or key_of(group)
    module_name, attr = _split(key, path)
    if module_name == "__main__":  # a notebook's or script's object: only the object itself will do
        raise ConfigError(f"{key}: value {path!r} names an object of the notebook or script that trained the run, "
                          f"which this process does not have; pass the object itself: expkit.train(..., {group}=...) "
                          f"or expkit.resume(RUN_DIR, {group}=...).")
    module = _import(key, path, module_name, project_dir())
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            raise ConfigError(_missing_attribute(key, path, module_name, module, attr.split(".")[: i + 1], obj))
        obj = getattr(obj, part)
    task_object = group == "task" and callable(getattr(obj, "loss", None))  # an object with loss() and metrics()
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or task_object):
        raise ConfigError(f"{key}: value {path!r} is a {type(obj).__name__}, not a function or class.")
    defined_in = getattr(obj, "__module__", None)
    if defined_in != module_name:  # a name a package re-exports (models/__init__.py: from .lenet import LeNet)
        where = sys.modules.get(defined_in) if isinstance(defined_in, str) else None
        problem = _not_importable(where, defined_in, project_dir()) if where is not None else "is unknown"
        if problem:
            raise ConfigError(f"{key}: value {path!r} is defined in {defined_in}, which {problem}; import paths "
                              "name the project's own code or an installed package's.")
    return obj


def _split(key: str, path: Any) -> tuple[str, str]:
    if isinstance(path, str) and path.endswith("given to the Python API>"):
        group = key.split(".")[0]
        raise ConfigError(f"{key}: value {path!r} stands for objects given to expkit.train, which this process "
                          f"does not have; pass them again: expkit.resume(RUN_DIR, {group}=...).")
    module_name, sep, attr = str(path).partition(":") if isinstance(path, str) else ("", "", "")
    names = [*module_name.split("."), *attr.split(".")]
    if not sep or not all(n.isidentifier() for n in names):
        where = "" if path is None else f"value {path!r} is not an import path; "
        raise ConfigError(f"{key}: {where}expected MODULE:NAME, e.g. {key}=mymodels:build_model for a function "
                          f"build_model in mymodels.py of the current directory.")
    return module_name, attr


def _import(key: str, path: str, module_name: str, directory: Path) -> Any:
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))  # as `python -m` puts the current directory first
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(f"{key}: value {path!r}: there is no module {e.name} in {directory} "
                              f"(found there: {_modules_in(directory, e.name)}).") from None
        raise ConfigError(f"{key}: value {path!r}: importing {module_name} failed: {e}.") from None
    except Exception as e:
        raise ConfigError(f"{key}: value {path!r}: importing {module_name} raised {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}{_where(e)}.") from None
    problem = _not_importable(module, module_name, directory)
    if not problem:
        return module
    shown = getattr(module, "__file__", None) or "built into Python"
    raise ConfigError(f"{key}: value {path!r}: module {module_name} ({shown}) {problem}; import paths name the "
                      f"project's own code, a module in {directory}. An installed package's callable may be named "
                      "too (torchvision.models:resnet18).")


def _not_importable(module: Any, module_name: str, directory: Path) -> str | None:
    """Why a config may not name code of this module, or None: expkit's own code and the
    standard library are never named (a config could call os:system); the project's code
    and installed packages' (a model zoo, your own installed package) may be."""
    file = getattr(module, "__file__", None)
    where = Path(file).resolve() if file else None
    never = never_importable(module_name, where)
    if never:
        return never
    if installed(where) or where.is_relative_to(directory):
        return None
    return "is outside the project folder"


def never_importable(module_name: str, file: Path | None) -> str | None:
    """Why no config may name code of this module, with or without --trust-code, or None:
    expkit's own code and the standard library's (a module without a file is built in)."""
    if module_name.split(".")[0] == "expkit":
        return "is expkit's own code"
    if file is None or in_stdlib(file):
        return "is in the standard library"
    return None


def in_stdlib(path: Path) -> bool:
    import sysconfig

    packages = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if any(path.is_relative_to(p) for p in packages) or "site-packages" in path.parts or "dist-packages" in path.parts:
        return False
    return any(path.is_relative_to(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "platstdlib"))


def installed(path: Path) -> bool:
    """Inside the standard library or a site-packages folder (a virtual environment that
    lives in the project folder included)."""
    import site
    import sysconfig

    folders = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders |= {*site.getsitepackages(), site.getusersitepackages()}
    return any(path.is_relative_to(Path(f).resolve()) for f in folders if f)


def _where(e: BaseException) -> str:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def _modules_in(directory: Path, missing: str) -> str:
    parent = directory.joinpath(*missing.split(".")[:-1])
    found = sorted({p.stem if p.suffix == ".py" else p.name for p in parent.iterdir()
                    if (p.suffix == ".py" and p.stem.isidentifier())
                    or (p.is_dir() and p.name.isidentifier() and (p / "__init__.py").exists())}
                   ) if parent.is_dir() else []
    prefix = ".".join(missing.split(".")[:-1])
    found = [f"{prefix}.{f}" if prefix else f for f in found]
    from expkit.errors import did_you_mean

    text = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") if found else "no Python modules"
    return text + did_you_mean(missing, found)


def _missing_attribute(key: str, path: str, module_name: str, module: Any, parts: list[str], obj: Any) -> str:
    defined = sorted(n for n, v in vars(obj).items() if not n.startswith("_")
                     and (inspect.isfunction(v) or inspect.isclass(v))
                     and getattr(v, "__module__", None) == module_name)
    name = ".".join(parts)
    from expkit.errors import did_you_mean

    where = getattr(module, "__file__", None) or module_name
    return (f"{key}: value {path!r}: {module_name} ({where}) has no {name}; it defines "
            f"{', '.join(defined) if defined else 'no functions or classes'}"
            f"{did_you_mean(parts[-1], defined) or '.'}")


# ------------------------------------------------------------------------- trust
TRUST_FLAG = "--trust-code"


def module_file(module_name: str, directory: Path) -> Path | None:
    """The file `module_name` would be imported from with `directory` first on sys.path,
    found as Python's import system finds it (a package before a module, a compiled
    extension before source, editable installs of a src/ layout too) but without running
    anything: each part is looked up in its parent package's folders, never imported.
    None when it is not found, or not as a source file."""
    import importlib.machinery
    import importlib.util

    parts = module_name.split(".")
    path = [str(directory), *sys.path]
    spec = importlib.machinery.PathFinder.find_spec(parts[0], path)
    if spec is None:  # an editable install's own finder (src/ layouts): asked for the top name only
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(parts[0]) if parts[0] not in sys.modules else None
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    origin = getattr(spec, "origin", None) if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") and Path(origin).is_file() else None


def inside_run_folder(path: Path, is_run: Callable[[Path], bool]) -> Path | None:
    """The run folder `path` lies in (a folder above it that `is_run`), or None."""
    return next((parent for parent in path.resolve().parents if is_run(parent)), None)


def _beside_run(file: Path, run_dir: Path, project: Path) -> Path | None:
    """The folder holding both `file` and the run folder below the project (a sweep's folder,
    runs/, an unpacked archive's), if any: what came with the run folder is not the project's."""
    file, run_dir = file.resolve(), run_dir.resolve()
    for parent in [run_dir, *run_dir.parents]:
        if parent == project or not parent.is_relative_to(project):
            return None
        if file.is_relative_to(parent):
            return parent
    return None


def check_trust(cfg: Any, meta: dict[str, Any], run_dir: Path, trust: bool,
                is_run: Callable[[Path], bool]) -> None:
    """Before any own code a run folder names is imported (eval, predict, export,
    expkit.load, resume, reproduce): each MODULE:NAME must be a file of the project folder
    (the current directory; a run folder's recorded cwd is never used), never one inside a
    run folder or in a folder that holds it, and, unless the user passed --trust-code, the
    very file the run recorded (the SHA-256 in meta.json `imports`). So your own runs in
    your own project need no flag, and a received folder runs nothing of its own and
    nothing it was not trained with."""
    from omegaconf import OmegaConf

    ctx = _context.get()
    directory = project_dir()
    recorded = meta.get("imports") if isinstance(meta.get("imports"), dict) else {}
    raw = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg  # nothing resolved yet
    for group, (choice_key, own, path_key) in OWN.items():
        values = raw.get(group) if isinstance(raw, dict) else None
        if not isinstance(values, dict) or values.get(choice_key) != own or (ctx is not None and group in ctx.objects):
            continue
        for key, path in [(key_of(group), values.get(path_key)),
                          *((f"{group}.{k}", values.get(k)) for k in MORE_PATHS.get(group, ()) if values.get(k))]:
            _check_trusted(key, path, meta, recorded, run_dir, directory, trust, is_run)


def _check_trusted(key: str, path: Any, meta: dict[str, Any], recorded: dict[str, Any], run_dir: Path,
                   directory: Path, trust: bool, is_run: Callable[[Path], bool]) -> None:
    """One import path of a run folder's config: see check_trust."""
    module_name, _ = _split(key, path)
    if module_name == "__main__":
        return  # a notebook's object: it is never looked up, the caller passes it again
    entry = recorded.get(key) if isinstance(recorded.get(key), dict) else {}
    file = module_file(module_name, directory)
    top = module_name.split(".")[0]
    if file is not None:
        never = never_importable(module_name, file.resolve())
    else:  # no file: built into Python (posix, builtins), expkit's (a name it lacks), or missing
        never = never_importable(module_name, None) if top == "expkit" or top in sys.builtin_module_names else None
    if never:
        raise ConfigError(f"{key}: value {path!r} names {module_name}, which {never}: a run folder's config may "
                          f"not name it, with or without {TRUST_FLAG}. Nothing was imported.")
    if file is not None and not file.resolve().is_relative_to(directory) and installed(file.resolve()):
        _check_installed(key, path, module_name, entry, trust)
        return
    if file is None or not file.resolve().is_relative_to(directory):
        trained_in = meta.get("cwd")
        where = f" ({trained_in}, by its record)" if isinstance(trained_in, str) else ""
        found = f" (it is found at {file})" if file is not None else ""
        raise ConfigError(f"{key}: value {path!r}: the run imports {module_name}, which is not a file of the "
                          f"project folder {directory} (the current folder){found}; run this command in the "
                          f"folder the run was trained in{where}. Nothing was imported.")
    files = [file]
    defined = entry.get("defined_in") if isinstance(entry.get("defined_in"), dict) else None
    if defined and isinstance(defined.get("module"), str):  # a name re-exported by a package
        other = module_file(defined["module"], directory)
        if other is None or not other.resolve().is_relative_to(directory):
            raise ConfigError(f"{key}: value {path!r}: the run's code is defined in {defined['module']}, which is "
                              f"not a file of the project folder {directory}. Nothing was imported.")
        files.append(other)
    for each in files:
        holder = inside_run_folder(each, is_run) or _beside_run(each, Path(run_dir), directory)
        if holder is not None:
            raise ConfigError(f"{key}: value {path!r} names {each}, which is inside the run folder "
                              f"{holder}, or in a folder holding it; code in a run folder is never imported.")
    if trust:
        return
    for each, expected in zip(files, [entry.get("sha256"), (defined or {}).get("sha256")], strict=False):
        found = hashlib.sha256(each.read_bytes()).hexdigest()
        if expected is None:
            raise ConfigError(f"{key}: value {path!r}: the run folder records no hash for the code it names, so "
                              f"{each} cannot be told to be the code it trained with; nothing was imported. Pass "
                              f"{TRUST_FLAG} if you trust that file.")
        if found != expected:
            raise ConfigError(f"{key}: value {path!r}: {each} is not the file the run was trained with (sha256 "
                              f"{found[:12]}, the run recorded {str(expected)[:12]}); nothing was imported. Pass "
                              f"{TRUST_FLAG} to run the file as it is now.")


def _check_installed(key: str, path: Any, module_name: str, entry: dict[str, Any], trust: bool) -> None:
    """An installed package's callable, named by a run folder: run without --trust-code only
    when it is a model zoo's (whatever the folder's keyword arguments, it builds a model)
    and the package is the version the run recorded."""
    if trust:
        return
    if not module_name.startswith(MODEL_ZOOS):
        raise ConfigError(f"{key}: value {path!r} names {module_name}, an installed package that is not a model "
                          f"zoo ({', '.join(MODEL_ZOOS)}); a run folder's config could call any of its functions "
                          f"with arguments of its choosing. Nothing was imported. Pass {TRUST_FLAG} if you trust "
                          "this run folder.")
    package, version = distribution_of(module_name)
    if entry.get("version") is None or (entry.get("package"), entry.get("version")) != (package, version):
        raise ConfigError(f"{key}: value {path!r}: the run recorded {entry.get('package')} "
                          f"{entry.get('version')}, this environment has {package} {version}; nothing was imported. "
                          f"Pass {TRUST_FLAG} to build it with the installed version.")


def distribution_of(module_name: str) -> tuple[str | None, str | None]:
    """(the installed distribution that holds a module, its version), found without
    importing the module."""
    from importlib import metadata

    top = module_name.split(".")[0]
    names = metadata.packages_distributions().get(top) or []
    if not names:
        return None, None
    try:
        return names[0], metadata.version(names[0])
    except metadata.PackageNotFoundError:
        return names[0], None


# ------------------------------------------------------------------ kinds and arguments
def target(group: str, cfg: Any) -> Callable[..., Any]:
    """The checked object of an own-code group: its kind, and its parameters against what
    expkit passes (model: input_shape, num_classes) and `<group>.kwargs`."""
    path, key = path_of(group, cfg), key_of(group)
    obj = resolve(group, path)
    shown = describe_object(obj, path)
    if group == "model" and inspect.isclass(obj):
        from torch import nn

        if not issubclass(obj, nn.Module):
            raise ConfigError(f"{key}: {shown} is a class that is not a torch.nn.Module; give an nn.Module class "
                              "or a function that returns a model.")
    if not callable(obj):
        raise ConfigError(f"{key}: {shown} is a {type(obj).__name__}, not a function or class.")
    if group == "task":
        own_task_parts(cfg)
        return obj
    if group == "init":
        try:
            inspect.signature(obj).bind(object())
        except TypeError:
            raise ConfigError(f"{key}: {shown} must take one argument, the module: model.apply(fn) calls it "
                              "once for every submodule.") from None
        except ValueError:
            pass
        return obj
    arguments(group, cfg, obj, dict.fromkeys(MODEL_ARGUMENTS if group == "model" else ()))
    return obj


def own_task_parts(cfg: Any) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """(loss, metrics or None) of task=python: task.factory names a loss function (task.metrics
    then may name a metrics function), or a class (called with task.kwargs) or object with a
    loss method and optionally a metrics method."""
    key = key_of("task")
    obj = resolve("task", cfg.factory)
    shown = describe_object(obj, cfg.factory)
    if inspect.isclass(obj):
        try:
            obj = obj(**arguments("task", cfg, obj, {}))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"{key}: {shown}(...) raised {type(e).__name__}: {e}") from None
    if callable(getattr(obj, "loss", None)):
        loss, metrics = obj.loss, getattr(obj, "metrics", None)
    elif callable(obj):
        loss, metrics = obj, None
    else:
        raise ConfigError(f"{key}: {shown} is a {type(obj).__name__}; expected a loss function, or a class or "
                          "object with loss() (and metrics()).")
    if cfg.metrics is not None:
        if metrics is not None:
            raise ConfigError(f"task.metrics: {shown} has metrics() of its own; give task.metrics only with a "
                              "loss function.")
        metrics = resolve("task", cfg.metrics, "task.metrics")
    for name, fn in (("loss", loss), ("metrics", metrics)):
        try:
            if fn is not None:
                inspect.signature(fn).bind(object(), object())
        except TypeError:
            raise ConfigError(f"{key}: {shown}'s {name} must take two arguments, (outputs, targets).") from None
        except ValueError:
            pass
    return loss, metrics


def arguments(group: str, cfg: Any, obj: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments to call `obj` with: those of `offered` it has parameters of
    these names for, and every `<group>.kwargs` entry."""
    kwargs = dict(getattr(cfg, "kwargs", None) or {})
    shown = describe_object(obj, path_of(group, cfg))
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {**offered, **kwargs}
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    # A zoo's factory (timm:create_model) takes num_classes through **kwargs; input_shape is
    # expkit's own word, passed only to a parameter of that name.
    call = {k: v for k, v in offered.items() if k in named or (takes_any and k == "num_classes")}
    for k in kwargs:
        if k in offered:
            raise ConfigError(f"{group}.kwargs.{k}: expkit passes {k} itself; remove it from {group}.kwargs.")
        if k not in named and not takes_any:
            raise ConfigError(f"{group}.kwargs.{k}: {shown} has no parameter {k}; its parameters: "
                              f"{', '.join(params) or 'none'}.")
    call.update(kwargs)
    try:
        inspect.signature(obj).bind(**call)
    except TypeError as e:
        passes = f"{', '.join(offered)} (by name) and " if offered else ""
        raise ConfigError(f"{key_of(group)}: {shown} cannot be called with what expkit passes: {e}. expkit passes "
                          f"{passes}{group}.kwargs.* (set one with +{group}.kwargs.NAME=VALUE).") from None
    return call


def call(group: str, cfg: Any, **offered: Any) -> Any:
    """Build with own code: the checked object called with its arguments."""
    obj = target(group, cfg)
    return obj(**arguments(group, cfg, obj, offered))


def check_imports(typed: dict[str, Any]) -> list[str]:
    """One line per own-code path that does not import or does not fit (validate's last step)."""
    errors = []
    for group in own_groups(typed):
        try:
            target(group, typed[group])
        except ConfigError as e:
            errors.append(str(e))
    return errors


# ---------------------------------------------------------------------------- provenance
def describe_object(obj: Any, path: Any = None) -> str:
    """MODULE:NAME when the object can be imported by that path, else what it is."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str) and "<" not in name:
        return f"{module}:{name}"
    if isinstance(path, str) and path:
        return path
    named = f" {name}" if isinstance(name, str) and not name.endswith("<lambda>") else ""
    return f"<{type(obj).__name__}{named} given to the Python API>"


def provenance(typed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For meta.json: per own-code key, the path, the file it was imported from (and its
    SHA-256), and for code without a file (a notebook's) its source where Python has it."""
    out: dict[str, dict[str, Any]] = {}
    for group in own_groups(typed):
        obj = resolve(group, path_of(group, typed[group]))
        entry: dict[str, Any] = {"path": path_of(group, typed[group])}
        if hasattr(obj, GIVEN):  # data given as objects: what they are
            value = getattr(obj, GIVEN)
            obj = type(value) if not isinstance(value, (tuple, list)) else None
            if obj is not None:
                entry["type"] = f"{obj.__module__}.{obj.__qualname__}"
        out[key_of(group)] = entry | _where_from(obj, entry["path"])
        for more in MORE_PATHS.get(group, ()):
            if getattr(typed[group], more, None):
                other = getattr(typed[group], more)
                out[f"{group}.{more}"] = {"path": other} | _where_from(resolve(group, other, f"{group}.{more}"), other)
    return out


def _where_from(obj: Any, path: Any) -> dict[str, Any]:
    """The file an object was imported from and its SHA-256 (and the file that defines it,
    when a package re-exports it); for an installed package's, the package and version."""
    named = str(path).partition(":")[0] if isinstance(path, str) and ":" in path else None
    defined = getattr(obj, "__module__", None) or ""
    module = sys.modules.get(named or defined)
    file = getattr(module, "__file__", None) if module is not None and module.__name__ != "__main__" else None
    entry: dict[str, Any] = {}
    if file and installed(Path(file).resolve()) and not Path(file).resolve().is_relative_to(project_dir()):
        package, version = distribution_of(module.__name__)
        return {"package": package, "version": version}
    if file:
        entry["file"] = str(Path(file).resolve())
        with contextlib.suppress(OSError):
            entry["sha256"] = hashlib.sha256(Path(file).read_bytes()).hexdigest()
        defining = sys.modules.get(defined)
        defining_file = getattr(defining, "__file__", None) if defining is not None else None
        if named and defined != named and defining_file:
            entry["defined_in"] = {"module": defined, "file": str(Path(defining_file).resolve())}
            with contextlib.suppress(OSError):
                entry["defined_in"]["sha256"] = hashlib.sha256(Path(defining_file).read_bytes()).hexdigest()
    elif obj is not None and defined == "__main__":
        entry["source"] = _source(obj)
    return entry


def _source(obj: Any) -> str | None:
    """The source of a notebook's (or script's) function or class; for a class Python
    cannot find in a notebook, the whole cell that defined one of its methods."""
    try:
        return inspect.getsource(obj)[:SOURCE_CAP]
    except (OSError, TypeError):
        pass
    import linecache

    for value in vars(obj).values() if inspect.isclass(obj) else ():
        code = getattr(value, "__code__", None)
        if code is not None and linecache.getlines(code.co_filename):
            return "".join(linecache.getlines(code.co_filename))[:SOURCE_CAP]
    return None


# ---------------------------------------------------------------------------- Python API
def given(model: Any = None, data: Any = None, init: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """What expkit.train(..., model=, data=, init=) was given: (group -> the object that
    stands for its path, group -> the path or description config.yaml records). A string
    is an import path; model: an nn.Module class or a function returning a model; data: a
    function, or what a data factory returns (a Dataset, (x, y) tensors, a tuple of them);
    init: a function of one module."""
    objects: dict[str, Any] = {}
    shown: dict[str, str] = {}
    for group, value in (("model", model), ("data", data), ("init", init)):
        if value is None:
            continue
        if isinstance(value, str):
            shown[group] = value
            continue
        if group == "model":
            from torch import nn

            if isinstance(value, nn.Module):
                raise ConfigError(f"model: {type(value).__name__}(...) is a model instance; pass its class or a "
                                  "function that returns a new one (each run builds and initializes its own).")
        if group == "data" and (not callable(value) or _is_dataset(value)):
            objects[group] = _returning(value)
            shown[group] = _describe_data(value)
            continue
        if not callable(value):
            raise ConfigError(f"{group}: a {type(value).__name__} is not a function or class.")
        objects[group] = value
        shown[group] = describe_object(value)
    return objects, shown


def _is_dataset(value: Any) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not inspect.isclass(value)


def _returning(value: Any) -> Callable[[], Any]:
    def data() -> Any:
        return value

    setattr(data, GIVEN, value)
    return data


def _describe_data(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        inner = ", ".join("None" if v is None else type(v).__name__ for v in value)
        return f"<{type(value).__name__} ({inner}) given to the Python API>"
    return f"<{type(value).__name__} given to the Python API>"
