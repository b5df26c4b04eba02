"""Hub datasets (`hf_hub_url`, `ms_hub_url`) -> records, with one clear error when unreachable.

`datasets.load_dataset` (or ModelScope's `MsDataset.load`) downloads and caches the data;
`subset`, `split`, `folder` and `revision` are passed as LLaMA-Factory passes them. The two
`*_load_dataset` functions are the seams tests replace, since no hub is reachable there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from lmforge.data.sources.readers import RawRecord
from lmforge.data.sources.registry import DatasetSpec
from lmforge.errors import UserError

_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def hf_load_dataset(**kwargs: Any) -> Any:
    from datasets import load_dataset

    return load_dataset(**kwargs)


def ms_load_dataset(**kwargs: Any) -> Any:
    try:
        from modelscope import MsDataset
    except ImportError:
        raise UserError(
            "`ms_hub_url` datasets need the modelscope package, which is not installed",
            fix="pip install 'lmforge[modelscope]' (or unset USE_MODELSCOPE_HUB to use "
            "`hf_hub_url` where the entry has one)",
        ) from None
    dataset = MsDataset.load(**kwargs)
    return dataset.to_hf_dataset() if hasattr(dataset, "to_hf_dataset") else dataset


def iter_hub_records(spec: DatasetSpec, streaming: bool = False) -> Iterator[RawRecord]:
    label = spec.label
    count = 0
    try:
        if spec.load_from == "ms_hub":
            dataset = ms_load_dataset(
                dataset_name=spec.hub_id,
                subset_name=spec.subset,
                data_dir=spec.folder,
                split=spec.split,
                version=spec.revision,
                use_streaming=streaming,
            )
        else:
            dataset = hf_load_dataset(
                path=spec.hub_id,
                name=spec.subset,
                data_dir=spec.folder,
                split=spec.split,
                revision=spec.revision,
                streaming=streaming,
            )
        for count, record in enumerate(dataset, start=1):
            yield label, count - 1, record
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFound, ...)
        raise hub_error(spec, exc) from None
    if count == 0:
        raise UserError(
            f"{label} holds no records",
            where=spec.declared_in,
            fix="check `subset` and `split` in the dataset entry",
        )


def hub_error(spec: DatasetSpec, exc: Exception) -> UserError:
    hub = "ModelScope" if spec.load_from == "ms_hub" else "the Hugging Face hub"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    if offline or "OfflineModeIsEnabled" in detail:
        why = f"offline mode is on ({', '.join(offline) or 'HF_HUB_OFFLINE'})"
        what = f"cannot load `{spec.hub_id}` from {hub}: {why} and it is not in the local cache"
        fix = "download it once with network access (or unset the offline variable), or save "
        fix += "the data to a local file and set `file_name`"
    else:
        what = f"cannot load `{spec.hub_id}` from {hub} ({type(exc).__name__}: {detail})"
        fix = "check the name, `subset` and `split`, and the network (HF_ENDPOINT for a mirror); "
        fix += "or download the data and point `file_name` at the local file"
    return UserError(what, where=spec.declared_in or None, fix=fix)
