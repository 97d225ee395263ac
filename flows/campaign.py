"""The campaign flow: a target's products over all its nights (multi-night light curve, O-C, ephemeris,
period search), rebuilt when a night that contains the target completes (the night flow calls it) or
from the UI (the ``campaign`` deployment), and published as artifacts with stable keys."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from qlcp.core.campaign import campaign_targets
from qlcp.core.runsetup import make_config
from qlcp.core.runtime import offline_time
from qlcp.flows.artifacts import publish_campaign
from qlcp.flows.params import json_params_flow
from qlcp.tasks.campaign import campaign_task
from qlcp.tasks.common import bridge_logging, results_dir


def _flow_run_name() -> str:
    """``campaign-<target>`` (``campaign-all`` for every target), not one of Prefect's random names."""
    from prefect.runtime import flow_run

    return f"campaign-{(flow_run.parameters or {}).get('target') or 'all'}"


@json_params_flow(name="campaign", flow_run_name=_flow_run_name, log_prints=True)
def campaign(red_root: str, target: str | None = None, config: dict | None = None,
             config_files: list[str] | None = None, refresh: bool = False) -> dict:
    """Build (or rebuild) the campaign products of ``target``, or of every target under ``red_root``.

    Each target is one task, cached on the content of its nights' light curves and timing tables
    and on its settings: a night that changed nothing for a target costs one cache lookup.

    Returns
    -------
    dict
        target -> paths by product kind (and ``notes``: what could not be made, and why).
    """
    offline_time()          # a flow-run process of its own: astropy offline, whatever the date
    bridge_logging()
    plog = get_run_logger()
    cfg = make_config(config_files, **(config or {}))
    names = [target] if target else campaign_targets(red_root)
    out = {}
    for name in names:
        t = campaign_task.with_options(refresh_cache=refresh, result_storage=results_dir())
        res = t(red_root=str(Path(red_root).resolve()), target=name, cfg=cfg.plain(only_set=True))
        out[name] = res
        for note in res.get("notes", []):
            plog.info("campaign %s: %s", name, note)
        publish_campaign(name, res, red_root, cfg.results_url)
    return out
