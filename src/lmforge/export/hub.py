"""Push a finished export to the Hugging Face hub (export_hub_model_id)."""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge.errors import UserError

logger = logging.getLogger(__name__)


def push_folder(folder: Path, repo_id: str) -> str:
    """Create the repo (if needed) and upload the folder; the repo's URL. Any failure (no
    network, no login, no permission) is one UserError line: the export itself is complete."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, commit_message="Upload lmforge export"
        )
    except Exception as exc:  # network, authentication, permission, offline mode
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"pushing {folder} to the hub repo {repo_id} failed ({type(exc).__name__}: {reason})",
            fix=f"the export is complete in {folder}; check the network and your login "
            f"(HF_TOKEN or `hf auth login`), then run `hf upload {repo_id} {folder}`",
        ) from None
    url = f"https://huggingface.co/{repo_id}"
    logger.info("Pushed to %s", url)
    return url
