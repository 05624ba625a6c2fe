"""Environments for multi-turn rollouts: the protocol (`base.py`), the built-ins (`python_env.py`, `tools_env.py`,
sharing `sandboxed.py`) and `--env` spec loading (`loader.py`). docs/environments.md has the whole story."""
from pipelines.envs.base import Environment, EnvSpecError
from pipelines.envs.loader import BUILTINS, env_fingerprint, load_env

__all__ = ["BUILTINS", "EnvSpecError", "Environment", "env_fingerprint", "load_env"]
