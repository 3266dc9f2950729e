"""Stand-in get_dataset_dataloader: keyword arguments from the table only; records that a
dataset was fetched (the quantize job may only ask when the spec names the dataset)."""

from __future__ import annotations

from typing import Any

from standin_log import record, reject, table


def get_dataset_dataloader(**kwargs: Any) -> list[dict[str, Any]]:
    allowed = set(table()["calibration_dataset"]["arguments"])
    if set(kwargs) - allowed:
        reject("get_dataset_dataloader", f"keyword(s) {sorted(set(kwargs) - allowed)} not in "
                                         f"the table")
    record("get_dataset_dataloader", dataset=kwargs.get("dataset_name"),
           samples=kwargs.get("num_samples"))
    batch = int(kwargs.get("batch_size") or 1)
    count = int(kwargs.get("num_samples") or 1)
    return [{"input_ids": [[1]] * min(batch, count - i)} for i in range(0, count, batch)]
