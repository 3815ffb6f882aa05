"""Splitting a batch between processes: ``--num-parts``/``--part-id`` or a Slurm job array.

Each part runs every N-th study in name order (``shard``), so parts never overlap and agree
whatever the order of the inputs; parts may write into one output folder (``summary.csv`` is
rebuilt from every report there).
"""

from __future__ import annotations

from collections.abc import Mapping

from cardioseg.batch.studies import Study
from cardioseg.errors import ConfigError


def slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(number of parts, 0-based part) of a Slurm job array task, or None outside one.

    ``SLURM_ARRAY_TASK_COUNT`` tasks; the part is ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN)
    // SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset), so ``--array=1-10`` and
    ``--array=0-9`` both give parts 0..9.
    """
    if "SLURM_ARRAY_TASK_COUNT" not in env or "SLURM_ARRAY_TASK_ID" not in env:
        return None
    values: dict[str, int] = {}
    for key, default in (("COUNT", None), ("ID", None), ("MIN", "0"), ("STEP", "1")):
        raw = env.get(f"SLURM_ARRAY_TASK_{key}", default)
        try:
            values[key] = int(raw or "")
        except ValueError:
            raise ConfigError(f"SLURM_ARRAY_TASK_{key} is not a whole number: {raw!r}") from None
    return values["COUNT"], (values["ID"] - values["MIN"]) // max(values["STEP"], 1)


def resolve_parts(num_parts: int | None, part_id: int | None, env: Mapping[str, str]) -> tuple[int, int, bool]:
    """(number of parts, this part, whether taken from Slurm) from the options and environment.

    Each option given wins; a missing one comes from a Slurm job array when there is one
    (``--num-parts 1`` turns splitting off inside an array). Raises ConfigError (one line) for
    a part outside 0..N-1 or an option missing its partner outside Slurm.
    """
    slurm = slurm_array(env)
    from_slurm = False
    if num_parts is None:
        if slurm is not None:
            num_parts, from_slurm = slurm[0], True
        elif part_id is not None:
            raise ConfigError(f"--part-id {part_id} needs --num-parts N")
        else:
            num_parts = 1
    if part_id is None:
        if num_parts == 1:
            part_id = 0
        elif slurm is not None:
            part_id, from_slurm = slurm[1], True
        else:
            raise ConfigError(
                f"--num-parts {num_parts} needs --part-id I (0..{num_parts - 1}) outside a Slurm job array"
            )
    if num_parts < 1:
        raise ConfigError(f"the number of parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        where = (
            f" (from SLURM_ARRAY_TASK_ID={env.get('SLURM_ARRAY_TASK_ID')}; the array must be one range such as "
            f"--array=0-{num_parts - 1}, or pass --num-parts/--part-id)"
            if from_slurm else ""
        )  # fmt: skip
        raise ConfigError(f"part {part_id} is outside 0..{num_parts - 1} for {num_parts} parts{where}")
    return num_parts, part_id, from_slurm


def shard(studies: list[Study], num_parts: int, part_id: int) -> list[Study]:
    """Part ``part_id`` of ``num_parts``: every ``num_parts``-th study in name order, starting at
    ``part_id`` (the same share whatever the order of the inputs; parts never overlap)."""
    if num_parts == 1:
        return list(studies)
    mine = set(sorted(s.name for s in studies)[part_id::num_parts])
    return [s for s in studies if s.name in mine]
