"""Campaigns: a matrix of scenarios x seeds, run on a local pool or a Ray cluster, journaled and summarised.

``spec`` reads the campaign file, ``matrix`` expands its cells, ``run`` turns one cell x seed
into a row, ``executors`` run rows in processes or on Ray, ``journal`` makes them durable and
resumable, ``summary`` draws conclusions across seeds, ``markdown`` and ``html`` report them, and
``driver`` ties it together in :func:`run_campaign`.
"""

from testbed.campaign.driver import CampaignResult, run_campaign
from testbed.campaign.spec import Campaign, CampaignSpec, load_campaign

__all__ = ["Campaign", "CampaignResult", "CampaignSpec", "load_campaign", "run_campaign"]
