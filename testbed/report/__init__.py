"""Reports of a run, built from its records only: Markdown (:mod:`.markdown`), HTML (:mod:`.html`),
the plotly figures both the HTML report and the explorer draw (:mod:`.plots`), and
:func:`write_run`, which writes a run's records and reports into a directory."""

from testbed.report.write import write_run

__all__ = ["write_run"]
