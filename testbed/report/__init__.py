"""Reports of a run, built from its records only: Markdown (:mod:`.markdown`), HTML (:mod:`.html`),
the figures both draw — plain plotly figure dicts (:mod:`.figures`, which the HTML report
embeds) and the same as plotly ``Figure`` objects for the explorer (:mod:`.plots`) — and
:func:`write_run`, which writes a run's records and reports into a directory."""

from testbed.report.write import write_run

__all__ = ["write_run"]
