"""The batch's check of a profile's datasets against the local copies, before any notebook (or model) runs.

``missing_datasets: fail`` (the default) stops the batch with every missing copy reported once (where it
looked, how to download it); ``skip`` reports them, leaves them out of each notebook's ``dataset`` /
``extra_datasets`` and says so per notebook. A notebook left with no dataset is skipped.
"""
from __future__ import annotations

from ..evaluation.datasets import check_local_copy
from ..validation import check_choice
from .parameters import NOTEBOOKS

POLICIES = ("fail", "skip")


class MissingDatasets(FileNotFoundError):
    """Datasets a profile names have no local copy (``missing_datasets: fail``); the message reports each."""


def dataset_specs(notebook: str, parameters: dict) -> list[str]:
    """The datasets a notebook's parameters (a profile's, over its defaults) name: ``dataset``, then
    ``extra_datasets`` where it has them."""
    given = {**NOTEBOOKS[notebook], **parameters}
    return [given["dataset"], *given.get("extra_datasets", [])]


def missing_copies(specs: list[str]) -> dict[str, str]:
    """``{spec: why}`` for each distinct spec without a local copy, in first-named order. Unknown names raise."""
    missing = {}
    for spec in dict.fromkeys(specs):
        try:
            check_local_copy(spec)
        except FileNotFoundError as err:
            missing[spec] = str(err)
    return missing


def report(missing: dict[str, str]) -> str:
    return "\n\n".join(f"[{i}/{len(missing)}] {spec}: {why}" for i, (spec, why) in enumerate(missing.items(), 1))


def without_missing(settings: dict[str, dict], policy: str) -> tuple[dict[str, dict], list[str]]:
    """``settings`` ({notebook: parameters}) with the missing datasets left out under ``policy``, and the lines
    the batch prints. Raises MissingDatasets under "fail"; a notebook with none of its datasets is dropped."""
    check_choice("missing_datasets", policy, POLICIES)
    missing = missing_copies([s for n, p in settings.items() for s in dataset_specs(n, p)])
    if not missing:
        return settings, []
    if policy == "fail":
        raise MissingDatasets(f"{len(missing)} dataset(s) the profile names have no local copy (missing_datasets: "
                              f"fail; 'skip' runs without them):\n\n{report(missing)}")
    lines = [f"missing datasets, skipped (missing_datasets: skip):\n\n{report(missing)}\n"]
    kept = {}
    for name, parameters in settings.items():
        specs = dataset_specs(name, parameters)
        present, dropped = [s for s in specs if s not in missing], [s for s in specs if s in missing]
        if not present:
            lines.append(f"{name}: skipped, none of its datasets has a local copy ({', '.join(dropped)})")
            continue
        if dropped:
            lines.append(f"{name}: runs without {', '.join(dropped)}")
            rest = {"extra_datasets": present[1:]} if "extra_datasets" in NOTEBOOKS[name] else {}
            parameters = {**parameters, "dataset": present[0], **rest}
        kept[name] = parameters
    return kept, lines
