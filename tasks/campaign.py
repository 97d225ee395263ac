"""The campaign task: one target's campaign products, cached on the content of its nights' files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext

from qlcp.core.campaign import build_campaign, campaign_inputs
from qlcp.core.codehash import code_fingerprint

from .common import CACHE_EXPIRATION, IO_RETRIES, IO_RETRY_DELAYS, _fingerprints, config_of, retry_transient

#: the settings a campaign depends on
CAMPAIGN_KEYS = ("targets", "target_catalog", "campaign_method", "campaign_min_period", "campaign_max_period",
                 "campaign_min_nights", "timing_aperture", "timing_baseline", "timing_min_points", "timing_snr_min",
                 "timing_clip", "timing_n_boot", "timing_seed", "timing_prayer_bead", "timing_ld", "timing_period",
                 "timing_duration", "timing_window")


def campaign_key(context: TaskRunContext, parameters: dict) -> str:
    """Target, settings, the fingerprint of the campaign's code (:mod:`qlcp.core.codehash`) and the content of the target's nights' light curves and timings."""
    cfg = config_of(parameters["cfg"])
    files = campaign_inputs(parameters["red_root"], parameters["target"])
    catalog = [cfg.target_catalog] if cfg.target_catalog else []
    payload = {"task": context.task.name, "code": code_fingerprint(build_campaign.__module__),
               "target": parameters["target"],
               "red_root": str(Path(parameters["red_root"]).resolve()), "cfg": cfg.subset(CAMPAIGN_KEYS),
               "files": _fingerprints(files + catalog)}
    return "qlcp-campaign-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:40]


@task(name="campaign-target", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient, cache_key_fn=campaign_key, cache_expiration=CACHE_EXPIRATION,
      persist_result=True, result_serializer="json")
def campaign_task(red_root: str, target: str, cfg: dict) -> dict:
    """Build the campaign products of ``target`` (:func:`qlcp.core.campaign.build_campaign`)."""
    res = build_campaign(red_root, target, cfg=config_of(cfg))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items()}
