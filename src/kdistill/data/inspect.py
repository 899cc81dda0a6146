"""``kdistill data CONFIG``: what a config's data source found, before anything is trained."""

from __future__ import annotations

import torch

from kdistill.data.splits import DataBundle, Split


def _counts(split: Split, num_classes: int) -> list[int]:
    y = split.y[split.y >= 0]
    return torch.bincount(y, minlength=num_classes).tolist()


def problems(data: DataBundle) -> list[str]:
    """Things worth a look that are not errors: few or unbalanced images per class, an incomplete validation split."""
    out = []
    train = _counts(data.train, data.num_classes)
    few = [f"{data.class_names[c]} ({n})" for c, n in enumerate(train) if n < 10]
    if few:
        out.append(f"classes with fewer than 10 training images: {', '.join(few)}")
    if min(train) > 0 and max(train) / min(train) > 10:
        lo, hi = train.index(min(train)), train.index(max(train))
        out.append(
            f"unbalanced classes: {data.class_names[hi]} has {max(train)} training images, {data.class_names[lo]} "
            f"{min(train)}"
        )
    missing = [data.class_names[c] for c, n in enumerate(_counts(data.val, data.num_classes)) if n == 0]
    if missing:
        out.append(f"the validation split has no image of {', '.join(missing)}; raise data.val_size")
    return out


def record(data: DataBundle) -> dict:
    """What a run writes into its ``data.json``: the data it trained on, in full (JSON-ready)."""
    splits = {"train": data.train, "val": data.val, "test": data.test}
    return {
        "source": data.name,
        "class_names": list(data.class_names),
        "input_shape": list(data.input_shape),
        "held": "disk" if data.streamed else "memory",
        "normalize": data.extra["normalize"],
        "counts": {s: len(split) for s, split in splits.items()}
        | {"student_labelled": len(data.student_labelled), "transfer": len(data.transfer_set)},
        "per_class": {s: _counts(split, data.num_classes) for s, split in splits.items()},
        "fingerprint": data.fingerprint,
        "notes": list(data.notes),
        "problems": problems(data),
    } | {k: v for k, v in data.extra.items() if k != "normalize"}


def describe(data: DataBundle) -> str:
    """A plain-text report: classes and counts per split, input shape, normalization, how inputs are held."""
    norm = data.extra["normalize"]
    held = "read from disk a batch at a time (larger than data.memory_budget_mb)" if data.streamed else "in memory"
    lines = [
        f"source: {data.name}",
        f"inputs: {tuple(data.input_shape)}, {held}",
        f"normalization: x = (raw * {norm['scale']:.6g} - mean) / std per channel; mean "
        f"{[round(m, 4) for m in norm['mean']]}, std {[round(s, 4) for s in norm['std']]}",
        f"splits: train {len(data.train)}, validation {len(data.val)}, test {len(data.test)}; the students' labelled "
        f"set {len(data.student_labelled)}, the KD transfer set {len(data.transfer_set)}",
        "",
        f"{'class':<24} {'train':>8} {'val':>8} {'test':>8}",
    ]
    per = [_counts(s, data.num_classes) for s in (data.train, data.val, data.test)]
    for c, name in enumerate(data.class_names):
        lines.append(f"{name[:24]:<24} {per[0][c]:>8} {per[1][c]:>8} {per[2][c]:>8}")
    lines += ["", "notes:" if data.notes else "notes: none"] + [f"- {n}" for n in data.notes]
    found = problems(data)
    lines += ["problems: none found" if not found else "problems:"] + [f"- {p}" for p in found]
    return "\n".join(lines)
