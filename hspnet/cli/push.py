"""`hspnet push FOLDER REPO_ID`: upload a trained or converted model folder to the Hub in one commit, by
:func:`hspnet.hub.transfer.push_folder_to_hub`."""

from __future__ import annotations

import time

from hspnet.utils.command_line import CommandParser, run_command


def add_hub_options(parser: CommandParser, *, repo_option: bool, group=None) -> None:
    """The Hub options every uploading command shares, named as in `hspnet train` (transformers' names):
    ``--hub_model_id`` (unless the repository is a positional argument), ``--hub_private_repo``, ``--hub_token``;
    listed under the argument group `group` of `parser` if given."""
    container = group or parser
    if repo_option:
        container.add_argument("--hub_model_id", default=None, metavar="REPO_ID",
                               help="the Hub repository to upload to (e.g. your-name/hspnet-coco), created if needed")
    parser.add_flag("--hub_private_repo", "--private", help="create the repository private (if it is new)",
                    container=group)
    container.add_argument("--hub_token", default=None,
                           help="Hub token (default: `hf auth login` / HF_TOKEN); never printed or saved")


def build_parser(prog: str | None = "hspnet push") -> CommandParser:
    parser = CommandParser(prog=prog, description="Upload a trained or converted HSPNet folder to the Hub (its model "
                           "files and card, in one commit; never checkpoints or logs). The token comes from "
                           "--hub_token, `hf auth login` or HF_TOKEN.")
    parser.add_argument("folder", help="the model folder (e.g. outputs/demo)")
    parser.add_argument("repo_id", help="the Hub repository (e.g. your-name/hspnet-coco), created if needed")
    add_hub_options(parser, repo_option=False)
    parser.add_argument("--commit_message", default="Upload HSPNet model")
    return parser


def run(args) -> None:
    from hspnet.hub.transfer import push_folder_to_hub

    start = time.time()
    repo = push_folder_to_hub(args.folder, args.repo_id, token=args.hub_token, private=args.hub_private_repo,
                              commit_message=args.commit_message)
    print(f"pushed {args.folder} to {repo} in {time.time() - start:.1f} s")


def main(argv: list[str] | None = None, prog: str | None = "hspnet push", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` (the token masked), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, before_run=before_run)
