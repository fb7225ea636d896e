"""Researchers' own Flower apps as a pipeline's model (`model: app:NAME`), the agent's side.

An app is registered by name in the config (`fl.apps.NAME.path`), never named by a path in a
request: an HTTP caller can pick one of the apps the operator registered, not make an agent run
code from a folder of its choosing.

To deploy it, the agent copies the app's folder and changes two things in the copy's
`pyproject.toml` (the user's folder is never touched):

* the `serverapp` component becomes mlfo's host (`mlfo_toolkit.fl.hosted:server_app`), which loads
  the app's own ServerApp (named in the run config's `mlfo-serverapp`) and runs it unchanged behind
  mlfo's round clock, so rounds get their anatomy, the MLFO's control file is honoured and every
  round's accuracy and loss reach the metrics file;
* mlfo's run-config keys (`mlfo-*`) are declared, since Flower ignores overrides of keys an app
  does not declare.

The intent's and cohort's settings are passed as the app's run config under the names `flwr new`
templates use (`num-server-rounds`, `fraction-train`, ...), for those keys the app declares.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from mlfo_toolkit.config import DEFAULT_ACCURACY_KEYS, DEFAULT_LOSS_KEYS
from mlfo_toolkit.errors import ValidationError

APP_PREFIX = "app:"
APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HOST_COMPONENT = "mlfo_toolkit.fl.hosted:server_app"

# mlfo's setting -> the run-config keys that carry it in Flower's app templates.
SETTING_KEYS: dict[str, tuple[str, ...]] = {
    "rounds": ("num-server-rounds", "num-rounds"),
    "fraction_fit": ("fraction-train", "fraction-fit"),
    "min_fit": ("min-train-nodes", "min-fit-clients", "min-fit"),
    "min_available": ("min-available-nodes", "min-available-clients", "min-available"),
    "local_epochs": ("local-epochs",),
    "learning_rate": ("learning-rate", "lr"),
    "batch_size": ("batch-size",),
    "seed": ("seed",),
    "strategy": ("strategy",),
}

# The keys mlfo's host reads; declared in every copy with these defaults.
HOST_KEYS: dict[str, Any] = {
    "mlfo-serverapp": "",
    "mlfo-metrics-file": "",
    "mlfo-control-file": "",
    "mlfo-num-rounds": 0,
    "mlfo-min-available": 1,
    "mlfo-round-timeout": 600.0,
    "mlfo-server-poll-seconds": 0.25,
    "mlfo-wake-dir": "",
    "mlfo-accuracy-keys": ",".join(DEFAULT_ACCURACY_KEYS),
    "mlfo-loss-keys": ",".join(DEFAULT_LOSS_KEYS),
}


def is_app(model: str) -> bool:
    return model.startswith(APP_PREFIX)


def app_name(model: str, field: str = "model") -> str:
    """NAME of `app:NAME`, checked for its form (ValidationError naming the field)."""
    name = model[len(APP_PREFIX):]
    if not APP_NAME.match(name):
        raise ValidationError(f"'{model[:80]}' is not a valid app model", field=field,
                              hint="write app:NAME, NAME as registered under fl.apps (letters, digits, . _ -)")
    return name


def check_model_form(model: str, builtin: tuple[str, ...], field: str = "model") -> None:
    """A built-in model kind, or `app:NAME` of a valid form (whether NAME is registered is the agent's to say)."""
    if is_app(model):
        app_name(model, field)
    elif model not in builtin:
        raise ValidationError(f"unknown model '{model[:80]}'", field=field,
                              hint=f"known: {', '.join(builtin)}, or app:NAME for a Flower app registered under fl.apps")


def read_app(path: Path) -> dict[str, Any]:
    """The app's `pyproject.toml`, checked for what deploying it needs; ValidationError naming what is wrong."""
    project = path / "pyproject.toml"
    if not project.is_file():
        raise ValidationError(f"{path} is not a Flower app: it has no pyproject.toml", field="fl.apps",
                              hint="point fl.apps.NAME.path at the folder `flwr new` made (the one with pyproject.toml)")
    try:
        data = tomllib.loads(project.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValidationError(f"{project} cannot be read: {err}", field="fl.apps") from None
    app = data.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components", {})
    for key in ("serverapp", "clientapp"):
        if not isinstance(components.get(key), str) or ":" not in components[key]:
            raise ValidationError(f"{project} names no {key} ([tool.flwr.app.components] {key} = \"module:attribute\")",
                                  field="fl.apps", hint="a Flower app declares both components; see `flwr new`")
    return data


def prepare_app(source: Path, dest: Path) -> tuple[Path, dict[str, Any]]:
    """Copy the app to `dest` with mlfo's host as its ServerApp; the copy's folder and the app's own run config."""
    data = read_app(source)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv"))
    app = data["tool"]["flwr"]["app"]
    own_config = dict(app.get("config", {}))
    app["config"] = {**own_config, "mlfo-serverapp": app["components"]["serverapp"],
                     **{k: v for k, v in HOST_KEYS.items() if k != "mlfo-serverapp"}}
    app["components"]["serverapp"] = HOST_COMPONENT
    # `flwr run` moves a federations section out into FLWR_HOME; the agent gives its own there.
    data["tool"]["flwr"].pop("federations", None)
    (dest / "pyproject.toml").write_text(tomli_w.dumps(data))
    return dest, own_config


def app_run_config(own_config: dict[str, Any], settings: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The app's run-config overrides: the operator's fixed values, then mlfo's settings under the
    template names the app declares (a setting of the intent wins over a fixed value)."""
    out: dict[str, Any] = {k: v for k, v in fixed.items() if k in own_config}
    for setting, value in settings.items():
        if value is None:
            continue
        for key in SETTING_KEYS.get(setting, ()):
            if key in own_config:
                out[key] = _like(own_config[key], value)
    return out


def _like(template: Any, value: Any) -> Any:
    """`value` in the type the app declared for the key (Flower checks run-config types loosely)."""
    if isinstance(template, bool):
        return bool(value)
    if isinstance(template, int) and isinstance(value, (int, float)):
        return int(value)
    if isinstance(template, float) and isinstance(value, (int, float)):
        return float(value)
    if isinstance(template, str):
        return str(value)
    return value
