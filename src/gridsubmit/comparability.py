"""Can the cells' metrics be compared? What their last attempts ran on, factor by factor (pure).

Each attempt records the GPU model and driver and the CUDA version (``nvidia-smi`` on the
node), its code (``code``: the script and ``code_paths``, see codehash), the fingerprint of what
the command's interpreter could import (``env_fingerprint``; the list itself is kept once per
fingerprint in the manifest's ``environments``), its options, and the submission it belongs to
(gridsubmit's version). A factor *varies* when the cells that contribute metrics do not all
share one value of it; ``report`` lists the groups, and ``report --require-consistent`` fails.
"""

from __future__ import annotations

import json

# factor name -> label; in the order shown
FACTORS = {"gpu": "GPU model", "driver": "driver", "cuda": "CUDA", "code": "code", "environment": "environment",
           "options": "options", "gridsubmit": "gridsubmit version"}  # fmt: skip
UNKNOWN = "unknown"


def keep_environments(manifest: dict, observations) -> None:
    """Take each observation's ``environment`` (the probe's answer) off it: the attempt keeps
    its fingerprint (``env_fingerprint``), the manifest the list once per fingerprint."""
    for obs in observations:
        env = obs.fields.pop("environment", None)
        if isinstance(env, dict) and isinstance(env.get("fingerprint"), str):
            manifest.setdefault("environments", {}).setdefault(
                env["fingerprint"], {"python": env.get("python"), "executable": env.get("executable"),
                                     "distributions": list(env.get("distributions") or [])})  # fmt: skip
            obs.fields["env_fingerprint"] = env["fingerprint"]


def _submission(manifest: dict, attempt: dict) -> dict:
    n = attempt.get("submission")
    subs = manifest.get("submissions") or []
    return subs[n - 1] if isinstance(n, int) and 0 < n <= len(subs) and isinstance(subs[n - 1], dict) else {}


def code_id(manifest: dict, attempt: dict) -> str:
    """The code an attempt ran, as one value: its script's and code_paths' digests; for an
    attempt recorded before code was, its submission's git commit."""
    code = attempt.get("code")
    if isinstance(code, dict) and code:
        parts = []
        if code.get("script"):
            parts.append(f"{code['script'].get('path')}@{code['script'].get('sha256')}")
        if code.get("paths"):
            parts.append(f"code_paths@{code['paths'].get('sha256')}")
        return ", ".join(parts)
    git = _submission(manifest, attempt).get("git")
    if isinstance(git, dict) and git.get("commit"):
        return f"git {str(git['commit'])[:12]}{' (dirty)' if git.get('dirty') else ''}"
    return UNKNOWN


def value(manifest: dict, cell: dict, factor: str) -> str:
    """One cell's value of a factor (its last attempt's), as text."""
    a = cell["attempts"][-1] if cell.get("attempts") else {}
    if factor == "gpu":
        return a.get("gpu_name") or "none seen"
    if factor == "driver":
        return a.get("gpu_driver") or UNKNOWN
    if factor == "cuda":
        return a.get("cuda_version") or UNKNOWN
    if factor == "code":
        return code_id(manifest, a)
    if factor == "environment":
        return a.get("env_fingerprint") or UNKNOWN
    if factor == "options":
        options = a.get("options") if isinstance(a.get("options"), dict) else cell.get("options") or {}
        return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())) or "none"
    if factor == "gridsubmit":
        versions = _submission(manifest, a).get("versions") or manifest.get("versions") or {}
        return str(versions.get("gridsubmit") or UNKNOWN)
    raise KeyError(factor)


def judge(manifest: dict, keys: list[str]) -> dict:
    """The factors across the cells ``keys`` (those that contribute metrics):
    ``{"cells": n, "consistent": bool, "varying": [names], "factors": [{"name", "label",
    "varies", "groups": [{"value", "cells"}]}], "environments": {fingerprint: what only it has}}``."""
    wanted = set(keys)
    cells = [c for c in manifest["jobs"] if c["key"] in wanted]
    factors = []
    for name, label in FACTORS.items():
        groups: dict[str, list[str]] = {}
        for cell in cells:
            groups.setdefault(value(manifest, cell, name), []).append(cell["key"])
        factors.append({"name": name, "label": label, "varies": len(groups) > 1,
                        "groups": [{"value": v, "cells": ks} for v, ks in groups.items()]})  # fmt: skip
    varying = [f["name"] for f in factors if f["varies"]]
    out = {"cells": len(cells), "consistent": not varying, "varying": varying, "factors": factors}
    env = next(f for f in factors if f["name"] == "environment")
    if env["varies"]:
        out["environments"] = environment_differences(manifest, [g["value"] for g in env["groups"]])
    return out


def environment_differences(manifest: dict, fingerprints: list[str]) -> dict[str, list[str]]:
    """For each fingerprint, the distributions (name==version) the others do not all have."""
    lists = {fp: set((manifest.get("environments") or {}).get(fp, {}).get("distributions") or []) for fp in fingerprints}
    known = [s for fp, s in lists.items() if fp != UNKNOWN]
    common = set.intersection(*known) if known else set()
    return {fp: sorted(s - common) for fp, s in lists.items()}


def text(result: dict, limit: int = 8) -> str:
    """The comparability section of ``report``."""
    n = result["cells"]
    if not n:
        return "comparability: no cell contributes metrics"
    if result["consistent"]:
        same = ", ".join(f"{f['label']} {f['groups'][0]['value']}" for f in result["factors"])
        return f"comparability: the {n} contributing cell(s) share every factor ({same})"
    lines = [f"comparability: {', '.join(FACTORS[v] for v in result['varying'])} "
             f"{'vary' if len(result['varying']) > 1 else 'varies'} across the {n} contributing cells"]  # fmt: skip
    for f in result["factors"]:
        if not f["varies"]:
            lines.append(f"  {f['label']}: {f['groups'][0]['value']} (all cells)")
            continue
        lines.append(f"  {f['label']} varies:")
        for g in f["groups"]:
            shown = ", ".join(g["cells"][:limit]) + (f", and {len(g['cells']) - limit} more" if len(g["cells"]) > limit else "")
            extra = ""
            if f["name"] == "environment" and result.get("environments", {}).get(g["value"]):
                only = result["environments"][g["value"]]
                extra = f"  [only here: {', '.join(only[:6])}{' ...' if len(only) > 6 else ''}]"
            lines.append(f"    {g['value']} ({len(g['cells'])} cell(s)): {shown}{extra}")
    return "\n".join(lines)
