"""`--push-to-hub REPO`: upload a finished dataset or model folder, its card included, with `huggingface_hub`
(`HfApi.create_repo` + `upload_folder`; docs/hub.md).

Everything that can be known before the run is checked before it starts, so a long stage or training run never
ends in a refused upload: the repo id's form, that the hub is not switched off (HF_HUB_OFFLINE), and that a token
exists. The token is huggingface_hub's to find (HF_TOKEN, or the file `hf auth login` wrote); prefsmith never
reads it into a variable, a file, a manifest or a card.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.errors import UsageError, UserError

# never uploaded: checkpoints and rollouts of a training run, completion markers, temporary and hidden files
IGNORE = ["checkpoints/*", "rollouts/*", ".shards/*", "*.tmp", ".*", "*/.*"]
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubTarget:
    repo_id: str
    private: bool = False


def add_arguments(parser, command_line_only: bool = False) -> None:
    """The hub flags. `command_line_only`: a parser that lists them for --help while `split_argv` takes them off
    the command line first (`prefsmith train`); reaching that parser (from a --config file) is a UsageError."""
    g = parser.add_argument_group("Hugging Face Hub")
    extra = {"action": _CommandLineOnly, "default": argparse.SUPPRESS} if command_line_only else {"default": None}
    g.add_argument("--push-to-hub", metavar="REPO", **extra,
                   help="when the run has finished, upload the output folder with its README.md card to this Hub repo "
                        "(NAMESPACE/NAME); the token comes from HF_TOKEN or `hf auth login` (docs/hub.md)")
    g.add_argument("--hub-private", **({**extra, "nargs": 0} if command_line_only else {"action": "store_true"}),
                   help="with --push-to-hub: create the repo private")


class _CommandLineOnly(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError(f"{option_string}: give it on the command line of `{parser.prog}`, not in a --config file")


def split_argv(argv: list[str]) -> tuple[list[str], HubTarget | None]:
    """(argv without the hub flags, the checked target or None): for commands whose own parsers never see them
    (`prefsmith train`, which hands its arguments to each trainer's parser)."""
    rest, repo, private, i = [], None, False, 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name == "--push-to-hub":
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UserError("--push-to-hub needs a repo id: --push-to-hub NAMESPACE/NAME")
                value, i = argv[i + 1], i + 1
            repo = value
        elif argv[i] == "--hub-private":
            private = True
        else:
            rest.append(argv[i])
        i += 1
    if private and repo is None:
        raise UserError("--hub-private is for --push-to-hub REPO; give the repo too")
    return rest, target(repo, private)


def target(repo_id: str | None, private: bool = False) -> HubTarget | None:
    """The checked upload target of `--push-to-hub`, or None without it. UserError (one line) when the id is not a
    Hub repo id, the hub is switched off, or there is no token."""
    if repo_id is None:
        return None
    try:
        from huggingface_hub import constants, get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise UserError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub {repo_id!r}: not a Hub repo id ({e}); use NAMESPACE/NAME") from None
    if constants.is_offline_mode() or any(os.environ.get(v, "").upper() in _TRUE
                                          for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        raise UserError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to "
                        "push, or leave out --push-to-hub")
    if get_token() is None:
        raise UserError(f"--push-to-hub {repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    return HubTarget(repo_id, private)


def push(folder: str | Path, hub: HubTarget, repo_type: str, rerun: str,
         log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> str:
    """Create the repo if needed and upload `folder` (less IGNORE) as one commit; returns the commit's URL.
    `rerun`: what the user runs to try the upload again, for the error line."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    api = HfApi()
    log(f"pushing {folder} to the Hub {repo_type} repo {hub.repo_id}{' (private)' if hub.private else ''}")
    try:
        # without --hub-private the Hub's own default visibility applies (an organization may default to private)
        repo = api.create_repo(hub.repo_id, repo_type=repo_type, private=hub.private or None, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=folder, repo_type=repo_type,
                                   ignore_patterns=list(IGNORE), commit_message=f"prefsmith: upload {folder.name}")
    except Exception as e:  # noqa: BLE001  the hub client raises many types (HTTP, auth, network); one line each
        raise UserError(f"--push-to-hub {hub.repo_id}: uploading {folder} failed ({type(e).__name__}: {e}). The local "
                        f"output is complete; {rerun} to try the upload again") from None
    url = getattr(commit, "commit_url", None) or str(commit)
    log(f"pushed {folder} to {url}")
    return url


def push_dataset(output: str | Path, hub: HubTarget) -> str:
    """Upload a finished dataset directory; its card is written first if it has none (a dataset finished before
    cards existed, or one whose stage was skipped as already complete)."""
    from pipelines.core import dataset as ds

    manifest = ds.read_manifest(output)
    if manifest is None or not manifest.get("complete"):
        raise UserError(f"--push-to-hub {hub.repo_id}: {output} is not a finished prefsmith dataset; nothing pushed")
    ds.write_card(output, manifest)
    return push(output, hub, "dataset", rerun="rerun the same command (a finished stage is not run again)")
